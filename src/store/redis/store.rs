//! The Redis store: the semaphore's document in one string key, changed by the engine's
//! compare-and-swap step, judged by leases on the server's clock.
//!
//! - **A step** ([`RedisStore::step`]) is one [`Engine::step`]: the rule runs on the
//!   document as read with the server's `TIME`, and what it changed is committed only if the
//!   key still holds what was read; a lost race runs the rule again on the newer document,
//!   until the step's deadline ([`LockWait`]: the call's, or the lock timeout), then
//!   [`Error::Contended`].
//! - **Unknown outcomes.** When a commit got no answer (the server stopped or the connection
//!   broke while the script was in flight), the change may or may not have been made, and
//!   a script still buffered on the server may even land later. The step then runs again,
//!   *settling* ([`StepContext::settling`]): the rule looks on the fresh document for what
//!   its earlier run did (an acquire for its entry, a release for its entry's absence)
//!   before acting again, so that nothing is done twice and no hold is reported that was not
//!   written. A new commit also fences off a late one: the late script compares the key with
//!   the document it read, which is gone. This goes on until the deadline (at least one
//!   look); if the server cannot be reached by then, the error says the outcome is unknown.
//! - **Liveness** is judged by leases only: the [`RedisJudge`] proves nothing, so every
//!   hold and waiter carries a lease ([`RedisStore::lease`], imposed on holds that ask for
//!   none), renewed while its permit or wait lives.
//! - **Size.** A value over [`MAX_VALUE_BYTES`] is [`Error::Corrupt`] before it is parsed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::engine::{Decision, Engine, EngineOptions, ReplicaAck, Stats, StepError};
use super::failure::{FailureKind, RedisFailure};
use super::location::Location;
use super::subscriber::Subscriber;
use super::waker::RedisWaker;
use crate::core::doc::{Document, Entry, Owner};
use crate::core::queue::Stamp;
use crate::core::rules::Removed;
use crate::core::tokens::{take_token, token_floor, tokens_exhausted};
use crate::core::verdict::{Judge, Liveness};
use crate::error::{Error, Result};
use crate::store::{Committed, InStep, LockWait, NewHold, Snapshot, Step, StepContext};

/// The largest value read as a document, in bytes: 64 MiB, as the file store's largest
/// state file. A larger value is [`Error::Corrupt`] rather than parsed.
pub(crate) const MAX_VALUE_BYTES: usize = 64 << 20;

/// How long a step with a deadline ([`LockWait::Until`]) retries a lost race at least, even
/// when the deadline has passed: as the file store's last lock wait, so that a call at its
/// deadline still gets a few attempts past a concurrent writer (to leave the queue).
const LAST_ATTEMPTS: Duration = Duration::from_millis(5);

/// The first pause before another look after an unknown outcome (the first look comes at
/// once); it doubles up to [`MAX_SETTLE_PAUSE`].
const FIRST_SETTLE_PAUSE: Duration = Duration::from_millis(50);

/// The longest pause between two looks that settle an unknown outcome.
const MAX_SETTLE_PAUSE: Duration = Duration::from_secs(1);

/// How a Redis store is opened: the settings of [`OpenOptions`](crate::OpenOptions) it uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// How long the server may take to answer one command.
    pub response_timeout: Duration,
    /// Replicas that must acknowledge each change, if any.
    pub replicas: Option<(u32, Duration)>,
    /// How long a step without a deadline of its own retries lost races.
    pub lock_timeout: Duration,
    /// The lease of a hold or waiter that asks for none.
    pub lease: Duration,
}

/// One semaphore's key on a Redis server.
pub(crate) struct RedisStore {
    engine: Engine,
    /// The location as shown everywhere: `redis://[USER:***@]HOST:PORT/DB/KEY`.
    shown: PathBuf,
    lock_timeout: Duration,
    lease: Duration,
    judge: RedisJudge,
    /// This machine's name, for the owner records of new entries (display only).
    host: String,
    /// The handle's change notices, started by the first wait (per process: a forked child
    /// starts its own).
    subscriber: Mutex<Option<(u32, Arc<Subscriber>)>>,
    /// Tests: called once, right before the next commit is sent.
    #[cfg(test)]
    pub(crate) before_commit: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("location", &self.shown)
            .finish_non_exhaustive()
    }
}

/// What [`RedisStore::recover`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// There is no key: nothing to recover (a new semaphore may be created).
    Missing,
    /// The key holds a valid document; nothing was changed.
    Valid,
    /// The key was moved aside to this location, and a fresh document put in its place.
    MovedTo(PathBuf),
}

