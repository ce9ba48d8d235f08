//! The async API on a Redis semaphore against the blocking one, measured in one run:
//! `cargo bench --features tokio,redis --bench async_redis`.
//!
//! It starts its own `redis-server` on a free loopback port (as the tests do,
//! `tests/common/redis_server.rs`; without one it prints that it skipped) and measures:
//!
//! - `cycle`: `try_acquire` + `release` through `AsyncSemaphore::open_redis` on a
//!   multi-threaded runtime (2 workers) against the same cycle through
//!   `Semaphore::open_redis` on a plain thread, in alternating batches of about
//!   `FILESEM_BENCH_BATCH_MS` (default 100 ms), `FILESEM_BENCH_ROUNDS` of each (default
//!   15); the ratio is async throughput over blocking throughput, the median of the rounds.
//! - `hand-off`: a thread holds the slot with the blocking API and releases it while a task
//!   awaits `acquire` (woken by the async handle's pub/sub connection); timed from just
//!   before `release` to `acquire` returning in the task, `FILESEM_BENCH_HANDOFFS` times
//!   (default 1000); p50, p90, p99 and max in ms (targets, as for the blocking Redis API:
//!   p50 under 2 ms, p99 under 20 ms).
//! - `waiters`: the process's threads (`Threads:` in `/proc/self/status`) and resident
//!   memory (`VmRSS`) before the runtime starts, with the runtime and the handle idle, and
//!   with 1,000 tasks waiting on one handle; and the server's pub/sub connections then.
//!
//! Run without `--bench` (as `cargo test --benches` does) it makes one short round of each,
//! to check that it works.

#[path = "support/measure.rs"]
mod measure;
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use filesem::{AcquireOptions, AsyncSemaphore, Semaphore};
use measure::{env_or, median, process};
use redis_server::RedisServer;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, batch, handoffs, waiters) = match full {
        true => (
            env_or("FILESEM_BENCH_ROUNDS", 15),
            Duration::from_millis(env_or("FILESEM_BENCH_BATCH_MS", 100)),
            env_or("FILESEM_BENCH_HANDOFFS", 1000),
            1000,
        ),
        false => {
            println!("check mode (no --bench): one short round of each; the numbers mean nothing");
            (1, Duration::from_millis(5), 5, 20)
        }
    };
    let (threads0, rss0) = process();
    let Some(server) = RedisServer::start() else {
        println!("skipped the async Redis benchmark: no redis-server");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    cycle(&rt, &server, rounds, batch);
    handoff(&rt, &server, handoffs);
    idle_and_waiting(&rt, &server, waiters, (threads0, rss0));
}

/// Alternating batches of blocking and async cycles on one key; prints the median ratio.
fn cycle(rt: &tokio::runtime::Runtime, server: &RedisServer, rounds: u64, batch: Duration) {
    let url = server.url("cycle");
    let blocking = Semaphore::open_redis(&url, 1).expect("open");
    let sem = rt
        .block_on(AsyncSemaphore::open_redis(&url, 1))
        .expect("open async");
    let run_blocking = || {
        let (start, mut n) = (Instant::now(), 0u64);
        while start.elapsed() < batch {
            blocking.try_acquire("b").unwrap().release().unwrap();
            n += 1;
        }
        start.elapsed().as_secs_f64() / n as f64
    };
    let run_async = || {
        rt.block_on(async {
            let (start, mut n) = (Instant::now(), 0u64);
            while start.elapsed() < batch {
                sem.try_acquire("a").await.unwrap().release().await.unwrap();
                n += 1;
            }
            start.elapsed().as_secs_f64() / n as f64
        })
    };
    // Warm-up.
    run_blocking();
    run_async();
    let (mut ratios, mut b_us, mut a_us) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (b, a) = match round % 2 {
            0 => {
                let b = run_blocking();
                (b, run_async())
            }
            _ => {
                let a = run_async();
                (run_blocking(), a)
            }
        };
        ratios.push(b / a);
        b_us.push(b * 1e6);
        a_us.push(a * 1e6);
    }
    println!(
        "cycle redis loopback: async {:.1} us, blocking {:.1} us per cycle; async/blocking \
         throughput {:.2}x, {rounds} rounds",
        median(&a_us),
        median(&b_us),
        median(&ratios)
    );
}

/// Hand-offs from a releasing thread to an awaiting task; prints the latency percentiles.
fn handoff(rt: &tokio::runtime::Runtime, server: &RedisServer, handoffs: u64) {
    let url = server.url("handoff");
    let blocking = Semaphore::open_redis(&url, 1).expect("open");
    let sem = rt
        .block_on(AsyncSemaphore::open_redis(&url, 1))
        .expect("open async");
    let mut ms = Vec::with_capacity(handoffs as usize);
    for _ in 0..handoffs {
        let held = blocking.try_acquire("thread").expect("free");
        let (queued_tx, queued_rx) = mpsc::channel::<()>();
        let queued_tx = std::sync::Mutex::new(queued_tx);
        let opts = AcquireOptions::new().on_wait(move |_| {
            let _ = queued_tx.lock().unwrap().send(());
        });
        let sem = sem.clone();
        let task = rt.spawn(async move {
            let permit = sem.acquire_with("task", &opts).await.unwrap();
            let granted = Instant::now();
            permit.release().await.unwrap();
            granted
        });
        queued_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("queued");
        let start = Instant::now();
        held.release().unwrap();
        let granted = rt.block_on(task).unwrap();
        ms.push((granted - start).as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "hand-off to an awaiting task, redis loopback, ms: n={} p50={:.3} p90={:.3} p99={:.3} \
         max={:.3} (targets: p50 < 2, p99 < 20)",
        ms.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

/// The server's pub/sub connections now.
fn pubsub_clients(server: &RedisServer) -> usize {
    let mut con = redis::Client::open(server.server_url())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .expect("a connection");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut con)
        .expect("CLIENT LIST");
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Threads and memory: before the runtime, idle, and with `n` waiting tasks.
fn idle_and_waiting(
    rt: &tokio::runtime::Runtime,
    server: &RedisServer,
    n: usize,
    before: (u64, u64),
) {
    let url = server.url("waiters");
    rt.block_on(async {
        let sem = AsyncSemaphore::open_redis(&url, 1).await.expect("open");
        let holder = sem.try_acquire("holder").await.expect("free");
        let idle = process();
        let mut tasks = Vec::new();
        for i in 0..n {
            let sem = sem.clone();
            tasks.push(tokio::spawn(async move {
                sem.acquire(&format!("task-{i}"))
                    .await
                    .unwrap()
                    .release()
                    .await
                    .unwrap();
            }));
        }
        let start = Instant::now();
        while sem.waiters().await.unwrap().len() < n {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "never {n} waiters"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let waiting = process();
        let connections = tokio::task::block_in_place(|| pubsub_clients(server));
        println!(
            "waiters on redis: threads {} before the runtime, {} with the runtime (2 workers) \
             and an idle handle, {} with {n} tasks waiting; RSS {} kB, {} kB, {} kB ({:.1} kB \
             per waiting task); {connections} pub/sub connection(s)",
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
