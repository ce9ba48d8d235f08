//! Stores: where a semaphore's document lives, and the one small interface through which the
//! blocking API changes it, reads it and waits for it to change.
//!
//! # Architecture
//!
//! The crate has three layers, and every dependency points down:
//!
//! 1. **The core** ([`crate::core`]): the JSON document and the rules (who gets a slot, which
//!    slot and fencing token, who is stale, who is served next). Pure: time, this process's
//!    identity and the liveness evidence come in as arguments. No I/O, no clock.
//! 2. **The stores** (this module): [`Store`], an enum with one variant per store. The file
//!    store ([`file`](mod@file)) keeps the document in `PATH` under the flock of `PATH.lock`;
//!    the Redis store (behind the `redis` feature: `store::redis`) keeps the same document
//!    in one key of a Redis server. A store uses the core, never the API above it.
//! 3. **The blocking API** (`Semaphore`, `Permit`, the wait loop and its sleeper): composes
//!    the core's rules into operations and runs each in store steps. It uses the core and the
//!    stores.
//!
//! Beside them sit the values they share: `error` (every layer), `options` (the API's
//! settings; the core's queue requests are built from them), `holder` and `cancel` (the API).
//! `src/layers.rs` checks these rules on the sources.
//!
//! # What a store provides
//!
//! - **One atomic read-modify-write step** ([`Store::step_with`]): load the document (or
//!   create it, given a capacity), run a rule on it, and commit the result only if nobody
//!   changed the document in between: the file store holds `PATH.lock` throughout; a network
//!   store compares and swaps, and runs the rule again after a lost race (rules are `FnMut`
//!   and act outside their document only through their [`StepContext`]; after a commit
//!   whose outcome is unknown they run again [settling](StepContext::settling): looking for
//!   what their earlier run did before doing it again). The step waits (for a lock, or
//!   retrying) as its [`LockWait`] says. The shared part of every step (the
//!   token counter policy, the format version) is applied here, for every store alike.
//! - **The store's clock**: every step and every snapshot comes with `now` from the store
//!   (the file store: this machine's clock; a Redis store: the server's `TIME`), so that all
//!   users of one semaphore judge leases by one clock.
//! - **A judge** ([`Judge`]): the liveness evidence the store can offer. The file store
//!   judges by witness locks, pids and boot ids; a store whose users share no machine can
//!   judge nothing but leases, and imposes a lease on every hold ([`Store::imposed_lease`]).
//! - **New-hold evidence** ([`StepContext::new_hold`]): what a new hold or waiter records so
//!   that it can be judged later, and what this process keeps for it meanwhile (the file
//!   store: a locked witness file, [`WitnessLock`]).
//! - **Work around the commit**, triggered by what the rule reported: cleanup after killed
//!   processes before it when asked ([`Step::tidy`]; the file store: temp files, orphan
//!   witness files), the end of reaped entries after it ([`Step::reaped`]; the file store:
//!   their witness files). It is the store's business alone.
//! - **A lock-free snapshot** for queries ([`Store::snapshot`]).
//! - **A waker** ([`Waker`]) that tells a waiter the document may have changed (the file
//!   store: inotify, or nothing and the sleeper polls; the Redis store: pub/sub, which rings
//!   a doorbell socket that the waiter polls together with its cancel socket), and whether
//!   the change may be a death (then the waiter judges the entries again). The backoff of
//!   the safety-net timer is the sleeper's, shared by all stores.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::core::doc::{Document, FORMAT_VERSION};
use crate::core::queue::{Stamp, WAITER_EXPIRY};
use crate::core::rules::Removed;
use crate::core::tokens::resume_token_counter;
use crate::core::verdict::Judge;
use crate::error::{Error, Result};

pub(crate) mod file;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use file::FileStore;
pub(crate) use file::witness::WitnessLock;

/// One semaphore's store. Each variant is one kind of store; every operation dispatches by
/// `match`.
#[derive(Debug)]
// One per handle, behind its `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Store {
    /// The document in a file, `PATH`, changed under the flock of `PATH.lock`.
    File(FileStore),
    /// The document in one key of a Redis server, changed by compare-and-swap.
    #[cfg(feature = "redis")]
    Redis(redis::store::RedisStore),
}

