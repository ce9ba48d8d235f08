//! The async API on a Redis semaphore (features `tokio` and `redis`), each test with a
//! private `redis-server` (SKIPPED without one, a failure under `CI=true`): every operation
//! on both runtimes, a thousand waiting tasks served in arrival order on one pub/sub
//! connection and no thread each, cancellation storms, the blocked-runtime detector, a
//! killed pub/sub connection, and async and blocking processes sharing one key with an
//! independent capacity checker.
//!
//! Every test here is `#[serial]`: one counts the threads of the process, and the timings
//! of the blocked-runtime detector should not include other tests' work.

#[path = "common/asynch.rs"]
mod asynch;
mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use asynch::{DEADLINE, current_thread, multi_thread, queued};
use filesem::{AcquireOptions, AsyncSemaphore, Error, OpenOptions, Semaphore};
use redis_server::RedisServer;
use serial_test::serial;

/// Timeouts short enough that a killed connection costs a waiter a second, not the test's
/// deadline; a lock timeout long enough for a loaded machine.
fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.connect_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .lock_timeout(Duration::from_secs(30));
    o
}

async fn open(url: &str, capacity: u32) -> AsyncSemaphore {
    AsyncSemaphore::open_redis_with(&options(), url, capacity)
        .await
        .unwrap()
}

/// A plain connection of the `redis` crate to the test's server.
fn raw(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.server_url())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap()
}

