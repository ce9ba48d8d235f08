//! The performance targets as ratios measured in one run: `cargo bench --bench ratios`.
//!
//! Every row compares two workloads, A (the base) and B (the subject), run in interleaved
//! rounds (A, B, B, A, A, ...) so that load from other processes hits both alike. Each run
//! lasts about `FILESEM_BENCH_BATCH_MS` (default 200 ms); there are `FILESEM_BENCH_ROUNDS`
//! rounds (default 5). A row's ratio is the median of the per-round ratios; `IQR` is their
//! interquartile range, a measure of the noise.
//!
//! The base of the throughput rows is the reference floor, `benches/floor.c`, copied
//! unmodified from the project's shared benchmark directory (`/work/shared/bench/floor.c`),
//! built with `cc -O2` into the target directory when the benchmark starts and run as a
//! subprocess (see `support/cfloor.rs`). Without `cc` its rows are skipped, with a note.
//!
//! Rows, on tmpfs and on the normal disk (`support/place.rs`):
//! - `cycle CONFIG MEDIUM DURABILITY`: the library's `try_acquire` + `release` against the
//!   floor with the same durability (`durable` against its mode `d`: fsync of the temp file
//!   and of the directory; `plain`, i.e. `durable(false)`, against mode `b`). The ratio is
//!   library throughput over floor throughput. `default` is what `Semaphore::open` and
//!   `try_acquire` do (process-bound holds with a witness file); `bare` holds are detached
//!   (no witness) and nothing is reaped. Targets: default on tmpfs at least 0.75x, bare
//!   (detached) on tmpfs at least 0.9x, default on disk at least 0.9x, all durable;
//! - `refusal MEDIUM`: a refused `try_acquire` on a full semaphore against a plain default
//!   cycle; the ratio is refusal throughput over cycle throughput (target: at least 3x);
//! - `scale MEDIUM N`: a plain default cycle with N detached holders present against one on
//!   an empty semaphore; the ratio is how many times longer it takes (target: at most 20x at
//!   1,000 on tmpfs). `scale MEDIUM 1000 floor` is the same for the in-repo Rust floor
//!   (`support/floor.rs`) given the same bytes: the part of the slowdown that moving the
//!   file's bytes alone explains (`floor.c` keeps its state in a 4 KB buffer);
//! - `wait8 MEDIUM`: 8 processes on a semaphore of capacity 2, each repeating a waiting
//!   `acquire` and an immediate `release` (`durable(false)`, default holds), against the
//!   floor's own 8-process run (`floor b DIR K 8`: 8 forked workers retrying a refused
//!   acquire at once). The ratio is total throughput over the floor's (target: at least
//!   0.3x on tmpfs); `CPU/c` is the CPU time (user + system, all processes) per cycle of
//!   each side, from `/proc/self/stat` of this process's waited-for children.
//!
//! Arguments that do not start with `--` filter rows by substring
//! (`cargo bench --bench ratios -- "cycle bare tmpfs"`). Run without `--bench` (as
//! `cargo test --benches` does) it makes one short round per row, with small semaphores and
//! few cycles, to check that every row works; the numbers then mean nothing.

mod support;

use std::env;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use filesem::{AcquireOptions, OpenOptions, Semaphore};
use support::cfloor::{CFloor, children_cpu};
use support::floor::Floor;
use support::{Config, DURABILITIES, Place, durability_name};

/// The environment variable that makes this program a worker of a `wait8` row.
const WORKER_ENV: &str = "FILESEM_RATIOS_WORKER";
/// Processes in the `wait8` rows, and the capacity they share.
const PROCS: usize = 8;
const WAIT_CAPACITY: u32 = 2;
/// The longest a worker may take to start, to finish, or to wait in one `acquire`.
const GRACE: Duration = Duration::from_secs(60);

