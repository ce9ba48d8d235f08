//! The file store's waker: `poll(2)` on an inotify descriptor watching the semaphore's
//! directories (Linux, [`notify`](super::notify)) and on the waiter's cancel socket. Without
//! inotify (instance limits, other Unix systems) it has no notifications, and the sleeper's
//! timer polls at its fast pace; on a network filesystem, where another machine's writes
//! raise no events, its notifications are not prompt.

use std::os::fd::BorrowedFd;
#[cfg(target_os = "linux")]
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::dir::Files;
use crate::store::Woke;

/// How long a waiter pauses when `poll(2)` fails, before it tries again: the polling pace.
const PAUSE_AFTER_POLL_FAILURE: Duration = Duration::from_millis(5);

/// Unit tests switch inotify off to exercise the polling fallback.
#[cfg(test)]
pub(crate) static FORCE_POLLING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn polling_forced() -> bool {
    #[cfg(test)]
    {
        FORCE_POLLING.load(std::sync::atomic::Ordering::SeqCst)
    }
    #[cfg(not(test))]
    {
        false
    }
}

/// The notifiers a handle keeps between waits ([`Kept`](super::notify::Kept), Linux).
#[derive(Default)]
pub(crate) struct KeptNotifiers {
    #[cfg(target_os = "linux")]
    kept: Arc<super::notify::Kept>,
}

impl std::fmt::Debug for KeptNotifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptNotifiers").finish_non_exhaustive()
    }
}

/// Change notices for one waiter of a file semaphore.
pub(crate) struct FileWaker {
    #[cfg(target_os = "linux")]
    notifier: Option<super::notify::Notifier>,
    /// Where the notifier goes back when the wait is over.
    #[cfg(target_os = "linux")]
    kept: Arc<super::notify::Kept>,
    /// The directory is watched anew: a change made after the waiter's last look and before
    /// the watch raised no event, so the next wait ends at once and the waiter looks again.
    rewatched: bool,
}

impl FileWaker {
    /// Watches the directories of `files`, and `own`, the waiter's witness file, where
    /// inotify works (and is not switched off for a test), with a notifier of `kept` if the
    /// handle kept one; otherwise a waker without notifications.
    pub fn new(files: &Files, own: Option<BorrowedFd<'_>>, kept: &KeptNotifiers) -> FileWaker {
        #[cfg(not(target_os = "linux"))]
        let _ = (files, own, kept);
        FileWaker {
            #[cfg(target_os = "linux")]
            notifier: if polling_forced() {
                None
            } else {
                kept.kept.take(files, own)
            },
            #[cfg(target_os = "linux")]
            kept: Arc::clone(&kept.kept),
            rewatched: false,
        }
    }

