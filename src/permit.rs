//! The [`Permit`] guard: one held slot, released on drop, and its keep-alive thread.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::core::doc::{Document, Entry};
use crate::core::rules::{self, Record};
use crate::core::verdict::expired;
use crate::error::{Error, Result};
use crate::options::MIN_LEASE;
use crate::semaphore::Semaphore;
use crate::store::{LockWait, Snapshot, Step, WitnessLock};

/// One held slot of a [`Semaphore`]. Dropping it releases the slot.
///
/// A permit acts only on *its own* entry, matched by its fencing [`token`](Permit::token):
/// if that entry was reaped or removed and the ID was granted to someone else meanwhile,
/// releasing this permit leaves the newcomer alone. If a program that knows only the basic
/// format (the Go package) rewrote the file and stripped the entry down to `id` and
/// `acquired_at`, the permit finds it by those two and writes back everything its hold
/// records (token, slot, owner, witness, lease, metadata, detached) whenever it next looks:
/// [`renew`](Permit::renew), [`is_held`](Permit::is_held), [`keep`](Permit::keep), the
/// [keep-alive](Permit::keep_alive) thread. So a stripped hold can still be reaped by its lease
/// or its witness when its process dies.
///
/// Drop is best effort: it never panics and waits for the lock file at most the
/// [lock timeout](crate::OpenOptions::lock_timeout) (on Redis: each command at most the
/// response timeout, and retries at most the lock timeout); a failure is reported as a
/// `tracing` warning naming the path and ID. Use [`release`](Permit::release) to see errors. A permit
/// dropped in a forked child process does nothing: the hold belongs to the parent. A permit
/// of a detached hold ([`AcquireOptions::detached`](crate::AcquireOptions::detached)) is not
/// released on drop either.
///
/// `let _ = sem.try_acquire("x")?;` releases at once; bind the permit to a name
/// (`let _permit = ...`) to keep it for the scope.
///
/// A permit of a Redis semaphore (`Semaphore::open_redis`, see the crate docs, "Redis")
/// always has a lease and renews it in the background from the start (its
/// [keep-alive](Permit::keep_alive) runs already; a detached hold's does not). It also
/// keeps the lease's end on this machine's monotonic clock, counted from when the last
/// successful renewal was sent: once that passes without a renewal (the server or the
/// network failed for a whole lease), [`is_held`](Permit::is_held) is `false`,
/// [`is_lost`](Permit::is_lost) is `true`, the keep-alive's callback is called with
/// `Error::LeaseExpired`, and the permit never renews the hold again, even if its entry turns
/// out to be still on file. Releasing it (or dropping it) still removes the entry if it is
/// there.
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let sem = filesem::Semaphore::open(dir.path().join("gpu.json"), 4)?;
/// {
///     let permit = sem.try_acquire("trainer")?;
///     println!("using GPU {} with fencing token {}", permit.slot(), permit.token());
///     assert_eq!(sem.count()?, 1);
/// } // released here
/// assert_eq!(sem.count()?, 0);
/// # Ok::<(), filesem::Error>(())
/// ```
#[must_use = "if unused the permit is released immediately"]
pub struct Permit {
    held: Option<Held>,
}

struct Held {
    hold: Target,
    lease: Option<Duration>,
    /// The kernel-held witness of a process-bound hold; `None` for detached holds.
    witness: Option<WitnessLock>,
    /// A detached hold is not released on drop.
    detached: bool,
    /// The process that acquired: a forked child must not release the parent's hold.
    pid: u32,
    /// The keep-alive thread, if one runs ([`Permit::keep_alive`]).
    renewer: Option<Renewer>,
}

/// The error of [`Permit::keep`], with the permit given back.
#[derive(Debug, thiserror::Error)]
#[error("failed to keep the hold: {error}")]
pub struct KeepError {
    /// What went wrong.
    #[source]
    pub error: Error,
    /// The permit, still held (or lost, if `error` is [`Error::Lost`]); its keep-alive, if
    /// one ran, still runs.
    pub permit: Permit,
}

impl Permit {
    /// The permit of a grant seen at `seen` (see [`Seen`]). In a store judged by leases
    /// only, the lease's end is tracked from then on ([`local_end`]); call
    /// [`started`](Permit::started) to start the keep-alive such a store needs.
    #[allow(clippy::too_many_arguments)] // what a grant records, as the acquire knows it
    pub(crate) fn new(
        sem: Semaphore,
        id: String,
        slot: u32,
        acquired_at: DateTime<Utc>,
        lease: Option<Duration>,
        record: Record,
        witness: Option<WitnessLock>,
        seen: Seen,
    ) -> Permit {
        let detached = record.detached;
        let lease_end = match record.expires_at {
            Some(end) if sem.inner.store.leases_only() => Some(local_end(seen, end)),
            _ => None,
        };
        Permit {
            held: Some(Held {
                hold: Target {
                    sem,
                    id,
                    token: record.token,
                    lease,
                    slot,
                    acquired_at,
                    shared: Arc::new(Shared {
                        state: Mutex::new(HoldState {
                            record,
                            ended: false,
                        }),
                        lost: AtomicBool::new(false),
                        lease_end: Mutex::new(lease_end),
                    }),
                },
                lease,
                detached,
                witness,
                pid: std::process::id(),
                renewer: None,
            }),
        }
    }