/// The pub/sub connections the server has open now (`CLIENT LIST TYPE pubsub`).
fn pubsub_clients(server: &RedisServer) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut raw(server))
        .unwrap();
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Waits (without blocking the runtime) until `done` holds, off the runtime's threads.
async fn until(what: &str, done: impl Fn() -> bool + Send + Sync + 'static) {
    let done = Arc::new(done);
    let start = Instant::now();
    loop {
        let check = Arc::clone(&done);
        if tokio::task::spawn_blocking(move || check()).await.unwrap() {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "never {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every operation of the async API on a Redis key, checked by value.
async fn every_operation(server: &RedisServer) {
    let url = server.url("ops");
    let sem = open(&url, 1).await;
    assert_eq!(
        sem.path().to_str().unwrap(),
        format!("redis://127.0.0.1:{}/0/ops", server.port())
    );

    let a = asynch::every_operation_up_to_the_first_hold(&sem).await;
    assert!(a.lease().is_some(), "a Redis hold has a lease");
    let until_a = a.renew().await.unwrap().expect("a lease to extend");
    assert!(until_a > chrono::Utc::now());
    // A 30 s lease renewed now ends more than 25 s from now.
    asynch::every_operation_after_the_first_hold(&sem, a, Duration::from_secs(5)).await;

    // open_redis_existing adopts the key's capacity, creates nothing.
    let existing = AsyncSemaphore::open_redis_existing(&url).await.unwrap();
    assert_eq!(existing.capacity().await.unwrap(), 2);
    let missing = AsyncSemaphore::open_redis_existing(&server.url("nope")).await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
    let mut exclusive = options();
    exclusive.create_new(true);
    let taken = AsyncSemaphore::open_redis_with(&exclusive, &url, 2).await;
    assert!(
        matches!(taken, Err(Error::AlreadyExists { .. })),
        "{taken:?}"
    );
    let bad = AsyncSemaphore::open_redis("redis://:hunter2@127.0.0.1:1", 1).await;
    match bad {
        Err(Error::InvalidLocation { path, .. }) => {
            assert!(!path.display().to_string().contains("hunter2"), "{path:?}")
        }
        other => panic!("{other:?}"),
    }

    // recover_redis moves a garbage key aside.
    let corrupt = server.url("corrupt");
    let () = redis::cmd("SET")
        .arg("corrupt")
        .arg("{\"capacity\": 2, \"hold")
        .query(&mut raw(server))
        .unwrap();
    let refused = AsyncSemaphore::open_redis(&corrupt, 2).await;
    assert!(matches!(refused, Err(Error::Corrupt { .. })), "{refused:?}");
    let recovered = AsyncSemaphore::recover_redis(&corrupt, 2).await.unwrap();
    let aside = recovered.moved_to.expect("moved aside");
    assert!(
        aside.display().to_string().contains("/0/corrupt.corrupt-"),
        "{aside:?}"
    );
    assert_eq!(recovered.semaphore.available().await.unwrap(), 2);
    let valid = AsyncSemaphore::recover_redis_with(&options(), &corrupt, 2)
        .await
        .unwrap();
    assert!(valid.moved_to.is_none(), "a valid key is left as it is");
}

#[test]
#[serial]
fn every_operation_works_on_a_redis_key_on_a_current_thread_runtime() {
    // The async API does on a Redis key what the blocking one does, on a single-threaded
    // runtime.
    let Some(server) = RedisServer::start() else {
        return;
    };
    current_thread().block_on(every_operation(&server));
}

#[test]
#[serial]
fn every_operation_works_on_a_redis_key_on_a_multi_thread_runtime() {
    // The same on a multi-threaded runtime.
    let Some(server) = RedisServer::start() else {
        return;
    };
    multi_thread().block_on(every_operation(&server));
}

/// The threads of this process: how many, and their names.
fn threads() -> (usize, Vec<String>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let count = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .expect("Threads: line")
        .trim()
        .parse()
        .unwrap();
    let names = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    (count, names)
}

/// The threads the test may add while a thousand tasks wait, beyond the runtime's workers
/// and the handle's step and look threads: the process's keep-alive starter and the
/// holder's keep-alive thread (a Redis hold renews its lease), and one spare. A subscriber
/// thread per handle, or a thread per waiting task, would exceed it.
const SMALL_CONSTANT: usize = 3;

#[test]
#[serial]
fn a_thousand_waiting_tasks_on_redis_are_served_in_arrival_order_on_one_connection_without_a_thread_each()
 {
    // FIFO: tasks that queued one after the other get their slots in that order, with
    // increasing fencing tokens. Waiting is a task, not a thread: with 1,000 tasks waiting
    // the process has the runtime's threads, the handle's two and a small constant more, no
    // subscriber thread, and the server sees one pub/sub connection, closed once nobody
    // waits.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let n = 1000;
    let (before, _) = threads();
    let rt = multi_thread();
    let (order, (waiting, names), subscribed) = rt.block_on(async {
        let sem = open(&server.url("fifo"), 1).await;
        let holder = sem.try_acquire("holder").await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let (task_sem, tx) = (sem.clone(), tx.clone());
            // Told once the task is queued, so that the next one queues behind it.
            let (queued_tx, queued_rx) = tokio::sync::oneshot::channel();
            let queued_tx = std::sync::Mutex::new(Some(queued_tx));
            let opts = AcquireOptions::new().on_wait(move |_| {
                if let Some(tx) = queued_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            });
            tasks.push(tokio::spawn(async move {
                let permit = task_sem
                    .acquire_with(&format!("task-{i}"), &opts)
                    .await
                    .unwrap();
                tx.send((i, permit.token())).unwrap();
                permit.release().await.unwrap();
            }));
            tokio::time::timeout(DEADLINE, queued_rx)
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(sem.waiters().await.unwrap().len(), n);
        let threads_waiting = threads();
        let subscribed = pubsub_clients(&server);
        holder.release().await.unwrap();
        let mut order = Vec::with_capacity(n);
        for _ in 0..n {
            let got = tokio::time::timeout(DEADLINE, rx.recv())
                .await
                .unwrap()
                .unwrap();
            order.push(got);
        }
        for task in tasks {
            tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
        }
        assert!(sem.waiters().await.unwrap().is_empty());
        assert_eq!(sem.count().await.unwrap(), 0);
        // The last waiter stopped watching: the watcher ends and closes its connection.
        let watched = Arc::new(server.server_url());
        until("the pub/sub connection closed", move || {
            let client = redis::Client::open(watched.as_str()).unwrap();
            let mut con = client
                .get_connection_with_timeout(Duration::from_secs(5))
                .unwrap();
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut con)
                .unwrap();
            list.trim().is_empty()
        })
        .await;
        (order, threads_waiting, subscribed)
    });
    drop(rt);
    let served: Vec<usize> = order.iter().map(|&(i, _)| i).collect();
    assert_eq!(served, (0..n).collect::<Vec<_>>());
    assert!(order.windows(2).all(|w| w[0].1 < w[1].1), "tokens increase");
    eprintln!("threads: {before} before the runtime, {waiting} with {n} waiting tasks: {names:?}");
    assert_eq!(subscribed, 1, "one subscription for the handle's waiters");
    assert!(
        !names.iter().any(|t| t.starts_with("filesem-redis")),
        "no subscriber thread: {names:?}"
    );
    // 2 runtime workers, the 2 threads of the handle, and the small constant.
    assert!(
        waiting <= before + 2 + 2 + SMALL_CONSTANT,
        "{waiting} threads with {n} waiting tasks, {before} before: {names:?}"
    );
}

#[test]
#[serial]
fn a_cancellation_storm_on_redis_leaves_no_queue_entry_and_no_slot_behind() {
    // Waiters dropped at random moments (by timeouts, aborts and select!) leave the queue,
    // and slots handed to them as they were dropped are handed on: none is leaked, as the
    // blocking API reads the key afterwards.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let seed =
        common::seed("a_cancellation_storm_on_redis_leaves_no_queue_entry_and_no_slot_behind");
    let url = server.url("storm");
    multi_thread().block_on(async {
        let sem = open(&url, 3).await;
        asynch::cancellation_storm(&sem, seed, Duration::from_millis(30), DEADLINE).await;
    });
    // On the key too, through the blocking API of another handle.
    let blocking = Semaphore::open_redis_existing(&url).unwrap();
    assert_eq!(blocking.count().unwrap(), 0, "no slot left behind");
    assert!(
        blocking.waiters().unwrap().is_empty(),
        "no queue entry left"
    );
    assert_eq!(blocking.available().unwrap(), 3);
}

#[test]
#[serial]
fn the_runtime_keeps_ticking_while_tasks_wait_on_redis_and_the_server_stalls() {
    // No blocking call on the runtime's thread: a task that wakes every 5 ms on a
    // current_thread runtime is never held up for long while 50 tasks wait and release on a
    // Redis key, even while the server is stopped for 3 s (every step and the pub/sub ping
    // wait for it meanwhile).
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let mut slow = options();
    slow.response_timeout(Duration::from_secs(20));
    let url = server.url("ticks");
    let rt = current_thread();
    let sem = rt
        .block_on(AsyncSemaphore::open_redis_with(&slow, &url, 2))
        .unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let done = done.clone();
        rt.spawn(async move {
            let mut worst = Duration::ZERO;
            let mut last = Instant::now();
            while !done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let now = Instant::now();
                worst = worst.max(now - last);
                last = now;
            }
            worst
        })
    };
    let workers: Vec<_> = (0..50)
        .map(|i| {
            let sem = sem.clone();
            rt.spawn(async move {
                for round in 0..4 {
                    let permit = sem.acquire(&format!("w{i}-{round}")).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    permit.release().await.unwrap();
                }
            })
        })
        .collect();
    // The server stops answering for 3 s while the tasks run (this thread is not the
    // runtime's: the runtime runs only inside `block_on` below, on another thread).
    let stall = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        server.pause();
        std::thread::sleep(Duration::from_secs(3));
        server.resume();
        server
    });
    let worst = rt.block_on(async {
        for w in workers {
            tokio::time::timeout(DEADLINE * 2, w)
                .await
                .unwrap()
                .unwrap();
        }
        done.store(true, Ordering::SeqCst);
        ticker.await.unwrap()
    });
    let server = stall.join().unwrap();
    eprintln!("worst gap between 5 ms ticks: {worst:?}");
    let blocking = Semaphore::open_redis_existing(&server.url("ticks")).unwrap();
    assert_eq!(blocking.count().unwrap(), 0);
    // Generous for a shared machine; a step or a read on this thread would have waited out
    // the 3 s stop.
    assert!(
        worst < Duration::from_millis(2500),
        "the runtime stalled for {worst:?}"
    );
}

