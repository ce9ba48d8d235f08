//! Change notices for waiters: a pub/sub connection subscribed to the semaphore's channel.
//!
//! A [`Subscriber`] owns a thread with its own connection, subscribed to
//! [`Engine::channel`](super::engine::Engine::channel), where every committed change is
//! announced by the compare-and-swap script. Each notice (and each re-subscription after a
//! broken connection, since notices may have been missed meanwhile) advances a generation
//! counter under a mutex and wakes every waiting thread through a condition variable.
//!
//! The protocol for a waiter, so that no notice is missed: take a [`Mark`] *before* looking at
//! the state, look, then [`wait`](Subscriber::wait) with the mark; a change committed after the
//! mark was taken ends the wait at once. One subscriber can serve every waiter of a handle.
//!
//! Failures never hang a waiter: the thread reads with the response timeout and, when
//! nothing came in that long, sends `PING` and expects the answer within the response timeout
//! (so a silently dead connection is noticed). A broken connection is dropped and reopened
//! (pausing 50 ms doubling to 1 s between failed attempts); meanwhile
//! [`wait`](Subscriber::wait) simply sleeps until its deadline: the caller's timer is the
//! safety net.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redis::{Client, Connection};

use super::engine::{Engine, EngineOptions};
use super::failure::{FailureKind, Phase, RedisFailure};

/// The first pause before reopening a broken subscription; it doubles up to
/// [`MAX_RECONNECT_PAUSE`].
const FIRST_RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// The longest pause between two attempts to reopen a subscription.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// A point in the sequence of notices, taken before looking at the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark(u64);

/// How a [`Subscriber::wait`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A change was announced after the mark (or the subscription was renewed, and one may
    /// have been missed): look again.
    Changed,
    /// The deadline passed with no notice.
    TimedOut,
}

/// The state the listening thread shares with waiters.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

struct State {
    /// Advanced by every notice and every re-subscription.
    generation: u64,
    /// Whether the channel is subscribed right now.
    subscribed: bool,
    /// Subscriptions made (1 after the first, +1 per renewal).
    subscriptions: u64,
    /// The first attempt's failure, for [`Engine::subscribe`] to return.
    first_failure: Option<RedisFailure>,
    /// Whether the first attempt has ended (well or not).
    started: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A waker for waiters of one semaphore (see the module docs). Dropping it stops its thread
/// (within the response timeout) without waiting for it.
pub(crate) struct Subscriber {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Subscriber")
            .field("generation", &state.generation)
            .field("subscribed", &state.subscribed)
            .finish()
    }
}

impl Engine {
    /// Subscribes to this semaphore's change notices on a connection of its own. Returns once
    /// the subscription is in place, so that a waiter's first look (after
    /// [`Subscriber::mark`]) cannot miss a change.
    ///
    /// # Errors
    ///
    /// The failure of the first attempt to connect and subscribe
    /// ([`FailureKind::Unreachable`], [`FailureKind::Timeout`], [`FailureKind::Auth`], ...),
    /// or [`FailureKind::Local`] if the thread cannot be started. Later failures do not
    /// surface: the subscriber reconnects, and waits fall back to their deadline.
    pub(crate) fn subscribe(&self) -> Result<Subscriber, RedisFailure> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                subscribed: false,
                subscriptions: 0,
                first_failure: None,
                started: false,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let listener = Listener {
            shared: Arc::clone(&shared),
            client: self.client().clone(),
            options: *self.options(),
            channel: self.channel().to_string(),
            shown: self.location().to_string(),
        };
        let shown = listener.shown.clone();
        std::thread::Builder::new()
            .name("filesem-redis-notices".into())
            .spawn(move || listener.run())
            .map_err(|e| {
                RedisFailure::new(
                    &shown,
                    FailureKind::Local {
                        detail: format!("cannot start the thread that listens for changes: {e}"),
                    },
                )
            })?;
        let subscriber = Subscriber { shared };
        // The first attempt ends within the connect timeout plus one response timeout per
        // command; the margin only guards against a stalled thread.
        let o = self.options();
        let limit = Instant::now()
            + o.connect_timeout
            + o.response_timeout.saturating_mul(2)
            + Duration::from_secs(1);
        let mut state = subscriber.shared.lock();
        while !state.started {
            let left = limit.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RedisFailure::new(
                    &shown,
                    FailureKind::Timeout {
                        during: Phase::Subscribe,
                        after: o.connect_timeout + o.response_timeout,
                    },
                ));
            }
            state = subscriber
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if let Some(failure) = state.first_failure.take() {
            return Err(failure);
        }
        drop(state);
        Ok(subscriber)
    }
}