    /// The permit, with its keep-alive running if its store judges holds by leases only
    /// (and the hold is not detached): such a hold must be renewed from the start. If the
    /// thread cannot be started, the hold is released again and the error returned.
    pub(crate) fn started(mut self) -> Result<Permit> {
        let h = self.held();
        if h.detached || h.lease.is_none() || !h.hold.sem.inner.store.leases_only() {
            return Ok(self);
        }
        match self.keep_alive() {
            Ok(()) => Ok(self),
            Err(error) => {
                if let Err(e) = self.release() {
                    tracing::warn!(%e, "failed to release a hold that could not be kept alive");
                }
                Err(error)
            }
        }
    }

    fn held(&self) -> &Held {
        // `held` is only `None` inside `release`, `keep` and `drop`, which consume the permit.
        self.held.as_ref().expect("permit used after release")
    }

    fn held_mut(&mut self) -> &mut Held {
        self.held.as_mut().expect("permit used after release")
    }

    /// The holder ID.
    pub fn id(&self) -> &str {
        &self.held().hold.id
    }

    /// The fencing token of this grant: a number from a counter in the state file that only
    /// ever increases, across releases and processes, taken at the moment the slot is granted
    /// (for an acquire that waited, by the write that handed it the slot). So tokens strictly
    /// increase in the order of grants, also when a waiter of higher priority is served before
    /// one that queued earlier: a newer grant always has a larger token. Pass it to the
    /// guarded resource so it can refuse a holder whose permit was lost.
    pub fn token(&self) -> u64 {
        self.held().hold.token
    }

    /// The slot index in `0..capacity` this grant got: the lowest free one at the time (for
    /// example which of 4 GPUs to use). Slots of current holders never coincide.
    pub fn slot(&self) -> u32 {
        self.held().hold.slot
    }

    /// When the slot was granted.
    pub fn acquired_at(&self) -> DateTime<Utc> {
        self.held().hold.acquired_at
    }

    /// The semaphore's state file.
    pub fn path(&self) -> &Path {
        self.held().hold.sem.path()
    }

    /// The semaphore this permit belongs to.
    pub fn semaphore(&self) -> &Semaphore {
        &self.held().hold.sem
    }

    /// The lease length of this hold, if it has one (at least [`MIN_LEASE`]).
    pub fn lease(&self) -> Option<Duration> {
        self.held().lease
    }

    /// Whether this permit's entry is still on file and not past its lease (plus
    /// [`LEASE_GRACE`](crate::LEASE_GRACE)). `false` means the hold was lost (reaped, removed,
    /// released by ID, recovered away) or may be reaped at any moment: stop using the
    /// resource.
    ///
    /// Reads without the lock. If a program that knows only the basic format stripped the
    /// entry (it is found by ID and grant time), this first writes back what the hold records
    /// (see [`Permit`]), in one locked step, and answers for the restored entry.
    ///
    /// For a Redis semaphore this is `false` without asking the server once the lease ran out
    /// on this machine's clock without a renewal (see [`Permit`]).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`], [`Error::Io`] when the state cannot be read;
    /// [`Error::Untrusted`] when the state file (or, to restore a stripped entry, the lock
    /// file) is of the wrong type or owner; [`Error::Removed`] or [`Error::DirectoryGone`]
    /// when the semaphore's state file or directory was removed (the hold with it);
    /// [`Error::LockTimeout`] when a stripped entry could not be restored; for a Redis
    /// semaphore its connection errors.
    pub fn is_held(&self) -> Result<bool> {
        let hold = &self.held().hold;
        if hold.ran_out() {
            return Ok(false);
        }
        let (entry, now) = hold.look()?;
        Ok(entry.is_some_and(|e| expired(&e, now).is_none()) && !hold.ran_out())
    }

    /// Extends the lease to `now + lease` and returns the new end (capped at
    /// 9999-12-31T23:59:59Z for leases too long for the calendar); `Ok(None)` for a hold
    /// without a lease (nothing to extend; the entry is still checked to be on file). A hold
    /// with a lease always gets it back, even if a foreign write dropped it from the entry,
    /// together with everything else the hold records (see [`Permit`]).
    ///
    /// Never re-acquires: if the entry is gone, the hold is lost and this fails. Each call
    /// writes the state file; to renew in the background at a sensible pace, use
    /// [`keep_alive`](Permit::keep_alive). For a Redis semaphore the lease counts from when
    /// the renewal was sent (see [`Permit`]); a renewal of a lease that ran out meanwhile
    /// fails and writes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] if the entry is no longer on file; [`Error::Removed`] or
    /// [`Error::DirectoryGone`] if the semaphore's state file or directory was removed (the
    /// entry with it); for a Redis semaphore `Error::LeaseExpired` once the lease ran out
    /// without a renewal, and its connection errors (`NotReplicated`: renewed on the primary
    /// only, not counted as a renewal); [`Error::Corrupt`], [`Error::UnsupportedVersion`],
    /// [`Error::LockTimeout`], [`Error::Io`], and [`Error::Untrusted`] for a state, lock or
    /// witness file of the wrong type or owner (see the crate docs' "Trust model").
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// use std::time::Duration;
    /// let sem = filesem::Semaphore::open(dir.path().join("s.json"), 1)?;
    /// let opts = filesem::AcquireOptions::new().lease(Duration::from_secs(30));
    /// let permit = sem.try_acquire_with("job", &opts)?;
    /// let until = permit.renew()?.expect("has a lease");
    /// assert!(until > chrono::Utc::now() + chrono::Duration::seconds(29));
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn renew(&self) -> Result<Option<DateTime<Utc>>> {
        self.held().hold.renew()
    }

