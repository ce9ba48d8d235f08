//! The Redis store against its floor: `cargo bench --features redis --bench redis`.
//!
//! It starts its own `redis-server` on a free loopback port (as the tests do,
//! `tests/common/redis_server.rs`; without one it prints SKIPPED) and measures:
//!
//! 1. **Cycle**: `try_acquire` + `release` by one process, against the floor's cycle (two
//!    steps of `benches/support/redis_floor.rs`: the minimal round trips the design needs,
//!    issued with the same client crate on one connection), in alternating rounds; the ratio
//!    is the median of the rounds' ratios.
//! 2. **Contention**: 8 processes (this program re-executed) on a capacity-2 semaphore with
//!    zero hold time, for `FILESEM_BENCH_REDIS_MS` each run: `try_acquire`, and on
//!    `NoCapacity` a sleep (20 µs doubling to 1 ms, ±25% jitter) and a retry; then waiting
//!    `acquire` (in the queue, woken by the pub/sub notice). Each is compared with the
//!    floor's own 8-process run (8 processes doing floor cycles on one key, a lost
//!    compare-and-swap read again), in alternating runs. Reported: grants per second, the
//!    ratio, and per grant the lost compare-and-swaps (`Semaphore::redis_stats`, `retries`)
//!    and refusals, so a retry storm shows; the floor's lost races per cycle beside them.
//! 3. **Hand-off latency**: two processes pass a capacity-1 semaphore back and forth; each
//!    hand-off is timed from just before `release` in one to `acquire` returning in the other,
//!    queued (wall clock, shared by both): 1,000 hand-offs, p50 and p99.
//!
//! `FILESEM_BENCH_ROUNDS` (default 7) rounds of `FILESEM_BENCH_REDIS_MS` ms (default 500) for
//! the cycle; `FILESEM_BENCH_CONTENTION_ROUNDS` (default 3) runs of each contention kind;
//! `FILESEM_BENCH_HANDOFFS` (default 1000). Run without `--bench` (as `cargo test --benches`
//! does) it makes one short round of each, to check that it works.

#[path = "support/redis_floor.rs"]
mod floor;
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use filesem::{AcquireOptions, Error, OpenOptions, Semaphore};
use redis_server::RedisServer;

/// The environment variable that makes this program a child process in a role.
const ROLE: &str = "FILESEM_BENCH_REDIS_ROLE";

/// Processes in the contention runs.
const PROCESSES: usize = 8;

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child(&role);
        return;
    }
    let benching = std::env::args().any(|a| a == "--bench");
    let number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(default)
    };
    let (rounds, length, contention_rounds, handoffs) = if benching {
        (
            number("FILESEM_BENCH_ROUNDS", 7),
            Duration::from_millis(number("FILESEM_BENCH_REDIS_MS", 500)),
            number("FILESEM_BENCH_CONTENTION_ROUNDS", 3),
            number("FILESEM_BENCH_HANDOFFS", 1000),
        )
    } else {
        println!("check mode (no --bench): one short round of each; the numbers mean nothing");
        (1, Duration::from_millis(50), 1, 20)
    };
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = floor::connect(&server.server_url());
    println!(
        "redis {} on loopback (127.0.0.1:{}), a private server",
        floor::server_version(&mut con),
        server.port()
    );
    drop(con);
    cycle(&server, rounds, length);
    contention(
        &server,
        contention_rounds,
        length.max(Duration::from_millis(200)) * 2,
    );
    handoff(&server, handoffs);
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ------------------------------------------------------------------------------- 1. cycle

/// Floor cycles per second over `length`: two steps, as an acquire and a release.
fn floor_round(con: &mut redis::Connection, cas: &redis::Script, length: Duration) -> f64 {
    let docs = [floor::document(7), floor::document(8)];
    let started = Instant::now();
    let mut cycles = 0u64;
    while started.elapsed() < length {
        for doc in &docs {
            let lost = floor::step(con, cas, "floor", doc);
            assert_eq!(lost, 0, "the only writer lost a compare-and-swap");
        }
        cycles += 1;
    }
    cycles as f64 / started.elapsed().as_secs_f64()
}

