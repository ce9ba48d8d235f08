//! The lock file: the only code that calls flock on `PATH.lock` (through nix's [`Flock`]).
//!
//! The lock is taken for one short read-modify-write and released at once. It is opened per
//! operation, so a forked child never shares a lock description with its parent, and it is
//! opened with `O_CLOEXEC` (std's default), so no command we spawn inherits it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// The first pause after a failed attempt; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_micros(20);
const MAX_BACKOFF: Duration = Duration::from_millis(2);

/// An exclusive flock on the lock file, released on drop.
pub(crate) struct LockGuard {
    flock: Option<Flock<File>>,
}

/// Opens (creating if allowed by permissions) and exclusively locks `lock_path`, waiting at
/// most `timeout`.
///
/// The lock file is opened read-write and created with `mode` (less the umask) if absent; a
/// lock file this user may only read is opened read-only, which flock accepts on local
/// filesystems. It is never deleted.
pub(crate) fn lock_exclusive(
    state_path: &Path,
    lock_path: &Path,
    mode: u32,
    timeout: Duration,
) -> Result<LockGuard> {
    let file = open_lock_file(lock_path, Some(mode))
        .map_err(|e| Error::io(state_path, lock_path, "open lock file", e))?;
    lock_file(state_path, lock_path, file, timeout)
}

/// Like [`lock_exclusive`], but never creates the lock file: `Ok(None)` when it is absent.
pub(crate) fn lock_exclusive_existing(
    state_path: &Path,
    lock_path: &Path,
    timeout: Duration,
) -> Result<Option<LockGuard>> {
    match open_lock_file(lock_path, None) {
        Ok(file) => lock_file(state_path, lock_path, file, timeout).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(state_path, lock_path, "open lock file", e)),
    }
}

/// Locks the open lock file `file`, polling with backoff for at most `timeout`.
fn lock_file(
    state_path: &Path,
    lock_path: &Path,
    file: File,
    timeout: Duration,
) -> Result<LockGuard> {
    let start = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let mut file = file;
    let mut announced = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => {
                return Ok(LockGuard { flock: Some(flock) });
            }
            Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => file = f,
            Err((_, errno)) => {
                return Err(Error::io(
                    state_path,
                    lock_path,
                    "lock",
                    io::Error::from(errno),
                ));
            }
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(Error::LockTimeout {
                path: state_path.to_path_buf(),
                lock_path: lock_path.to_path_buf(),
                waited,
            });
        }
        if !announced && waited >= Duration::from_secs(1) {
            // As cargo says "Blocking waiting for file lock": a long wait here is unusual.
            tracing::info!(lock = %lock_path.display(), "blocking waiting for file lock");
            announced = true;
        }
        std::thread::sleep(jitter(backoff).min(timeout - waited));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Opens the lock file read-write (read-only if that is all this user may), creating it with
/// `create`'s mode when given.
fn open_lock_file(lock_path: &Path, create: Option<u32>) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).custom_flags(open_flags());
    if let Some(mode) = create {
        options.create(true).mode(mode);
    }
    let rw = options.open(lock_path);
    match rw {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EROFS)) => {
            // If the read-only open fails too (typically: the lock file does not exist and
            // the directory is not writable), the first error is the one that explains it.
            OpenOptions::new()
                .read(true)
                .custom_flags(open_flags())
                .open(lock_path)
                .map_err(|_| e)
        }
        other => other,
    }
}

/// `O_NOFOLLOW` (a planted symlink is an error, not followed) and `O_NONBLOCK` (a FIFO planted
/// at the lock path must not block a read-only open until a writer comes; no effect on a
/// regular file or on flock).
fn open_flags() -> i32 {
    (nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits()
}

/// A pause of 75% to 125% of `d`, so that processes that collided do not collide again.
pub(crate) fn jitter(d: Duration) -> Duration {
    let quarter = d / 4;
    let span = u64::try_from(quarter.as_nanos() * 2)
        .unwrap_or(u64::MAX)
        .max(1);
    d - quarter + Duration::from_nanos(fastrand::u64(..span))
}

impl LockGuard {
    /// Releases the lock now.
    pub(crate) fn unlock(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if let Some(flock) = self.flock.take() {
            unlock(flock, "lock file");
        }
    }
}

/// Unlocks and closes. `LOCK_UN` on a valid descriptor does not fail on Linux; if it ever
/// does, this retries, and as a last resort leaks the descriptor (keeping the lock until the
/// process exits) rather than let nix's `Drop` for [`Flock`] panic.
pub(crate) fn unlock(mut flock: Flock<File>, what: &'static str) {
    for _ in 0..3 {
        match flock.unlock() {
            Ok(file) => {
                drop(file);
                return;
            }
            Err((again, errno)) => {
                tracing::warn!(%errno, "failed to unlock {what}");
                flock = again;
            }
        }
    }
    tracing::error!("leaking a locked {what} descriptor after repeated unlock failures");
    std::mem::forget(flock);
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_times_out_with_lock_timeout_error() {
        // A held lock file makes others wait at most the timeout, then fail distinctly.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.json");
        let lock = dir.path().join("s.json.lock");
        let held = lock_exclusive(&state, &lock, 0o644, Duration::from_secs(1)).unwrap();
        let t = Instant::now();
        let err = lock_exclusive(&state, &lock, 0o644, Duration::from_millis(50))
            .err()
            .unwrap();
        assert!(t.elapsed() >= Duration::from_millis(50));
        match err {
            Error::LockTimeout {
                lock_path, waited, ..
            } => {
                assert_eq!(lock_path, lock);
                assert!(waited >= Duration::from_millis(50));
            }
            other => panic!("unexpected {other:?}"),
        }
        held.unlock();
        let again = lock_exclusive(&state, &lock, 0o644, Duration::from_millis(50));
        assert!(again.is_ok());
        assert!(lock.exists(), "the lock file is never deleted");
    }

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