    /// Starts a background thread, owned by this permit, that keeps the hold alive: it renews
    /// the lease every third of its length (retrying after a failed renewal every tenth, and
    /// never more often than every third of [`MIN_LEASE`], so that renewals cannot flood the
    /// state file), restores an entry that a foreign write stripped, and notices when the hold
    /// is lost ([`is_lost`](Permit::is_lost)). For a hold without a lease it only watches,
    /// about once a second.
    ///
    /// The thread belongs to the permit: [`release`](Permit::release), [`keep`](Permit::keep)
    /// and dropping the permit stop it before they act, so it never renews a released hold
    /// and never outlives the permit; [`stop_keep_alive`](Permit::stop_keep_alive) stops it
    /// earlier. Stopping waits for a renewal in progress (at most one
    /// [lock timeout](crate::OpenOptions::lock_timeout); for a Redis semaphore at most until
    /// the lease's end, plus the Redis timeouts, which only a renewal whose commit got no
    /// answer takes). Calling this again replaces the running thread.
    ///
    /// # Errors
    ///
    /// [`Error::NotOwner`] in a forked child (the hold is the parent's); [`Error::Io`] if the
    /// system refuses a thread. Nothing renews then.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// use std::time::Duration;
    /// let sem = filesem::Semaphore::open(dir.path().join("s.json"), 1)?;
    /// let opts = filesem::AcquireOptions::new().lease(Duration::from_secs(3));
    /// let mut permit = sem.try_acquire_with("long-job", &opts)?;
    /// permit.keep_alive()?;
    /// // ... work for longer than 3 s; check permit.is_lost() between steps ...
    /// assert!(!permit.is_lost());
    /// permit.release()?; // stops the keep-alive first
    /// # Ok::<(), filesem::Error>(())
    /// ```
    ///
    /// The thread is reachable only through its permit, so nothing can watch or keep it
    /// after the permit is gone:
    ///
    /// ```compile_fail,E0382
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let sem = filesem::Semaphore::open(dir.path().join("s.json"), 1)?;
    /// let opts = filesem::AcquireOptions::new().lease(filesem::MIN_LEASE);
    /// let mut permit = sem.try_acquire_with("job", &opts)?;
    /// permit.keep_alive()?;
    /// permit.release()?;
    /// assert!(!permit.is_lost()); // error: the keep-alive ended with the released permit
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn keep_alive(&mut self) -> Result<()> {
        self.keep_alive_with(|_| {})
    }

    /// [`keep_alive`](Permit::keep_alive), calling `on_lost` once (from the background
    /// thread) with the [`Error::Lost`] when the hold is found lost, with the
    /// [`Error::Removed`] when the state file was removed (and the entry with it), with the
    /// [`Error::DirectoryGone`] when the semaphore's directory was removed, or, for a Redis
    /// semaphore, with `Error::LeaseExpired` when the lease ran out without a successful
    /// renewal (the callback comes at the lease's end, or as soon as a renewal in progress
    /// then gives up, within the Redis timeouts). It is not called when the permit is
    /// released, kept or dropped. Other failures of a renewal ([`Error::LockTimeout`],
    /// [`Error::Io`], [`Error::Untrusted`], the Redis connection errors, ...) are retried.
    ///
    /// A permit of a Redis semaphore runs a keep-alive from the start; calling this replaces
    /// it with one that calls `on_lost`.
    ///
    /// # Errors
    ///
    /// As [`keep_alive`](Permit::keep_alive).
    pub fn keep_alive_with(&mut self, on_lost: impl FnOnce(&Error) + Send + 'static) -> Result<()> {
        let held = self.held_mut();
        if let Some(e) = held.not_owner() {
            return Err(e);
        }
        held.stop_keep_alive();
        // A tracked lease (a Redis hold) needs no thread before its first renewal is near.
        let defer = held.hold.lease_end().map(|_| intervals(held.lease).0 / 2);
        let renewer = Renewer::start(held.hold.clone(), held.lease, Box::new(on_lost), defer)
            .map_err(|e| {
                let path = held.hold.sem.path();
                Error::io(path, path, "start the keep-alive thread for", e)
            })?;
        held.renewer = Some(renewer);
        Ok(())
    }

    /// Stops the keep-alive thread, if one runs, and waits for it (at most one renewal in
    /// progress). The hold stays; a lease then runs out unless renewed.
    pub fn stop_keep_alive(&mut self) {
        self.held_mut().stop_keep_alive();
    }

    /// Whether a keep-alive thread renews (or watches) this hold now: `false` before
    /// [`keep_alive`](Permit::keep_alive), after [`stop_keep_alive`](Permit::stop_keep_alive),
    /// and once the thread found the hold lost.
    pub fn is_kept_alive(&self) -> bool {
        // The thread sets `lost` before its callback and ends right after: once lost, it
        // renews nothing, even if it has not ended yet.
        let held = self.held();
        held.renewer.as_ref().is_some_and(Renewer::is_active)
            && !held.hold.shared.lost.load(Ordering::SeqCst)
    }

    /// Whether the keep-alive thread found the hold lost (its entry vanished from the file:
    /// reaped, removed, released by ID; or the semaphore's state file or directory was
    /// removed), or, for a Redis semaphore, whether the lease ran out on this machine's clock
    /// without a renewal (this needs no thread and no server). Once `true`, it stays `true`
    /// and the thread has stopped (or stops at its next look); stop using the resource.
    /// Without a keep-alive this stays `false` for a file semaphore; ask
    /// [`is_held`](Permit::is_held).
    pub fn is_lost(&self) -> bool {
        let hold = &self.held().hold;
        hold.shared.lost.load(Ordering::SeqCst) || hold.ran_out()
    }