/// How a row's ratio is formed from the base's time (A) and the subject's time (B) per
/// operation, and what it must reach.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// Throughput of B over throughput of A (`A time / B time`), at least this much.
    FasterThan(f64),
    /// Throughput of B over throughput of A, reported without a target.
    Faster,
    /// How many times longer B takes than A (`B time / A time`), at most this much.
    SlowerAtMost(f64),
    /// How many times longer B takes than A, reported without a target.
    Slower,
}

impl Target {
    fn ratio(self, a: f64, b: f64) -> f64 {
        match self {
            Target::FasterThan(_) | Target::Faster => a / b,
            Target::SlowerAtMost(_) | Target::Slower => b / a,
        }
    }

    fn describe(self) -> String {
        match self {
            Target::FasterThan(x) => format!(">= {x}x"),
            Target::SlowerAtMost(x) => format!("<= {x}x"),
            Target::Faster | Target::Slower => "-".to_string(),
        }
    }

    fn verdict(self, ratio: f64) -> &'static str {
        match self {
            Target::FasterThan(x) if ratio >= x => "met",
            Target::SlowerAtMost(x) if ratio <= x => "met",
            Target::FasterThan(_) | Target::SlowerAtMost(_) => "MISSED",
            Target::Faster | Target::Slower => "",
        }
    }
}

struct Settings {
    /// Whether this is a real measurement (`--bench`) rather than a check that it runs.
    benching: bool,
    rounds: usize,
    batch: Duration,
    filters: Vec<String>,
}

impl Settings {
    fn from_env() -> Settings {
        let args: Vec<String> = env::args().skip(1).collect();
        let benching = args.iter().any(|a| a == "--bench");
        let filters = args.into_iter().filter(|a| !a.starts_with("--")).collect();
        let number = |name: &str, default: u64| {
            env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&n| n > 0)
                .unwrap_or(default)
        };
        if benching {
            Settings {
                benching,
                rounds: number("FILESEM_BENCH_ROUNDS", 5) as usize,
                batch: Duration::from_millis(number("FILESEM_BENCH_BATCH_MS", 200)),
                filters,
            }
        } else {
            Settings {
                benching,
                rounds: 1,
                batch: Duration::from_millis(5),
                filters,
            }
        }
    }

    fn wants(&self, row: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| row.contains(f.as_str()))
    }
}

/// One side of a row: runs `n` operations and returns the seconds per operation, and the CPU
/// seconds per operation where it measures them.
type Workload<'a> = &'a mut dyn FnMut(usize) -> Measured;

#[derive(Clone, Copy, Debug)]
struct Measured {
    per_op: f64,
    cpu_per_op: Option<f64>,
}

/// A workload of `f` called in this process, timed by the wall clock.
fn in_process(mut f: impl FnMut()) -> impl FnMut(usize) -> Measured {
    move |n| {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        Measured {
            per_op: start.elapsed().as_secs_f64() / n as f64,
            cpu_per_op: None,
        }
    }
}

/// How many operations of `w` take about `target`: from a first run of `probe` operations
/// (which also warms it up).
fn calibrate(w: Workload<'_>, probe: usize, target: Duration) -> usize {
    let per_op = w(probe).per_op;
    ((target.as_secs_f64() / per_op).ceil() as usize).max(1)
}

/// Per-round measurements of both sides of a row.
struct Paired {
    a: Vec<Measured>,
    b: Vec<Measured>,
}

fn paired(settings: &Settings, probe: usize, a: Workload<'_>, b: Workload<'_>) -> Paired {
    let (na, nb) = if settings.benching {
        (
            calibrate(a, probe, settings.batch),
            calibrate(b, probe, settings.batch),
        )
    } else {
        (probe, probe)
    };
    let mut result = Paired {
        a: Vec::with_capacity(settings.rounds),
        b: Vec::with_capacity(settings.rounds),
    };
    for round in 0..settings.rounds {
        let (ma, mb) = if round % 2 == 0 {
            let ma = a(na);
            (ma, b(nb))
        } else {
            let mb = b(nb);
            (a(na), mb)
        };
        result.a.push(ma);
        result.b.push(mb);
    }
    result
}

