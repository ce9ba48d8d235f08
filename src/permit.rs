//! The [`Permit`] guard: one held slot, released on drop.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::rules;
use crate::semaphore::Semaphore;
use crate::state::Document;
use crate::store::Step;
use crate::witness::{self, WitnessLock};

/// One held slot of a [`Semaphore`]. Dropping it releases the slot.
///
/// A permit acts only on *its own* entry, matched by its fencing [`token`](Permit::token):
/// if that entry was reaped or removed and the ID was granted to someone else meanwhile,
/// releasing this permit leaves the newcomer alone.
///
/// Drop is best effort: it never panics and waits for the lock file at most the
/// [lock timeout](crate::OpenOptions::lock_timeout); a failure is reported as a `tracing`
/// warning naming the path and ID. Use [`release`](Permit::release) to see errors. A permit
/// dropped in a forked child process does nothing: the hold belongs to the parent. A permit
/// of a detached hold ([`AcquireOptions::detached`](crate::AcquireOptions::detached)) is not
/// released on drop either.
///
/// `let _ = sem.try_acquire("x")?;` releases at once; bind the permit to a name
/// (`let _permit = ...`) to keep it for the scope.
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
}

/// The error of [`Permit::keep`], with the permit given back.
#[derive(Debug, thiserror::Error)]
#[error("failed to keep the hold: {error}")]
pub struct KeepError {
    /// What went wrong.
    #[source]
    pub error: Error,
    /// The permit, still held (or lost, if `error` is [`Error::Lost`]).
    pub permit: Permit,
}

impl Permit {
    pub(crate) fn new(
        sem: Semaphore,
        id: String,
        token: u64,
        slot: u32,
        acquired_at: DateTime<Utc>,
        lease: Option<Duration>,
        witness: Option<WitnessLock>,
    ) -> Permit {
        Permit {
            held: Some(Held {
                hold: Target {
                    sem,
                    id,
                    token,
                    slot,
                    acquired_at,
                },
                lease,
                detached: witness.is_none(),
                witness,
                pid: std::process::id(),
            }),
        }
    }

    fn held(&self) -> &Held {
        // `held` is only `None` inside `release`, `keep` and `drop`, which consume the permit.
        self.held.as_ref().expect("permit used after release")
    }

    /// The holder ID.
    pub fn id(&self) -> &str {
        &self.held().hold.id
    }

    /// The fencing token of this grant: a number from a counter in the state file that only
    /// ever increases, across releases and processes. Pass it to the guarded resource so it
    /// can refuse a holder whose permit was lost (a newer grant has a larger token).
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

    /// The lease length of this hold, if it has one.
    pub fn lease(&self) -> Option<Duration> {
        self.held().lease
    }

    /// Whether this permit's entry is still on file and not past its lease (plus
    /// [`LEASE_GRACE`](crate::LEASE_GRACE)). `false` means the hold was lost (reaped, removed,
    /// released by ID, recovered away) or may be reaped at any moment: stop using the
    /// resource. Reads without the lock.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::Corrupt`], [`Error::Io`] when the state cannot be read.
    pub fn is_held(&self) -> Result<bool> {
        let h = &self.held().hold;
        let doc = h.sem.inner.store.snapshot()?;
        let now = Utc::now();
        Ok(match h.find(&doc) {
            Some(i) => rules::expired(&doc.holders[i], now).is_none(),
            None => false,
        })
    }

    /// Extends the lease to `now + lease` and returns the new end; `Ok(None)` for a hold
    /// without a lease (nothing to extend; the entry is still checked to be on file).
    ///
    /// Never re-acquires: if the entry is gone, the hold is lost and this fails.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] if the entry is no longer on file; [`Error::NotFound`],
    /// [`Error::Corrupt`], [`Error::LockTimeout`], [`Error::Io`].
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

    /// Starts a background thread that keeps this hold alive: it renews the lease at about a
    /// third of its length (retrying sooner after a failed renewal) and notices when the hold
    /// is lost. For a hold without a lease it only watches, checking about once a second.
    /// The thread stops when the returned [`KeepAlive`] is dropped (drop it before the
    /// permit, or together with it).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// use std::time::Duration;
    /// let sem = filesem::Semaphore::open(dir.path().join("s.json"), 1)?;
    /// let permit = sem.try_acquire_with("long-job", &filesem::AcquireOptions::new().lease(Duration::from_secs(3)))?;
    /// let keep_alive = permit.keep_alive();
    /// // ... work for longer than 3 s; check keep_alive.is_lost() between steps ...
    /// assert!(!keep_alive.is_lost());
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn keep_alive(&self) -> KeepAlive {
        self.keep_alive_with(|_| {})
    }

