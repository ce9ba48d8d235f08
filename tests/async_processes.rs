//! Async and blocking processes on one semaphore: tasks of processes using the async API
//! and threads of processes using the blocking API wait in one queue, and the independent
//! witness (its own counter file and one marker file per slot, `examples/common/witness.rs`)
//! never sees more than `capacity` inside.
//!
//! The parent re-executes this test binary (the ignored test `child_process`) once per
//! worker process; every process says `ready`, waits for `go`, runs its cycles and reports.
//!
//! An async acquire's timeout bounds the whole call even while a step of the same handle
//! waits for the state lock a stopped process holds: the acquire's own steps, queued behind
//! that one on the handle's step thread, are given up at its deadline, and nothing is left
//! on file. No timing is asserted except a generous upper bound that tells "kept its
//! deadline" from "waited for the 10 s lock timeout". A `try_acquire_with` given a timeout
//! behind such a step fails with `LockBusy` naming the stopped process, as a blocking call
//! does.

#[path = "common/asynch.rs"]
mod asynch;
mod common;

use std::time::{Duration, Instant};

use asynch::{Store, multi_thread};
use common::{ChildSpec, Group, arg, say};
use filesem::{AsyncSemaphore, Error, OpenOptions};

/// Cycles of each task or thread of the worker processes.
const CYCLES: usize = 15;

#[test]
fn async_and_blocking_processes_never_exceed_capacity_together() {
    // Two processes of 6 async tasks and two of 6 blocking threads share 3 slots; some
    // async acquires are cancelled by short timeouts on the way. The witness never sees
    // more than 3 inside, every grant is counted, no token is used twice, the file ends
    // empty.
    let dir = common::tmpfs_dir();
    asynch::async_and_blocking_processes(
        "async_and_blocking_processes_never_exceed_capacity_together",
        &Store::File(dir.path().join("sem.json")),
        CYCLES,
    );
}

/// How the worker processes open the file: not durable (tmpfs), a lock timeout long enough
/// for a loaded machine.
fn worker_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.durable(false).lock_timeout(Duration::from_secs(30));
    options
}

/// The lock timeout of the deadline test: long, so that a call that waited for it is told
/// apart from one that kept its deadline.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// How much later than its deadline an acquire may return in the deadline test: far more
/// than the few milliseconds it takes even on a loaded machine, far less than the lock
/// timeout.
const OVERRUN: Duration = Duration::from_secs(4);

/// Awaits `f`, failing the test after 30 s: nothing here may hang.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within 30 s"))
}

/// Polls `f` once: whether it is still pending.
async fn pending<F: std::future::Future + Unpin>(f: &mut F) -> bool {
    tokio::select! {
        biased;
        _ = f => false,
        () = std::future::ready(()) => true,
    }
}

/// An acquire's outcome and how long it took.
type Timed = (filesem::Result<filesem::AsyncPermit>, Duration);

/// Asserts that a timed acquire with `timeout` ended with `Error::Timeout` after its
/// deadline and before the lock timeout could have passed.
fn assert_kept_deadline(what: &str, (result, took): &Timed, timeout: Duration) {
    assert!(
        matches!(result, Err(Error::Timeout { .. })),
        "{what}: {result:?} after {took:?}"
    );
    assert!(
        *took >= timeout,
        "{what} returned before its deadline: {took:?}"
    );
    assert!(
        *took < timeout + OVERRUN,
        "{what} waited {took:?}, past its {timeout:?} deadline (for the lock timeout?)"
    );
}

/// Starts a child that takes `path`'s lock file when told ("lock"), and waits until it is
/// ready; returns its index in `group`.
fn spawn_locker(group: &mut Group, path: &std::path::Path) -> usize {
    let locker = group.spawn(
        ChildSpec::new("locker", "child_process", "lock")
            .arg("LOCK", path.with_extension("json.lock").display()),
    );
    group.expect(locker, "ready", common::deadline(30));
    locker
}

#[test]
fn async_acquires_end_at_their_deadline_while_a_step_of_their_handle_waits_for_a_stopped_lock_holder()
 {
    // A handle's steps run one at a time: with one step (no deadline) waiting for the lock
    // a stopped process holds, a queued acquire and a new one still end with Timeout by
    // their deadlines, leave no queue entry and leak no slot.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let mut group = Group::new();
    let locker = spawn_locker(&mut group, &path);
    let rt = multi_thread();
    rt.block_on(async {
        let mut options = OpenOptions::new();
        options.durable(false).lock_timeout(LOCK_TIMEOUT);
        let sem = AsyncSemaphore::open_with(&options, &path, 1).await.unwrap();
        let held = sem.try_acquire("holder").await.unwrap();
        // Queued while the lock is free; its deadline comes while the lock is held.
        let queued_timeout = Duration::from_secs(3);
        let queued = {
            let sem = sem.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let r = sem.acquire_timeout("queued", queued_timeout).await;
                (r, start.elapsed())
            })
        };
        loop {
            let waiters = sem.waiters().await.unwrap();
            if waiters.iter().any(|w| w.id == "queued") {
                break;
            }
            assert!(!queued.is_finished(), "the acquire ended before it queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        group.send(locker, "lock");
        group.expect(locker, "locked", common::deadline(30));
        common::stop_process(group.pid(locker));
        // Holds the step thread until the lock frees or the lock timeout passes; its step is
        // sent at the first poll, before the new acquire's.
        let mut stuck = Box::pin(sem.set_capacity(1));
        assert!(pending(&mut stuck).await, "the held-up step ended at once");
        // Its first step queues behind the held-up one.
        let new_timeout = Duration::from_secs(1);
        let start = Instant::now();
        let new = sem.acquire_timeout("new", new_timeout).await;
        let new = (new, start.elapsed());
        let queued = within("the queued acquire", queued).await.unwrap();
        assert!(
            pending(&mut stuck).await,
            "the held-up step ended before the acquires did"
        );
        assert_kept_deadline("the new acquire", &new, new_timeout);
        assert_kept_deadline("the queued acquire", &queued, queued_timeout);
        // SIGKILL ends the stopped process; the kernel frees its lock.
        group.kill(locker, common::deadline(30));
        within("the held-up step", stuck).await.unwrap();
        // Steps run in order: this one runs after the given-up steps were dropped.
        sem.set_capacity(1).await.unwrap();
        let waiters: Vec<String> = sem
            .waiters()
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert!(waiters.is_empty(), "left in the queue: {waiters:?}");
        let holders: Vec<String> = sem
            .holders()
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(holders, ["holder"]);
        held.release().await.unwrap();
        let after = sem.try_acquire("after").await.unwrap();
        assert_eq!(sem.count().await.unwrap(), 1);
        after.release().await.unwrap();
        assert_eq!(sem.available().await.unwrap(), 1);
    });
}