/// The `q`-quantile (0..=1) of `values`, by linear interpolation.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn micros(seconds: f64) -> String {
    let us = seconds * 1e6;
    if us >= 100.0 {
        format!("{us:.0} us")
    } else {
        format!("{us:.1} us")
    }
}

/// The median CPU time per operation of `runs`, if every run measured it.
fn cpu(runs: &[Measured]) -> String {
    let known: Option<Vec<f64>> = runs.iter().map(|m| m.cpu_per_op).collect();
    match known {
        Some(v) if !v.is_empty() => micros(quantile(&v, 0.5)),
        _ => "-".to_string(),
    }
}

struct Table {
    settings: Settings,
    missed: usize,
}

impl Table {
    fn header(&self) {
        println!(
            "{:<28} {:>9} {:>9} {:>8} {:>11} {:>8} {:>7} {:>9} {:>9}",
            "row (A = base, B = subject)",
            "A / op",
            "B / op",
            "ratio",
            "IQR",
            "target",
            "",
            "CPU/c A",
            "CPU/c B"
        );
    }

    /// Measures one row and prints it; `probe` is the size of the first, calibrating run.
    fn row(&mut self, name: &str, target: Target, probe: usize, a: Workload<'_>, b: Workload<'_>) {
        let p = paired(&self.settings, probe, a, b);
        let ratios: Vec<f64> =
            p.a.iter()
                .zip(&p.b)
                .map(|(a, b)| target.ratio(a.per_op, b.per_op))
                .collect();
        let ratio = quantile(&ratios, 0.5);
        let verdict = target.verdict(ratio);
        if verdict == "MISSED" {
            self.missed += 1;
        }
        let per_op = |m: &[Measured]| {
            micros(quantile(
                &m.iter().map(|m| m.per_op).collect::<Vec<_>>(),
                0.5,
            ))
        };
        println!(
            "{:<28} {:>9} {:>9} {:>7.2}x {:>11} {:>8} {:>7} {:>9} {:>9}",
            name,
            per_op(&p.a),
            per_op(&p.b),
            ratio,
            format!(
                "{:.2}..{:.2}",
                quantile(&ratios, 0.25),
                quantile(&ratios, 0.75)
            ),
            target.describe(),
            verdict,
            cpu(&p.a),
            cpu(&p.b),
        );
    }
}

/// The throughput target of a cycle against the floor, where the issue sets one.
fn cycle_target(config: Config, place: &Place, durable: bool) -> Target {
    use support::place::Medium;
    match (config, place.medium, durable) {
        (Config::Default, Medium::Tmpfs, true) => Target::FasterThan(0.75),
        (Config::Bare, Medium::Tmpfs, true) => Target::FasterThan(0.9),
        (Config::Default, Medium::Disk, true) => Target::FasterThan(0.9),
        _ => Target::Faster,
    }
}

/// A fresh directory `name` in `dir` for one run of the floor.
fn floor_dir(dir: &Path, name: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("floor directory");
    d
}

