//! The [`AsyncPermit`] guard.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::AsyncSemaphore;
use crate::error::{Error, Result};
use crate::permit::{Permit, Probe};

/// One held slot of an [`AsyncSemaphore`]: a [`Permit`] kept on its handle's step thread.
/// Dropping it releases the slot.
///
/// Dropping never blocks: it hands the release to the handle's step thread and returns at
/// once, inside a task or not. The release runs there even if the runtime shuts down right
/// after (the thread is not the runtime's); it does not if the process exits first (the
/// kernel then unlocks the hold's witness, and the next user of the semaphore reaps the
/// entry and hands its slot on). Use [`release`](AsyncPermit::release) to see errors.
///
/// The permit acts only on its own entry, matched by its fencing token, as [`Permit`]
/// does. `let _ = sem.try_acquire("x").await?;` releases at once; bind it to a name.
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// let sem = filesem::AsyncSemaphore::open(dir.path().join("gpu.json"), 4).await?;
/// {
///     let permit = sem.try_acquire("trainer").await?;
///     println!("GPU {} with fencing token {}", permit.slot(), permit.token());
/// } // released here, on the handle's step thread
/// # Ok::<(), filesem::Error>(())
/// # }).unwrap();
/// ```
#[must_use = "if unused the permit is released immediately"]
pub struct AsyncPermit {
    /// `None` once released, kept or converted. Locked only on the step thread.
    permit: Option<Arc<Mutex<Option<Permit>>>>,
    sem: AsyncSemaphore,
    id: String,
    token: u64,
    slot: u32,
    acquired_at: DateTime<Utc>,
    lease: Option<Duration>,
    probe: Probe,
}

/// The error of [`AsyncPermit::keep`], with the permit given back.
#[derive(Debug, thiserror::Error)]
#[error("failed to keep the hold: {error}")]
pub struct AsyncKeepError {
    /// What went wrong.
    #[source]
    pub error: Error,
    /// The permit, still held (or lost, if `error` is [`Error::Lost`]).
    pub permit: AsyncPermit,
}

impl AsyncPermit {
    /// Wraps `permit`, acquired through `sem`'s blocking handle. Reads only what the permit
    /// holds in memory.
    pub(crate) fn new(permit: Permit, sem: AsyncSemaphore) -> AsyncPermit {
        AsyncPermit {
            id: permit.id().to_string(),
            token: permit.token(),
            slot: permit.slot(),
            acquired_at: permit.acquired_at(),
            lease: permit.lease(),
            probe: permit.probe(),
            permit: Some(Arc::new(Mutex::new(Some(permit)))),
            sem,
        }
    }

    /// An async permit for the blocking `permit`, on a new async handle of its semaphore
    /// (with threads of its own; see [`AsyncSemaphore::from_blocking`]).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the system refuses the handle's threads; the permit is released
    /// then (dropped).
    pub fn from_blocking(permit: Permit) -> Result<AsyncPermit> {
        let sem = AsyncSemaphore::from_blocking(permit.semaphore().clone())?;
        Ok(AsyncPermit::new(permit, sem))
    }

    /// The blocking permit, for code on its own thread. Waits for the steps of this permit
    /// asked for before (on the step thread).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future releases the permit.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the handle's step thread is gone.
    pub async fn into_blocking(mut self) -> Result<Permit> {
        let permit = self.permit.take().expect("present until consumed");
        let lost = self.lost();
        self.sem
            .inner
            .runner
            .steps
            .run(self.sem.path(), move || {
                let taken = permit.lock().unwrap_or_else(PoisonError::into_inner).take();
                taken.ok_or(lost)
            })
            .await
    }

    /// The holder ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The fencing token of this grant (see [`Permit::token`]).
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The slot index in `0..capacity` this grant got (see [`Permit::slot`]).
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// When the slot was granted.
    pub fn acquired_at(&self) -> DateTime<Utc> {
        self.acquired_at
    }

    /// The lease length of this hold, if it has one.
    pub fn lease(&self) -> Option<Duration> {
        self.lease
    }

    /// The semaphore's state file.
    pub fn path(&self) -> &Path {
        self.sem.path()
    }

    /// The semaphore this permit belongs to.
    pub fn semaphore(&self) -> &AsyncSemaphore {
        &self.sem
    }

    /// As [`Permit::is_lost`]: whether the keep-alive found the hold lost, or (Redis) its
    /// lease ran out without a renewal. Never waits.
    pub fn is_lost(&self) -> bool {
        self.probe.is_lost()
    }

    fn lost(&self) -> Error {
        Error::Lost {
            path: self.path().to_path_buf(),
            id: self.id.clone(),
            token: self.token,
        }
    }