#[test]
#[serial]
fn opening_on_a_stopped_server_times_out_without_blocking_the_runtime() {
    // Connecting runs on the new handle's thread: while the open waits out its timeouts on
    // a stopped server, a task on the same current_thread runtime keeps ticking, and the
    // open ends with the typed timeout naming the URL without its password.
    let Some(mut server) = RedisServer::start_with_password("s3cret") else {
        return;
    };
    let mut slow = options();
    slow.connect_timeout(Duration::from_secs(3))
        .response_timeout(Duration::from_secs(3));
    server.pause();
    let url = format!("redis://:s3cret@127.0.0.1:{}/0/stopped", server.port());
    let (opened, worst) = current_thread().block_on(async {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let done = done.clone();
            tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                let mut last = Instant::now();
                while !done.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let now = Instant::now();
                    worst = worst.max(now - last);
                    last = now;
                }
                worst
            })
        };
        let opened =
            tokio::time::timeout(DEADLINE, AsyncSemaphore::open_redis_with(&slow, &url, 1))
                .await
                .expect("the open ended by its timeouts");
        done.store(true, Ordering::SeqCst);
        (opened, ticker.await.unwrap())
    });
    server.resume();
    match opened {
        Err(Error::RedisTimeout { path, .. }) => {
            let shown = path.display().to_string();
            assert!(shown.contains(":***@"), "{shown}");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        other => panic!("expected RedisTimeout, got {other:?}"),
    }
    eprintln!("worst gap between 5 ms ticks while opening: {worst:?}");
    // A connect on this thread would have stalled it for the whole 3 s timeout.
    assert!(
        worst < Duration::from_millis(2500),
        "the runtime stalled for {worst:?}"
    );
}