/// How long a step may wait for its turn to change the document (the file store: for the
/// in-process gate and `PATH.lock` together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockWait {
    /// At most the handle's lock timeout, then [`Error::LockTimeout`]: for operations without
    /// a deadline of their own, where a long wait is an anomaly (a process stopped inside its
    /// critical section) that must not hang anyone forever.
    Timeout,
    /// Until the deadline of the call (an acquire given a timeout), whether that is sooner
    /// or later than the lock timeout, then [`Error::LockBusy`]. A step that starts at or
    /// after the deadline still makes its one attempt (the file store tries the lock for
    /// [`LAST_LOCK_WAIT`](file::LAST_LOCK_WAIT)).
    Until(Instant),
}

impl LockWait {
    /// The wait of a call that started at `start` with `timeout` (`None`, or a duration too
    /// large for the clock: no deadline of its own, so the lock timeout).
    pub fn for_call(start: Instant, timeout: Option<Duration>) -> LockWait {
        match timeout.and_then(|t| start.checked_add(t)) {
            Some(deadline) => LockWait::Until(deadline),
            None => LockWait::Timeout,
        }
    }
}

/// `error`, with the wait of an [`Error::LockBusy`] counted from `start`: for the first step
/// of a call, so that the error tells how long the call waited (a step starts a moment after
/// its call, and `-n`'s 1 s should not read `999 ms`).
pub(crate) fn busy_since(error: Error, start: Instant) -> Error {
    match error {
        #[cfg(feature = "redis")]
        Error::Contended { path, attempts, .. } => Error::Contended {
            path,
            attempts,
            waited: start.elapsed(),
        },
        Error::LockBusy {
            path,
            lock_path,
            holder,
            ..
        } => Error::LockBusy {
            path,
            lock_path,
            waited: start.elapsed(),
            holder,
        },
        other => other,
    }
}

/// What a rule reports back to its step.
pub(crate) struct Step<R> {
    pub value: R,
    /// Whether the document changed and must be written.
    pub changed: bool,
    /// Entries the rule reaped: once the write has committed their removal, the store does
    /// what their end needs (the file store logs them and deletes their witness files; not
    /// before: a reader of the old file would find the witness missing).
    pub reaped: Vec<Removed>,
    /// Whether the store should clean up after killed processes in this step, before it
    /// commits (the file store: temp files of killed writers, and witness files that no entry
    /// of the document as the rule left it refers to). Asked for by `open` and `reap`, which
    /// may list directories; a failed cleanup fails the step, and nothing is written.
    pub tidy: bool,
}

impl<R> Step<R> {
    pub fn unchanged(value: R) -> Step<R> {
        Step::new(value, false)
    }
    pub fn changed(value: R) -> Step<R> {
        Step::new(value, true)
    }
    pub fn new(value: R, changed: bool) -> Step<R> {
        Step {
            value,
            changed,
            reaped: Vec::new(),
            tidy: false,
        }
    }
    /// Records what the rule reaped (and so changed).
    pub fn reaped(mut self, reaped: Vec<Removed>) -> Step<R> {
        self.changed |= !reaped.is_empty();
        self.reaped = reaped;
        self
    }
    /// Asks the store to clean up after killed processes (see the field `tidy`).
    pub fn tidy(mut self) -> Step<R> {
        self.tidy = true;
        self
    }
}

/// What a step's rule gets from its store besides the document.
pub(crate) struct StepContext<'s> {
    /// The store's clock when the document was read.
    pub now: DateTime<Utc>,
    /// Whether this step created the document (a new semaphore).
    pub created: bool,
    /// The store's side of the step.
    at: InStep<'s>,
}

