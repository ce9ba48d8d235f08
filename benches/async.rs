//! The async API against the blocking one, measured in one run:
//! `cargo bench --features tokio --bench async`.
//!
//! - `cycle`: `try_acquire` + `release` through `AsyncSemaphore` against the same cycle
//!   through `Semaphore` on a plain thread, in batches of about `FILESEM_BENCH_BATCH_MS`
//!   (default 50 ms), `FILESEM_BENCH_ROUNDS` rounds (default 15) each with one blocking batch
//!   and one async batch per way of running the async loop: in `block_on` of a
//!   multi-threaded runtime (2 workers), in a task on that runtime's workers, and in
//!   `block_on` of a `current_thread` runtime. The blocking batch moves through the round
//!   from round to round. Per way: the ratio of async to blocking throughput in each round,
//!   its median (target: at least 0.8x) and range, and the medians of the time and of the CPU
//!   time (`getrusage`, user + system, the whole process) per cycle. On tmpfs (`/dev/shm`)
//!   with durable writes, as `open` does.
//! - `idle`: the CPU time the process uses in one second after an async handle's last cycle
//!   (its threads must sleep, not keep looking for work).
//! - `handoff`: a thread holds the slot with the blocking API and releases it while a task
//!   awaits `acquire`, on each runtime; timed from just before `release` to `acquire`
//!   returning in the task, `FILESEM_BENCH_HANDOFFS` times (default 1000); p50, p90, p99 and
//!   max in ms (targets, as for the blocking API: p50 under 1 ms, p99 under 10 ms on tmpfs).
//! - `waiters`: the process's threads (`Threads:` in `/proc/self/status`) and resident memory
//!   (`VmRSS`) before the runtime starts, with the runtime and the handle idle, and with
//!   1,000 tasks waiting on one handle (this part takes minutes: each of the 1,000 joins
//!   rewrites a growing state file).
//!
//! `FILESEM_BENCH_PARTS` (a comma-separated list of `cycle`, `idle`, `handoff`, `waiters`;
//! default all) runs some of them. The load average is printed at the start and the end.
//!
//! Measured on the shared 2-vCPU VM, tmpfs (2026-11-30, 5 runs, medians of 15 rounds; see
//! `docs/performance.md`, "Async"): async/blocking throughput 0.77-0.90x in `block_on`,
//! 0.69-0.87x in a task, 0.73-0.88x on `current_thread`, at 132-159 µs of CPU per
//! async cycle against 63 µs per blocking one; hand-off p50 0.18-0.28 ms, p99 0.39-2.1 ms;
//! 0.1-0.3 ms of CPU in an idle second. Before the task polled for its steps' results:
//! 0.35-0.43x.
//!
//! Run without `--bench` (as `cargo test --benches` does) it makes one short round of each,
//! to check that it works.

#[path = "support/measure.rs"]
mod measure;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use filesem::{AcquireOptions, AsyncSemaphore, OpenOptions, Semaphore};
use measure::{env_or, median, process};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let parts = std::env::var("FILESEM_BENCH_PARTS").unwrap_or_else(|_| "all".into());
    let part = |name: &str| parts == "all" || parts.split(',').any(|p| p.trim() == name);
    let dir = tempfile::Builder::new()
        .prefix("filesem-bench-async-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temp directory");
    let (rounds, batch, handoffs, waiters) = match full {
        true => (
            env_or("FILESEM_BENCH_ROUNDS", 15),
            Duration::from_millis(env_or("FILESEM_BENCH_BATCH_MS", 50)),
            env_or("FILESEM_BENCH_HANDOFFS", 1000),
            1000,
        ),
        false => (1, Duration::from_millis(5), 5, 20),
    };
    println!("load average at the start: {}", load_average());
    let (threads0, rss0) = process();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if part("cycle") {
        cycle(&multi, &single, dir.path(), rounds, batch);
    }
    if part("idle") {
        idle(&multi, dir.path());
    }
    if part("handoff") {
        handoff(&multi, "multi_thread", dir.path(), handoffs);
        handoff(&single, "current_thread", dir.path(), handoffs);
    }
    if part("waiters") {
        idle_and_waiting(&multi, dir.path(), waiters, (threads0, rss0));
    }
    println!("load average at the end: {}", load_average());
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The CPU time (user + system, `getrusage`) this process has used, in seconds.
fn cpu() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(usage.user_time()) + secs(usage.system_time())
}