impl RedisStore {
    /// A store for the semaphore at `location`. Contacts nothing: the first operation
    /// connects.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] if the Redis client refuses the connection settings.
    pub fn open(location: Location, settings: &Settings) -> Result<RedisStore> {
        let shown = PathBuf::from(location.to_string());
        let options = EngineOptions {
            connect_timeout: settings.connect_timeout,
            response_timeout: settings.response_timeout,
            replicas: settings
                .replicas
                .map(|(replicas, timeout)| ReplicaAck { replicas, timeout }),
        };
        let engine = Engine::new(location, options).map_err(|f| f.into_error(Duration::ZERO))?;
        Ok(RedisStore {
            engine,
            shown,
            lock_timeout: settings.lock_timeout,
            lease: settings.lease,
            judge: RedisJudge,
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            subscriber: Mutex::new(None),
            #[cfg(test)]
            before_commit: Mutex::new(None),
        })
    }

    /// The location, password redacted.
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// The lease of a hold or waiter that asks for none.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The judge: leases only.
    pub fn judge(&self) -> &RedisJudge {
        &self.judge
    }

    /// The engine's counters.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Adds the store's settings to a handle's `Debug` output.
    pub fn describe(&self, out: &mut std::fmt::DebugStruct<'_, '_>) {
        let o = self.engine.options();
        out.field("connect_timeout", &o.connect_timeout)
            .field("response_timeout", &o.response_timeout)
            .field("replicas", &o.replicas.map(|r| (r.replicas, r.timeout)))
            .field("lock_timeout", &self.lock_timeout)
            .field("lease", &self.lease);
    }

    /// One compare-and-swap step (see [`Store::step_with`](crate::store::Store::step_with)
    /// and the module docs), settling an unknown outcome by running the rule again.
    ///
    /// # Errors
    ///
    /// What `rule` returns; [`Error::NotFound`], [`Error::Corrupt`], [`Error::Contended`],
    /// and the connection errors ([`Error::RedisUnreachable`], [`Error::RedisTimeout`],
    /// [`Error::RedisDisconnected`], [`Error::RedisAuth`], [`Error::Redis`]). A commit not
    /// confirmed by the replicas asked for is not an error here: [`Committed::unreplicated`].
    pub fn step<R>(
        &self,
        wait: LockWait,
        create: Option<u32>,
        mut rule: impl FnMut(&mut Document, &mut StepContext<'_>) -> Result<Step<R>>,
    ) -> Result<Committed<R>> {
        let start = Instant::now();
        let deadline = match wait {
            LockWait::Timeout => later(start, self.lock_timeout),
            LockWait::Until(d) => d.max(start + LAST_ATTEMPTS),
        };
        // The first failure whose outcome is unknown, while it is not settled.
        let mut unsettled: Option<RedisFailure> = None;
        let mut pause = FIRST_SETTLE_PAUSE;
        loop {
            let settling = unsettled.is_some();
            let mut reaped: Vec<Removed> = Vec::new();
            let result = self.engine.step(deadline, |bytes, now| {
                let (mut doc, created) = match self.parse(bytes, create) {
                    Ok(parsed) => parsed,
                    Err(e) => return Decision::Abort(e),
                };
                // Never a token below the server's clock in microseconds. The key may be an
                // older value than the one the last tokens came from (a server restarted
                // from an older snapshot, a failover to a replica that lacked the last
                // writes), or missing although a semaphore was here (a restart without
                // persistence, `FLUSHDB`, an eviction, `DEL`), while holders still fence
                // with those tokens. Each was at most the clock of its grant (the counter
                // takes one number per write of at least a microsecond), so a later clock
                // is above them all.
                let floor = token_floor(b"", now);
                doc.next_token = Some(doc.next_token.map_or(floor, |next| next.max(floor)));
                let mut cx = StepContext {
                    now,
                    created,
                    at: InStep::Redis(RedisStep {
                        store: self,
                        settling,
                    }),
                };
                match rule(&mut doc, &mut cx) {
                    Err(e) => Decision::Abort(e),
                    Ok(step) if step.changed || created => {
                        reaped = step.reaped;
                        #[cfg(test)]
                        self.run_before_commit();
                        Decision::Write(doc.to_bytes(), step.value)
                    }
                    Ok(step) => {
                        reaped = step.reaped;
                        Decision::NoChange(step.value)
                    }
                }
            });
            let failure = match result {
                Ok(stepped) => {
                    tracing::trace!(location = %self.shown.display(), attempts = stepped.attempts, written = stepped.written, server_now = %stepped.server_now, "step");
                    self.log_reaped(&reaped);
                    return Ok(Committed {
                        value: stepped.value,
                        unreplicated: None,
                    });
                }
                Err(StepError::Aborted(e)) => return Err(e),
                Err(StepError::Unreplicated { stepped, failure }) => {
                    self.log_reaped(&reaped);
                    tracing::warn!(location = %self.shown.display(), error = %failure, "change not confirmed by the replicas");
                    return Ok(Committed {
                        value: stepped.value,
                        unreplicated: Some(failure.into_error(start.elapsed())),
                    });
                }
                Err(StepError::Failed(failure)) => failure,
            };
            if failure.outcome_unknown() && unsettled.is_none() {
                tracing::warn!(location = %self.shown.display(), error = %failure, "a change got no answer; reading the state again to settle it");
                unsettled = Some(failure);
            } else if unsettled.is_none() || !transient(&failure) {
                // Nothing in flight; or the server answers with something that will not
                // change by asking again: the unsettled failure is what the caller must know.
                let failure = unsettled.unwrap_or(failure);
                return Err(failure.into_error(start.elapsed()));
            } else {
                tracing::debug!(location = %self.shown.display(), error = %failure, "settling an unknown outcome failed; trying again");
                if Instant::now() + pause >= deadline {
                    let failure = unsettled.unwrap_or(failure);
                    return Err(failure.into_error(start.elapsed()));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_SETTLE_PAUSE);
            }
        }
    }

    /// The document as it is now, with the server's clock.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::Corrupt`], and the connection errors.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let snapshot = self
            .engine
            .snapshot()
            .map_err(|f| f.into_error(Duration::ZERO))?;
        let (doc, _) = self.parse(snapshot.value.as_deref(), None)?;
        Ok(Snapshot {
            doc,
            now: snapshot.server_now,
        })
    }

