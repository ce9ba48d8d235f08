//! Change notices for the async API's waiters (features `redis` and `tokio`): the
//! semaphore's channel subscribed on an async pub/sub connection of the `redis` crate, read
//! by a task on the tokio runtime. No thread: the blocking [`Subscriber`](super::subscriber)
//! has one per handle; this is its counterpart for an async handle's watcher
//! (`crate::asynch::hub`), which keeps one [`Notices`] for all the handle's waiting tasks.
//!
//! The guarantees are the blocking subscriber's:
//!
//! - **A look after every subscription.** [`Status::subscriptions`] goes up once the server
//!   confirmed the subscription (the first, and each renewal after a broken connection):
//!   whatever changed while nothing was subscribed was announced to nobody, so the watcher
//!   looks again then. Every change committed after it is a message on the connection,
//!   counted in [`Status::notices`].
//! - **Failures never leave a waiter asleep.** The connection is opened (TCP, `AUTH` and
//!   `SELECT` from the URL, the engine's client) within the connect timeout and subscribed
//!   within the response timeout; when nothing came in for the response timeout, `PING`
//!   must be answered within it (a silently dead connection is noticed). A broken connection
//!   (`CLIENT KILL TYPE pubsub`, a restarted server) or one that could not be opened is
//!   dropped and opened again, pausing 50 ms doubling to 1 s between failed attempts;
//!   meanwhile [`Status::subscribed`] is `false`, and the watcher's safety-net timer runs at
//!   the polling pace.
//! - **No connection without waiters.** Dropping the [`Notices`] (the watcher ends when the
//!   last waiting task of the handle stops watching) aborts the task, which closes the
//!   connection; so does the runtime's shutdown.

use std::pin::Pin;
use std::time::Duration;

use ::redis::aio::PubSubStream;
use ::redis::{Client, Msg};
use futures_core::Stream;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::engine::{Engine, EngineOptions};
use super::failure::{FailureKind, Phase, RedisFailure};

/// The first pause before reopening a broken subscription; it doubles up to
/// [`MAX_RECONNECT_PAUSE`] (as the blocking subscriber's).
const FIRST_RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// The longest pause between two attempts to reopen a subscription.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Where the subscription is; the task publishes a new one at every change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Status {
    /// Whether the channel is subscribed right now (`false` before the first subscription
    /// and while reconnecting).
    pub subscribed: bool,
    /// How many times the channel was subscribed: 1 after the first subscription, plus one
    /// per renewal after a broken connection.
    pub subscriptions: u64,
    /// Change notices received so far.
    pub notices: u64,
}

/// The change notices of one semaphore for an async handle's watcher: a task on the
/// runtime that listens on a pub/sub connection of its own. Dropping it ends the task and
/// closes the connection.
pub(crate) struct Notices {
    status: watch::Receiver<Status>,
    task: AbortHandle,
}

impl Engine {
    /// Starts listening for this semaphore's change notices in a task on the current tokio
    /// runtime (it must be called inside one); returns at once. Connection failures do not
    /// surface: the task tries again, and [`Status::subscribed`] says whether notices come.
    pub(crate) fn subscribe_async(&self) -> Notices {
        let (tx, status) = watch::channel(Status::default());
        let listener = Listener {
            client: self.client().clone(),
            options: *self.options(),
            channel: self.channel().to_string(),
            shown: self.location().to_string(),
        };
        let task = tokio::spawn(listener.run(tx)).abort_handle();
        Notices { status, task }
    }
}

impl Notices {
    /// Waits until the status changes (a notice, a subscription, a lost connection) and
    /// returns it; `None` if the task ended (its runtime shut down). Cancel safe: a change
    /// is seen by the next call if this one was dropped.
    pub(crate) async fn changed(&mut self) -> Option<Status> {
        self.status.changed().await.ok()?;
        Some(*self.status.borrow_and_update())
    }
}

impl Drop for Notices {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The next message of `stream`; `None` once the connection is gone.
async fn next(stream: &mut PubSubStream) -> Option<Msg> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// The task's side.
struct Listener {
    client: Client,
    options: EngineOptions,
    channel: String,
    shown: String,
}

impl Listener {
    /// Subscribes, listens until the connection breaks, and again, until nobody watches.
    async fn run(self, tx: watch::Sender<Status>) {
        let mut pause = FIRST_RECONNECT_PAUSE;
        loop {
            let before = tx.borrow().subscriptions;
            let failure = tokio::select! {
                failure = self.session(&tx) => failure,
                () = tx.closed() => return,
            };
            tx.send_if_modified(|s| std::mem::replace(&mut s.subscribed, false));
            if tx.borrow().subscriptions > before {
                // It had worked: try again soon.
                pause = FIRST_RECONNECT_PAUSE;
            }
            tracing::debug!(location = %self.shown, error = %failure, "Redis change notices interrupted; reconnecting");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = tx.closed() => return,
            }
            pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
        }
    }

