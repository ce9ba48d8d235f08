//! Waiting for a slot: the loop that runs the queue steps ([`crate::core::queue`]) in store
//! steps (under the lock, for the file store) and waits between them without it.
//!
//! An acquire that may wait takes one locked step: it is granted at once (exactly as
//! `try_acquire`), or it joins the queue with a ticket taken then (a number from the token
//! counter, which also names its witness). From there on it only *looks* at lock-free
//! snapshots of the state file: the releaser's write moves the head of the queue into
//! `holders` with a slot and a fencing token (direct hand-off, [`crate::core::rules::hand_off`]), so
//! the waiter is done as soon as it sees its ticket among the holders. It takes the lock again only
//! to refresh its expiry, to reap a stale entry in the way, to join the queue again after its
//! entry vanished (a Go write drops the queue), and to leave.
//!
//! Between looks it sleeps ([`crate::sleeper`]) until its store's waker announces a change
//! (the file store: `poll(2)` on an inotify descriptor, Linux) or its cancel token's socket
//! wakes it, with a timer as the safety net: bounded exponential backoff with jitter, shorter
//! when there is no prompt notification. The waker is told after each look whether the
//! waiter is at the head of the queue: a waker told of the waiter's own changes wakes it for
//! other changes only there. A look judges the entries in its way only when a verdict may
//! have changed: on the first look, when the timer ran out, and when the waker announced a
//! possible death.
//!
//! A call with a timeout has one deadline for everything: each locked step waits for the
//! lock until then ([`LockWait::Until`]), not for the lock timeout, and a step still waiting
//! for it then fails with [`Error::LockBusy`]. At the deadline the call ends within a few
//! milliseconds whoever holds the lock ([`Queued::time_out`]): a grant seen in a lock-free
//! snapshot is returned; otherwise it leaves the queue with a brief lock wait, or, if the
//! lock is busy, unlocks its witness and leaves the entry to be judged dead.
//!
//! On a Redis semaphore the same loop runs on compare-and-swap steps: a step that keeps
//! losing races until the deadline fails with `Error::Contended` where the file store's
//! fails with [`Error::LockBusy`], and is handled alike; the waiter's expiry is its lease
//! in the queue (the store proves no process dead). A step whose change was not confirmed
//! by the replicas asked for ends the acquire with `Error::NotReplicated`, after releasing
//! a grant it made or leaving the queue.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::cancel::CancelToken;
use crate::core::doc::Document;
use crate::core::queue::{
    Grant, Left, Mine, Outcome, Request, Stamp, at_head, granted, leave, needs_step, next_expiry,
    settle,
};
use crate::core::rules::{Record, Refusal};
use crate::error::{Error, Result};
use crate::options::AcquireOptions;
use crate::permit::{Permit, Seen};
use crate::semaphore::{Attempt, Semaphore, refusal_error, undo_unreplicated};
use crate::sleeper::Sleeper;
use crate::store::{Committed, LockWait, Step, WitnessLock, busy_since};

