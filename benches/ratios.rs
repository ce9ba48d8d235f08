//! The targets as ratios measured in one run: `cargo bench --bench ratios`.
//!
//! Every row compares two workloads run in alternating batches (A, B, B, A, A, B, ...), so
//! that load from other processes on a shared machine hits both alike. Each batch lasts about
//! `FILESEM_BENCH_BATCH_MS` (default 50 ms); there are `FILESEM_BENCH_ROUNDS` batches of each
//! (default 15). A row's ratio is the median of the per-round ratios; `IQR` is their
//! interquartile range, a measure of the noise.
//!
//! Rows, on tmpfs and on the normal disk:
//! - `cycle CONFIG DURABILITY`: the library's `try_acquire` + `release` against the floor
//!   (`support/floor.rs`) with the same durability; the ratio is library throughput over
//!   floor throughput (target: at least 0.85x for the bare configuration, 0.75x for the
//!   default one; see `Config` in `support/mod.rs`);
//! - `refusal`: a refused `try_acquire` on a full semaphore against a plain cycle, both in
//!   the default configuration; the ratio is refusal throughput over cycle throughput
//!   (target: at least 3x);
//! - `scale N`: a plain default cycle with N detached holders present against one on an
//!   empty semaphore; the ratio is how many times longer it takes (target: under 15x at 1,000);
//!   `scale N floor` is the same for the floor given the same bytes: the part of the
//!   slowdown that the file's size alone explains.
//!
//! Arguments that do not start with `--` filter rows by substring
//! (`cargo bench --bench ratios -- "cycle bare tmpfs"`). Run without `--bench` (as
//! `cargo test --benches` does) it makes one short round per row, to check that it works.

mod support;

use std::env;
use std::time::{Duration, Instant};

use support::floor::Floor;
use support::{Config, DURABILITIES, Place, durability_name};

/// How a row's ratio is formed from the base's time (A) and the subject's time (B) per
/// operation, and what it must reach.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// Throughput of B over throughput of A (`A time / B time`), at least this much.
    FasterThan(f64),
    /// How many times longer B takes than A (`B time / A time`), less than this much.
    SlowerBelow(f64),
    /// How many times longer B takes than A, reported without a target.
    Slower,
}

impl Target {
    fn ratio(self, a: f64, b: f64) -> f64 {
        match self {
            Target::FasterThan(_) => a / b,
            Target::SlowerBelow(_) | Target::Slower => b / a,
        }
    }

    fn describe(self) -> String {
        match self {
            Target::FasterThan(x) => format!(">= {x}x"),
            Target::SlowerBelow(x) => format!("< {x}x"),
            Target::Slower => "-".to_string(),
        }
    }

    fn verdict(self, ratio: f64) -> &'static str {
        match self {
            Target::FasterThan(x) if ratio >= x => "met",
            Target::SlowerBelow(x) if ratio < x => "met",
            Target::FasterThan(_) | Target::SlowerBelow(_) => "MISSED",
            Target::Slower => "",
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
                rounds: number("FILESEM_BENCH_ROUNDS", 15) as usize,
                batch: Duration::from_millis(number("FILESEM_BENCH_BATCH_MS", 50)),
                filters,
            }
        } else {
            Settings {
                benching,
                rounds: 2,
                batch: Duration::from_millis(2),
                filters,
            }
        }
    }

    fn wants(&self, row: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| row.contains(f.as_str()))
    }
}

/// Seconds per operation of A and B in each round.
struct Paired {
    a: Vec<f64>,
    b: Vec<f64>,
}

/// Runs `f` `n` times and returns the seconds per call.
fn batch(f: &mut dyn FnMut(), n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() / n as f64
}

/// How many calls of `f` take about `target` (after warming it up for half that time).
fn calibrate(f: &mut dyn FnMut(), target: Duration) -> usize {
    let start = Instant::now();
    let mut calls = 0usize;
    while calls < 3 || start.elapsed() < target / 2 {
        f();
        calls += 1;
    }
    let per_call = start.elapsed().as_secs_f64() / calls as f64;
    ((target.as_secs_f64() / per_call).ceil() as usize).max(1)
}