    /// Runs `f` on the permit, on the step thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Permit) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = Arc::clone(self.permit.as_ref().expect("present until consumed"));
        let lost = self.lost();
        self.sem
            .inner
            .runner
            .steps
            .run(self.path(), move || {
                match permit
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_mut()
                {
                    Some(permit) => f(permit),
                    None => Err(lost),
                }
            })
            .await
    }

    /// [`Permit::is_held`], async: whether this permit's entry is still on file and not
    /// past its lease.
    ///
    /// # Errors
    ///
    /// As [`Permit::is_held`].
    pub async fn is_held(&self) -> Result<bool> {
        self.with(|p| p.is_held()).await
    }

    /// [`Permit::renew`], async: extends the lease to `now + lease` and returns the new
    /// end; `Ok(None)` for a hold without a lease.
    ///
    /// # Errors
    ///
    /// As [`Permit::renew`].
    pub async fn renew(&self) -> Result<Option<DateTime<Utc>>> {
        self.with(|p| p.renew()).await
    }

    /// [`Permit::keep_alive`], async: starts the permit's keep-alive thread (a thread, as
    /// for the blocking permit: it renews on its own clock, whatever the runtime does).
    ///
    /// # Errors
    ///
    /// As [`Permit::keep_alive`].
    pub async fn keep_alive(&mut self) -> Result<()> {
        self.with(Permit::keep_alive).await
    }

    /// [`Permit::keep_alive_with`], async: the keep-alive, calling `on_lost` once (from its
    /// thread) when the hold is found lost.
    ///
    /// # Errors
    ///
    /// As [`Permit::keep_alive_with`].
    pub async fn keep_alive_with(
        &mut self,
        on_lost: impl FnOnce(&Error) + Send + 'static,
    ) -> Result<()> {
        self.with(move |p| p.keep_alive_with(on_lost)).await
    }

    /// [`Permit::stop_keep_alive`], async: stops the keep-alive thread and waits for it
    /// (on the step thread).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the handle's step thread is gone.
    pub async fn stop_keep_alive(&mut self) -> Result<()> {
        self.with(|p| {
            p.stop_keep_alive();
            Ok(())
        })
        .await
    }

    /// [`Permit::release`], async: releases the slot now and reports the outcome.
    ///
    /// # Cancel safety
    ///
    /// The release runs to its end on the step thread even if the future is dropped; only
    /// its outcome is lost.
    ///
    /// # Errors
    ///
    /// As [`Permit::release`].
    pub async fn release(mut self) -> Result<()> {
        let permit = self.permit.take().expect("present until consumed");
        self.sem
            .inner
            .runner
            .steps
            .run(self.sem.path(), move || {
                let taken = permit.lock().unwrap_or_else(PoisonError::into_inner).take();
                taken.map_or(Ok(()), Permit::release)
            })
            .await
    }

    /// [`Permit::keep`], async: keeps the hold after the permit is gone (rewritten as
    /// detached).
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the keep still runs on the step thread; if it fails
    /// there, the permit it would have given back is dropped there (released).
    ///
    /// # Errors
    ///
    /// An [`AsyncKeepError`] holding the error and the permit, as [`Permit::keep`].
    #[allow(clippy::result_large_err)] // the permit rides in the error on purpose
    pub async fn keep(mut self) -> std::result::Result<(), AsyncKeepError> {
        let permit = self.permit.take().expect("present until consumed");
        let back = Arc::clone(&permit);
        let lost = self.lost();
        let kept = self
            .sem
            .inner
            .runner
            .steps
            .run(self.sem.path(), move || {
                let mut slot = permit.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(p) = slot.take() else {
                    return Err(lost);
                };
                match p.keep() {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        // Back into the shared slot: the permit goes on in the error.
                        *slot = Some(e.permit);
                        Err(e.error)
                    }
                }
            })
            .await;
        match kept {
            Ok(()) => Ok(()),
            Err(error) => {
                self.permit = Some(back);
                Err(AsyncKeepError {
                    error,
                    permit: self,
                })
            }
        }
    }
}

impl Drop for AsyncPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            // The permit's own drop releases it, on the step thread; this never waits.
            self.sem.inner.runner.steps.send(move || drop(permit));
        }
    }
}

impl fmt::Debug for AsyncPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.permit {
            Some(_) => f
                .debug_struct("AsyncPermit")
                .field("path", &self.path())
                .field("id", &self.id)
                .field("token", &self.token)
                .field("slot", &self.slot)
                .field("acquired_at", &self.acquired_at)
                .finish(),
            None => f.write_str("AsyncPermit(released)"),
        }
    }
}