/// Acquires a slot for `id`, waiting as `options` say. The caller has validated the request.
pub(crate) fn acquire(sem: &Semaphore, id: &str, options: &AcquireOptions) -> Result<Permit> {
    let start = Instant::now();
    // `None` when there is no limit, including a duration too large for the clock.
    let deadline = options.timeout.and_then(|d| start.checked_add(d));
    let req = request(sem, id, options);
    let path = sem.path();
    let cancelled = || {
        options
            .cancel
            .as_ref()
            .is_some_and(CancelToken::is_cancelled)
    };
    let mut queued = match join(sem, id, options, start)? {
        Joined::Granted(permit) => return Ok(permit),
        Joined::Queued(queued) => queued,
    };

    let waker = |queued: &Queued| sem.inner.store.waker(queued.witness.as_ref());
    let mut sleeper = Sleeper::new(waker(&queued), options.cancel.as_ref());
    let mut refreshed = Instant::now();
    let mut last: Option<Document> = None;
    // Entries are judged only when the sleeper says a verdict may have changed (its timer ran
    // out, a death was announced): a write changes none, and the step that queued us judged
    // every entry in its way a moment ago (a death since, before the waker watched, is found
    // by the timer).
    let mut judge = false;
    loop {
        let sent = Instant::now();
        let snapshot = sem.inner.store.snapshot()?;
        let (doc, now) = (snapshot.doc, snapshot.now);
        if let Some(grant) = granted(&doc, &queued.mine) {
            return queued.granted(&req, grant, None, start, Seen { sent, now });
        }
        let refresh = refreshed.elapsed() >= req.refresh_every();
        let mut ctx = sem.ctx(now, sem.inner.store.judge());
        ctx.reap &= judge;
        if refresh || needs_step(&doc, &queued.mine, &ctx) {
            match queued.step_once(&req, refresh, start)? {
                Waiting::Granted(permit) => return Ok(permit),
                Waiting::Still {
                    refreshed: r,
                    requeued,
                } => {
                    if requeued {
                        // Writers announce changes to the new entry on its own witness.
                        sleeper = Sleeper::new(waker(&queued), options.cancel.as_ref());
                    }
                    if r {
                        refreshed = Instant::now();
                    }
                }
            }
        }
        if cancelled() {
            queued.leave(false)?;
            return Err(Error::Cancelled {
                path: path.to_path_buf(),
            });
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let timeout = Error::Timeout {
                path: path.to_path_buf(),
                waited: start.elapsed(),
            };
            return queued.time_out(&req, start, timeout);
        }
        if last.as_ref() != Some(&doc) {
            sleeper.reset();
        }
        let mut until = Instant::now() + sleeper.next_interval();
        until = until.min(refreshed + req.refresh_every());
        if let Some(d) = deadline {
            until = until.min(d);
        }
        // An expiry read from the file may be centuries away: no wake-up for it then.
        if let Some(at) = expiry_wake(&doc, &queued.mine, now) {
            until = until.min(at);
        }
        sleeper.set_head(at_head(&doc, &queued.mine));
        last = Some(doc);
        judge = sleeper.sleep_until(until, options.cancel.as_ref());
    }
}

/// The queue request of an acquire of `id` with `options` on `sem`.
pub(crate) fn request<'a>(
    sem: &Semaphore,
    id: &'a str,
    options: &'a AcquireOptions,
) -> Request<'a> {
    sem.request(options, id, options.timeout != Some(Duration::ZERO))
}

/// When a waiter wakes to look again for an entry ahead of it whose expiry passes (5 ms
/// after it); `None` when there is none, or it is too far away for the clock.
pub(crate) fn expiry_wake(doc: &Document, mine: &Mine, now: DateTime<Utc>) -> Option<Instant> {
    next_expiry(doc, mine, now)
        .and_then(|e| Instant::now().checked_add(e.saturating_add(Duration::from_millis(5))))
}

/// How the first step of a waiting acquire ended.
// Made once per call and moved straight out: the size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Joined {
    /// Granted at once.
    Granted(Permit),
    /// Queued: wait for the hand-off.
    Queued(Queued),
}