fn paired(settings: &Settings, a: &mut dyn FnMut(), b: &mut dyn FnMut()) -> Paired {
    let na = calibrate(a, settings.batch);
    let nb = calibrate(b, settings.batch);
    let mut result = Paired {
        a: Vec::with_capacity(settings.rounds),
        b: Vec::with_capacity(settings.rounds),
    };
    for round in 0..settings.rounds {
        let (ta, tb) = if round % 2 == 0 {
            let ta = batch(a, na);
            (ta, batch(b, nb))
        } else {
            let tb = batch(b, nb);
            (batch(a, na), tb)
        };
        result.a.push(ta);
        result.b.push(tb);
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

struct Table {
    settings: Settings,
    missed: usize,
}

impl Table {
    fn header(&self) {
        println!(
            "{:<32} {:>10} {:>10} {:>8} {:>15} {:>8} {:>7}",
            "row (A = base, B = subject)", "A / op", "B / op", "ratio", "IQR", "target", ""
        );
    }

    /// Measures one row, if the filters want it, and prints it.
    fn row(&mut self, name: &str, target: Target, a: &mut dyn FnMut(), b: &mut dyn FnMut()) {
        if !self.settings.wants(name) {
            return;
        }
        let p = paired(&self.settings, a, b);
        let ratios: Vec<f64> =
            p.a.iter()
                .zip(&p.b)
                .map(|(&a, &b)| target.ratio(a, b))
                .collect();
        let ratio = quantile(&ratios, 0.5);
        let verdict = target.verdict(ratio);
        if verdict == "MISSED" {
            self.missed += 1;
        }
        println!(
            "{:<32} {:>10} {:>10} {:>7.2}x {:>15} {:>8} {:>7}",
            name,
            micros(quantile(&p.a, 0.5)),
            micros(quantile(&p.b, 0.5)),
            ratio,
            format!(
                "{:.2}..{:.2}",
                quantile(&ratios, 0.25),
                quantile(&ratios, 0.75)
            ),
            target.describe(),
            verdict,
        );
    }
}

/// The throughput target of a bare cycle against the floor, per configuration.
fn cycle_target(config: Config) -> Target {
    match config {
        Config::Bare => Target::FasterThan(0.85),
        Config::Default => Target::FasterThan(0.75),
    }
}

fn measure_place(table: &mut Table, place: &Place) {
    let dir = place.path();
    let medium = place.medium.name();

    for config in Config::ALL {
        for durable in DURABILITIES {
            let d = durability_name(durable);
            let name = format!("cycle {} {medium} {d}", config.name());
            if !table.settings.wants(&name) {
                continue;
            }
            let mut floor =
                Floor::create(&dir.join(format!("floor-{d}.json")), durable).expect("floor state");
            let sem = support::subject(
                dir,
                &format!("cycle-{}-{d}", config.name()),
                config,
                durable,
                0,
                1,
            );
            table.row(
                &name,
                cycle_target(config),
                &mut || floor.cycle().expect("floor cycle"),
                &mut || sem.cycle(),
            );
        }
    }

    let empty = support::subject(dir, "empty", Config::Default, false, 0, 1);
    let name = format!("refusal {medium}");
    if table.settings.wants(&name) {
        let full = support::subject(dir, "full", Config::Default, false, 1, 0);
        table.row(
            &name,
            Target::FasterThan(3.0),
            &mut || empty.cycle(),
            &mut || full.refusal(),
        );
    }

    for (others, target) in [
        (10, Target::Slower),
        (100, Target::Slower),
        (1000, Target::SlowerBelow(15.0)),
    ] {
        if !table.settings.benching && others > 10 {
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
        table.row(&name, target, &mut || empty.cycle(), &mut || {
            crowded.cycle()
        });
        if others == 1000 {
            // How much of that the file's size alone costs: the floor with the same bytes.
            let bytes = std::fs::read(crowded.sem.path()).expect("read the crowded state");
            let mut small = Floor::create(&dir.join("floor-small.json"), false).expect("floor");
            let mut large =
                Floor::create_with(&dir.join("floor-large.json"), false, &bytes).expect("floor");
            table.row(
                &format!("scale {medium} {others} floor"),
                Target::Slower,
                &mut || small.cycle().expect("floor cycle"),
                &mut || large.cycle().expect("floor cycle"),
            );
        }
    }
}

fn main() {
    let settings = Settings::from_env();
    if !settings.benching {
        println!("check mode (no --bench): short runs, small semaphores; the numbers mean nothing");
    }
    println!(
        "filesem ratios: {} rounds of ~{} ms batches per workload, alternating",
        settings.rounds,
        settings.batch.as_millis()
    );
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
        measure_place(&mut table, place);
    }
    println!("targets missed: {}", table.missed);
}
