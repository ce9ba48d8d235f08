//! The [`Permit`] guard: one held slot, released on drop.

use std::fmt;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::rules;
use crate::semaphore::Semaphore;
use crate::store::Step;

/// One held slot of a [`Semaphore`]. Dropping it releases the slot.
///
/// A permit acts only on *its own* entry, matched by its fencing [`token`](Permit::token):
/// if that entry was reaped or removed and the ID was granted to someone else meanwhile,
/// releasing this permit leaves the newcomer alone.
///
/// Drop is best effort: it never panics and waits for the lock file at most the
/// [lock timeout](crate::OpenOptions::lock_timeout); a failure is reported as a `tracing`
/// warning naming the path and ID. Use [`release`](Permit::release) to see errors. A permit
/// dropped in a forked child process does nothing: the hold belongs to the parent.
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
    sem: Semaphore,
    id: String,
    token: u64,
    slot: u32,
    acquired_at: DateTime<Utc>,
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
    ) -> Permit {
        Permit {
            held: Some(Held {
                sem,
                id,
                token,
                slot,
                acquired_at,
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
        &self.held().id
    }

    /// The fencing token of this grant: a number from a counter in the state file that only
    /// ever increases, across releases and processes. Pass it to the guarded resource so it
    /// can refuse a holder whose permit was lost (a newer grant has a larger token).
    pub fn token(&self) -> u64 {
        self.held().token
    }

    /// The slot index in `0..capacity` this grant got: the lowest free one at the time (for
    /// example which of 4 GPUs to use). Slots of current holders never coincide.
    pub fn slot(&self) -> u32 {
        self.held().slot
    }

    /// When the slot was granted.
    pub fn acquired_at(&self) -> DateTime<Utc> {
        self.held().acquired_at
    }

    /// The semaphore's state file.
    pub fn path(&self) -> &Path {
        self.held().sem.path()
    }

    /// The semaphore this permit belongs to.
    pub fn semaphore(&self) -> &Semaphore {
        &self.held().sem
    }

    /// Releases the slot now and reports the outcome (dropping the permit does the same,
    /// silently).
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] if the entry is no longer on file (nothing is changed);
    /// [`Error::NotFound`], [`Error::Corrupt`], [`Error::LockTimeout`], [`Error::Io`]: the
    /// entry may then still be on file; [`Semaphore::release`] or [`Semaphore::remove`] can
    /// remove it later.
    pub fn release(mut self) -> Result<()> {
        match self.held.take() {
            Some(held) => held.release(),
            None => Ok(()),
        }
    }

    /// Keeps the hold after the permit is gone: the entry is rewritten as *detached*, so it
    /// stays on file (and keeps its slot) until [`Semaphore::release`] or
    /// [`Semaphore::remove`] ends it, even after this process exits. This is the seed's
    /// session use.
    ///
    /// # Errors
    ///
    /// A [`KeepError`] holding the error and the permit, which is not lost: on
    /// [`Error::LockTimeout`] or [`Error::Io`] it can be kept again later or released. On
    /// [`Error::Lost`] the entry was already gone.
    #[allow(clippy::result_large_err)] // the permit rides in the error on purpose, as in tempfile
    pub fn keep(mut self) -> std::result::Result<(), KeepError> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        let result = held.sem.inner.store.transact(None, |doc, _| {
            match rules::find_own(&doc.holders, held.token, &held.id, held.acquired_at) {
                Some(i) => {
                    doc.holders[i].detached = true;
                    Ok(Step::changed(Ok(())))
                }
                None => Ok(Step::unchanged(Err(held.lost()))),
            }
        });
        match result.and_then(|r| r) {
            Ok(()) => Ok(()),
            Err(error) => Err(KeepError {
                error,
                permit: Permit { held: Some(held) },
            }),
        }
    }
}

impl Held {
    fn lost(&self) -> Error {
        Error::Lost {
            path: self.sem.path().to_path_buf(),
            id: self.id.clone(),
            token: self.token,
        }
    }

    fn release(self) -> Result<()> {
        self.sem.inner.store.transact(None, |doc, _| {
            match rules::find_own(&doc.holders, self.token, &self.id, self.acquired_at) {
                Some(i) => {
                    doc.holders.remove(i);
                    rules::hand_off(doc, Utc::now());
                    Ok(Step::changed(Ok(())))
                }
                None => Ok(Step::unchanged(Err(self.lost()))),
            }
        })??;
        tracing::debug!(path = %self.sem.path().display(), id = %self.id, token = self.token, "released");
        Ok(())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        if held.pid != std::process::id() {
            // A forked child: the hold is the parent's.
            return;
        }
        let path = held.sem.path().to_path_buf();
        let id = held.id.clone();
        if let Err(error) = held.release() {
            tracing::warn!(path = %path.display(), id = %id, %error, "failed to release permit on drop");
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.held {
            Some(h) => f
                .debug_struct("Permit")
                .field("path", &h.sem.path())
                .field("id", &h.id)
                .field("token", &h.token)
                .field("slot", &h.slot)
                .field("acquired_at", &h.acquired_at)
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