/// The first step of an acquire that may wait (started at `start`): a grant at once, or a
/// queue entry (after which `options`' `on_wait` has been called). The caller has validated
/// the request.
///
/// # Errors
///
/// [`Error::Cancelled`] when `options`' cancel token is already cancelled; [`Error::Timeout`]
/// when no slot is free and the call may not wait; the refusals and the store's errors.
pub(crate) fn join(
    sem: &Semaphore,
    id: &str,
    options: &AcquireOptions,
    start: Instant,
) -> Result<Joined> {
    // Every lock wait of the call ends at its deadline; without one, at the lock timeout.
    let wait = LockWait::for_call(start, options.timeout);
    let req = request(sem, id, options);
    let path = sem.path();
    if options
        .cancel
        .as_ref()
        .is_some_and(CancelToken::is_cancelled)
    {
        return Err(Error::Cancelled {
            path: path.to_path_buf(),
        });
    }
    let Stepped {
        outcome,
        witness,
        now,
        unreplicated,
    } = step(sem, &req, None, false, wait).map_err(|e| busy_since(e, start))?;
    let seen = Seen { sent: start, now };
    let (mine, mut status) = match outcome {
        Outcome::Granted(grant) => {
            let permit = permit(sem, &req, grant, witness, seen);
            return match unreplicated {
                Some(error) => Err(undo_unreplicated(permit, error)),
                None => permit.started().map(Joined::Granted),
            };
        }
        Outcome::Queued { mine, status } => (mine, status),
        Outcome::Refused(refusal) => {
            return Err(match (unreplicated, refusal) {
                (Some(error), _) => error,
                (None, Refusal::NoCapacity { .. }) => Error::Timeout {
                    path: path.to_path_buf(),
                    waited: start.elapsed(),
                },
                (None, refusal) => refusal_error(path, id, refusal),
            });
        }
    };
    let queued = Queued {
        sem: sem.clone(),
        mine,
        witness,
        armed: true,
        wait,
    };
    if let Some(error) = unreplicated {
        // Dropping `queued` leaves the queue.
        return Err(error);
    }
    tracing::debug!(path = %path.display(), id, ticket = queued.mine.ticket, ahead = status.ahead, "queued");
    if let Some(on_wait) = &options.on_wait {
        status.path = path.to_path_buf();
        on_wait(&status);
    }
    Ok(Joined::Queued(queued))
}

/// What a locked step of a queued acquire ([`Queued::step_once`]) decided.
// Made once per step and moved straight out: the size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Waiting {
    /// The slot is ours.
    Granted(Permit),
    /// Still queued; `refreshed` when the step refreshed the entry's expiry (or queued it
    /// again after it vanished), so the next refresh is due a
    /// [`refresh_every`](Request::refresh_every) from now; `requeued` when it queued again,
    /// with a new witness.
    Still { refreshed: bool, requeued: bool },
}

/// Whether `error` says that a step's deadline passed while others kept the state busy: the
/// lock file held ([`Error::LockBusy`]), or the Redis key changed at every attempt.
fn is_busy(error: &Error) -> bool {
    #[cfg(feature = "redis")]
    if let Error::Contended { .. } = error {
        return true;
    }
    matches!(error, Error::LockBusy { .. })
}

fn permit(
    sem: &Semaphore,
    req: &Request<'_>,
    grant: Grant,
    witness: Option<WitnessLock>,
    seen: Seen,
) -> Permit {
    Permit::new(
        sem.clone(),
        req.id.to_string(),
        grant.slot,
        grant.acquired_at,
        req.lease,
        grant.record,
        witness,
        seen,
    )
}

/// What one step of an acquire did.
struct Stepped {
    outcome: Outcome,
    /// The witness lock of a number the step took.
    witness: Option<WitnessLock>,
    /// The store's clock when the step read the document.
    now: DateTime<Utc>,
    /// The change was committed, but not confirmed by the replicas asked for.
    unreplicated: Option<Error>,
}