/// The store-specific part of a step in progress.
enum InStep<'s> {
    File(file::FileStep<'s>),
    #[cfg(feature = "redis")]
    Redis(redis::store::RedisStep<'s>),
}

impl<'s> StepContext<'s> {
    /// The store's judge, for the verdicts of this step.
    pub fn judge(&self) -> &'s dyn Judge {
        match &self.at {
            InStep::File(step) => step.judge(),
            #[cfg(feature = "redis")]
            InStep::Redis(step) => step.judge(),
        }
    }

    /// Whether an earlier run of this step's rule committed a change whose outcome is
    /// unknown (its commit got no answer: it may have been made, or may still be made by a
    /// command buffered on the server, until this run commits). The rule then looks for what
    /// that run did before acting again: an acquire for the entry it wrote (by its number,
    /// ID, owner and grant time), a release for its entry's absence. Never for the file
    /// store, whose writes are done or not when the step ends.
    pub fn settling(&self) -> bool {
        match &self.at {
            InStep::File(_) => false,
            #[cfg(feature = "redis")]
            InStep::Redis(step) => step.settling,
        }
    }

    /// Issues what a new hold or waiter records (its [`Stamp`]: a number taken from the token
    /// counter of `doc`, its owner, a witness record) and what this process keeps for it.
    ///
    /// The file store creates and locks the witness file named by the number (unless the
    /// hold is `detached`), before the entry naming it is written, and records this
    /// process's identity as the owner.
    ///
    /// # Errors
    ///
    /// [`Error::TokensExhausted`] when the counter has no number left; the store's errors
    /// (the file store: [`Error::Io`], [`Error::Untrusted`] for the witness directory).
    pub fn new_hold(&mut self, doc: &mut Document, detached: bool) -> Result<NewHold> {
        match &mut self.at {
            InStep::File(step) => step.new_hold(doc, detached),
            #[cfg(feature = "redis")]
            InStep::Redis(step) => step.new_hold(doc),
        }
    }
}

/// A new hold's or waiter's evidence: what its entry records, and what this process keeps.
pub(crate) struct NewHold {
    pub stamp: Stamp,
    /// The locked witness of a process-bound hold in the file store; `None` for a detached
    /// hold (and in stores whose holds are judged by their leases).
    pub witness: Option<WitnessLock>,
}

/// What a step returned, and whether its change is confirmed where the store was asked to
/// confirm it: a Redis store with replica acknowledgement (`WAIT`) reports a change that
/// fewer replicas acknowledged as `unreplicated` ([`Error::NotReplicated`], or the
/// connection error of the wait); the change is then on the primary only, and a failover
/// may lose it.
pub(crate) struct Committed<R> {
    pub value: R,
    pub unreplicated: Option<Error>,
}

/// A document read without taking part in any step, for queries and for a waiter's looks.
pub(crate) struct Snapshot {
    pub doc: Document,
    /// The store's clock when it was read.
    pub now: DateTime<Utc>,
}

/// The part of every step that is the same for every store, around the rule: a loaded
/// document in a newer format than this crate writes is refused before the rule runs
/// ([`Error::UnsupportedVersion`]: a step may write, and this crate must not rewrite a
/// format it does not know), a loaded document gets a token counter if a foreign write
/// dropped it (at the store's `now`), and a document that will be written gets the format
/// version.
fn run_rule<R>(
    path: &Path,
    doc: &mut Document,
    cx: &mut StepContext<'_>,
    rule: &mut impl FnMut(&mut Document, &mut StepContext<'_>) -> Result<Step<R>>,
) -> Result<Step<R>> {
    if !cx.created {
        if let Some(version) = doc.version.filter(|&v| v > FORMAT_VERSION) {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
                supported: FORMAT_VERSION,
            });
        }
        resume_token_counter(doc, cx.now);
    }
    let step = rule(doc, cx)?;
    if (step.changed || cx.created) && doc.version.is_none() {
        doc.version = Some(FORMAT_VERSION);
    }
    Ok(step)
}

impl Store {
    /// How a queued call's step that leaves the queue waits, given the call's own `wait`.
    /// The file store: as the call says (a leave at the deadline tries the lock only
    /// briefly, since a stopped process may hold it; an entry that could not leave has its
    /// witness unlocked, so the next process that looks judges it dead at once). Redis: at
    /// least the lock timeout, since there a failed leave's entry (and a slot handed to it
    /// meanwhile) would stay until its lease ends, and a leave loses its compare-and-swap only
    /// to other writers, a contention that passes.
    pub fn leave_wait(&self, wait: LockWait) -> LockWait {
        match self {
            Store::File(_) => wait,
            #[cfg(feature = "redis")]
            Store::Redis(_) => LockWait::Timeout,
        }
    }