    /// What answers [`is_lost`](Permit::is_lost) without the permit: for the async API,
    /// whose permit lives on its handle's step thread.
    #[cfg(feature = "tokio")]
    pub(crate) fn probe(&self) -> Probe {
        Probe {
            hold: self.held().hold.clone(),
        }
    }

    /// A duplicate of the hold's witness lock descriptor *without* `O_CLOEXEC`, so that a
    /// command spawned while it is open inherits it: the hold then counts as alive for as long
    /// as that command runs, even if this process is killed (as `flock(1)` does). Close it in
    /// this process right after spawning. `Ok(None)` for a detached hold, which has no
    /// witness.
    ///
    /// Every process spawned while the descriptor is open inherits it, so use it from one
    /// thread, just around the spawn.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the descriptor cannot be duplicated.
    pub fn inherit_witness(&self) -> Result<Option<OwnedFd>> {
        let h = self.held();
        match &h.witness {
            None => Ok(None),
            Some(w) => w.inheritable().map(Some).map_err(|e| {
                let path = h.hold.sem.path();
                Error::io(path, w.dir_path(), "duplicate the witness in", e)
            }),
        }
    }

    /// Releases the slot now and reports the outcome (dropping the permit does the same,
    /// silently). Stops the keep-alive thread first.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] if the entry is no longer on file (nothing is changed);
    /// [`Error::NotOwner`] in a forked child (the hold is the parent's; nothing is changed);
    /// [`Error::Removed`] or [`Error::DirectoryGone`] if the semaphore's state file or
    /// directory was removed (the entry went with it; nothing is created anywhere);
    /// [`Error::Corrupt`], [`Error::UnsupportedVersion`], [`Error::LockTimeout`],
    /// [`Error::Io`], [`Error::Untrusted`] (a state, lock or witness
    /// file of the wrong type or owner, left as it is): the entry may then still be on file;
    /// [`Semaphore::release`] or [`Semaphore::remove`] can remove it later.
    pub fn release(mut self) -> Result<()> {
        match self.held.take() {
            Some(held) => match held.not_owner() {
                Some(e) => {
                    held.abandon();
                    Err(e)
                }
                None => held.release(),
            },
            None => Ok(()),
        }
    }

    /// Keeps the hold after the permit is gone: the entry is rewritten as *detached* (its
    /// witness is dropped), so it stays on file and keeps its slot until
    /// [`Semaphore::release`], [`Semaphore::remove`] or its lease ends it, even after this
    /// process exits. This is the Go package's session use. A stripped entry gets back what
    /// the hold records first (see [`Permit`]). The keep-alive thread stops: nothing renews
    /// a kept hold's lease (on Redis every hold has one, so a kept hold ends with it).
    ///
    /// # Errors
    ///
    /// A [`KeepError`] holding the error and the permit, which is not lost: on
    /// [`Error::LockTimeout`], [`Error::Io`] or [`Error::Untrusted`] (a state, lock or
    /// witness file of the wrong type or owner) it can be kept again later or released. On
    /// [`Error::Lost`] the entry was already gone, and on [`Error::Removed`] or
    /// [`Error::DirectoryGone`] it went with the removed state file or directory;
    /// [`Error::NotOwner`] in a forked child; for a Redis semaphore `Error::LeaseExpired`
    /// (nothing written) and its connection errors.
    #[allow(clippy::result_large_err)] // the permit rides in the error on purpose, as in tempfile
    pub fn keep(mut self) -> std::result::Result<(), KeepError> {
        let Some(mut held) = self.held.take() else {
            return Ok(());
        };
        if let Some(error) = held.not_owner() {
            return Err(KeepError {
                error,
                permit: Permit { held: Some(held) },
            });
        }
        match held.hold.keep() {
            Ok(()) => {
                held.stop_keep_alive();
                if let Some(w) = held.witness.take() {
                    w.release();
                }
                Ok(())
            }
            Err(error) => Err(KeepError {
                error,
                permit: Permit { held: Some(held) },
            }),
        }
    }
}

impl Held {
    /// `Some(NotOwner)` in a forked child: the hold is the parent's.
    fn not_owner(&self) -> Option<Error> {
        (self.pid != std::process::id()).then(|| Error::NotOwner {
            path: self.hold.sem.path().to_path_buf(),
            id: self.hold.id.clone(),
            token: self.hold.token,
            pid: self.pid,
        })
    }

    fn stop_keep_alive(&mut self) {
        drop(self.renewer.take());
    }

    /// Leaves the parent's hold alone: no write, and the witness lock (shared with the parent
    /// through the forked descriptor) stays locked. The parent's keep-alive thread does not
    /// exist in a child; its handle is forgotten ([`Renewer`]'s drop).
    fn abandon(mut self) {
        self.stop_keep_alive();
        if let Some(w) = self.witness.take() {
            w.abandon();
        }
    }