/// One locked [`settle`] step, waiting for the lock as `wait` says.
///
/// If a run of the step committed a change that got no answer (a Redis store), the next run
/// looks first for what it wrote ([`StepContext::settling`](crate::store::StepContext::settling)):
/// a direct grant (by its token, ID, owner and time) is returned as it is, and a new queue
/// entry is looked for as ours (by its ticket), so that nothing is granted or queued twice.
fn step(
    sem: &Semaphore,
    req: &Request<'_>,
    mine: Option<&Mine>,
    refresh: bool,
    wait: LockWait,
) -> Result<Stepped> {
    // What the runs that took a number wrote: direct grants, and new queue entries (with
    // their owner). All of them: see `Attempt`.
    let mut tried_grants: Vec<Attempt> = Vec::new();
    let mut tried_mines: Vec<(Mine, Stamp)> = Vec::new();
    let committed = sem.inner.store.step_committed(wait, None, |doc, cx| {
        let now = cx.now;
        if cx.settling()
            && let Some(entry) = tried_grants.iter().find_map(|t| t.find(doc))
        {
            let token = entry.token.unwrap_or_default();
            let grant = Grant {
                token,
                slot: entry.slot.unwrap_or(0),
                acquired_at: entry.acquired_at,
                record: Record::of(entry, token),
            };
            return Ok(Step::unchanged((Outcome::Granted(grant), None, now)));
        }
        // A queue entry an earlier run wrote, if it is on file (queued, or handed a slot).
        let on_file = |(m, stamp): &&(Mine, Stamp)| {
            doc.waiters.iter().chain(&doc.holders).any(|e| {
                e.ticket == Some(m.ticket) && e.id == m.id && e.owner.as_ref() == Some(&stamp.owner)
            })
        };
        let tried = match cx.settling() {
            true => tried_mines.iter().find(on_file).map(|(m, _)| m),
            false => None,
        };
        let mine = tried.or(mine);
        let ctx = sem.ctx(now, cx.judge());
        let mut changed = false;
        let mut removed = Vec::new();
        let mut lock = None;
        let mut stamped: Option<Stamp> = None;
        let mut new_stamp = |doc: &mut Document| {
            let hold = cx.new_hold(doc, req.detached)?;
            lock = hold.witness;
            stamped = Some(hold.stamp.clone());
            Ok(hold.stamp)
        };
        let outcome = settle(
            doc,
            req,
            mine,
            refresh,
            &ctx,
            &mut new_stamp,
            &mut changed,
            &mut removed,
        )?;
        if let Some(stamp) = stamped {
            match &outcome {
                Outcome::Granted(grant) if grant.token == stamp.number => {
                    let entry = doc.holders.iter().find(|e| e.token == Some(stamp.number));
                    tried_grants.extend(entry.map(|e| Attempt::of(e, stamp.number)));
                }
                Outcome::Queued { mine, .. } if mine.ticket == stamp.number => {
                    tried_mines.push((mine.clone(), stamp));
                }
                _ => {}
            }
        }
        Ok(Step::new((outcome, lock, now), changed).reaped(removed))
    })?;
    let Committed {
        value: (outcome, witness, now),
        unreplicated,
    } = committed;
    Ok(Stepped {
        outcome,
        witness,
        now,
        unreplicated,
    })
}

/// A queue entry of this call and its witness lock (which becomes the permit's when the slot
/// is handed over). If the call ends any other way than by returning a permit or leaving
/// explicitly (an error, a panic in the `on_wait` callback), dropping this leaves the queue,
/// releasing a slot handed over meanwhile: a waiter never leaks a slot.
pub(crate) struct Queued {
    sem: Semaphore,
    pub(crate) mine: Mine,
    witness: Option<WitnessLock>,
    armed: bool,
    /// How the call waits for the lock: leaving too ends by the call's deadline.
    wait: LockWait,
}