    /// The semaphore's location as given to `open`, for messages (the file store: the state
    /// file's path).
    pub fn path(&self) -> &Path {
        match self {
            Store::File(store) => store.path(),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.path(),
        }
    }

    /// Where the semaphore is, resolved when it was opened (the file store: the absolute
    /// path of the state file, through the canonical path of its directory).
    pub fn resolved_path(&self) -> &Path {
        match self {
            Store::File(store) => &store.files.resolved,
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.path(),
        }
    }

    /// One atomic read-modify-write step, waiting for the lock at most the lock timeout:
    /// [`step_with`](Store::step_with) with [`LockWait::Timeout`].
    pub fn step<R>(
        &self,
        create: Option<u32>,
        rule: impl FnMut(&mut Document, &mut StepContext<'_>) -> Result<Step<R>>,
    ) -> Result<R> {
        self.step_with(LockWait::Timeout, create, rule)
    }

    /// One atomic read-modify-write step: loads the document, runs `rule` on it, and commits
    /// what it changed only if nobody changed the document in between.
    ///
    /// With `create = Some(capacity)` a missing document is created (an empty semaphore of
    /// that capacity) and written even if the rule changes nothing; with `None` a missing one
    /// is [`Error::NotFound`] and nothing is created. `rule` gets the document and the
    /// [`StepContext`]; it reports through [`Step`] what it changed, what it reaped and
    /// whether to tidy. Nothing is written unless it changed something, and nothing at all
    /// when it fails. The step waits for its turn as `wait` says.
    ///
    /// `rule` may run more than once: a store that compares and swaps runs it again on the
    /// newer document after a lost race, and drops what the losing run returned. So it acts
    /// on nothing but its document and its context (the file store runs it exactly once,
    /// under the lock).
    ///
    /// # Errors
    ///
    /// What `rule` returns; [`Error::NotFound`], [`Error::Removed`], [`Error::Corrupt`],
    /// [`Error::UnsupportedVersion`], [`Error::LockTimeout`] or [`Error::LockBusy`] (as
    /// `wait` says), and the store's errors (the file store: [`Error::Io`],
    /// [`Error::Untrusted`], [`Error::Symlink`], [`Error::DirectoryGone`],
    /// [`Error::CannotSyncDirectory`]; the Redis store: `Contended` in place of the lock
    /// errors, its connection errors, and `NotReplicated` for a change committed on the
    /// primary only, see [`step_committed`](Store::step_committed)).
    pub fn step_with<R>(
        &self,
        wait: LockWait,
        create: Option<u32>,
        rule: impl FnMut(&mut Document, &mut StepContext<'_>) -> Result<Step<R>>,
    ) -> Result<R> {
        let committed = self.step_committed(wait, create, rule)?;
        match committed.unreplicated {
            Some(error) => Err(error),
            None => Ok(committed.value),
        }
    }

    /// [`step_with`](Store::step_with), returning the value of a step whose change was
    /// committed but not confirmed by the replicas asked for, with that error beside it: for
    /// an acquire, which must release such a grant.
    ///
    /// # Errors
    ///
    /// As [`step_with`](Store::step_with), except a commit without the replicas' confirmation.
    pub fn step_committed<R>(
        &self,
        wait: LockWait,
        create: Option<u32>,
        mut rule: impl FnMut(&mut Document, &mut StepContext<'_>) -> Result<Step<R>>,
    ) -> Result<Committed<R>> {
        let path = self.path();
        let rule =
            |doc: &mut Document, cx: &mut StepContext<'_>| run_rule(path, doc, cx, &mut rule);
        match self {
            Store::File(store) => store.step(wait, create, rule).map(|value| Committed {
                value,
                unreplicated: None,
            }),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.step(wait, create, rule),
        }
    }

    /// The document as it is now, read without the lock, with the store's clock.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::Removed`], [`Error::Corrupt`], and the store's errors
    /// (the file store: [`Error::Io`], [`Error::Untrusted`], [`Error::Symlink`],
    /// [`Error::DirectoryGone`]).
    pub fn snapshot(&self) -> Result<Snapshot> {
        match self {
            Store::File(store) => store.snapshot(),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.snapshot(),
        }
    }

    /// The error of a call given a deadline (a call that started at `start`) whose step could
    /// not start by then, because an earlier step of the same handle held the handle's turn:
    /// what the step would have given had it waited for its turn itself. The file store:
    /// [`Error::LockBusy`] naming the process that holds `PATH.lock` (read from
    /// `/proc/locks`; never waits for the lock), as a blocking step says when another thread
    /// keeps it out of the in-process gate until its deadline. A Redis store, whose steps
    /// take no turns and wait only for the server: [`Error::Timeout`].
    #[cfg(feature = "tokio")]
    pub fn busy(&self, start: Instant) -> Error {
        match self {
            Store::File(store) => store.busy(start),
            #[cfg(feature = "redis")]
            Store::Redis(_) => Error::Timeout {
                path: self.path().to_path_buf(),
                waited: start.elapsed(),
            },
        }
    }

    /// The store's judge, for the verdicts of queries on a [`Snapshot`].
    pub fn judge(&self) -> &dyn Judge {
        match self {
            Store::File(store) => &store.judge,
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.judge(),
        }
    }

    /// The lease a hold or waiter gets from the store when it asks for none
    /// ([`AcquireOptions::lease`](crate::AcquireOptions::lease),
    /// [`OpenOptions::default_lease`](crate::OpenOptions::default_lease)): `None` for the file
    /// store, whose judge proves owners dead by their witness, pid or boot. A store whose
    /// judge can prove nothing (its users share no machine) imposes its default lease here,
    /// so that no hold of a crashed process keeps its slot for good.
    pub fn imposed_lease(&self) -> Option<Duration> {
        match self {
            Store::File(_) => None,
            #[cfg(feature = "redis")]
            Store::Redis(store) => Some(store.lease()),
        }
    }

    /// How far ahead a waiter of an acquire whose hold gets `lease` sets its expiry
    /// ([`Request::waiter_expiry`](crate::core::queue::Request::waiter_expiry)): for the file
    /// store the fixed [`WAITER_EXPIRY`](crate::core::queue::WAITER_EXPIRY) (its witness
    /// proves a dead process-bound waiter dead at once; the expiry bounds only what it cannot
    /// judge). A store with leases only gives a waiter the lease its hold will have, so that
    /// a waiter is kept as long as a holder would be, and refreshed as rarely (each refresh is
    /// a write that wakes every waiter).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub fn waiter_expiry(&self, lease: Option<Duration>) -> Duration {
        match self {
            Store::File(_) => WAITER_EXPIRY,
            #[cfg(feature = "redis")]
            Store::Redis(store) => lease.unwrap_or(store.lease()),
        }
    }

    /// Whether the store judges holds by their leases only (it offers no evidence about
    /// processes): then every hold has a lease, its permit renews it in the background from
    /// the start, and tracks on this machine's clock when it ran out without a renewal.
    pub fn leases_only(&self) -> bool {
        match self {
            Store::File(_) => false,
            #[cfg(feature = "redis")]
            Store::Redis(_) => true,
        }
    }

    /// A waker for one waiting acquire (see [`Waker`]) whose queue entry keeps `own` (the file
    /// store: the witness the writers that change the entry touch; see
    /// [`Waker::set_head`]).
    pub fn waker(&self, own: Option<&WitnessLock>) -> Waker {
        match self {
            Store::File(store) => Waker::File(store.waker(own)),
            #[cfg(feature = "redis")]
            Store::Redis(store) => {
                let _ = own;
                Waker::Redis(store.waker())
            }
        }
    }

    /// Adds the store's settings to a handle's `Debug` output.
    pub fn describe(&self, out: &mut fmt::DebugStruct<'_, '_>) {
        match self {
            Store::File(store) => {
                out.field("durable", &store.durable)
                    .field("lock_timeout", &store.lock_timeout);
            }
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.describe(out),
        }
    }
}

/// Tells a waiting acquire that the document may have changed, so that it looks again at
/// once rather than at its next timer (the sleeper's safety net, which every store keeps).
pub(crate) enum Waker {
    /// inotify on the semaphore's directories where it works; nothing (the sleeper polls)
    /// where it does not.
    File(file::waker::FileWaker),
    /// A doorbell rung by the handle's pub/sub subscriber.
    #[cfg(feature = "redis")]
    Redis(redis::waker::RedisWaker),
}

/// How one [`Waker::wait`] ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Woke {
    /// A change was announced: look again now.
    pub changed: bool,
    /// What was announced may be a death (the file store: a witness closed), or notices were
    /// lost: the look judges the entries too. Other notices announce writes, which change no
    /// verdict.
    pub died: bool,
    /// The cancel socket became readable.
    pub cancelled: bool,
    /// The waker lost its notifications for good (it is not [`prompt`](Waker::prompt) any
    /// more): the sleeper restarts its backoff at the polling pace.
    pub lost: bool,
}

impl Waker {
    /// Whether every change raises a notice, so that the safety-net timer only matters for
    /// what no write announces (an expiry, a death), and may be slow.
    pub fn prompt(&self) -> bool {
        match self {
            Waker::File(waker) => waker.prompt(),
            #[cfg(feature = "redis")]
            Waker::Redis(waker) => waker.prompt(),
        }
    }