fn measure_place(table: &mut Table, place: &Place, floor: Option<&CFloor>) {
    let dir = place.path();
    let medium = place.medium.name();
    let benching = table.settings.benching;

    for config in Config::ALL {
        for durable in DURABILITIES {
            let d = durability_name(durable);
            let name = format!("cycle {} {medium} {d}", config.name());
            let Some(floor) = floor.filter(|_| table.settings.wants(&name)) else {
                continue;
            };
            let mode = if durable { 'd' } else { 'b' };
            let fdir = floor_dir(dir, &format!("floor-{mode}"));
            let sem = support::subject(
                dir,
                &format!("cycle-{}-{d}", config.name()),
                config,
                durable,
                0,
                1,
            );
            let mut a = |n: usize| {
                let run = floor.run(mode, &fdir, n, 1).expect("floor run");
                Measured {
                    per_op: run.per_cycle,
                    cpu_per_op: None,
                }
            };
            let mut b = in_process(|| sem.cycle());
            let probe = if benching { 300 } else { 3 };
            table.row(
                &name,
                cycle_target(config, place, durable),
                probe,
                &mut a,
                &mut b,
            );
        }
    }

    let empty = support::subject(dir, "empty", Config::Default, false, 0, 1);
    let name = format!("refusal {medium}");
    if table.settings.wants(&name) {
        let full = support::subject(dir, "full", Config::Default, false, 1, 0);
        let probe = if benching { 300 } else { 3 };
        table.row(
            &name,
            Target::FasterThan(3.0),
            probe,
            &mut in_process(|| empty.cycle()),
            &mut in_process(|| full.refusal()),
        );
    }

    for (others, target) in [
        (10, Target::Slower),
        (100, Target::Slower),
        (1000, Target::SlowerAtMost(20.0)),
    ] {
        if !benching && others > 10 {
            continue;
        }
        let name = format!("scale {medium} {others}");
        if !table.settings.wants(&name) {
            continue;
        }
        let crowded = support::subject(
            dir,
            &format!("scale-{others}"),
            Config::Default,
            false,
            others,
            1,
        );
        let target = match place.medium {
            support::place::Medium::Tmpfs => target,
            support::place::Medium::Disk => Target::Slower,
        };
        let probe = if benching { 20 } else { 2 };
        table.row(
            &name,
            target,
            probe,
            &mut in_process(|| empty.cycle()),
            &mut in_process(|| crowded.cycle()),
        );
        if others == 1000 {
            // How much of that the file's size alone costs: the Rust floor with the same bytes.
            let bytes = std::fs::read(crowded.sem.path()).expect("read the crowded state");
            let mut small = Floor::create(&dir.join("floor-small.json"), false).expect("floor");
            let mut large =
                Floor::create_with(&dir.join("floor-large.json"), false, &bytes).expect("floor");
            table.row(
                &format!("scale {medium} {others} floor"),
                Target::Slower,
                probe,
                &mut in_process(|| small.cycle().expect("floor cycle")),
                &mut in_process(|| large.cycle().expect("floor cycle")),
            );
        }
    }

    let name = format!("wait{PROCS} {medium}");
    if let Some(floor) = floor.filter(|_| table.settings.wants(&name)) {
        let target = match place.medium {
            support::place::Medium::Tmpfs => Target::FasterThan(0.3),
            support::place::Medium::Disk => Target::Faster,
        };
        let fdir = floor_dir(dir, "floor-wait");
        let mut round = 0;
        let mut a = |n: usize| {
            // Cycles per process.
            let per_proc = n.div_ceil(PROCS);
            let run = floor.run('b', &fdir, per_proc, PROCS).expect("floor run");
            Measured {
                per_op: run.per_cycle,
                cpu_per_op: run.cpu_per_cycle,
            }
        };
        let mut b = |n: usize| {
            round += 1;
            let path = dir.join(format!("wait-{round}.json"));
            waiting_run(&path, n.div_ceil(PROCS)).expect("waiting run")
        };
        let probe = if benching { 2000 } else { 16 };
        table.row(&name, target, probe, &mut a, &mut b);
    }
}