impl Queued {
    /// One locked step of a queued acquire (started at `start`), taken when a look showed
    /// something to change or the entry's expiry is due a `refresh`: the slot may be
    /// granted, or the entry refreshed or queued again (after it vanished).
    ///
    /// # Errors
    ///
    /// The call's errors: a deadline passed while the lock stayed busy ends it as
    /// [`time_out`](Queued::time_out) does; the refusals (the entry vanished and the ID is
    /// held by someone else, or no token is left) and the store's errors.
    pub(crate) fn step_once(
        &mut self,
        req: &Request<'_>,
        refresh: bool,
        start: Instant,
    ) -> Result<Waiting> {
        let path = self.sem.path().to_path_buf();
        let sent = Instant::now();
        let stepped = match step(&self.sem, req, Some(&self.mine), refresh, self.wait) {
            // The deadline passed while another process held the lock (or kept winning
            // the races for the Redis key).
            Err(busy) if is_busy(&busy) => {
                return self.time_out(req, start, busy).map(Waiting::Granted);
            }
            stepped => stepped?,
        };
        let seen = Seen {
            sent,
            now: stepped.now,
        };
        if let Some(error) = stepped.unreplicated {
            return Err(self.unreplicated(req, stepped.outcome, stepped.witness, seen, error));
        }
        let witness = stepped.witness;
        match stepped.outcome {
            Outcome::Granted(grant) => self
                .granted(req, grant, witness, start, seen)
                .map(Waiting::Granted),
            Outcome::Queued { mine, .. } => {
                let requeued = mine.ticket != self.mine.ticket;
                if requeued {
                    tracing::debug!(path = %path.display(), id = req.id, ticket = mine.ticket, "queue entry vanished; queued again");
                    self.witness = witness;
                }
                self.mine = mine;
                Ok(Waiting::Still {
                    refreshed: refresh || requeued,
                    requeued,
                })
            }
            Outcome::Refused(Refusal::TokensExhausted) => {
                // Still queued, owed a slot no token is left for: leave the queue.
                self.leave(false)?;
                Err(refusal_error(&path, req.id, Refusal::TokensExhausted))
            }
            Outcome::Refused(refusal) => {
                // Our entry vanished and the ID is now held by someone else.
                self.armed = false;
                Err(refusal_error(&path, req.id, refusal))
            }
        }
    }

    /// The permit for a grant seen at `seen`; `witness` is the lock of a number the last
    /// step took (when it granted a new entry after ours vanished), else ours carries over to
    /// the grant of our queue entry (found by its ticket, which names that witness). Started
    /// as its store needs ([`Permit::started`]).
    pub(crate) fn granted(
        &mut self,
        req: &Request<'_>,
        grant: Grant,
        witness: Option<WitnessLock>,
        start: Instant,
        seen: Seen,
    ) -> Result<Permit> {
        self.armed = false;
        let witness = self.witness_for(&grant, witness);
        tracing::debug!(path = %self.sem.path().display(), id = %self.mine.id, token = grant.token, slot = grant.slot, waited = ?start.elapsed(), "acquired after waiting");
        permit(&self.sem, req, grant, witness, seen).started()
    }

    /// The witness of a grant: `witness` if the step took one, else ours if the grant is
    /// of our queue entry.
    fn witness_for(&mut self, grant: &Grant, witness: Option<WitnessLock>) -> Option<WitnessLock> {
        match witness {
            Some(w) => Some(w),
            None if grant.record.ticket == Some(self.mine.ticket) => self.witness.take(),
            None => None,
        }
    }

    /// Ends the call after a step whose change the replicas did not confirm: a grant is
    /// released again, a queue entry left (both best effort). Returns `error`.
    fn unreplicated(
        &mut self,
        req: &Request<'_>,
        outcome: Outcome,
        witness: Option<WitnessLock>,
        seen: Seen,
        error: Error,
    ) -> Error {
        match outcome {
            Outcome::Granted(grant) => {
                self.armed = false;
                let witness = self.witness_for(&grant, witness);
                undo_unreplicated(permit(&self.sem, req, grant, witness, seen), error)
            }
            Outcome::Queued { mine, .. } => {
                self.mine = mine;
                self.witness = witness.or(self.witness.take());
                if let Err(e) = self.leave(false) {
                    tracing::warn!(path = %self.sem.path().display(), id = %self.mine.id, error = %e, "failed to leave the queue");
                }
                error
            }
            Outcome::Refused(_) => {
                self.armed = false;
                error
            }
        }
    }

    /// Leaves the queue in one locked step (see [`leave`]), waiting for the lock until the
    /// call's deadline (or the lock timeout).
    pub(crate) fn leave(&mut self, keep_grant: bool) -> Result<Left> {
        self.leave_with(keep_grant, self.wait).map(|(left, _)| left)
    }