    /// [`keep_alive`](Permit::keep_alive), calling `on_lost` once (from the background
    /// thread) with the [`Error::Lost`] when the hold is found lost.
    pub fn keep_alive_with(&self, on_lost: impl FnOnce(&Error) + Send + 'static) -> KeepAlive {
        let h = self.held();
        KeepAlive::start(h.hold.clone(), h.lease, Box::new(on_lost))
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
                Error::io(path, &witness::dir_of(path), "duplicate the witness in", e)
            }),
        }
    }

    /// Releases the slot now and reports the outcome (dropping the permit does the same,
    /// silently).
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] if the entry is no longer on file (nothing is changed);
    /// [`Error::NotOwner`] in a forked child (the hold is the parent's; nothing is changed);
    /// [`Error::NotFound`], [`Error::Corrupt`], [`Error::LockTimeout`], [`Error::Io`]: the
    /// entry may then still be on file; [`Semaphore::release`] or [`Semaphore::remove`] can
    /// remove it later.
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
    /// process exits. This is the Go package's session use.
    ///
    /// # Errors
    ///
    /// A [`KeepError`] holding the error and the permit, which is not lost: on
    /// [`Error::LockTimeout`] or [`Error::Io`] it can be kept again later or released. On
    /// [`Error::Lost`] the entry was already gone; [`Error::NotOwner`] in a forked child.
    #[allow(clippy::result_large_err)] // the permit rides in the error on purpose, as in tempfile
    pub fn keep(mut self) -> std::result::Result<(), KeepError> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        if let Some(error) = held.not_owner() {
            return Err(KeepError {
                error,
                permit: Permit { held: Some(held) },
            });
        }
        let hold = &held.hold;
        let result = hold
            .sem
            .inner
            .store
            .transact(None, |doc, _| match hold.find(doc) {
                Some(i) => {
                    doc.holders[i].detached = true;
                    doc.holders[i].witness = None;
                    Ok(Step::changed(Ok(())))
                }
                None => Ok(Step::unchanged(Err(hold.lost()))),
            });
        match result.and_then(|r| r) {
            Ok(()) => {
                if let Some(w) = held.witness {
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

    /// Leaves the parent's hold alone: no write, and the witness lock (shared with the parent
    /// through the forked descriptor) stays locked.
    fn abandon(self) {
        if let Some(w) = self.witness {
            w.abandon();
        }
    }

    fn release(mut self) -> Result<()> {
        let witness = self.witness.take();
        let result = self.hold.remove_entry();
        // The entry is gone (or the write failed: then a free witness lets the entry be
        // reaped, which is what a best-effort release wants).
        if let Some(w) = witness {
            w.release();
        }
        result
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        if held.not_owner().is_some() {
            // A forked child: the hold (and the witness lock it shares) is the parent's.
            held.abandon();
            return;
        }
        if held.detached {
            // Outlives the permit by request (`AcquireOptions::detached`).
            return;
        }
        let path = held.hold.sem.path().to_path_buf();
        let id = held.hold.id.clone();
        if let Err(error) = held.release() {
            tracing::warn!(path = %path.display(), id = %id, %error, "failed to release permit on drop");
        }
    }
}

/// What identifies a hold on file: its semaphore, ID, fencing token and grant time.
#[derive(Clone)]
struct Target {
    sem: Semaphore,
    id: String,
    token: u64,
    slot: u32,
    acquired_at: DateTime<Utc>,
}

impl Target {
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

    fn remove_entry(&self) -> Result<()> {
        self.sem
            .inner
            .store
            .transact(None, |doc, _| match self.find(doc) {
                Some(i) => {
                    doc.holders.remove(i);
                    rules::hand_off(doc, Utc::now());
                    Ok(Step::changed(Ok(())))
                }
                None => Ok(Step::unchanged(Err(self.lost()))),
            })??;
        tracing::debug!(path = %self.sem.path().display(), id = %self.id, token = self.token, "released");
        Ok(())
    }

    fn renew(&self) -> Result<Option<DateTime<Utc>>> {
        self.sem.inner.store.transact(None, |doc, _| {
            let Some(i) = self.find(doc) else {
                return Ok(Step::unchanged(Err(self.lost())));
            };
            let restored = self.restore(doc, i);
            let entry = &mut doc.holders[i];
            match rules::lease_end(entry.lease_ms, Utc::now()) {
                Some(until) => {
                    entry.expires_at = Some(until);
                    Ok(Step::changed(Ok(Some(until))))
                }
                None => Ok(Step::new(Ok(None), restored)),
            }
        })?
    }

    /// Gives our entry (at `i`) back the token and slot a Go write dropped, so that grants
    /// after it neither reuse our slot nor confuse our entry with another. Returns whether
    /// it changed anything. A slot that someone else got meanwhile is not taken back.
    fn restore(&self, doc: &mut Document, i: usize) -> bool {
        let slot_taken = doc
            .holders
            .iter()
            .enumerate()
            .any(|(j, e)| j != i && e.slot == Some(self.slot));
        let entry = &mut doc.holders[i];
        let mut changed = false;
        if entry.token.is_none() {
            entry.token = Some(self.token);
            changed = true;
        }
        if entry.slot.is_none() {
            if slot_taken {
                tracing::warn!(path = %self.sem.path().display(), id = %self.id, slot = self.slot, "slot dropped by a foreign write was granted again");
            } else {
                entry.slot = Some(self.slot);
                changed = true;
            }
        }
        changed
    }

    /// Fails with [`Error::Lost`] unless the entry is on file (a lock-free read).
    fn check_on_file(&self) -> Result<()> {
        match self.find(&self.sem.inner.store.snapshot()?) {
            Some(_) => Ok(()),
            None => Err(self.lost()),
        }
    }
}

/// A background thread renewing a [`Permit`]'s lease; see [`Permit::keep_alive`]. Stops (and
/// joins the thread, which takes at most one lock timeout) when dropped.
#[must_use = "the keep-alive stops when dropped"]
pub struct KeepAlive {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    lost: Arc<AtomicBool>,
}

impl KeepAlive {
    fn start(
        target: Target,
        lease: Option<Duration>,
        on_lost: Box<dyn FnOnce(&Error) + Send>,
    ) -> KeepAlive {
        let (stop, stopped) = mpsc::channel::<()>();
        let lost = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&lost);
        let thread = std::thread::Builder::new()
            .name("filesem-keep-alive".into())
            .spawn(move || {
                let (every, retry) = match lease {
                    Some(l) => (l / 3, (l / 10).max(Duration::from_millis(50))),
                    None => (Duration::from_secs(1), Duration::from_secs(1)),
                };
                let mut wait = every;
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                    let outcome = match lease {
                        Some(_) => target.renew().map(|_| ()),
                        None => target.check_on_file(),
                    };
                    match outcome {
                        Ok(()) => wait = every,
                        Err(e @ Error::Lost { .. }) => {
                            flag.store(true, Ordering::SeqCst);
                            tracing::warn!(path = %target.sem.path().display(), id = %target.id, "hold lost");
                            on_lost(&e);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(path = %target.sem.path().display(), id = %target.id, error = %e, "renewal failed; retrying");
                            wait = retry;
                        }
                    }
                }
            });
        match thread {
            Ok(thread) => KeepAlive {
                stop: Some(stop),
                thread: Some(thread),
                lost,
            },
            Err(e) => {
                // Without a thread nothing renews: say so loudly rather than pretend.
                tracing::error!(error = %e, "failed to start keep-alive thread");
                KeepAlive {
                    stop: None,
                    thread: None,
                    lost,
                }
            }
        }
    }

    /// Whether the hold was found lost (the entry vanished from the file). Once `true`, the
    /// thread has stopped; stop using the resource.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Whether the background thread runs (it stops after finding the hold lost, and could not
    /// start if the system refused a thread).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeepAlive")
            .field("running", &self.is_running())
            .field("lost", &self.is_lost())
            .finish()
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
        // A permit can be moved to the thread that does the guarded work.
        assert_send::<Permit>();
    }
}