/// Library cycles per second over `length`: `try_acquire` + `release`.
fn library_round(sem: &Semaphore, length: Duration) -> f64 {
    let started = Instant::now();
    let mut cycles = 0u64;
    while started.elapsed() < length {
        let permit = sem.try_acquire("bench").expect("try_acquire");
        permit.release().expect("release");
        cycles += 1;
    }
    cycles as f64 / started.elapsed().as_secs_f64()
}

fn cycle(server: &RedisServer, rounds: u64, length: Duration) {
    let mut con = floor::connect(&server.server_url());
    let cas = floor::cas_script();
    let sem = Semaphore::open_redis(&server.url("cycle"), 4).expect("open");
    // Warm up both (script loaded, connections open).
    floor_round(&mut con, &cas, length / 5);
    library_round(&sem, length / 5);
    let before = sem.redis_stats().unwrap();
    let (mut floors, mut libs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which goes first, so that a trend in the machine's load hits both alike.
        let (f, l) = if i % 2 == 0 {
            let f = floor_round(&mut con, &cas, length);
            (f, library_round(&sem, length))
        } else {
            let l = library_round(&sem, length);
            (floor_round(&mut con, &cas, length), l)
        };
        floors.push(f);
        libs.push(l);
        ratios.push(l / f);
    }
    let after = sem.redis_stats().unwrap();
    let (f, l, r) = (median(&mut floors), median(&mut libs), median(&mut ratios));
    println!();
    println!(
        "1. cycle, one process (try_acquire + release vs two floor steps), {rounds} alternating \
         rounds of {} ms:",
        length.as_millis()
    );
    println!(
        "   floor {f:.0} cycles/s ({:.0} µs), filesem {l:.0} cycles/s ({:.0} µs): {r:.2}x \
         (rounds {:.2}-{:.2}x, target >= 0.8x)",
        1e6 / f,
        1e6 / l,
        ratios[0],
        ratios[ratios.len() - 1]
    );
    println!(
        "   filesem client: {} steps, {} commits, {} lost races, {} connections in the rounds",
        after.steps - before.steps,
        after.commits - before.commits,
        after.retries - before.retries,
        after.connects - before.connects
    );
}

// -------------------------------------------------------------------------- 2. contention

/// What one contention run did, summed over its processes.
#[derive(Default)]
struct Run {
    grants: u64,
    lost: u64,
    refusals: u64,
    seconds: f64,
}

/// Runs `PROCESSES` children in `role` on `url` for `length`; they start together.
fn run_children(role: &str, url: &str, length: Duration) -> Run {
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|_| {
            Command::new(std::env::current_exe().expect("this program"))
                .env(ROLE, role)
                .env("URL", url)
                .env("LENGTH_MS", length.as_millis().to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a child")
        })
        .collect();
    let mut outs: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().unwrap()).lines())
        .collect();
    for out in &mut outs {
        let line = out.next().expect("ready line").expect("read");
        assert_eq!(line, "ready");
    }
    for c in &mut children {
        writeln!(c.stdin.as_mut().unwrap(), "go").expect("go");
    }
    let mut run = Run::default();
    for (c, out) in children.iter_mut().zip(&mut outs) {
        let line = out.next().expect("result line").expect("read");
        let v: Vec<f64> = line
            .split_whitespace()
            .map(|x| x.parse().expect("number"))
            .collect();
        run.grants += v[0] as u64;
        run.lost += v[1] as u64;
        run.refusals += v[2] as u64;
        run.seconds = run.seconds.max(v[3]);
        assert!(c.wait().expect("wait").success(), "a child failed");
    }
    run
}