    /// [`leave`](Queued::leave), waiting for the lock as `wait` says. The witness goes once
    /// the entry naming it is gone. If the step fails (the lock stayed busy, or the write
    /// failed), the entry may still be on file, as a waiter or as a holder handed a slot
    /// meanwhile: the witness is then unlocked but its file kept, so that the next process
    /// that looks judges the entry dead and reaps it (handing any slot on) instead of
    /// waiting for its expiry, or for ever for a granted entry without a lease.
    ///
    /// Also returns the store's clock when the step read the document.
    fn leave_with(&mut self, keep_grant: bool, wait: LockWait) -> Result<(Left, DateTime<Utc>)> {
        self.armed = false;
        let wait = self.sem.inner.store.leave_wait(wait);
        let left = self.sem.inner.store.step_with(wait, None, |doc, cx| {
            let mut changed = false;
            let left = leave(doc, &self.mine, keep_grant, cx.now, &mut changed);
            Ok(Step::new((left, cx.now), changed))
        });
        match &left {
            Ok((Left::Granted(_), _)) => {}
            // The entry is gone, or went with the removed state file or directory.
            Ok((Left::Gone | Left::Released, _))
            | Err(Error::Removed { .. } | Error::DirectoryGone { .. }) => drop(self.witness.take()),
            Err(_) => {
                if let Some(witness) = self.witness.take() {
                    witness.unlock_keeping_file();
                }
            }
        }
        left
    }

    /// Ends a call whose deadline passed, with `error` unless a slot turns out to be ours,
    /// within a few milliseconds whoever holds the lock (even a stopped process).
    ///
    /// First a lock-free snapshot: a slot handed over meanwhile is returned as the permit.
    /// Otherwise the queue is left in a step that tries the lock only for
    /// [`LAST_LOCK_WAIT`](crate::store::file::LAST_LOCK_WAIT) (a slot handed over by then is kept
    /// and returned); on Redis, retrying lost races for up to the lock timeout
    /// ([`Store::leave_wait`](crate::store::Store::leave_wait)). If the lock is busy, the witness is unlocked and left in place
    /// ([`leave_with`](Queued::leave_with)): the entry is judged dead and removed by the next
    /// process that looks, or expires, and a slot handed to it is reaped, never leaked.
    pub(crate) fn time_out(
        &mut self,
        req: &Request<'_>,
        start: Instant,
        error: Error,
    ) -> Result<Permit> {
        let sent = Instant::now();
        match self.sem.inner.store.snapshot() {
            Ok(snapshot) => {
                if let Some(grant) = granted(&snapshot.doc, &self.mine) {
                    let seen = Seen {
                        sent,
                        now: snapshot.now,
                    };
                    return self.granted(req, grant, None, start, seen);
                }
            }
            // The locked step below reads the file again, and reports what it finds.
            Err(e) => {
                tracing::debug!(path = %self.sem.path().display(), error = %e, "no snapshot at the deadline")
            }
        }
        let sent = Instant::now();
        match self.leave_with(true, LockWait::Until(Instant::now())) {
            // Handed over while we were timing out: the slot is ours, return it.
            Ok((Left::Granted(grant), now)) => {
                self.granted(req, grant, None, start, Seen { sent, now })
            }
            Ok((Left::Gone | Left::Released, _)) => Err(error),
            Err(busy) if is_busy(&busy) => {
                tracing::debug!(path = %self.sem.path().display(), id = %self.mine.id, ticket = self.mine.ticket, "lock busy at the deadline; left the queue entry to be reaped");
                Err(error)
            }
            Err(other) => Err(other),
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(error) = self.leave(false) {
            tracing::warn!(
                path = %self.sem.path().display(),
                id = %self.mine.id,
                %error,
                "failed to leave the queue; the entry is reaped once its witness or expiry says so"
            );
        }
    }
}
