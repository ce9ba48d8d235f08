//! Measures waiting: hand-off latency between processes, the CPU cost of a sleeping waiter, and
//! wait times under churn. Run with `cargo run --release --example handoff` (options:
//! `--rounds N` hand-offs per latency run, default 1000; `--sleep-secs S`, default 10;
//! `--churn-waits N`, default 100; `--hold-ms H`, default 20; `--only latency|cpu|churn`).
//!
//! - Latency: two processes pass a capacity-1 semaphore back and forth. Each hand-off is timed
//!   from just before `Permit::release` in the holder to `acquire` returning in the waiter
//!   (wall clock, shared by both processes), on tmpfs (`/dev/shm`, `durable(false)`) and on
//!   the temp directory's disk with durable writes.
//! - CPU: a waiter queued for `--sleep-secs` on a held semaphore reports its CPU time while
//!   queued (`/proc/self/schedstat`, nanoseconds).
//! - Churn: 4 processes loop acquire / hold `--hold-ms` / release on capacity 1 while this
//!   process waits `--churn-waits` times; each wait is compared to its bound,
//!   (waiters ahead + 1) x hold time.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use filesem::{AcquireOptions, OpenOptions, Semaphore};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        return child(&args[1..]);
    }
    let opt = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let run = |what: &str| only.as_deref().is_none_or(|o| o == what);
    let rounds = opt("--rounds", 1000);
    noise();
    if run("latency") {
        let shm = tempfile::tempdir_in("/dev/shm")?;
        latency(
            "tmpfs (/dev/shm), durable(false)",
            shm.path(),
            false,
            rounds,
        )?;
        let disk = tempfile::tempdir()?;
        latency(
            &format!("disk ({}), durable", disk.path().display()),
            disk.path(),
            true,
            rounds,
        )?;
    }
    if run("cpu") {
        let disk = tempfile::tempdir()?;
        sleeping_cpu(disk.path(), Duration::from_secs(opt("--sleep-secs", 10)))?;
    }
    if run("churn") {
        let shm = tempfile::tempdir_in("/dev/shm")?;
        churn(
            shm.path(),
            opt("--churn-waits", 100) as usize,
            Duration::from_millis(opt("--hold-ms", 20)),
        )?;
    }
    Ok(())
}

/// How noisy the machine is: a busy thread counts the times it was kept off the CPU for more
/// than 1 ms during 2 s (what bounds any tail latency measured here).
fn noise() {
    let start = Instant::now();
    let mut last = start;
    let mut gaps = Vec::new();
    while start.elapsed() < Duration::from_secs(2) {
        let now = Instant::now();
        if now - last > Duration::from_millis(1) {
            gaps.push((now - last).as_secs_f64() * 1e3);
        }
        last = now;
    }
    gaps.sort_by(f64::total_cmp);
    println!(
        "scheduler noise: a busy thread lost the CPU for > 1 ms {} times in 2 s (longest {:.1} ms)",
        gaps.len(),
        gaps.last().copied().unwrap_or(0.0)
    );
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn open(path: &Path, durable: bool) -> Res<Semaphore> {
    Ok(OpenOptions::new().durable(durable).open(path, 1)?)
}

fn spawn_child(args: &[String]) -> Res<Child> {
    Ok(Command::new(std::env::current_exe()?)
        .arg("child")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?)
}

fn lines(child: &mut Child) -> impl Iterator<Item = String> + use<> {
    let out = child.stdout.take().expect("piped stdout");
    BufReader::new(out).lines().map_while(Result::ok)
}

/// Child processes: `pingpong PATH DURABLE FIRST ROUNDS`, `sleeper PATH`, `churner PATH HOLD_MS`.
fn child(args: &[String]) -> Res<()> {
    let path = PathBuf::from(&args[1]);
    match args[0].as_str() {
        "pingpong" => {
            let durable: bool = args[2].parse()?;
            let first: bool = args[3].parse()?;
            let rounds: u64 = args[4].parse()?;
            let sem = OpenOptions::new().durable(durable).open_existing(&path)?;
            let me = if first { "ping" } else { "pong" };
            let mut out = std::io::stdout().lock();
            let mut permit = if first {
                sem.try_acquire(me)?
            } else {
                let p = sem.acquire(me)?;
                writeln!(out, "acq {}", now_ns())?;
                p
            };
            // Each process releases `rounds` times; the other is queued before each release.
            for _ in 0..rounds {
                while sem.waiters()?.is_empty() {
                    std::thread::sleep(Duration::from_micros(100));
                }
                let t = now_ns();
                permit.release()?;
                writeln!(out, "rel {t}")?;
                permit = sem.acquire(me)?;
                writeln!(out, "acq {}", now_ns())?;
            }
            drop(permit);
            writeln!(out, "done")?;
        }
        "sleeper" => {
            let sem = OpenOptions::new().open_existing(&path)?;
            let opts = AcquireOptions::new().on_wait(|_| {
                println!("queued {}", cpu_ns());
                std::io::stdout().flush().ok();
            });
            let permit = sem.acquire_with("sleeper", &opts)?;
            println!("acquired {}", cpu_ns());
            drop(permit);
        }
        "churner" => {
            let hold = Duration::from_millis(args[2].parse()?);
            let sem = OpenOptions::new().durable(false).open_existing(&path)?;
            let id = format!("churner-{}", std::process::id());
            println!("ready");
            std::io::stdout().flush()?;
            loop {
                let permit = sem.acquire(id.as_str())?;
                std::thread::sleep(hold);
                permit.release()?;
            }
        }
        other => return Err(format!("unknown child role {other}").into()),
    }
    Ok(())
}

/// CPU time of this (single-threaded) process so far, in nanoseconds.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "n={} min={:.3} p50={:.3} p90={:.3} p99={:.3} max={:.3}",
        values.len(),
        values.first().copied().unwrap_or(f64::NAN),
        percentile(values, 50.0),
        percentile(values, 90.0),
        percentile(values, 99.0),
        values.last().copied().unwrap_or(f64::NAN),
    )
}