    /// Whether the waiter is at the head of the queue (see
    /// [`Notifier::set_head`](super::notify::Notifier::set_head)). If the directory is
    /// watched anew, the next [`wait`](Self::wait) ends at once: the waiter looks again for a
    /// change made before the watch.
    pub fn set_head(&mut self, head: bool) {
        #[cfg(target_os = "linux")]
        if let Some(n) = &mut self.notifier {
            self.rewatched |= n.set_head(head);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = head;
    }

    /// Whether every local write raises an event.
    pub fn prompt(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.notifier.as_ref().is_some_and(|n| !n.remote())
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// One `poll(2)` of at most `wait` on the notifier and `cancel`, then the notifier's
    /// events; nothing but a notice of change if the directory was just watched anew (see
    /// [`set_head`](Self::set_head)). A signal (`EINTR`) ends it with nothing; a failed `poll` pauses briefly
    /// instead (the caller's timer still bounds the wait).
    pub fn wait(&mut self, wait: Duration, cancel: Option<BorrowedFd<'_>>) -> Woke {
        if std::mem::take(&mut self.rewatched) {
            return Woke {
                changed: true,
                ..Woke::default()
            };
        }
        match self.poll_once(wait, cancel) {
            Ok((notified, cancelled)) => {
                let (changed, died, lost) = if notified {
                    self.drain()
                } else {
                    (false, false, false)
                };
                Woke {
                    changed,
                    died,
                    cancelled,
                    lost,
                }
            }
            Err(Errno::EINTR) => Woke::default(),
            Err(e) => {
                tracing::debug!(%e, "poll failed; sleeping instead");
                std::thread::sleep(wait.min(PAUSE_AFTER_POLL_FAILURE));
                Woke::default()
            }
        }
    }

    /// One `poll(2)`: returns (notifier readable, cancel socket readable).
    fn poll_once(
        &self,
        wait: Duration,
        cancel: Option<BorrowedFd<'_>>,
    ) -> std::result::Result<(bool, bool), Errno> {
        // Round up: waking before the caller's time would only cost another poll.
        let ms = wait
            .as_nanos()
            .div_ceil(1_000_000)
            .clamp(1, i32::MAX as u128);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = Vec::with_capacity(2);
        #[cfg(target_os = "linux")]
        if let Some(fd) = self.notifier.as_ref().and_then(|n| n.fd()) {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        let notifier_fds = fds.len();
        if let Some(fd) = cancel {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        poll(&mut fds, timeout)?;
        let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
        let notified = fds[..notifier_fds].iter().any(ready);
        let cancelled = fds[notifier_fds..].iter().any(ready);
        Ok((notified, cancelled))
    }

    /// The inotify descriptor, if there is one (see [`Waker::fd`](crate::store::Waker::fd)).
    #[cfg(feature = "tokio")]
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        #[cfg(target_os = "linux")]
        {
            self.notifier.as_ref().and_then(|n| n.fd())
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// The pending events, without waiting (see [`Waker::take`](crate::store::Waker::take));
    /// a change if the directory was just watched anew.
    #[cfg(feature = "tokio")]
    pub fn take(&mut self) -> Woke {
        let rewatched = std::mem::take(&mut self.rewatched);
        let (changed, died, lost) = self.drain();
        Woke {
            changed: changed || rewatched,
            died,
            cancelled: false,
            lost,
        }
    }

    /// Reads the notifier's events: (look again; a witness closed, so judge the entries too;
    /// the notifier broke, and this waker has none from now on).
    fn drain(&mut self) -> (bool, bool, bool) {
        #[cfg(target_os = "linux")]
        {
            use super::notify::Events;
            let Some(n) = &mut self.notifier else {
                return (false, false, false);
            };
            match n.drain() {
                Events::Unrelated => (false, false, false),
                Events::Changed => (true, false, false),
                Events::Died => (true, true, false),
                Events::Broken => {
                    self.notifier = None;
                    (true, true, true)
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            (false, false, false)
        }
    }
}

impl Drop for FileWaker {
    /// Gives the notifier back to the handle, for its next wait.
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(notifier) = self.notifier.take() {
            self.kept.give_back(notifier);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_waiter_that_becomes_the_head_looks_again_at_once() {
        // A waiter behind the head watches only its own witness. When it becomes the head it
        // watches the directory again; a write between its look and that watch raised no
        // event for it, so the next wait ends at once instead of at the timer.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.json");
        let witness_dir = super::super::witness::dir_of(&state);
        std::fs::create_dir(&witness_dir).unwrap();
        let own = std::fs::File::create(witness_dir.join("5")).unwrap();
        let files = Files::open(&state, super::super::dir::Trust::new(&[])).unwrap();
        let mut waker = FileWaker {
            notifier: super::super::notify::Notifier::new(&files, Some(own.as_fd())),
            kept: Arc::default(),
            rewatched: false,
        };
        assert!(waker.prompt(), "inotify on a local directory");
        waker.set_head(false);
        // Behind the head: nothing pending, so a short wait ends without a notice.
        let woke = waker.wait(Duration::from_millis(1), None);
        assert!(!woke.changed, "{woke:?}");
        waker.set_head(true);
        let woke = waker.wait(Duration::from_secs(60), None);
        assert!(woke.changed && !woke.died && !woke.lost, "{woke:?}");
        // Once: still at the head, the directory is already watched.
        waker.set_head(true);
        let woke = waker.wait(Duration::from_millis(1), None);
        assert!(!woke.changed, "{woke:?}");
    }

    #[test]
    fn a_notifier_kept_between_waits_serves_the_next_waiter_only() {
        // A handle reuses its inotify instance: the next waiter is woken by writers that touch
        // its own witness, not the previous waiter's, and by writes while it is the head,
        // however the previous waiter left the directory watch; nothing queued for the
        // previous waiter wakes it.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.json");
        let witness_dir = super::super::witness::dir_of(&state);
        std::fs::create_dir(&witness_dir).unwrap();
        let first = std::fs::File::create(witness_dir.join("5")).unwrap();
        let second = std::fs::File::create(witness_dir.join("6")).unwrap();
        let files = Files::open(&state, super::super::dir::Trust::new(&[])).unwrap();
        let kept = KeptNotifiers::default();
        let wdir = super::super::witness::open_dir_for_probe(&files)
            .unwrap()
            .unwrap();
        let replace = || {
            let temp = dir.path().join(".tmp");
            std::fs::write(&temp, b"{}").unwrap();
            std::fs::rename(&temp, &state).unwrap();
        };
        let fd_of = |w: &FileWaker| {
            use std::os::fd::AsRawFd;
            w.notifier.as_ref().unwrap().fd().unwrap().as_raw_fd()
        };

        let mut waker = FileWaker::new(&files, Some(first.as_fd()), &kept);
        assert!(waker.prompt(), "inotify on a local directory");
        let used = fd_of(&waker);
        waker.set_head(false);
        // Left queued for the first waiter: a touch of its witness.
        super::super::witness::touch(wdir.as_fd(), 5);
        drop(waker);

        let mut waker = FileWaker::new(&files, Some(second.as_fd()), &kept);
        assert_eq!(fd_of(&waker), used, "the same instance");
        waker.set_head(false);
        let woke = waker.wait(Duration::from_millis(1), None);
        assert!(!woke.changed, "nothing left for the first waiter: {woke:?}");
        super::super::witness::touch(wdir.as_fd(), 5);
        replace();
        let woke = waker.wait(Duration::from_millis(1), None);
        assert!(
            !woke.changed,
            "neither its old witness nor a write: {woke:?}"
        );
        super::super::witness::touch(wdir.as_fd(), 6);
        let woke = waker.wait(Duration::from_secs(60), None);
        assert!(woke.changed && !woke.died, "its own witness: {woke:?}");
        drop(waker);

        // The next one starts watching the directory, though the last one did not.
        let mut waker = FileWaker::new(&files, None, &kept);
        assert_eq!(fd_of(&waker), used, "the same instance");
        replace();
        let woke = waker.wait(Duration::from_secs(60), None);
        assert!(woke.changed && !woke.died, "a write: {woke:?}");
        // Deaths are seen as before.
        drop(std::fs::File::create(witness_dir.join("7")).unwrap());
        let woke = waker.wait(Duration::from_secs(60), None);
        assert!(woke.changed && woke.died, "a witness closed: {woke:?}");
    }
}
