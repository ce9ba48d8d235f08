//! Change notices for the blocking API's waiters: a pub/sub connection subscribed to the
//! semaphore's channel, ringing a doorbell (a socket) for each waiter. (The async API's
//! waiters listen on a connection of their own, read on the runtime: [`super::notices`].)
//!
//! A [`Subscriber`] owns a thread with its own connection, subscribed to
//! [`Engine::channel`](super::engine::Engine::channel), where every committed change is
//! announced by the compare-and-swap script. Each waiter registers a [`Doorbell`]: one end of
//! a socket pair whose other end the thread writes a byte to for every notice, and every
//! time the channel is subscribed (the first time, and again after a broken connection,
//! since notices may have been missed meanwhile). A waiter sleeps in `poll(2)` on its
//! doorbell together with anything else it waits for (its cancel token's socket), so one
//! wait covers both.
//!
//! The protocol for a waiter, so that no notice is missed: register the doorbell *before*
//! looking at the state, look, then wait for the doorbell; a notice committed after the
//! registration has left a byte in it, so the wait ends at once. One subscriber serves every
//! waiter of a handle.
//!
//! Failures never hang a waiter: the thread reads with the response timeout and, when
//! nothing came in that long, sends `PING` and expects the answer within the response timeout
//! (so a silently dead connection is noticed). A broken connection (or one that could not be
//! opened) is dropped and opened again, pausing 50 ms doubling to 1 s between failed
//! attempts; meanwhile no doorbell rings and [`is_subscribed`](Subscriber::is_subscribed)
//! is `false`: the caller's timer is the safety net.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use ::redis::{Client, Connection};

use super::engine::{Engine, EngineOptions};
use super::failure::{FailureKind, Phase, RedisFailure};

/// The first pause before reopening a broken subscription; it doubles up to
/// [`MAX_RECONNECT_PAUSE`].
const FIRST_RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// The longest pause between two attempts to reopen a subscription.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The state the listening thread shares with the subscriber and its doorbells.
struct Shared {
    state: Mutex<State>,
    /// Wakes the thread from its pause between reconnection attempts when it is stopped.
    stopped: Condvar,
    stop: AtomicBool,
    /// The writing ends of the registered doorbells. Weak: a waiter that is done drops its
    /// doorbell, and the entry is pruned at the next registration.
    bells: Mutex<Vec<Weak<UnixStream>>>,
}

struct State {
    /// Whether the channel is subscribed right now.
    subscribed: bool,
    /// Subscriptions made (1 after the first, +1 per renewal).
    subscriptions: u64,
    /// The last attempt's failure, if the channel is not subscribed because of one.
    failure: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a byte to every registered doorbell. Non-blocking: a full socket already
    /// holds a byte, and one is all a waiter needs.
    fn ring(&self) {
        let bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        for bell in bells.iter().filter_map(Weak::upgrade) {
            let _ = (&*bell).write(&[1]);
        }
    }
}

/// Change notices for the waiters of one semaphore (see the module docs). Dropping it stops
/// its thread (within the response timeout) without waiting for it.
pub(crate) struct Subscriber {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Subscriber")
            .field("subscribed", &state.subscribed)
            .field("subscriptions", &state.subscriptions)
            .finish()
    }
}

/// One waiter's doorbell: readable once a change was announced (or the channel subscribed)
/// after it was registered. Dropping it unregisters it.
pub(crate) struct Doorbell {
    reader: UnixStream,
    _writer: Arc<UnixStream>,
}

impl Doorbell {
    /// The descriptor to `poll(2)` for reading.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.reader.as_fd()
    }

    /// Empties the doorbell: `true` if it had rung since it was last emptied.
    pub(crate) fn take(&self) -> bool {
        let mut rung = false;
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.reader).read(&mut buf) {
            if n == 0 {
                break;
            }
            rung = true;
        }
        rung
    }
}

impl Engine {
    /// Starts listening for this semaphore's change notices on a connection of its own, in a
    /// thread of its own; returns at once. Register a [`Doorbell`] before looking at the
    /// state: it rings for every later notice, and when the channel is subscribed (which
    /// takes a round trip or two; until then, and while the connection is broken, nothing
    /// rings).
    ///
    /// # Errors
    ///
    /// [`FailureKind::Local`] if the thread cannot be started. Connection failures do not
    /// surface: the thread tries again (see [`Subscriber::failure`]).
    pub(crate) fn subscribe(&self) -> Result<Subscriber, RedisFailure> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                subscribed: false,
                subscriptions: 0,
                failure: None,
            }),
            stopped: Condvar::new(),
            stop: AtomicBool::new(false),
            bells: Mutex::new(Vec::new()),
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
        Ok(Subscriber { shared })
    }
}

impl Subscriber {
    /// Registers a doorbell; `None` when no socket pair could be made (then the caller has
    /// no notices and polls).
    pub(crate) fn doorbell(&self) -> Option<Doorbell> {
        let (reader, writer) = UnixStream::pair().ok()?;
        reader.set_nonblocking(true).ok()?;
        writer.set_nonblocking(true).ok()?;
        let writer = Arc::new(writer);
        let mut bells = self.shared.bells.lock().unwrap_or_else(|p| p.into_inner());
        bells.retain(|w| w.strong_count() > 0);
        bells.push(Arc::downgrade(&writer));
        Some(Doorbell {
            reader,
            _writer: writer,
        })
    }

    /// Whether the channel is subscribed right now (`false` before the first subscription
    /// and while reconnecting).
    pub(crate) fn is_subscribed(&self) -> bool {
        self.shared.lock().subscribed
    }

    /// How many times the channel was subscribed: 1 after the first subscription, plus one
    /// per renewal after a broken connection.
    #[cfg_attr(not(test), allow(dead_code))] // for tests and debugging
    pub(crate) fn subscriptions(&self) -> u64 {
        self.shared.lock().subscriptions
    }

    /// Why the channel is not subscribed, if the last attempt failed (the message of its
    /// [`RedisFailure`]).
    #[cfg_attr(not(test), allow(dead_code))] // for tests and debugging
    pub(crate) fn failure(&self) -> Option<String> {
        self.shared.lock().failure.clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.stopped.notify_all();
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

    /// Subscribes, listens until the connection breaks, and again, until stopped.
    fn run(self) {
        let mut pause = FIRST_RECONNECT_PAUSE;
        while !self.stopped() {
            let before = self.shared.lock().subscriptions;
            let ended = self.session();
            let mut state = self.shared.lock();
            state.subscribed = false;
            let Err(failure) = ended else {
                return; // Stopped.
            };
            if state.subscriptions > before {
                // It had worked: try again soon.
                pause = FIRST_RECONNECT_PAUSE;
            }
            tracing::debug!(location = %self.shown, error = %failure, "Redis change notices interrupted; reconnecting");
            state.failure = Some(failure.to_string());
            // Pause on the condition variable, so that dropping the subscriber ends it.
            let until = Instant::now() + pause;
            while !self.stopped() {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .shared
                    .stopped
                    .wait_timeout(state, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            drop(state);
            pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
        }
    }

    /// One connection: subscribe, ring every doorbell (notices may have been missed before),
    /// listen. `Ok` when stopped, the failure when the connection could not be opened or
    /// broke.
    fn session(&self) -> Result<(), RedisFailure> {
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
            state.failure = None;
        }
        // Whatever changed before the subscription was announced to nobody: look again.
        self.shared.ring();
        while !self.stopped() {
            match pubsub.get_message() {
                Ok(message) if message.get_channel_name() == self.channel => self.shared.ring(),
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
