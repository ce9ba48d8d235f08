//! How a waiter sleeps between looks at the document: until its store's [`Waker`] says
//! the document may have changed (the file store: inotify), its cancel token's socket wakes
//! it, or a backoff timer, the safety net for what no notice announces, runs out. The
//! backoff is the same for every store: slow when notices are prompt, fast (polling) when
//! there are none.

use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::cancel::{CancelToken, Registration};
use crate::store::Waker;

/// Safety-net timer with prompt notification (inotify on a local filesystem): events cover
/// every write, so the timer only matters for what no write announces (an entry's expiry, a
/// death). 100 ms doubling to 1 s: about 10 looks per 10 s asleep.
pub(crate) const PROMPT_FIRST: Duration = Duration::from_millis(100);
pub(crate) const PROMPT_MAX: Duration = Duration::from_secs(1);

/// Polling without notification (or on a network filesystem): 5 ms doubling to 250 ms, back
/// to 5 ms whenever the state changed. A hand-off right after queueing is seen within a few
/// ms; a long wait costs 4 looks a second (a snapshot read is tens of microseconds), and the
/// worst-case wake-up latency is the polling peers' best.
pub(crate) const POLL_FIRST: Duration = Duration::from_millis(5);
pub(crate) const POLL_MAX: Duration = Duration::from_millis(250);

/// How often the cancel flag is checked when no wake-up socket could be made.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// Sleeps between looks: until a notice of its waker, the cancel socket, or a backoff timer,
/// the safety net.
pub(crate) struct Sleeper {
    waker: Waker,
    cancel: Option<Registration>,
    backoff: Duration,
}

impl Sleeper {
    pub(crate) fn new(waker: Waker, cancel: Option<&CancelToken>) -> Sleeper {
        let mut sleeper = Sleeper {
            waker,
            cancel: cancel.and_then(CancelToken::register),
            backoff: Duration::ZERO,
        };
        sleeper.reset();
        sleeper
    }

    /// Whether every write raises a notice.
    fn prompt(&self) -> bool {
        self.waker.prompt()
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
        let interval = crate::store::jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(max);
        interval
    }

    /// Tells the waker whether the waiter is at the head of the queue (see
    /// [`Waker::set_head`]).
    pub(crate) fn set_head(&mut self, head: bool) {
        self.waker.set_head(head);
    }

    /// Sleeps until `until`, a change of the document, or cancellation, whichever is first.
    /// Signals only resume the sleep; `until` is absolute, so they never extend it.
    ///
    /// Returns whether the next look should judge the entries again: the timer ran out (it
    /// stands for what no write announces: an expiry, a death that closed no witness), a death
    /// may have been announced, or notices were lost. A notice of a write alone changes no
    /// verdict.
    pub(crate) fn sleep_until(&mut self, until: Instant, cancel: Option<&CancelToken>) -> bool {
        loop {
            if cancel.is_some_and(CancelToken::is_cancelled) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            let mut wait = until - now;
            if cancel.is_some() && self.cancel.is_none() {
                wait = wait.min(CANCEL_CHECK);
            }
            let socket = self.cancel.as_ref().map(|r| r.reader.as_fd());
            let woke = self.waker.wait(wait, socket);
            if woke.cancelled
                && let Some(r) = &self.cancel
            {
                let mut buf = [0u8; 16];
                while matches!((&r.reader).read(&mut buf), Ok(n) if n > 0) {}
            }
            if woke.lost {
                // No notices from now on: poll.
                self.reset();
            }
            if woke.changed {
                return woke.died || woke.lost;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::waker::FORCE_POLLING;
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
        assert!(!Sleeper::new(sem.inner.store.waker(None), None).prompt());
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
