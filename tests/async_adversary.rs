//! Attacks on the async API (feature `tokio`): handles shared by runtimes, runtimes that stop
//! being driven, and other misuse a careless user may commit.

mod common;

use std::path::Path;
use std::time::Duration;

use filesem::{AsyncSemaphore, Error, OpenOptions};
use serial_test::serial;

/// How long any single expected event may take before the test fails. Generous: the machine
/// is shared.
const DEADLINE: Duration = Duration::from_secs(30);

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.durable(false).lock_timeout(Duration::from_secs(30));
    options
}

fn open(rt: &tokio::runtime::Runtime, path: &Path, capacity: u32) -> AsyncSemaphore {
    rt.block_on(AsyncSemaphore::open_with(&options(), path, capacity))
        .unwrap()
}

#[test]
#[serial]
fn a_waiter_is_served_while_the_runtime_that_started_the_watcher_is_idle() {
    // The watcher of a handle runs on the runtime of a waiting task; a runtime that is
    // alive but no longer driven (a current_thread runtime between two `block_on`s) must
    // not keep the waiters of other runtimes from being served.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("idle.json");
    let idle = current_thread();
    let sem = open(&idle, &path, 1);
    let holder = sem.blocking().try_acquire("holder").unwrap();
    // A wait on `idle` starts the watcher there, then `idle` is left alone (not shut down).
    let timed_out = idle.block_on(sem.acquire_timeout("first", Duration::from_millis(50)));
    assert!(
        matches!(timed_out, Err(Error::Timeout { .. })),
        "{timed_out:?}"
    );
    let other = current_thread();
    let served = other.block_on(async {
        let waiter = tokio::spawn({
            let sem = sem.clone();
            async move { sem.acquire("second").await }
        });
        // Queued behind the holder, then the holder leaves.
        while sem.waiters().await.unwrap().len() != 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(holder);
        tokio::time::timeout(DEADLINE, waiter).await
    });
    let permit = served
        .expect("the waiter was never served")
        .unwrap()
        .unwrap();
    assert_eq!(permit.id(), "second");
    drop(idle);
}
