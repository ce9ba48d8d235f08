//! The async API (feature `tokio`): every operation on both runtimes, the queue's order with
//! a thousand waiting tasks, cancellation storms, no thread per waiting task, no blocking of
//! the runtime, and releases that outlive the runtime.
//!
//! Every test here is `#[serial]`: one counts the threads of the process, and the timings
//! of the blocked-runtime detector should not include other tests' work.

#[path = "common/asynch.rs"]
mod asynch;
mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use asynch::{DEADLINE, current_thread, multi_thread, queued};
use filesem::{AcquireOptions, AsyncSemaphore, Error, OpenOptions, Semaphore};
use serial_test::serial;

fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.durable(false).lock_timeout(Duration::from_secs(30));
    options
}

async fn open(path: &Path, capacity: u32) -> AsyncSemaphore {
    AsyncSemaphore::open_with(&options(), path, capacity)
        .await
        .unwrap()
}

/// Every operation of the async API, checked by value.
async fn every_operation(dir: &Path) {
    let path = dir.join("ops.json");
    let sem = open(&path, 1).await;
    assert!(sem.resolved_path().is_absolute());

    let a = asynch::every_operation_up_to_the_first_hold(&sem).await;
    assert_eq!(
        a.renew().await.unwrap(),
        None,
        "a file hold has no lease to extend"
    );
    // A 30 s lease renewed now ends more than 29 s from now.
    asynch::every_operation_after_the_first_hold(&sem, a, Duration::from_secs(1)).await;

    // open_existing and recover.
    let existing = AsyncSemaphore::open_existing(&path).await.unwrap();
    assert_eq!(existing.capacity().await.unwrap(), 2);
    assert!(matches!(
        AsyncSemaphore::open_existing(dir.join("nope.json")).await,
        Err(Error::NotFound { .. })
    ));
    let corrupt = dir.join("corrupt.json");
    std::fs::write(&corrupt, "{\"capacity\": 2, \"hold").unwrap();
    assert!(matches!(
        AsyncSemaphore::open(&corrupt, 2).await,
        Err(Error::Corrupt { .. })
    ));
    let recovered = AsyncSemaphore::recover(&corrupt, 2).await.unwrap();
    assert!(recovered.moved_to.is_some());
    assert_eq!(recovered.semaphore.available().await.unwrap(), 2);
}

#[test]
#[serial]
fn every_operation_works_on_a_current_thread_runtime() {
    // The async API does what the blocking one does, on a single-threaded runtime.
    let dir = common::tmpfs_dir();
    current_thread().block_on(every_operation(dir.path()));
}

#[test]
#[serial]
fn every_operation_works_on_a_multi_thread_runtime() {
    // The same on a multi-threaded runtime.
    let dir = common::tmpfs_dir();
    multi_thread().block_on(every_operation(dir.path()));
}

/// The number of threads of this process.
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .expect("Threads: line")
        .trim()
        .parse()
        .unwrap()
}

/// `n` tasks queue one after the other behind a holder (each waits until the one before it
/// is queued), then are served by releasing: returns the order they were granted in, with
/// their tokens, and the threads counted while all of them waited.
async fn serve_in_order(sem: &AsyncSemaphore, n: usize) -> (Vec<(usize, u64)>, usize) {
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
    let waiting_threads = threads();
    holder.release().await.unwrap();
    let mut order = Vec::with_capacity(n);
    for _ in 0..n {
        let got = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        order.push(got);
    }
    // Each task releases after it reported its grant: the last release is done once every
    // task has ended.
    for task in tasks {
        tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    }
    (order, waiting_threads)
}

