//! The Redis store's waker: `poll(2)` on the waiter's doorbell (rung by the handle's
//! [`Subscriber`] for every change notice) and on its cancel socket, so that one wait ends
//! at whichever comes first. Without a subscriber or a doorbell it has no notices, and the
//! sleeper's timer polls at its fast pace.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::subscriber::{Doorbell, Subscriber};
use crate::store::Woke;

/// How long a waiter pauses when `poll(2)` fails, before it tries again: the polling pace.
const PAUSE_AFTER_POLL_FAILURE: Duration = Duration::from_millis(5);

/// Change notices for one waiter of a Redis semaphore.
pub(crate) struct RedisWaker {
    /// Kept so that the subscription lives at least as long as this wait.
    subscriber: Option<Arc<Subscriber>>,
    /// Registered when the waker is made, before the waiter's first look.
    bell: Option<Doorbell>,
}

impl RedisWaker {
    /// A waker with a doorbell of `subscriber`, if there is one.
    pub fn new(subscriber: Option<Arc<Subscriber>>) -> RedisWaker {
        let bell = subscriber.as_ref().and_then(|s| s.doorbell());
        RedisWaker { subscriber, bell }
    }

    /// Whether every committed change rings the doorbell now: the channel is subscribed.
    pub fn prompt(&self) -> bool {
        self.bell.is_some() && self.subscriber.as_ref().is_some_and(|s| s.is_subscribed())
    }

    /// One `poll(2)` of at most `wait` on the doorbell and `cancel`. A signal (`EINTR`) ends
    /// it with nothing; a failed `poll` pauses briefly instead (the caller's timer still
    /// bounds the wait).
    pub fn wait(&mut self, wait: Duration, cancel: Option<BorrowedFd<'_>>) -> Woke {
        // Round up: waking before the caller's time would only cost another poll.
        let ms = wait
            .as_nanos()
            .div_ceil(1_000_000)
            .clamp(1, i32::MAX as u128);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = Vec::with_capacity(2);
        if let Some(bell) = &self.bell {
            fds.push(PollFd::new(bell.fd(), PollFlags::POLLIN));
        }
        let bells = fds.len();
        if let Some(fd) = cancel {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {
                let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
                let rung = fds[..bells].iter().any(ready);
                let cancelled = fds[bells..].iter().any(ready);
                drop(fds);
                let changed = rung && self.bell.as_ref().is_some_and(Doorbell::take);
                Woke {
                    changed,
                    // A notice says nothing of what changed: judge the entries at every look.
                    died: changed,
                    cancelled,
                    lost: false,
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
}