    /// A waker for one waiting acquire: a doorbell of the handle's subscriber, which the
    /// first wait starts. Without one (no thread or socket could be made) the waker has no
    /// notices, and the sleeper polls.
    pub fn waker(&self) -> RedisWaker {
        let pid = std::process::id();
        let subscriber = {
            let mut slot = self.subscriber.lock().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some((owner, subscriber)) if *owner == pid => Some(Arc::clone(subscriber)),
                _ => match self.engine.subscribe() {
                    Ok(subscriber) => {
                        let subscriber = Arc::new(subscriber);
                        *slot = Some((pid, Arc::clone(&subscriber)));
                        Some(subscriber)
                    }
                    Err(failure) => {
                        tracing::warn!(location = %self.shown.display(), error = %failure, "no change notices; polling");
                        None
                    }
                },
            }
        };
        RedisWaker::new(subscriber)
    }

    /// The change notices of an async handle's watcher: a task on the current runtime,
    /// listening on a pub/sub connection of its own (see [`super::notices`]); no thread.
    #[cfg(feature = "tokio")]
    pub fn notices(&self) -> super::notices::Notices {
        self.engine.subscribe_async()
    }

    /// Recovery: if the key holds anything but a valid document (garbage, a value over
    /// [`MAX_VALUE_BYTES`], a key of another Redis type), moves it aside to
    /// `KEY.corrupt-<server time>` and puts an empty semaphore with `capacity` slots in its
    /// place, in one atomic script, only if the key is unchanged since it was inspected. The
    /// new token counter is above every token and ticket found in the readable bytes, and
    /// at least the server's clock in microseconds.
    ///
    /// # Errors
    ///
    /// [`Error::Contended`] if the key kept changing until the lock timeout; the connection
    /// errors; [`Error::NotReplicated`] (done, not confirmed by the replicas).
    pub fn recover(&self, capacity: u32) -> Result<Recovery> {
        let start = Instant::now();
        let deadline = later(start, self.lock_timeout);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let fail = |f: RedisFailure| f.into_error(start.elapsed());
            let seen = self.engine.inspect(MAX_VALUE_BYTES + 1).map_err(fail)?;
            let floor_from: &[u8] = match seen.kind.as_str() {
                "none" => return Ok(Recovery::Missing),
                "string" => {
                    if seen.prefix.len() <= MAX_VALUE_BYTES && Document::parse(&seen.prefix).is_ok()
                    {
                        return Ok(Recovery::Valid);
                    }
                    &seen.prefix
                }
                // Another Redis type holds no tokens of ours: the clock bounds them.
                _ => b"",
            };
            let mut fresh = Document::new(capacity);
            fresh.next_token = Some(token_floor(floor_from, seen.server_now));
            if let Some(aside) = self
                .engine
                .rename_aside(&seen, Some(&fresh.to_bytes()))
                .map_err(fail)?
            {
                let mut moved = self.engine.location().clone();
                moved.key = aside;
                tracing::warn!(location = %self.shown.display(), aside = %moved, "recovered corrupt semaphore state");
                return Ok(Recovery::MovedTo(PathBuf::from(moved.to_string())));
            }
            // The key changed since it was inspected: look again.
            if Instant::now() >= deadline {
                return Err(fail(RedisFailure::new(
                    &self.shown.to_string_lossy(),
                    FailureKind::Contended { attempts },
                )));
            }
        }
    }

    /// The document in `bytes` (the key's value; `None` if missing), or a new one of
    /// `create` slots; whether it was created.
    fn parse(&self, bytes: Option<&[u8]>, create: Option<u32>) -> Result<(Document, bool)> {
        let corrupt = |reason: String| Error::Corrupt {
            path: self.shown.clone(),
            reason,
        };
        match bytes {
            None => match create {
                Some(capacity) => Ok((Document::new(capacity), true)),
                None => Err(Error::NotFound {
                    path: self.shown.clone(),
                }),
            },
            Some(bytes) if bytes.len() > MAX_VALUE_BYTES => Err(corrupt(format!(
                "the value is {} bytes, more than the {MAX_VALUE_BYTES} bytes a state document may have",
                bytes.len()
            ))),
            Some(bytes) => Document::parse(bytes)
                .map(|doc| (doc, false))
                .map_err(corrupt),
        }
    }

    /// Logs the entries a committed step reaped.
    fn log_reaped(&self, reaped: &[Removed]) {
        for r in reaped {
            tracing::info!(location = %self.shown.display(), id = %r.entry.id, token = ?r.entry.token, waiter = r.was_waiter, verdict = %r.verdict, "reaped stale entry");
        }
    }

    #[cfg(test)]
    fn run_before_commit(&self) {
        let hook = self
            .before_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(hook) = hook {
            hook();
        }
    }
}