    /// One connection: open, subscribe, announce the subscription (the watcher looks
    /// again), then count the notices until the connection breaks; returns why it ended.
    async fn session(&self, tx: &watch::Sender<Status>) -> RedisFailure {
        let o = &self.options;
        let timed_out =
            |during, after| RedisFailure::new(&self.shown, FailureKind::Timeout { during, after });
        let fail = |during, timeout, e| RedisFailure::from_redis(&self.shown, during, timeout, e);
        let pubsub =
            match tokio::time::timeout(o.connect_timeout, self.client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(e)) => return fail(Phase::Connect, o.connect_timeout, e),
                Err(_) => return timed_out(Phase::Connect, o.connect_timeout),
            };
        let (mut sink, mut stream) = pubsub.split();
        match tokio::time::timeout(o.response_timeout, sink.subscribe(&self.channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return fail(Phase::Subscribe, o.response_timeout, e),
            Err(_) => return timed_out(Phase::Subscribe, o.response_timeout),
        }
        tx.send_modify(|s| {
            s.subscribed = true;
            s.subscriptions += 1;
        });
        loop {
            match tokio::time::timeout(o.response_timeout, next(&mut stream)).await {
                Ok(Some(message)) => {
                    if message.get_channel_name() == self.channel {
                        tx.send_modify(|s| s.notices += 1);
                    }
                }
                Ok(None) => {
                    return RedisFailure::new(
                        &self.shown,
                        FailureKind::Disconnected {
                            during: Phase::Subscribe,
                        },
                    );
                }
                Err(_) => {
                    // Nothing for a while: make sure the connection still answers. Notices
                    // that come meanwhile wait in the stream.
                    let ping = sink.ping::<::redis::Value>();
                    match tokio::time::timeout(o.response_timeout, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return fail(Phase::Subscribe, o.response_timeout, e),
                        Err(_) => return timed_out(Phase::Subscribe, o.response_timeout),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::location::Location;
    use super::super::tests::redis_server::RedisServer;
    use super::*;

    /// How long any expected change may take: generous, the machine is shared.
    const DEADLINE: Duration = Duration::from_secs(30);

    fn engine(server: &RedisServer) -> Engine {
        let options = EngineOptions {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            replicas: None,
        };
        Engine::new(Location::parse(&server.url("sem")).unwrap(), options).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A plain connection, to publish and meddle behind the listener's back.
    fn raw(server: &RedisServer) -> ::redis::Connection {
        ::redis::Client::open(server.server_url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    fn command(server: &RedisServer, args: &[&str]) -> ::redis::Value {
        let mut cmd = ::redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut raw(server)).unwrap()
    }

    /// Subscribers of `channel` on the server (`PUBSUB NUMSUB`).
    fn subscribers(server: &RedisServer, channel: &str) -> i64 {
        let (_, n): (String, i64) = ::redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut raw(server))
            .unwrap();
        n
    }

    /// Waits until the status satisfies `done` (it may already); fails after [`DEADLINE`].
    async fn until(notices: &mut Notices, what: &str, done: impl Fn(&Status) -> bool) -> Status {
        let start = Instant::now();
        loop {
            let now = *notices.status.borrow_and_update();
            if done(&now) {
                return now;
            }
            let left = DEADLINE.saturating_sub(start.elapsed());
            tokio::time::timeout(left, notices.changed())
                .await
                .unwrap_or_else(|_| panic!("never {what}: {now:?}"))
                .expect("the listening task runs");
        }
    }

    #[test]
    fn async_notices_count_the_channels_messages_and_resubscribe_after_a_kill() {
        // Subscribed once, a message on the semaphore's channel counts and one on another
        // does not; a killed connection shows as unsubscribed, then subscribed again.
        let Some(server) = RedisServer::start() else {
            return;
        };
        let engine = engine(&server);
        let channel = engine.channel().to_string();
        let rt = runtime();
        let mut notices = rt.block_on(async { engine.subscribe_async() });
        let s = rt.block_on(until(&mut notices, "subscribed", |s| s.subscribed));
        assert_eq!((s.subscriptions, s.notices), (1, 0));
        command(&server, &["PUBLISH", "other", "x"]);
        command(&server, &["PUBLISH", &channel, "x"]);
        let s = rt.block_on(until(&mut notices, "notified", |s| s.notices > 0));
        assert_eq!((s.subscribed, s.subscriptions, s.notices), (true, 1, 1));

        command(&server, &["CLIENT", "KILL", "TYPE", "pubsub"]);
        rt.block_on(until(&mut notices, "unsubscribed", |s| !s.subscribed));
        let s = rt.block_on(until(&mut notices, "subscribed again", |s| s.subscribed));
        assert_eq!(s.subscriptions, 2);
        command(&server, &["PUBLISH", &channel, "x"]);
        let s = rt.block_on(until(&mut notices, "notified again", |s| s.notices > 1));
        assert_eq!(s.notices, 2);
    }

    #[test]
    fn async_notices_of_a_dead_server_subscribe_once_it_is_back() {
        // Starting never waits for the server: nothing is subscribed while it is down, and
        // the subscription comes when the server does.
        let Some(mut server) = RedisServer::start() else {
            return;
        };
        let engine = engine(&server);
        server.kill();
        let rt = runtime();
        let mut notices = rt.block_on(async { engine.subscribe_async() });
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
        assert_eq!(*notices.status.borrow(), Status::default());
        server.restart();
        let s = rt.block_on(until(&mut notices, "subscribed", |s| s.subscribed));
        assert_eq!(s.subscriptions, 1);
    }

    #[test]
    fn dropping_async_notices_closes_their_subscription() {
        // The listening task ends with its notices: no connection is left subscribed, even
        // with the runtime still running.
        let Some(server) = RedisServer::start() else {
            return;
        };
        let engine = engine(&server);
        let channel = engine.channel().to_string();
        let rt = runtime();
        let mut notices = rt.block_on(async { engine.subscribe_async() });
        rt.block_on(until(&mut notices, "subscribed", |s| s.subscribed));
        assert_eq!(subscribers(&server, &channel), 1);
        drop(notices);
        let start = Instant::now();
        while subscribers(&server, &channel) != 0 {
            assert!(
                start.elapsed() < DEADLINE,
                "the subscription outlived its notices"
            );
            // The runtime runs (and drops the aborted task) while it sleeps.
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        }
    }
}