#[test]
#[serial]
fn a_thousand_waiting_tasks_are_served_in_arrival_order_without_a_thread_each() {
    // FIFO: tasks that queued one after the other get their slots in that order, with
    // increasing fencing tokens. Waiting is a task, not a thread: with 1,000 tasks waiting
    // the process has the runtime's threads, the handle's two and at most a few more.
    let dir = common::tmpfs_dir();
    let before = threads();
    let rt = multi_thread();
    let (order, waiting) = rt.block_on(async {
        let sem = open(&dir.path().join("fifo.json"), 1).await;
        let served = serve_in_order(&sem, 1000).await;
        assert!(sem.waiters().await.unwrap().is_empty());
        assert_eq!(sem.count().await.unwrap(), 0);
        served
    });
    drop(rt);
    let served: Vec<usize> = order.iter().map(|&(i, _)| i).collect();
    assert_eq!(served, (0..1000).collect::<Vec<_>>());
    assert!(order.windows(2).all(|w| w[0].1 < w[1].1), "tokens increase");
    eprintln!("threads: {before} before the runtime, {waiting} with 1,000 waiting tasks");
    // 2 runtime workers, the 2 threads of the handle, and a small constant (the process's
    // inotify closer thread, the blocking pool's threads of `queued`: none).
    assert!(
        waiting <= before + 2 + 2 + 3,
        "{waiting} threads with 1,000 waiting tasks, {before} before"
    );
}