/// `start + d`, or far in the future for a `d` too large for the clock.
fn later(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .or_else(|| start.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(start)
}

/// Whether asking again may succeed: the server was not reached or did not answer.
fn transient(failure: &RedisFailure) -> bool {
    matches!(
        failure.kind,
        FailureKind::Unreachable | FailureKind::Timeout { .. } | FailureKind::Disconnected { .. }
    )
}

/// What one step knows of its Redis store, for the rule's context.
pub(crate) struct RedisStep<'s> {
    store: &'s RedisStore,
    /// An earlier run of this step's rule committed a change that got no answer.
    pub settling: bool,
}

impl<'s> RedisStep<'s> {
    /// The store's judge: leases only.
    pub fn judge(&self) -> &'s dyn Judge {
        &self.store.judge
    }

    /// Takes the next number of the counter (failing closed when it is exhausted) and
    /// records an owner for display: this machine's name and this process's pid. No
    /// witness: the entry is judged by its lease.
    pub fn new_hold(&mut self, doc: &mut Document) -> Result<NewHold> {
        if tokens_exhausted(doc) {
            return Err(Error::TokensExhausted {
                path: self.store.shown.clone(),
            });
        }
        let stamp = Stamp {
            number: take_token(doc),
            owner: Owner {
                host: self.store.host.clone(),
                pid: std::process::id(),
                start_time: None,
                machine_id: None,
                boot_id: None,
                pid_ns: None,
                time_ns: None,
                extra: Default::default(),
            },
            witness: None,
        };
        Ok(NewHold {
            stamp,
            witness: None,
        })
    }
}

/// The judge of a Redis semaphore: its users share no machine, so it proves nothing about a
/// process. Every entry is [`Liveness::Unknown`] until its lease (on the server's clock)
/// runs out; the core's verdict sees to that.
#[derive(Debug)]
pub(crate) struct RedisJudge;

impl Judge for RedisJudge {
    fn judge(&self, entry: &Entry) -> Liveness {
        Liveness::Unknown {
            evidence: match entry.expires_at {
                Some(_) => "within its lease (a Redis semaphore judges by leases only)".to_string(),
                None => {
                    "no lease: ends by release or remove (a Redis semaphore judges by leases only)"
                        .to_string()
                }
            },
        }
    }
}