fn contention(server: &RedisServer, rounds: u64, length: Duration) {
    let floor_url = server.server_url();
    // Created here, so that the children open it.
    let try_url = server.url("contention-try");
    let wait_url = server.url("contention-wait");
    Semaphore::open_redis(&try_url, 2).expect("open");
    Semaphore::open_redis(&wait_url, 2).expect("open");
    let mut results: [(Vec<f64>, Vec<Run>); 3] = Default::default();
    for _ in 0..rounds {
        for (i, (role, url)) in [
            ("floor", &floor_url),
            ("try", &try_url),
            ("wait", &wait_url),
        ]
        .into_iter()
        .enumerate()
        {
            let run = run_children(role, url, length);
            results[i].0.push(run.grants as f64 / run.seconds);
            results[i].1.push(run);
        }
    }
    println!();
    println!(
        "2. contention, {PROCESSES} processes, capacity 2, zero hold time, {rounds} runs of {} ms \
         each, alternating:",
        length.as_millis()
    );
    let floor_rates = results[0].0.clone();
    let per = |runs: &[Run], f: fn(&Run) -> u64| {
        let total: u64 = runs.iter().map(f).sum();
        let grants: u64 = runs.iter().map(|r| r.grants).sum();
        total as f64 / grants.max(1) as f64
    };
    for (i, label) in [
        "floor (8 processes, 2 steps per cycle)",
        "try_acquire + backoff",
        "waiting acquire",
    ]
    .into_iter()
    .enumerate()
    {
        let (rates, runs) = &results[i];
        let mut ratios: Vec<f64> = rates.iter().zip(&floor_rates).map(|(r, f)| r / f).collect();
        let mut sorted = rates.clone();
        let rate = median(&mut sorted);
        let ratio = median(&mut ratios);
        let lost = per(runs, |r| r.lost);
        if i == 0 {
            println!("   {label}: {rate:.0} cycles/s, {lost:.2} lost races per cycle");
        } else {
            println!(
                "   {label}: {rate:.0} grants/s, {ratio:.2}x the floor (target >= 0.7x), \
                 {lost:.2} lost races and {:.2} refusals per grant",
                per(runs, |r| r.refusals)
            );
        }
    }
}

