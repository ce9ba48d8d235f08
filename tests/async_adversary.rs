//! Attacks on the async API (feature `tokio`): handles shared by runtimes, runtimes that stop
//! being driven, and other misuse a careless user may commit.

#[path = "common/asynch.rs"]
mod asynch;
mod common;

use std::path::Path;
use std::time::Duration;

use asynch::current_thread;
use filesem::{AsyncSemaphore, OpenOptions};
use serial_test::serial;

/// How long any single expected event may take before the test fails. Generous: the machine
/// is shared.
const DEADLINE: Duration = Duration::from_secs(30);

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
    asynch::served_while_the_first_watchers_runtime_is_idle(idle, &sem);
}

/// Runs `acquire("waiter")` on a runtime built by `builder` while a blocking holder keeps
/// the only slot, on a thread of its own; the message of the panic it ended with, if any.
fn waiting_on(mut builder: tokio::runtime::Builder) -> Option<String> {
    let dir = common::tmpfs_dir();
    let path = dir.path().join("misbuilt.json");
    let rt = builder.build().unwrap();
    let sem = rt
        .block_on(AsyncSemaphore::open_with(&options(), &path, 1))
        .unwrap();
    let holder = sem.blocking().try_acquire("holder").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiting = sem.clone();
    std::thread::spawn(move || {
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(waiting.acquire("waiter"))
                .map(|p| p.id().to_string())
        }));
        let _ = tx.send(waited.map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        }));
    });
    let ended = rx
        .recv_timeout(DEADLINE)
        .expect("the acquire neither returned nor panicked");
    // Nothing was queued: the call ended before its first step.
    assert_eq!(sem.blocking().waiters().unwrap().len(), 0);
    drop(holder);
    ended.err()
}

#[test]
#[serial]
fn a_wait_on_a_runtime_without_io_panics_in_the_waiting_task_with_tokios_message() {
    // A runtime built without `enable_io` cannot drive the watcher's notifier: the waiting
    // call panics at once, as tokio's own I/O types do, instead of starting one failing
    // watcher after another while it waits for ever.
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time();
    let panic = waiting_on(builder).expect("the acquire returned");
    assert!(panic.contains("IO is disabled"), "{panic}");
}

#[test]
#[serial]
fn a_wait_on_a_runtime_without_timers_panics_in_the_waiting_task_with_tokios_message() {
    // The same for a runtime built without `enable_time`: the watcher's timer needs it.
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_io();
    let panic = waiting_on(builder).expect("the acquire returned");
    assert!(panic.contains("timers are disabled"), "{panic}");
}