/// One batch: cycles for about `batch`; (wall seconds, CPU seconds) per cycle.
fn timed(batch: Duration, mut one: impl FnMut()) -> (f64, f64) {
    let (start, cpu0, mut n) = (Instant::now(), cpu(), 0u64);
    while start.elapsed() < batch {
        one();
        n += 1;
    }
    let (wall, used) = (start.elapsed().as_secs_f64(), cpu() - cpu0);
    (wall / n as f64, used / n as f64)
}

/// Async cycles for about `batch` in a future run by `rt` (in `block_on`, or in a task on
/// a worker); (wall seconds, CPU seconds) per cycle.
fn timed_async(
    rt: &tokio::runtime::Runtime,
    sem: &AsyncSemaphore,
    batch: Duration,
    task: bool,
) -> (f64, f64) {
    let sem = sem.clone();
    let cycles = async move {
        let (start, cpu0, mut n) = (Instant::now(), cpu(), 0u64);
        while start.elapsed() < batch {
            sem.try_acquire("a").await.unwrap().release().await.unwrap();
            n += 1;
        }
        let (wall, used) = (start.elapsed().as_secs_f64(), cpu() - cpu0);
        (wall / n as f64, used / n as f64)
    };
    match task {
        true => rt.block_on(rt.spawn(cycles)).expect("the task"),
        false => rt.block_on(cycles),
    }
}

/// Alternating batches of blocking and async cycles; prints the medians per way of running.
fn cycle(
    multi: &tokio::runtime::Runtime,
    single: &tokio::runtime::Runtime,
    dir: &Path,
    rounds: u64,
    batch: Duration,
) {
    let path = dir.join("cycle.json");
    let blocking = Semaphore::open(&path, 1).expect("open");
    let sem = multi
        .block_on(AsyncSemaphore::open(&path, 1))
        .expect("open async");
    let run_blocking = || {
        timed(batch, || {
            blocking.try_acquire("b").unwrap().release().unwrap()
        })
    };
    // The ways of running the async loop: (name, runtime, in a spawned task).
    let ways: [(&str, &tokio::runtime::Runtime, bool); 3] = [
        ("multi_thread, block_on", multi, false),
        ("multi_thread, in a task", multi, true),
        ("current_thread", single, false),
    ];
    // Warm-up.
    run_blocking();
    for (_, rt, task) in ways {
        timed_async(rt, &sem, batch, task);
    }
    // Per way: ratios, async (wall, CPU) per cycle; and the blocking ones.
    let mut ratios = vec![Vec::new(); ways.len()];
    let mut async_us = vec![(Vec::new(), Vec::new()); ways.len()];
    let (mut b_wall, mut b_cpu) = (Vec::new(), Vec::new());
    for round in 0..rounds as usize {
        // Each round runs the blocking batch at another place among the async ones.
        let at = round % (ways.len() + 1);
        let mut measured = vec![(0.0, 0.0); ways.len()];
        let mut blocking_now = (0.0, 0.0);
        for i in 0..=ways.len() {
            if i == at {
                blocking_now = run_blocking();
            }
            if i < ways.len() {
                let (_, rt, task) = ways[i];
                measured[i] = timed_async(rt, &sem, batch, task);
            }
        }
        b_wall.push(blocking_now.0 * 1e6);
        b_cpu.push(blocking_now.1 * 1e6);
        for (i, (wall, used)) in measured.into_iter().enumerate() {
            ratios[i].push(blocking_now.0 / wall);
            async_us[i].0.push(wall * 1e6);
            async_us[i].1.push(used * 1e6);
        }
    }
    println!(
        "cycle tmpfs durable, blocking: {:.1} us per cycle, CPU {:.1} us per cycle ({rounds} \
         rounds of {} ms)",
        median(&b_wall),
        median(&b_cpu),
        batch.as_millis()
    );
    for (i, (name, _, _)) in ways.iter().enumerate() {
        let mut sorted = ratios[i].clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "cycle tmpfs durable, async ({name}): {:.1} us per cycle, CPU {:.1} us per cycle; \
             async/blocking throughput {:.2}x (rounds {:.2}x-{:.2}x; target >= 0.8x)",
            median(&async_us[i].0),
            median(&async_us[i].1),
            median(&ratios[i]),
            sorted[0],
            sorted[sorted.len() - 1]
        );
    }
}