impl Subscriber {
    /// The current point in the sequence of notices; take it before looking at the state.
    pub(crate) fn mark(&self) -> Mark {
        Mark(self.shared.lock().generation)
    }

    /// Sleeps until a change is announced after `mark`, or until `until`. Returns at once
    /// if one was announced since `mark` was taken. While the subscription is broken, it
    /// sleeps until `until` (unless the renewed subscription wakes it first).
    pub(crate) fn wait(&self, mark: Mark, until: Instant) -> Wake {
        let mut state = self.shared.lock();
        loop {
            if state.generation != mark.0 {
                return Wake::Changed;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wake::TimedOut;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Whether the channel is subscribed right now (`false` while reconnecting).
    pub(crate) fn is_subscribed(&self) -> bool {
        self.shared.lock().subscribed
    }

    /// How many times the channel was subscribed: 1, plus one per renewal after a broken
    /// connection.
    pub(crate) fn subscriptions(&self) -> u64 {
        self.shared.lock().subscriptions
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
    }
}

/// The listening thread's side.
struct Listener {
    shared: Arc<Shared>,
    client: Client,
    options: EngineOptions,
    channel: String,
    shown: String,
}

impl Listener {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Subscribes, listens until the connection breaks, and again, until stopped. If the
    /// very first attempt fails, reports that to [`Engine::subscribe`] and ends.
    fn run(self) {
        let mut pause = FIRST_RECONNECT_PAUSE;
        while !self.stopped() {
            let before = self.shared.lock().subscriptions;
            let ended = self.session(before == 0);
            let mut state = self.shared.lock();
            state.subscribed = false;
            if state.subscriptions == 0 {
                state.first_failure = ended.err();
                state.started = true;
                drop(state);
                self.shared.changed.notify_all();
                return;
            }
            let Err(failure) = ended else {
                return; // Stopped.
            };
            if state.subscriptions > before {
                // It had worked: try again soon.
                pause = FIRST_RECONNECT_PAUSE;
            }
            tracing::debug!(location = %self.shown, error = %failure, "Redis change notices interrupted; reconnecting");
            // Pause on the condition variable, so that dropping the subscriber ends it.
            let until = Instant::now() + pause;
            while !self.stopped() {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .shared
                    .changed
                    .wait_timeout(state, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            drop(state);
            pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
        }
    }

    /// One connection: subscribe, report it, listen. `Ok` when stopped, the failure when
    /// the connection could not be opened or broke.
    fn session(&self, first: bool) -> Result<(), RedisFailure> {
        let o = &self.options;
        let fail = |during, timeout, e| RedisFailure::from_redis(&self.shown, during, timeout, e);
        let mut con: Connection = self
            .client
            .get_connection_with_timeout(o.connect_timeout)
            .map_err(|e| fail(Phase::Connect, o.connect_timeout, e))?;
        let listen = |e| fail(Phase::Subscribe, o.response_timeout, e);
        con.set_write_timeout(Some(o.response_timeout))
            .map_err(listen)?;
        let mut pubsub = con.as_pubsub();
        pubsub
            .set_read_timeout(Some(o.response_timeout))
            .map_err(listen)?;
        pubsub.subscribe(&self.channel).map_err(listen)?;
        {
            let mut state = self.shared.lock();
            state.subscribed = true;
            state.subscriptions += 1;
            state.started = true;
            if !first {
                // Notices sent while the connection was down are lost: make waiters look.
                state.generation += 1;
            }
        }
        self.shared.changed.notify_all();
        while !self.stopped() {
            match pubsub.get_message() {
                Ok(message) if message.get_channel_name() == self.channel => {
                    self.shared.lock().generation += 1;
                    self.shared.changed.notify_all();
                }
                Ok(_) => {}
                Err(e) if e.is_timeout() => {
                    // Nothing for a while: make sure the connection still answers.
                    if self.stopped() {
                        break;
                    }
                    pubsub.ping::<::redis::Value>().map_err(listen)?;
                }
                Err(e) => return Err(listen(e)),
            }
        }
        Ok(())
    }
}