/// A lock timeout far longer than [`TEST_DEADLINE`]: a call that waited for it fails the test.
const LONG_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the try_acquire_with test lets its call take.
const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// Whether the kernel can name the holder of a lock in `dir`: tmpfs (whose `st_dev` is the
/// device `/proc/locks` prints) and a `/proc` of this process's pid namespace.
fn kernel_tells(dir: &std::path::Path) -> bool {
    let own_proc = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse::<u32>().ok())
        == Some(std::process::id());
    dir.starts_with("/dev/shm") && own_proc
}

#[test]
fn an_async_try_acquire_with_a_timeout_fails_with_lock_busy_behind_a_step_held_up_by_a_stopped_lock_holder()
 {
    // A timeout bounds the whole try_acquire_with, also its wait for a step of its handle
    // that waits for the lock a stopped process holds: it fails as the blocking call does
    // (LockBusy naming that process), its step never runs, and nothing is left on file.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let mut group = Group::new();
    let locker = spawn_locker(&mut group, &path);
    let rt = multi_thread();
    rt.block_on(async {
        let mut options = OpenOptions::new();
        options.durable(false).lock_timeout(LONG_LOCK_TIMEOUT);
        let sem = AsyncSemaphore::open_with(&options, &path, 1).await.unwrap();
        group.send(locker, "lock");
        group.expect(locker, "locked", common::deadline(30));
        common::stop_process(group.pid(locker));
        // Holds the step thread until the lock frees or the lock timeout passes.
        let mut stuck = Box::pin(sem.set_capacity(1));
        assert!(pending(&mut stuck).await, "the held-up step ended at once");
        let timed = filesem::AcquireOptions::new().timeout(Duration::from_secs(1));
        let result = tokio::time::timeout(TEST_DEADLINE, sem.try_acquire_with("new", &timed))
            .await
            .expect("the call waited for the held-up step (its lock timeout is 120 s)");
        match result {
            Err(Error::LockBusy {
                path: on, holder, ..
            }) => {
                assert_eq!(on, path);
                let pid = group.pid(locker);
                if kernel_tells(dir.path()) {
                    assert_eq!(holder, Some(pid), "the lock's holder");
                } else {
                    eprintln!("NOTE: the kernel cannot name lock holders here: {holder:?}");
                    assert!(holder.is_none_or(|h| h == pid), "{holder:?} is not {pid}");
                }
            }
            other => panic!("expected LockBusy, got {other:?}"),
        }
        assert!(
            pending(&mut stuck).await,
            "the held-up step ended before the call did"
        );
        // SIGKILL ends the stopped process; the kernel frees its lock.
        group.kill(locker, common::deadline(30));
        within("the held-up step", stuck).await.unwrap();
        // Steps run in order: this one runs after the given-up step's turn.
        sem.set_capacity(1).await.unwrap();
        assert!(
            sem.holders().await.unwrap().is_empty(),
            "the given-up step ran"
        );
        assert!(sem.waiters().await.unwrap().is_empty());
        // The lock free again, the same call gets the slot.
        let permit = sem.try_acquire_with("new", &timed).await.unwrap();
        assert_eq!((permit.id(), permit.slot()), ("new", 0));
        permit.release().await.unwrap();
        assert_eq!(sem.available().await.unwrap(), 1);
    });
}

#[test]
#[ignore = "a child-process role, started by the other tests in this file"]
fn child_process() {
    // Not a test of its own: the body of the worker processes the test above starts.
    match common::role().as_deref() {
        Some("async") => asynch::async_worker(&worker_options()),
        Some("blocking") => asynch::blocking_worker(&worker_options()),
        Some("lock") => {
            // Takes the flock on `PATH.lock` when told, as a process inside its critical
            // section, and holds it until killed or told.
            say("ready");
            assert_eq!(common::wait_for_parent(), "lock");
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(arg("LOCK"))
                .unwrap();
            let _held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .unwrap();
            say("locked");
            common::wait_for_parent();
        }
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}
