//! How a waiter sleeps between looks at the state file: in `poll(2)` on an inotify descriptor
//! (Linux, [`crate::store::file::notify`]) and on its cancel token's socket, with a backoff timer as the
//! safety net; polling with bounded backoff and jitter where no notification is available.

use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::cancel::{CancelToken, Registration};
use crate::semaphore::Semaphore;

/// Safety-net timer with prompt notification (inotify on a local filesystem): events cover
/// every write, so the timer only matters for what no write announces (an entry's expiry, a
/// death). 100 ms doubling to 1 s: about 10 looks per 10 s asleep.
const PROMPT_FIRST: Duration = Duration::from_millis(100);
const PROMPT_MAX: Duration = Duration::from_secs(1);

/// Polling without notification (or on a network filesystem): 5 ms doubling to 250 ms, back
/// to 5 ms whenever the state changed. A hand-off right after queueing is seen within a few
/// ms; a long wait costs 4 looks a second (a snapshot read is tens of microseconds), and the
/// worst-case wake-up latency is the polling peers' best.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(250);

/// How often the cancel flag is checked when no wake-up socket could be made.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// Unit tests switch inotify off to exercise the polling fallback.
#[cfg(test)]
static FORCE_POLLING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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

/// Sleeps between looks: in `poll(2)` on the change notifier and the cancel socket, with a
/// backoff timer as the safety net.
pub(crate) struct Sleeper {
    #[cfg(target_os = "linux")]
    notifier: Option<crate::store::file::notify::Notifier>,
    cancel: Option<Registration>,
    backoff: Duration,
}

impl Sleeper {
    pub(crate) fn new(sem: &Semaphore, cancel: Option<&CancelToken>) -> Sleeper {
        let mut sleeper = Sleeper {
            #[cfg(target_os = "linux")]
            notifier: if polling_forced() {
                None
            } else {
                crate::store::file::notify::Notifier::new(&sem.inner.store.files)
            },
            cancel: cancel.and_then(CancelToken::register),
            backoff: Duration::ZERO,
        };
        #[cfg(not(target_os = "linux"))]
        let _ = sem;
        sleeper.reset();
        sleeper
    }

    /// Whether every local write raises an event.
    fn prompt(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.notifier.as_ref().is_some_and(|n| !n.remote())
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    fn bounds(&self) -> (Duration, Duration) {
        if self.prompt() {
            (PROMPT_FIRST, PROMPT_MAX)
        } else {
            (POLL_FIRST, POLL_MAX)
        }
    }

    pub(crate) fn reset(&mut self) {
        self.backoff = self.bounds().0;
    }

    /// The next safety-net interval (jittered by a quarter either way); doubles the backoff.
    pub(crate) fn next_interval(&mut self) -> Duration {
        let (_, max) = self.bounds();
        let interval = crate::store::file::lock::jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(max);
        interval
    }

    /// Sleeps until `until`, a change of the state file, or cancellation, whichever is
    /// first. Signals (`EINTR`) only resume the sleep; `until` is absolute, so they never
    /// extend it.
    pub(crate) fn sleep_until(&mut self, until: Instant, cancel: Option<&CancelToken>) {
        loop {
            if cancel.is_some_and(CancelToken::is_cancelled) {
                return;
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            let mut wait = until - now;
            if cancel.is_some() && self.cancel.is_none() {
                wait = wait.min(CANCEL_CHECK);
            }
            let (notified, woken) = match self.poll_once(wait) {
                Ok(r) => r,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::debug!(%e, "poll failed; sleeping instead");
                    std::thread::sleep(wait.min(POLL_FIRST));
                    continue;
                }
            };
            if woken && let Some(r) = &self.cancel {
                let mut buf = [0u8; 16];
                while matches!((&r.reader).read(&mut buf), Ok(n) if n > 0) {}
            }
            if notified && self.drain() {
                return;
            }
        }
    }

    /// One `poll(2)`: returns (notifier readable, cancel socket readable).
    fn poll_once(&self, wait: Duration) -> std::result::Result<(bool, bool), Errno> {
        // Round up: waking before `until` would only cost another poll.
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
        if let Some(r) = &self.cancel {
            fds.push(PollFd::new(r.reader.as_fd(), PollFlags::POLLIN));
        }
        poll(&mut fds, timeout)?;
        let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
        let notified = fds[..notifier_fds].iter().any(ready);
        let woken = fds[notifier_fds..].iter().any(ready);
        Ok((notified, woken))
    }

    /// Reads the notifier's events; `true` if the state file changed (or the notifier broke,
    /// and the caller should look now and poll from then on).
    fn drain(&mut self) -> bool {
        #[cfg(target_os = "linux")]
        {
            use crate::store::file::notify::Events;
            let Some(n) = &self.notifier else {
                return false;
            };
            match n.drain() {
                Events::Unrelated => false,
                Events::Changed => true,
                Events::Broken => {
                    self.notifier = None;
                    self.reset();
                    true
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AcquireOptions, Error};

    #[test]
    fn polling_alone_serves_the_queue_and_honours_cancel() {
        // Without inotify (limits, network filesystems, other Unix) the timer finds the
        // hand-off, and a cancel still wakes the sleeper.
        use std::sync::mpsc;
        FORCE_POLLING.store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = Duration::from_secs(60);
        let dir = tempfile::tempdir().unwrap();
        let sem = crate::OpenOptions::new()
            .durable(false)
            .open(dir.path().join("s.json"), 1)
            .unwrap();
        let queued = |n: usize| {
            let start = Instant::now();
            while sem.waiters().unwrap().len() != n {
                assert!(start.elapsed() < deadline, "waiter never queued");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let first = sem.try_acquire("a").unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = sem.clone();
        std::thread::spawn(move || tx.send(waiter.acquire("b")).unwrap());
        queued(1);
        assert!(!Sleeper::new(&sem, None).prompt());
        first.release().unwrap();
        let second = rx.recv_timeout(deadline).unwrap().unwrap();
        assert_eq!(second.id(), "b");

        let token = CancelToken::new();
        let opts = AcquireOptions::new().cancel_token(&token);
        let (tx, rx) = mpsc::channel();
        let waiter = sem.clone();
        std::thread::spawn(move || tx.send(waiter.acquire_with("c", &opts)).unwrap());
        queued(1);
        token.cancel();
        let err = rx.recv_timeout(deadline).unwrap().unwrap_err();
        assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
        assert!(sem.waiters().unwrap().is_empty());
        FORCE_POLLING.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
