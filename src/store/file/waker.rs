//! The file store's waker: `poll(2)` on an inotify descriptor watching the semaphore's
//! directories (Linux, [`notify`](super::notify)) and on the waiter's cancel socket. Without
//! inotify (instance limits, other Unix systems) it has no notifications, and the sleeper's
//! timer polls at its fast pace; on a network filesystem, where another machine's writes
//! raise no events, its notifications are not prompt.

use std::os::fd::BorrowedFd;
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

/// Change notices for one waiter of a file semaphore.
pub(crate) struct FileWaker {
    #[cfg(target_os = "linux")]
    notifier: Option<super::notify::Notifier>,
}

impl FileWaker {
    /// Watches the directories of `files` where inotify works (and is not switched off for a
    /// test); otherwise a waker without notifications.
    pub fn new(files: &Files) -> FileWaker {
        #[cfg(not(target_os = "linux"))]
        let _ = files;
        FileWaker {
            #[cfg(target_os = "linux")]
            notifier: if polling_forced() {
                None
            } else {
                super::notify::Notifier::new(files)
            },
        }
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
    /// events. A signal (`EINTR`) ends it with nothing; a failed `poll` pauses briefly
    /// instead (the caller's timer still bounds the wait).
    pub fn wait(&mut self, wait: Duration, cancel: Option<BorrowedFd<'_>>) -> Woke {
        match self.poll_once(wait, cancel) {
            Ok((notified, cancelled)) => {
                let (changed, lost) = if notified {
                    self.drain()
                } else {
                    (false, false)
                };
                Woke {
                    changed,
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

    /// The pending events, without waiting (see [`Waker::take`](crate::store::Waker::take)).
    #[cfg(feature = "tokio")]
    pub fn take(&mut self) -> Woke {
        let (changed, lost) = self.drain();
        Woke {
            changed,
            cancelled: false,
            lost,
        }
    }

    /// Reads the notifier's events: (the state file changed, or the notifier broke and the
    /// caller should look now; the notifier broke, and this waker has none from now on).
    fn drain(&mut self) -> (bool, bool) {
        #[cfg(target_os = "linux")]
        {
            use super::notify::Events;
            let Some(n) = &self.notifier else {
                return (false, false);
            };
            match n.drain() {
                Events::Unrelated => (false, false),
                Events::Changed => (true, false),
                Events::Broken => {
                    self.notifier = None;
                    (true, true)
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            (false, false)
        }
    }
}