/// Realtime clock in nanoseconds: comparable between processes.
fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// One `wait8` run of the library: `PROCS` workers (this program, re-executed) on a new
/// semaphore at `path`, `cycles` waiting acquires and releases each, started together.
/// Fails if a worker fails or anything is left on file.
fn waiting_run(path: &Path, cycles: usize) -> Result<Measured, String> {
    OpenOptions::new()
        .durable(false)
        .open(path, WAIT_CAPACITY)
        .map_err(|e| e.to_string())?;
    let exe = env::current_exe().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children: Vec<Child> = Vec::new();
    let cpu_before = children_cpu();
    let result = (|| {
        for index in 0..PROCS {
            let mut child = Command::new(&exe)
                .env(WORKER_ENV, format!("{}\n{index}\n{cycles}", path.display()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("spawn a worker: {e}"))?;
            let stdout = child.stdout.take().ok_or("a worker without stdout")?;
            children.push(child);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send((index, line)).is_err() {
                        break;
                    }
                }
            });
        }
        let expect = |word: &str| -> Result<Vec<String>, String> {
            let deadline = Instant::now() + GRACE;
            let mut lines = vec![None; PROCS];
            while lines.iter().any(Option::is_none) {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok((i, line)) if line.starts_with(word) => lines[i] = Some(line),
                    Ok((i, line)) => return Err(format!("worker {i} said {line:?}")),
                    Err(_) => return Err(format!("workers did not say {word:?} in time")),
                }
            }
            Ok(lines.into_iter().flatten().collect())
        };
        expect("ready")?;
        let go = wall_ns();
        for child in &mut children {
            let stdin = child.stdin.as_mut().ok_or("a worker without stdin")?;
            writeln!(stdin, "go").map_err(|e| e.to_string())?;
            stdin.flush().map_err(|e| e.to_string())?;
        }
        let done = expect("done")?;
        let end = done
            .iter()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u128>().ok())
            .max()
            .ok_or("no end times")?;
        Ok::<_, String>((end.saturating_sub(go)) as f64 / 1e9)
    })();
    let deadline = Instant::now() + GRACE;
    let mut failed = None;
    for child in &mut children {
        if result.is_err() {
            let _ = child.kill();
        }
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => {
                    failed = Some(format!("a worker failed: {status}"));
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failed = Some("a worker did not exit".to_string());
                    break;
                }
            }
        }
    }
    let seconds = result?;
    if let Some(f) = failed {
        return Err(f);
    }
    let sem = Semaphore::open_existing(path).map_err(|e| e.to_string())?;
    let (holders, waiters) = (
        sem.count().map_err(|e| e.to_string())?,
        sem.waiters().map_err(|e| e.to_string())?.len(),
    );
    if holders + waiters > 0 {
        return Err(format!("{holders} holders and {waiters} waiters left"));
    }
    let total = (cycles * PROCS) as f64;
    let cpu = match (cpu_before, children_cpu()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64() / total),
        _ => None,
    };
    Ok(Measured {
        per_op: seconds / total,
        cpu_per_op: cpu,
    })
}

/// A `wait8` worker: `PATH\nINDEX\nCYCLES` in [`WORKER_ENV`]. Says `ready`, waits for `go`
/// on stdin, repeats a waiting `acquire` and a `release`, and says `done END_NS`.
fn worker(spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut parts = spec.lines();
    let (Some(path), Some(index), Some(cycles)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("bad worker spec {spec:?}").into());
    };
    let cycles: usize = cycles.parse()?;
    let sem = OpenOptions::new().durable(false).open_existing(path)?;
    let options = AcquireOptions::new().timeout(GRACE);
    let id = format!("worker-{index}");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "go" {
        return Err(format!("expected go, got {line:?}").into());
    }
    for _ in 0..cycles {
        sem.acquire_with(&id, &options)?.release()?;
    }
    writeln!(out, "done {}", wall_ns())?;
    out.flush()?;
    Ok(())
}

fn main() {
    if let Ok(spec) = env::var(WORKER_ENV) {
        if let Err(e) = worker(&spec) {
            eprintln!("ratios worker: {e}");
            std::process::exit(1);
        }
        return;
    }
    let settings = Settings::from_env();
    if !settings.benching {
        println!("check mode (no --bench): short runs, small semaphores; the numbers mean nothing");
    }
    println!(
        "filesem ratios: {} rounds of ~{} ms per workload, interleaved",
        settings.rounds,
        settings.batch.as_millis()
    );
    let floor = match CFloor::build(Path::new(env!("CARGO_TARGET_TMPDIR"))) {
        Ok(f) => Some(f),
        Err(why) => {
            println!("skipping the rows against floor.c (cycle, wait{PROCS}): {why}");
            None
        }
    };
    let places = support::places();
    for place in &places {
        println!("  {}", place.describe());
    }
    let mut table = Table {
        settings,
        missed: 0,
    };
    table.header();
    for place in &places {
        measure_place(&mut table, place, floor.as_ref());
    }
    println!("targets missed: {}", table.missed);
}