    fn release(mut self) -> Result<()> {
        self.stop_keep_alive();
        let witness = self.witness.take();
        let result = self.hold.remove_entry();
        if let Some(w) = witness {
            match &result {
                // The entry is gone (with the state file or directory, for the last two): so
                // goes its witness.
                Ok(())
                | Err(Error::Lost { .. } | Error::Removed { .. } | Error::DirectoryGone { .. }) => {
                    w.release()
                }
                // The write failed and the entry may still be on file: a witness that is
                // there but free proves it dead to whoever looks next, who reaps it (a
                // missing witness would prove nothing, and the entry would keep its slot
                // while this process lives).
                Err(_) => w.unlock_keeping_file(),
            }
        }
        result
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        if held.not_owner().is_some() {
            // A forked child: the hold (and the witness lock it shares) is the parent's.
            held.abandon();
            return;
        }
        if held.detached {
            // Outlives the permit by request (`AcquireOptions::detached`); nothing renews it.
            held.stop_keep_alive();
            return;
        }
        let path = held.hold.sem.path().to_path_buf();
        let id = held.hold.id.clone();
        if let Err(error) = held.release() {
            tracing::warn!(path = %path.display(), id = %id, %error, "failed to release permit on drop");
        }
    }
}

/// Answers [`Permit::is_lost`] for a permit kept elsewhere (see [`Permit::probe`]); never
/// waits for a renewal in progress.
#[cfg(feature = "tokio")]
#[derive(Clone)]
pub(crate) struct Probe {
    hold: Target,
}

#[cfg(feature = "tokio")]
impl Probe {
    /// As [`Permit::is_lost`].
    pub fn is_lost(&self) -> bool {
        self.hold.shared.lost.load(Ordering::SeqCst) || self.hold.ran_out()
    }
}

/// What identifies a hold on file (its semaphore, ID, fencing token and grant time), and what
/// it records, shared with the keep-alive thread.
#[derive(Clone)]
struct Target {
    sem: Semaphore,
    id: String,
    token: u64,
    /// The lease length, if the hold has one.
    lease: Option<Duration>,
    slot: u32,
    acquired_at: DateTime<Utc>,
    shared: Arc<Shared>,
}

/// The state a permit shares with its keep-alive thread.
struct Shared {
    /// Locked around every step on the hold, so that the thread never renews between a
    /// [`Permit::keep`] and the end of the permit.
    state: Mutex<HoldState>,
    /// Set when the hold is found lost: by the keep-alive thread, or (in a store judged by
    /// leases only) by anyone who finds `lease_end` passed. Never cleared.
    lost: AtomicBool,
    /// In a store judged by leases only
    /// ([`Store::leases_only`](crate::store::Store::leases_only)): the instant on this
    /// machine's monotonic clock by which the lease has certainly ended on the server unless
    /// renewed (see [`local_end`]). `None` elsewhere. Apart from `state`, so that asking
    /// never waits for a renewal in progress.
    lease_end: Mutex<Option<Instant>>,
}

/// When a hold was seen granted: the instant the request that read the store's clock was
/// sent, and that clock's reading (`now`). With the entry's `expires_at` it tells when the
/// lease ends on this machine's clock ([`local_end`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen {
    pub sent: Instant,
    pub now: DateTime<Utc>,
}

/// The instant on this machine's monotonic clock by which a lease ending at `expires_at`
/// has certainly ended in the store, given a reading of the store's clock (`now`) by a
/// request sent at `sent`: `sent + (expires_at - now)`. The store read its clock after
/// `sent`, so this is never later than the real end (clock rates assumed equal; the
/// [`LEASE_GRACE`](crate::LEASE_GRACE) before anyone reaps covers their drift).
fn local_end(seen: Seen, expires_at: DateTime<Utc>) -> Instant {
    let left = (expires_at - seen.now).to_std().unwrap_or(Duration::ZERO);
    seen.sent.checked_add(left).unwrap_or(seen.sent)
}

struct HoldState {
    /// What the hold records; `expires_at` follows the renewals.
    record: Record,
    /// The hold was kept ([`Permit::keep`]): the keep-alive thread must not act any more.
    ended: bool,
}

impl Target {
    fn state(&self) -> MutexGuard<'_, HoldState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The index of this hold's entry in `holders`: by token, or by (ID, grant time) when a
    /// Go write dropped the token.
    fn find(&self, doc: &Document) -> Option<usize> {
        rules::find_own(&doc.holders, self.token, &self.id, self.acquired_at)
    }

    fn lost(&self) -> Error {
        Error::Lost {
            path: self.sem.path().to_path_buf(),
            id: self.id.clone(),
            token: self.token,
        }
    }