    /// The descriptor that becomes readable when a notice is pending, for an async runtime's
    /// reactor (the async API); `None` for a waker without notices, whose waiters poll. Read
    /// what it announced with [`take`](Waker::take). Always `None` for a Redis semaphore:
    /// the async API's waiters listen on a connection of their own
    /// ([`redis::notices`](crate::store::redis::notices)), not through this waker.
    #[cfg(feature = "tokio")]
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Waker::File(waker) => waker.fd(),
            #[cfg(feature = "redis")]
            Waker::Redis(_) => None,
        }
    }

    /// The notices pending now, without waiting (a non-blocking read of the
    /// [`fd`](Waker::fd)): whether a change was announced, or the waker lost its notices for
    /// good (the descriptor is closed then).
    #[cfg(feature = "tokio")]
    pub fn take(&mut self) -> Woke {
        match self {
            Waker::File(waker) => waker.take(),
            #[cfg(feature = "redis")]
            Waker::Redis(_) => Woke::default(),
        }
    }

    /// Waits at most `wait` for a notice of a change, or until `cancel` (a cancel token's
    /// wake-up socket) is readable. May return earlier with nothing (a signal): the caller
    /// waits again for what is left of its time.
    pub fn wait(&mut self, wait: Duration, cancel: Option<BorrowedFd<'_>>) -> Woke {
        match self {
            Waker::File(waker) => waker.wait(wait, cancel),
            #[cfg(feature = "redis")]
            Waker::Redis(waker) => waker.wait(wait, cancel),
        }
    }

    /// Tells the waker whether its waiter is at the head of the queue, after each look. A
    /// waker that is told of every change to its waiter's own entry (the file store: the
    /// writer that grants it a slot, removes it or makes it the head touches its witness)
    /// wakes for other changes only at the head, which a write by another program (the Go
    /// package, which knows no queue) may serve; further back, such writes are seen by the
    /// timer. A waker that announces nothing per waiter ignores this.
    pub fn set_head(&mut self, head: bool) {
        match self {
            Waker::File(waker) => waker.set_head(head),
            #[cfg(feature = "redis")]
            Waker::Redis(_) => {
                let _ = head;
            }
        }
    }
}

/// A pause of 75% to 125% of `d`, so that processes that collided do not collide again.
pub(crate) fn jitter(d: Duration) -> Duration {
    let quarter = d / 4;
    let span = u64::try_from(quarter.as_nanos() * 2)
        .unwrap_or(u64::MAX)
        .max(1);
    d - quarter + Duration::from_nanos(fastrand::u64(..span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter() {
        // Backoff pauses vary but stay near the nominal value.
        for _ in 0..100 {
            let j = jitter(Duration::from_micros(100));
            assert!(
                j >= Duration::from_micros(75) && j <= Duration::from_micros(125),
                "{j:?}"
            );
        }
    }
}