/// A contention child: waits for "go", runs its loop for `LENGTH_MS`, says `grants lost
/// refusals seconds`.
fn contender(role: &str) {
    let url = std::env::var("URL").unwrap();
    let length = Duration::from_millis(std::env::var("LENGTH_MS").unwrap().parse().unwrap());
    let me = format!("c-{}", std::process::id());
    let sem = match role {
        "floor" => None,
        _ => Some(OpenOptions::new().open_redis_existing(&url).expect("open")),
    };
    // The floor's connection; `url` is the server's then, not a semaphore's.
    let mut con = (role == "floor").then(|| floor::connect(&url));
    let cas = floor::cas_script();
    println!("ready");
    std::io::stdout().flush().unwrap();
    std::io::stdin()
        .lock()
        .read_line(&mut String::new())
        .unwrap();
    let before = sem.as_ref().map(|s| s.redis_stats().unwrap());
    let (mut grants, mut lost, mut refusals) = (0u64, 0u64, 0u64);
    let mut rng = fastrand::Rng::new();
    let started = Instant::now();
    let mut n = u64::from(std::process::id()) << 32;
    while started.elapsed() < length {
        match (role, &sem, &mut con) {
            ("floor", _, Some(con)) => {
                for _ in 0..2 {
                    n += 1;
                    lost += floor::step(con, &cas, "contention-floor", &floor::document(n));
                }
            }
            ("try", Some(sem), _) => {
                let mut backoff = Duration::from_micros(20);
                let permit = loop {
                    match sem.try_acquire(me.as_str()) {
                        Ok(p) => break p,
                        Err(Error::NoCapacity { .. }) => refusals += 1,
                        Err(e) => panic!("try_acquire: {e}"),
                    }
                    let quarter = backoff / 4;
                    let jitter = Duration::from_nanos(rng.u64(0..=(quarter.as_nanos() as u64 * 2)));
                    std::thread::sleep(backoff - quarter + jitter);
                    backoff = (backoff * 2).min(Duration::from_millis(1));
                };
                permit.release().expect("release");
            }
            ("wait", Some(sem), _) => {
                let opts = AcquireOptions::new().timeout(Duration::from_secs(30));
                let permit = sem.acquire_with(me.as_str(), &opts).expect("acquire");
                permit.release().expect("release");
            }
            _ => unreachable!("role {role}"),
        }
        grants += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    if let (Some(sem), Some(before)) = (&sem, before) {
        lost = sem.redis_stats().unwrap().retries - before.retries;
    }
    println!("{grants} {lost} {refusals} {seconds}");
}

// ---------------------------------------------------------------------------- 3. hand-off

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A hand-off child: `ping` takes the slot first, `pong` queues; each releases `ROUNDS`
/// times once the other is queued, saying `rel NS` and `acq NS`.
fn pingpong(role: &str) {
    let url = std::env::var("URL").unwrap();
    let rounds: u64 = std::env::var("ROUNDS").unwrap().parse().unwrap();
    let sem = OpenOptions::new().open_redis_existing(&url).expect("open");
    let mut out = std::io::stdout().lock();
    let opts = AcquireOptions::new().timeout(Duration::from_secs(60));
    let mut permit = if role == "ping" {
        let p = sem.try_acquire(role).expect("try_acquire");
        writeln!(out, "holding").unwrap();
        out.flush().unwrap();
        p
    } else {
        let p = sem.acquire_with(role, &opts).expect("acquire");
        writeln!(out, "acq {}", now_ns()).unwrap();
        p
    };
    for _ in 0..rounds {
        while sem.waiters().expect("waiters").is_empty() {
            std::thread::sleep(Duration::from_micros(200));
        }
        let t = now_ns();
        permit.release().expect("release");
        writeln!(out, "rel {t}").unwrap();
        permit = sem.acquire_with(role, &opts).expect("acquire");
        writeln!(out, "acq {}", now_ns()).unwrap();
    }
    drop(permit);
    writeln!(out, "done").unwrap();
}

fn handoff(server: &RedisServer, handoffs: u64) {
    let url = server.url("handoff");
    let sem = Semaphore::open_redis(&url, 1).expect("open");
    let rounds = handoffs.div_ceil(2);
    let spawn = |role: &str| {
        Command::new(std::env::current_exe().expect("this program"))
            .env(ROLE, role)
            .env("URL", &url)
            .env("ROUNDS", rounds.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a child")
    };
    let mut ping = spawn("ping");
    let mut ping_out = BufReader::new(ping.stdout.take().unwrap()).lines();
    assert_eq!(ping_out.next().unwrap().unwrap(), "holding");
    let mut pong = spawn("pong");
    let ping_lines: Vec<String> = ping_out.map_while(Result::ok).collect();
    let pong_lines: Vec<String> = BufReader::new(pong.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(ping.wait().unwrap().success() && pong.wait().unwrap().success());
    let parse = |lines: &[String], kind: &str| -> Vec<u128> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(kind))
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    };
    let (ping_rel, ping_acq) = (parse(&ping_lines, "rel "), parse(&ping_lines, "acq "));
    let (pong_rel, pong_acq) = (parse(&pong_lines, "rel "), parse(&pong_lines, "acq "));
    let mut ms: Vec<f64> = ping_rel
        .iter()
        .zip(&pong_acq)
        .chain(pong_rel.iter().zip(&ping_acq))
        .map(|(rel, acq)| acq.saturating_sub(*rel) as f64 / 1e6)
        .collect();
    ms.sort_by(f64::total_cmp);
    assert_eq!(sem.count().unwrap(), 0);
    println!();
    println!(
        "3. hand-off latency, release -> a queued acquire in another process, {} hand-offs, ms:",
        ms.len()
    );
    println!(
        "   min {:.3}, p50 {:.3} (target < 2), p90 {:.3}, p99 {:.3} (target < 20), max {:.3}",
        ms[0],
        percentile(&ms, 50.0),
        percentile(&ms, 90.0),
        percentile(&ms, 99.0),
        ms[ms.len() - 1]
    );
}

fn child(role: &str) {
    match role {
        "ping" | "pong" => pingpong(role),
        _ => contender(role),
    }
}