    /// The end of the lease on this machine's clock, if it is tracked (see [`Shared`]).
    fn lease_end(&self) -> Option<Instant> {
        *self
            .shared
            .lease_end
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the tracked lease ran out without a renewal, or the hold was found lost
    /// before; latches [`Shared::lost`]. Always `false` when the lease is not tracked.
    fn ran_out(&self) -> bool {
        let Some(end) = self.lease_end() else {
            return false;
        };
        if self.shared.lost.load(Ordering::SeqCst) {
            return true;
        }
        if Instant::now() >= end {
            self.shared.lost.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// The error of a tracked lease that ran out.
    fn lease_ran_out(&self) -> Error {
        #[cfg(feature = "redis")]
        {
            Error::LeaseExpired {
                path: self.sem.path().to_path_buf(),
                id: self.id.clone(),
                token: self.token,
                lease: self.lease.unwrap_or_default(),
            }
        }
        #[cfg(not(feature = "redis"))]
        {
            // Only stores judged by leases only track a lease; none is built without the
            // `redis` feature.
            self.lost()
        }
    }

    /// Writes back into our entry (at `i`) what a foreign write dropped; see
    /// [`rules::restore`]. Returns whether it changed anything.
    fn restore(&self, doc: &mut Document, i: usize, record: &Record) -> bool {
        let mut changed = false;
        // Said when the stripped entry is restored, not again at every later look.
        if rules::restore(doc, i, record, &mut changed).is_none() && changed {
            tracing::warn!(path = %self.sem.path().display(), id = %self.id, slot = self.slot, "the slot a foreign write dropped was granted again; the entry stays without one");
        }
        changed
    }

    /// Removes our entry, handing its slot on. After a commit whose outcome is unknown, an
    /// entry found gone is taken as removed by it.
    fn remove_entry(&self) -> Result<()> {
        let mut removed = false;
        self.sem
            .inner
            .store
            .step(None, |doc, cx| match self.find(doc) {
                Some(i) => {
                    doc.holders.remove(i);
                    rules::hand_off(doc, cx.now);
                    removed = true;
                    Ok(Step::changed(Ok(())))
                }
                None if removed && cx.settling() => Ok(Step::unchanged(Ok(()))),
                None => Ok(Step::unchanged(Err(self.lost()))),
            })??;
        tracing::debug!(path = %self.sem.path().display(), id = %self.id, token = self.token, "released");
        Ok(())
    }

    fn renew(&self) -> Result<Option<DateTime<Utc>>> {
        self.renew_locked(&mut self.state())
    }

    /// [`renew`](Target::renew) with the shared state already locked.
    ///
    /// With a tracked lease (see [`Shared`]): nothing is written once it ran out (checked
    /// again right before the commit), the step retries lost races only until it runs out,
    /// and a renewal that returns after that is not counted (the hold stays lost, though
    /// the server renewed the entry). Otherwise the lease's end moves to when this renewal
    /// was sent plus the lease.
    fn renew_locked(&self, state: &mut HoldState) -> Result<Option<DateTime<Utc>>> {
        let sent = Instant::now();
        let tracked = self.lease_end();
        if self.ran_out() {
            return Err(self.lease_ran_out());
        }
        let wait = tracked.map_or(LockWait::Timeout, LockWait::Until);
        let record = &state.record;
        let (until, now) = self.sem.inner.store.step_with(wait, None, |doc, cx| {
            if self.ran_out() {
                return Ok(Step::unchanged(Err(self.lease_ran_out())));
            }
            let Some(i) = self.find(doc) else {
                return Ok(Step::unchanged(Err(self.lost())));
            };
            let restored = self.restore(doc, i, record);
            let entry = &mut doc.holders[i];
            match rules::lease_end(record.lease_ms, cx.now) {
                Some(until) => {
                    entry.expires_at = Some(until);
                    Ok(Step::changed(Ok((Some(until), cx.now))))
                }
                None => Ok(Step::new(Ok((None, cx.now)), restored)),
            }
        })??;
        if until.is_some() {
            state.record.expires_at = until;
        }
        if tracked.is_some() {
            if self.ran_out() {
                return Err(self.lease_ran_out());
            }
            if let Some(until) = until {
                let end = local_end(Seen { sent, now }, until);
                *self
                    .shared
                    .lease_end
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(end);
            }
        }
        Ok(until)
    }

    /// Our entry as on file, restored first (in a locked step) if a foreign write stripped
    /// it; `None` when it is gone. With the store's clock when it was read.
    fn look(&self) -> Result<(Option<Entry>, DateTime<Utc>)> {
        self.look_locked(&self.state())
    }

    /// [`look`](Target::look) with the shared state already locked.
    fn look_locked(&self, state: &HoldState) -> Result<(Option<Entry>, DateTime<Utc>)> {
        let Snapshot { mut doc, now } = self.sem.inner.store.snapshot()?;
        let Some(i) = self.find(&doc) else {
            return Ok((None, now));
        };
        let mut changed = false;
        rules::restore(&mut doc, i, &state.record, &mut changed);
        if !changed {
            return Ok((Some(doc.holders.swap_remove(i)), now));
        }
        self.sem.inner.store.step(None, |doc, cx| {
            let Some(i) = self.find(doc) else {
                return Ok(Step::unchanged((None, cx.now)));
            };
            let changed = self.restore(doc, i, &state.record);
            Ok(Step::new((Some(doc.holders[i].clone()), cx.now), changed))
        })
    }

    /// Rewrites our entry as detached, restored first; the keep-alive thread does nothing
    /// after this succeeded. A tracked lease that ran out is not kept.
    fn keep(&self) -> Result<()> {
        if self.ran_out() {
            return Err(self.lease_ran_out());
        }
        let mut state = self.state();
        let record = &state.record;
        self.sem
            .inner
            .store
            .step(None, |doc, _| match self.find(doc) {
                Some(i) => {
                    self.restore(doc, i, record);
                    let entry = &mut doc.holders[i];
                    entry.detached = true;
                    entry.witness = None;
                    Ok(Step::changed(Ok(())))
                }
                None => Ok(Step::unchanged(Err(self.lost()))),
            })??;
        state.ended = true;
        Ok(())
    }

    /// One look of the keep-alive thread: renew the lease, or (without one) check that the
    /// entry is on file. `Ok(false)` once the hold was kept: the thread stops. The shared
    /// state stays locked throughout, so a [`keep`](Target::keep) is never undone.
    fn keep_alive_once(&self, lease: Option<Duration>) -> Result<bool> {
        let mut state = self.state();
        if state.ended {
            return Ok(false);
        }
        match lease {
            Some(_) => self.renew_locked(&mut state).map(|_| true),
            None => match self.look_locked(&state)? {
                (Some(_), _) => Ok(true),
                (None, _) => Err(self.lost()),
            },
        }
    }
}

/// How often the keep-alive thread renews a lease of `lease`, and how soon it retries after a
/// failed renewal: a third and a tenth of the lease, never more often than every third of
/// [`MIN_LEASE`]. Without a lease it looks once a second. (A tracked lease also bounds both:
/// see [`Target::next_look`].)
fn intervals(lease: Option<Duration>) -> (Duration, Duration) {
    let floor = MIN_LEASE / 3;
    match lease {
        Some(l) => ((l / 3).max(floor), (l / 10).max(floor)),
        None => (Duration::from_secs(1), Duration::from_secs(1)),
    }
}

/// A permit's keep-alive; see [`Permit::keep_alive`]. Its thread runs from the start, or,
/// for a hold whose lease end is tracked here (a Redis permit, whose keep-alive starts with
/// the hold), is started by the process's [`Starter`] half a renewal interval later: a hold
/// released before then never costs a thread (spawning and ending one per hold cost more
/// than the hold's own round trips to the server). The first renewal is due a third of the
/// lease after the hold was taken whenever the thread starts ([`Target::next_look`]).
///
/// Dropping it stops the keep-alive: once the drop returns, no renewal starts and no
/// callback is called. In a forked child, where the threads do not exist, it is forgotten.
struct Renewer {
    phase: Arc<Mutex<Phase>>,
    pid: u32,
}

/// Where a [`Renewer`] is.
enum Phase {
    /// Not started yet: what its thread will need.
    Pending(Pending),
    Running(Running),
    /// Stopped by its owner.
    Stopped,
}

/// What a deferred keep-alive thread is started with.
struct Pending {
    target: Target,
    lease: Option<Duration>,
    on_lost: Box<dyn FnOnce(&Error) + Send>,
}

/// Starts the deferred keep-alive threads of this process when they are due: one thread,
/// started with the first deferred keep-alive (again in a forked child, where the parent's
/// does not exist).
struct Starter {
    due: Mutex<Vec<(Instant, std::sync::Weak<Mutex<Phase>>)>>,
    wake: std::sync::Condvar,
}

/// The process's [`Starter`], with the pid it was started in.
static STARTER: Mutex<Option<(u32, Arc<Starter>)>> = Mutex::new(None);

impl Starter {
    /// Has the keep-alive of `phase` started at `at`, if it is still pending then.
    fn schedule(at: Instant, phase: &Arc<Mutex<Phase>>) -> std::io::Result<()> {
        let pid = std::process::id();
        let mut global = STARTER.lock().unwrap_or_else(PoisonError::into_inner);
        let starter = match &*global {
            Some((p, starter)) if *p == pid => Arc::clone(starter),
            _ => {
                let starter = Arc::new(Starter {
                    due: Mutex::new(Vec::new()),
                    wake: std::sync::Condvar::new(),
                });
                let running = Arc::clone(&starter);
                std::thread::Builder::new()
                    .name("filesem-starter".into())
                    .spawn(move || running.run())?;
                *global = Some((pid, Arc::clone(&starter)));
                starter
            }
        };
        drop(global);
        starter
            .due
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((at, Arc::downgrade(phase)));
        starter.wake.notify_one();
        Ok(())
    }

    /// Forever: waits for the earliest due keep-alive, and starts it if it is still pending.
    fn run(&self) {
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = Instant::now();
            let next = due.iter().enumerate().min_by_key(|(_, (at, _))| *at);
            match next.map(|(i, (at, _))| (i, *at)) {
                None => {
                    due = self.wake.wait(due).unwrap_or_else(PoisonError::into_inner);
                }
                Some((_, at)) if at > now => {
                    due = self
                        .wake
                        .wait_timeout(due, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                Some((i, _)) => {
                    let (_, phase) = due.swap_remove(i);
                    drop(due);
                    if let Some(phase) = phase.upgrade() {
                        start_pending(&phase);
                    }
                    due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

/// Starts the thread of a pending keep-alive (a stopped one stays stopped). A thread that
/// cannot be started is logged: the hold is then not renewed, and its permit finds out when
/// the lease runs out ([`Permit::is_lost`]).
fn start_pending(phase: &Mutex<Phase>) {
    let mut phase = phase.lock().unwrap_or_else(PoisonError::into_inner);
    if let Phase::Pending(_) = &*phase {
        let Phase::Pending(p) = std::mem::replace(&mut *phase, Phase::Stopped) else {
            unreachable!("matched above");
        };
        let path = p.target.sem.path().to_path_buf();
        match Running::start(p.target, p.lease, p.on_lost) {
            Ok(running) => *phase = Phase::Running(running),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot start the keep-alive thread; the hold will not be renewed")
            }
        }
    }
}

impl Renewer {
    /// Starts a keep-alive: its thread now, or, with `defer`, that much later (if it is not
    /// stopped before).
    fn start(
        target: Target,
        lease: Option<Duration>,
        on_lost: Box<dyn FnOnce(&Error) + Send>,
        defer: Option<Duration>,
    ) -> std::io::Result<Renewer> {
        let pid = std::process::id();
        let Some(defer) = defer else {
            let running = Running::start(target, lease, on_lost)?;
            return Ok(Renewer {
                phase: Arc::new(Mutex::new(Phase::Running(running))),
                pid,
            });
        };
        let phase = Arc::new(Mutex::new(Phase::Pending(Pending {
            target,
            lease,
            on_lost,
        })));
        Starter::schedule(Instant::now() + defer, &phase)?;
        Ok(Renewer { phase, pid })
    }

    /// Whether it renews (or watches) the hold now: pending, or its thread still runs.
    fn is_active(&self) -> bool {
        match &*self.phase.lock().unwrap_or_else(PoisonError::into_inner) {
            Phase::Pending(_) => true,
            Phase::Running(r) => r.thread.as_ref().is_some_and(|t| !t.is_finished()),
            Phase::Stopped => false,
        }
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            // A forked child: the threads, and whoever held the lock, are the parent's.
            // Nothing is touched or dropped (a reference is leaked).
            std::mem::forget(Arc::clone(&self.phase));
            return;
        }
        let old = std::mem::replace(
            &mut *self.phase.lock().unwrap_or_else(PoisonError::into_inner),
            Phase::Stopped,
        );
        // A pending one is dropped unstarted; a running one stops (see `Running`'s drop).
        drop(old);
    }
}

/// A running keep-alive thread. Dropping it stops the thread and waits for it (at most a
/// renewal in progress), so that its callback is gone when the drop returns.
struct Running {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pid: u32,
}

impl Target {
    /// How long the keep-alive thread waits before its next look: `every` after a
    /// successful one and `retry` after a failure, as [`intervals`] says; with a tracked
    /// lease, so that the next renewal comes when a third of the lease has passed since the
    /// last one was sent, and after a failure no later than the lease's end (to report the
    /// loss then).
    fn next_look(&self, failed: bool) -> Duration {
        let (every, retry) = intervals(self.lease);
        let (Some(end), Some(lease)) = (self.lease_end(), self.lease) else {
            return if failed { retry } else { every };
        };
        let left = end.saturating_duration_since(Instant::now());
        if failed {
            retry.min(left)
        } else {
            left.saturating_sub(lease.saturating_sub(every))
        }
    }

    /// Whether `error` means the hold is gone for good: its entry vanished, its directory
    /// was removed (the entry went with it), or its tracked lease ran out.
    fn is_end(&self, error: &Error) -> bool {
        #[cfg(feature = "redis")]
        if let Error::LeaseExpired { .. } = error {
            return true;
        }
        matches!(
            error,
            Error::Lost { .. } | Error::DirectoryGone { .. } | Error::Removed { .. }
        )
    }
}

impl Running {
    fn start(
        target: Target,
        lease: Option<Duration>,
        on_lost: Box<dyn FnOnce(&Error) + Send>,
    ) -> std::io::Result<Running> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("filesem-keep-alive".into())
            .spawn(move || {
                let mut failed = false;
                let lost = |e: &Error| {
                    target.shared.lost.store(true, Ordering::SeqCst);
                    tracing::warn!(path = %target.sem.path().display(), id = %target.id, error = %e, "hold lost");
                };
                loop {
                    let wait = target.next_look(failed);
                    if !matches!(
                        stopped.recv_timeout(wait),
                        Err(mpsc::RecvTimeoutError::Timeout)
                    ) {
                        return;
                    }
                    match target.keep_alive_once(lease) {
                        Ok(true) => failed = false,
                        Ok(false) => return,
                        // A removed directory never comes back, and the entry went with it;
                        // a removed state file took the entry with it too.
                        Err(e) if target.is_end(&e) => {
                            lost(&e);
                            on_lost(&e);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(path = %target.sem.path().display(), id = %target.id, error = %e, "renewal failed; retrying");
                            failed = true;
                            if target.ran_out() {
                                let e = target.lease_ran_out();
                                lost(&e);
                                on_lost(&e);
                                return;
                            }
                        }
                    }
                }
            })?;
        Ok(Running {
            stop: Some(stop),
            thread: Some(thread),
            pid: std::process::id(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            if self.pid == std::process::id() {
                if t.join().is_err() {
                    tracing::warn!("the keep-alive thread panicked (in its on_lost callback)");
                }
            } else {
                std::mem::forget(t);
            }
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.held {
            Some(h) => f
                .debug_struct("Permit")
                .field("path", &h.hold.sem.path())
                .field("id", &h.hold.id)
                .field("token", &h.hold.token)
                .field("slot", &h.hold.slot)
                .field("acquired_at", &h.hold.acquired_at)
                .finish(),
            None => f.write_str("Permit(released)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn permit_is_send() {
        // A permit can be moved to the thread that does the guarded work, its keep-alive too.
        assert_send::<Permit>();
    }

    #[test]
    fn renewals_never_come_faster_than_a_third_of_the_minimum_lease() {
        // Whatever the lease (even one below the floor, from a file or a future caller), the
        // keep-alive renews at most every MIN_LEASE / 3, retries included.
        for lease in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(1),
            Duration::from_millis(999),
            MIN_LEASE,
            Duration::from_secs(30),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ] {
            let (every, retry) = intervals(Some(lease));
            assert!(every >= MIN_LEASE / 3, "{lease:?}: every {every:?}");
            assert!(retry >= MIN_LEASE / 3, "{lease:?}: retry {retry:?}");
            assert!(retry <= every, "{lease:?}");
        }
        assert_eq!(intervals(Some(MIN_LEASE)), (MIN_LEASE / 3, MIN_LEASE / 3));
        let thirty = Duration::from_secs(30);
        assert_eq!(intervals(Some(thirty)), (thirty / 3, thirty / 10));
        assert_eq!(
            intervals(None),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
    }
}
