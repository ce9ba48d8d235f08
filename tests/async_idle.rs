//! An idle async handle costs no CPU: its threads look for their next job for a bounded time
//! after each one (to save a sleep and a wake-up between a task's back-to-back steps), then
//! sleep until a job comes.
//!
//! One test in its own binary, so that no other test's handles run while it counts.

use std::time::Duration;

use filesem::{AsyncSemaphore, OpenOptions};

/// The CPU time, in clock ticks (user + system, `/proc/self/task/*/stat`), of this process's
/// threads named `filesem-*` (the async handles' threads).
fn handle_threads_ticks() -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if !comm.starts_with("filesem-") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
            continue;
        };
        // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks
}

/// Cycles on a handle as fast as it goes, then measures its threads' CPU while idle.
fn idle_ticks_after_cycles(rt: &tokio::runtime::Runtime, path: &std::path::Path) -> u64 {
    let mut options = OpenOptions::new();
    options.durable(false);
    rt.block_on(async {
        let sem = AsyncSemaphore::open_with(&options, path, 1).await.unwrap();
        for _ in 0..300 {
            let permit = sem.try_acquire("cycler").await.unwrap();
            assert_eq!(sem.count().await.unwrap(), 1);
            permit.release().await.unwrap();
        }
        let before = handle_threads_ticks();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = handle_threads_ticks() - before;
        // Still working after the idle second.
        sem.try_acquire("after")
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        idle
    })
}

#[test]
fn an_idle_handle_uses_no_cpu_after_busy_cycles_on_either_runtime() {
    // The handle's threads sleep when there is no job: over an idle second they use at most
    // a few clock ticks (a thread that kept looking would use about 100, a second's worth).
    let dir = tempfile::tempdir().unwrap();
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (name, rt) in [("current_thread", &current), ("multi_thread", &multi)] {
        let idle = idle_ticks_after_cycles(rt, &dir.path().join(format!("{name}.json")));
        assert!(
            idle <= 5,
            "{name}: the handle's threads used {idle} ticks of CPU in an idle second"
        );
    }
}