#[test]
#[serial]
fn waiting_tasks_are_still_served_after_their_pub_sub_connection_is_killed() {
    // `CLIENT KILL TYPE pubsub` closes the handle's subscription while tasks wait: they
    // look at the polling pace meanwhile and resubscribe, and every release still reaches
    // the next task in the queue, kill after kill.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("killed");
    multi_thread().block_on(async {
        let sem = open(&url, 1).await;
        let mut held = sem.try_acquire("holder").await.unwrap();
        // Queued one after the other: each release hands the slot to the next.
        let mut waiters = Vec::new();
        for i in 0..5 {
            let sem2 = sem.clone();
            waiters.push(tokio::spawn(async move {
                sem2.acquire(&format!("task-{i}")).await
            }));
            queued(&sem, i + 1).await;
        }
        let watched = Arc::new(server.server_url());
        let subscribed = {
            let watched = Arc::clone(&watched);
            move || {
                let client = redis::Client::open(watched.as_str()).unwrap();
                let mut con = client
                    .get_connection_with_timeout(Duration::from_secs(5))
                    .unwrap();
                let list: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query(&mut con)
                    .unwrap();
                !list.trim().is_empty()
            }
        };
        let mut served = Vec::new();
        for (round, waiter) in waiters.into_iter().enumerate() {
            until("the waiters subscribed", subscribed.clone()).await;
            let kill = Arc::clone(&watched);
            let killed = tokio::task::spawn_blocking(move || {
                let client = redis::Client::open(kill.as_str()).unwrap();
                let mut con = client
                    .get_connection_with_timeout(Duration::from_secs(5))
                    .unwrap();
                redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query::<u64>(&mut con)
                    .unwrap()
            })
            .await
            .unwrap();
            assert_eq!(killed, 1, "round {round}: the handle's one subscription");
            // Released right after the kill: before or after the resubscription.
            held.release().await.unwrap();
            held = tokio::time::timeout(DEADLINE, waiter)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the waiter was never served"))
                .unwrap()
                .unwrap();
            served.push(held.id().to_string());
        }
        assert_eq!(
            served,
            (0..5).map(|i| format!("task-{i}")).collect::<Vec<_>>()
        );
        held.release().await.unwrap();
        assert_eq!(sem.count().await.unwrap(), 0);
        // Nobody waits any more: the renewed subscription is closed too.
        until("the subscription closed", move || !subscribed()).await;
    });
}