#[test]
#[serial]
fn a_cancellation_storm_leaves_no_queue_entry_and_no_slot_behind() {
    // Waiters dropped at random moments (by timeouts, aborts and select!) leave the queue,
    // and slots handed to them as they were dropped are handed on: none is leaked.
    let seed = common::seed("a_cancellation_storm_leaves_no_queue_entry_and_no_slot_behind");
    let dir = common::tmpfs_dir();
    let path = dir.path().join("storm.json");
    multi_thread().block_on(async {
        let sem = open(&path, 3).await;
        asynch::cancellation_storm(&sem, seed, Duration::from_millis(20), DEADLINE).await;
    });
    // On file too, read without the library.
    assert!(common::entries_on_file(&path, "holders").is_empty());
    assert!(common::entries_on_file(&path, "waiters").is_empty());
    let witnesses = std::fs::read_dir(dir.path().join("storm.json.witness"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(witnesses, 0, "no witness file left behind");
}

#[test]
#[serial]
fn the_runtime_keeps_ticking_while_tasks_wait_and_release() {
    // No blocking call on the runtime's thread: a task that wakes every 5 ms on a
    // current_thread runtime is never held up for long while 50 tasks wait and release.
    let dir = common::tmpfs_dir();
    let worst = current_thread().block_on(async {
        let sem = open(&dir.path().join("ticks.json"), 2).await;
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
        // Another process's long critical section (here: the lock file held for 3 s by a
        // thread) must stall the steps, never the runtime.
        let lock = std::fs::File::open(dir.path().join("ticks.json.lock")).unwrap();
        let locked = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            drop(locked);
        });
        let workers: Vec<_> = (0..50)
            .map(|i| {
                let sem = sem.clone();
                tokio::spawn(async move {
                    for round in 0..4 {
                        let permit = sem.acquire(&format!("w{i}-{round}")).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        permit.release().await.unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            tokio::time::timeout(DEADLINE, w).await.unwrap().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        holder.join().unwrap();
        ticker.await.unwrap()
    });
    eprintln!("worst gap between 5 ms ticks: {worst:?}");
    // Generous for a shared machine (busy ones show stalls of tens of ms, rarely a second);
    // a step on this thread would have waited out the 3 s lock.
    assert!(
        worst < Duration::from_millis(2500),
        "the runtime stalled for {worst:?}"
    );
}

#[test]
#[serial]
fn a_permit_dropped_in_a_task_is_released_after_the_runtime_shut_down() {
    // The release a drop hands off runs on the handle's own thread, which outlives the
    // runtime: shutting the runtime down right after the drop loses nothing.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("shutdown.json");
    let rt = current_thread();
    let sem = rt.block_on(open(&path, 1));
    let permit = rt.block_on(sem.try_acquire("job")).unwrap();
    // Hold the lock file, so that the release is still queued when the runtime goes.
    let lock = std::fs::File::open(dir.path().join("shutdown.json.lock")).unwrap();
    let locked = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    rt.block_on(async move {
        tokio::spawn(async move { drop(permit) }).await.unwrap();
    });
    drop(sem);
    drop(rt);
    let blocking = Semaphore::open_existing(&path).unwrap();
    assert_eq!(
        blocking.count().unwrap(),
        1,
        "still held while the lock is busy"
    );
    drop(locked);
    common::wait_until(Instant::now() + DEADLINE, "the release", || {
        blocking.count().unwrap() == 0
    });
}

#[test]
#[serial]
fn blocking_and_async_waiters_share_one_queue() {
    // A thread waiting with the blocking API and tasks waiting with the async API are
    // served in the order they queued.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("mixed.json");
    let blocking = options().open(&path, 1).unwrap();
    multi_thread().block_on(async {
        let sem = open(&path, 1).await;
        let first = sem.try_acquire("first").await.unwrap();
        let thread = {
            let blocking = blocking.clone();
            std::thread::spawn(move || {
                let p = blocking.acquire("thread").unwrap();
                let token = p.token();
                p.release().unwrap();
                token
            })
        };
        queued(&sem, 1).await;
        let task = {
            let sem = sem.clone();
            tokio::spawn(async move {
                let p = sem.acquire("task").await.unwrap();
                let token = p.token();
                p.release().await.unwrap();
                token
            })
        };
        queued(&sem, 2).await;
        first.release().await.unwrap();
        let task_token = tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
        let thread_token = tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        assert!(thread_token < task_token, "the thread queued first");
    });
}

#[test]
#[serial]
fn a_cancelled_acquire_has_left_the_queue_before_the_next_step_of_its_handle() {
    // The leave of a dropped acquire runs before any step asked for after the drop: the
    // same ID can try again at once and is refused for capacity, not as already queued.
    let dir = common::tmpfs_dir();
    multi_thread().block_on(async {
        let sem = open(&dir.path().join("again.json"), 1).await;
        let _held = sem.try_acquire("a").await.unwrap();
        for round in 0..20 {
            let patience = Duration::from_millis(1 + round % 7);
            let dropped = tokio::time::timeout(patience, sem.acquire("b")).await;
            assert!(dropped.is_err(), "round {round}: nothing to hand over");
            let again = sem.try_acquire("b").await.unwrap_err();
            assert!(
                matches!(again, Error::NoCapacity { .. }),
                "round {round}: {again:?}"
            );
        }
        assert!(sem.waiters().await.unwrap().is_empty());
    });
}

#[test]
#[serial]
fn a_query_after_a_drop_no_longer_shows_the_dropped_entry() {
    // As with the blocking API: a query of a handle sees the release of a permit, and the
    // leave of an acquire future, that were dropped before it was asked for.
    let dir = common::tmpfs_dir();
    for rt in [current_thread(), multi_thread()] {
        rt.block_on(async {
            let sem = open(&dir.path().join("seen.json"), 1).await;
            for round in 0..100 {
                let permit = sem.try_acquire("a").await.unwrap();
                drop(permit);
                assert_eq!(sem.count().await.unwrap(), 0, "round {round}: count");
                assert_eq!(
                    sem.available().await.unwrap(),
                    1,
                    "round {round}: available"
                );
                let held = sem.try_acquire("a").await.unwrap();
                let patience = Duration::from_millis(1 + round % 5);
                let dropped = tokio::time::timeout(patience, sem.acquire("b")).await;
                assert!(dropped.is_err(), "round {round}: nothing to hand over");
                assert!(
                    sem.waiters().await.unwrap().is_empty(),
                    "round {round}: waiters"
                );
                drop(held);
                assert!(
                    sem.holders().await.unwrap().is_empty(),
                    "round {round}: holders"
                );
            }
        });
    }
}