fn latency(label: &str, dir: &Path, durable: bool, handoffs: u64) -> Res<()> {
    let path = dir.join("handoff.json");
    open(&path, durable)?;
    let rounds = handoffs.div_ceil(2).to_string();
    let p = path.display().to_string();
    let mut ping = spawn_child(&[
        "pingpong".into(),
        p.clone(),
        durable.to_string(),
        "true".into(),
        rounds.clone(),
    ])?;
    // Let ping take the slot first, so that pong queues behind it.
    let sem = open(&path, durable)?;
    while sem.count()? == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut pong = spawn_child(&[
        "pingpong".into(),
        p,
        durable.to_string(),
        "false".into(),
        rounds,
    ])?;
    let ping_lines: Vec<String> = lines(&mut ping).collect();
    let pong_lines: Vec<String> = lines(&mut pong).collect();
    ping.wait()?;
    pong.wait()?;
    let parse = |lines: &[String], kind: &str| -> Vec<u128> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(kind))
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    };
    // Hand-off 2k: ping releases, pong acquires; hand-off 2k+1: pong releases, ping acquires.
    let (ping_rel, ping_acq) = (parse(&ping_lines, "rel "), parse(&ping_lines, "acq "));
    let (pong_rel, pong_acq) = (parse(&pong_lines, "rel "), parse(&pong_lines, "acq "));
    let mut ms = Vec::new();
    for (rel, acq) in ping_rel.iter().zip(&pong_acq) {
        ms.push((acq.saturating_sub(*rel)) as f64 / 1e6);
    }
    for (rel, acq) in pong_rel.iter().zip(&ping_acq) {
        ms.push((acq.saturating_sub(*rel)) as f64 / 1e6);
    }
    println!("hand-off latency, {label}, ms: {}", summary(&mut ms));
    Ok(())
}

fn sleeping_cpu(dir: &Path, asleep: Duration) -> Res<()> {
    let path = dir.join("sleep.json");
    let sem = open(&path, true)?;
    let held = sem.try_acquire("holder")?;
    let mut child = spawn_child(&["sleeper".into(), path.display().to_string()])?;
    let mut out = lines(&mut child);
    let queued: u64 = out
        .next()
        .and_then(|l| l.strip_prefix("queued ")?.parse().ok())
        .ok_or("sleeper did not queue")?;
    std::thread::sleep(asleep);
    held.release()?;
    let acquired: u64 = out
        .next()
        .and_then(|l| l.strip_prefix("acquired ")?.parse().ok())
        .ok_or("sleeper did not acquire")?;
    child.wait()?;
    println!(
        "CPU of a waiter queued for {:?} (durable disk, refreshing its expiry): {:.3} ms",
        asleep,
        (acquired.saturating_sub(queued)) as f64 / 1e6
    );
    Ok(())
}

fn churn(dir: &Path, waits: usize, hold: Duration) -> Res<()> {
    let path = dir.join("churn.json");
    let sem = OpenOptions::new().durable(false).open(&path, 1)?;
    let mut churners = Vec::new();
    for _ in 0..4 {
        let mut c = spawn_child(&[
            "churner".into(),
            path.display().to_string(),
            hold.as_millis().to_string(),
        ])?;
        let ready = lines(&mut c).next();
        if ready.as_deref() != Some("ready") {
            return Err("churner did not start".into());
        }
        churners.push(c);
    }
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut ratios = Vec::new();
    let mut by_ahead: std::collections::BTreeMap<usize, Vec<f64>> = Default::default();
    for _ in 0..waits {
        std::thread::sleep(Duration::from_micros(rng.u64(0..hold.as_micros() as u64)));
        let ahead = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
        let seen = ahead.clone();
        let opts = AcquireOptions::new().on_wait(move |s| {
            seen.store(s.ahead, std::sync::atomic::Ordering::SeqCst);
        });
        let start = Instant::now();
        let permit = sem.acquire_with("measured", &opts)?;
        let waited = start.elapsed();
        std::thread::sleep(hold);
        permit.release()?;
        let ahead = ahead.load(std::sync::atomic::Ordering::SeqCst);
        if ahead == usize::MAX {
            by_ahead.entry(usize::MAX).or_default().push(0.0);
            continue; // granted at once: no wait
        }
        let bound = hold * (ahead as u32 + 1);
        ratios.push(waited.as_secs_f64() / bound.as_secs_f64());
        by_ahead
            .entry(ahead)
            .or_default()
            .push(waited.as_secs_f64() * 1e3);
    }
    for c in &mut churners {
        c.kill().ok();
        c.wait().ok();
    }
    println!(
        "churn: 4 looping holders + 1 measured waiter, capacity 1, hold {hold:?}, seed {seed}, {waits} waits"
    );
    for (ahead, mut v) in by_ahead {
        if ahead == usize::MAX {
            println!("  granted without waiting: {}", v.len());
            continue;
        }
        println!(
            "  {ahead} waiters ahead (bound {} ms): wait ms {}",
            hold.as_millis() as usize * (ahead + 1),
            summary(&mut v)
        );
    }
    println!("  wait / bound: {}", summary(&mut ratios));
    Ok(())
}