/// The CPU the process uses in one second while a handle that has just cycled is idle (its
/// threads must sleep, not spin).
fn idle(rt: &tokio::runtime::Runtime, dir: &Path) {
    let path = dir.join("idle.json");
    let sem = rt
        .block_on(AsyncSemaphore::open(&path, 1))
        .expect("open async");
    rt.block_on(async {
        for _ in 0..100 {
            sem.try_acquire("a").await.unwrap().release().await.unwrap();
        }
    });
    let cpu0 = cpu();
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "idle: {:.2} ms of CPU in 1 s with an async handle idle after its last cycle",
        (cpu() - cpu0) * 1e3
    );
    drop(sem);
}

/// Hand-offs from a releasing thread to an awaiting task on `rt`; prints the latency
/// percentiles.
fn handoff(rt: &tokio::runtime::Runtime, name: &str, dir: &Path, handoffs: u64) {
    let path = dir.join(format!("handoff-{}.json", name.replace(' ', "-")));
    let mut options = OpenOptions::new();
    options.durable(false);
    let blocking = options.open(&path, 1).expect("open");
    let sem = rt
        .block_on(AsyncSemaphore::open_with(&options, &path, 1))
        .expect("open async");
    let mut ms = Vec::with_capacity(handoffs as usize);
    for _ in 0..handoffs {
        let held = blocking.try_acquire("thread").expect("free");
        let (queued_tx, queued_rx) = mpsc::channel::<()>();
        let queued_tx = std::sync::Mutex::new(queued_tx);
        let opts = AcquireOptions::new().on_wait(move |_| {
            let _ = queued_tx.lock().unwrap().send(());
        });
        // The release runs on a thread of its own, while this one drives the task (a
        // current_thread runtime runs tasks only inside `block_on`).
        let releaser = std::thread::spawn(move || {
            queued_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("queued");
            let start = Instant::now();
            held.release().unwrap();
            start
        });
        let granted = rt.block_on(async {
            let permit = sem.acquire_with("task", &opts).await.unwrap();
            let granted = Instant::now();
            permit.release().await.unwrap();
            granted
        });
        let start = releaser.join().expect("the releasing thread");
        ms.push((granted - start).as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "hand-off to an awaiting task ({name}), tmpfs, ms: n={} p50={:.3} p90={:.3} p99={:.3} \
         max={:.3} (targets: p50 < 1, p99 < 10)",
        ms.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

/// Threads and memory: before the runtime, idle, and with `n` waiting tasks.
fn idle_and_waiting(rt: &tokio::runtime::Runtime, dir: &Path, n: usize, before: (u64, u64)) {
    let path = dir.join("waiters.json");
    let mut options = OpenOptions::new();
    options.durable(false);
    rt.block_on(async {
        let sem = AsyncSemaphore::open_with(&options, &path, 1)
            .await
            .expect("open");
        let holder = sem.try_acquire("holder").await.expect("free");
        let idle = process();
        let mut tasks = Vec::new();
        for i in 0..n {
            let sem = sem.clone();
            tasks.push(tokio::spawn(async move {
                sem.acquire(&format!("task-{i}")).await.unwrap().release().await.unwrap();
            }));
        }
        let start = Instant::now();
        while sem.waiters().await.unwrap().len() < n {
            assert!(start.elapsed() < Duration::from_secs(600), "never {n} waiters");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let waiting = process();
        println!(
            "waiters: threads {} before the runtime, {} with the runtime (2 workers) and an idle \
             handle, {} with {n} tasks waiting; RSS {} kB, {} kB, {} kB ({:.1} kB per waiting task)",
            before.0,
            idle.0,
            waiting.0,
            before.1,
            idle.1,
            waiting.1,
            (waiting.1 as f64 - idle.1 as f64) / n as f64
        );
        holder.release().await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
    });
}