#[test]
#[serial]
fn the_waiters_subscription_logs_in_with_the_urls_password_and_database() {
    // On a server that requires a password, with the key in database 3: the waiting tasks'
    // pub/sub connection authenticates and selects as the URL says, subscribes the channel
    // of that database's key, and the waiter is handed the slot.
    let Some(server) = RedisServer::start_with_password("s3cret") else {
        return;
    };
    let url = format!("redis://:s3cret@127.0.0.1:{}/3/auth/key", server.port());
    multi_thread().block_on(async {
        let sem = open(&url, 1).await;
        let held = sem.try_acquire("holder").await.unwrap();
        let waiter = {
            let sem = sem.clone();
            tokio::spawn(async move { sem.acquire("waiter").await })
        };
        queued(&sem, 1).await;
        let server_url = Arc::new(server.server_url());
        let subscribed = move || {
            let client = redis::Client::open(server_url.as_str()).unwrap();
            let mut con = client
                .get_connection_with_timeout(Duration::from_secs(5))
                .unwrap();
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut con)
                .unwrap();
            let channels: Vec<String> = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .query(&mut con)
                .unwrap();
            let lines: Vec<&str> = list.lines().filter(|l| !l.trim().is_empty()).collect();
            lines.len() == 1 && lines[0].contains(" db=3 ") && channels == ["filesem:3:{auth/key}"]
        };
        until("the waiters subscribed in database 3", subscribed).await;
        held.release().await.unwrap();
        let got = tokio::time::timeout(DEADLINE, waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.id(), "waiter");
        got.release().await.unwrap();
    });
}

#[test]
#[serial]
fn waiters_are_served_by_polling_when_the_user_may_not_subscribe() {
    // An ACL user who may do everything but SUBSCRIBE: the waiters' subscription is refused
    // again and again, and the waiting tasks still see every hand-off, at the polling pace.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("nosub")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-subscribe")
        .query(&mut raw(&server))
        .unwrap();
    let url = format!("redis://nosub:pw@127.0.0.1:{}/0/polled", server.port());
    multi_thread().block_on(async {
        let sem = open(&url, 1).await;
        let mut held = sem.try_acquire("holder").await.unwrap();
        for i in 0..3 {
            let waiter = {
                let sem = sem.clone();
                tokio::spawn(async move { sem.acquire(&format!("waiter-{i}")).await })
            };
            queued(&sem, 1).await;
            held.release().await.unwrap();
            held = tokio::time::timeout(DEADLINE, waiter)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(held.id(), format!("waiter-{i}"));
        }
        held.release().await.unwrap();
    });
    // The server refused the subscription (its ACL log names the command).
    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query(&mut raw(&server))
        .unwrap();
    let refused = format!("{log:?}");
    assert!(refused.contains("subscribe"), "{refused}");
}

// ------------------------------------------------------------------------ processes

/// Cycles of each task or thread of the worker processes.
const CYCLES: usize = 12;

#[test]
#[serial]
fn async_and_blocking_processes_share_a_redis_semaphore_within_its_capacity() {
    // Two processes of 6 async tasks and two of 6 blocking threads share 3 slots of one
    // Redis key; some async acquires are cancelled by short timeouts on the way. The
    // independent witness (marker files, not Redis) never sees more than 3 inside, every
    // grant is counted, no token is used twice, the key ends empty.
    let Some(server) = RedisServer::start() else {
        return;
    };
    asynch::async_and_blocking_processes(
        "async_and_blocking_processes_share_a_redis_semaphore_within_its_capacity",
        &asynch::Store::Redis(server.url("shared")),
        CYCLES,
    );
}

#[test]
#[ignore = "a child-process role, started by the tests in this file"]
fn child_process() {
    // Not a test of its own: the body of the worker processes the test above starts.
    match common::role().as_deref() {
        Some("async") => asynch::async_worker(&options()),
        Some("blocking") => asynch::blocking_worker(&options()),
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}

#[test]
#[serial]
fn a_waiter_on_redis_is_served_while_the_runtime_that_started_the_watcher_is_idle() {
    // The watcher of a handle (with its pub/sub connection) runs on the runtime of a waiting
    // task; a runtime that is alive but no longer driven (a current_thread runtime between
    // two `block_on`s) must not keep the waiters of other runtimes from being served.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let idle = current_thread();
    let sem = idle.block_on(open(&server.url("idle"), 1));
    asynch::served_while_the_first_watchers_runtime_is_idle(idle, &sem);
}
