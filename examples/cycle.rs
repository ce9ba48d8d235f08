//! Repeats one kind of cycle (`try_acquire` + `release`) for profiling, with nothing else in
//! the process: `cargo run --release --example cycle -- [--dir DIR] [--cycles N]
//! [--holders H] [--detached] [--plain]`.
//!
//! - `--dir DIR`: where the semaphore `cycle.json` is made (default: a fresh directory in
//!   `/dev/shm`, removed at the end);
//! - `--cycles N`: how many cycles (default 1000);
//! - `--holders H`: this many detached holders are on file besides the one cycling (default 0);
//! - `--detached`: the cycling hold is detached (no witness file), as in the `bare`
//!   configuration of the benchmarks (`auto_reap(false)` too);
//! - `--plain`: `durable(false)`: no fsync.
//!
//! It prints the wall-clock time per cycle and the CPU time per cycle (user and system, from
//! `/proc/self/schedstat`: steadier than the wall clock on a busy machine). Made for `strace -c -f`, `strace -f -e trace=...` (with
//! `--cycles 1`: the system calls of one cycle after the setup, which the line `cycles start`
//! on stderr separates), `perf record` and `valgrind --tool=callgrind` (instruction counts,
//! stable on a busy machine: `--toggle-collect='*cycle::run*'` counts the cycles only).

use std::path::PathBuf;
use std::time::Instant;

use filesem::{AcquireOptions, OpenOptions, Semaphore};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    dir: Option<PathBuf>,
    cycles: u64,
    holders: usize,
    detached: bool,
    durable: bool,
}

fn parse() -> Res<Args> {
    let mut args = Args {
        dir: None,
        cycles: 1000,
        holders: 0,
        detached: false,
        durable: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--dir" => args.dir = Some(PathBuf::from(value()?)),
            "--cycles" => args.cycles = value()?.parse()?,
            "--holders" => args.holders = value()?.parse()?,
            "--detached" => args.detached = true,
            "--plain" => args.durable = false,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(args)
}

/// The cycles themselves, a function of their own so that callgrind can count them alone.
#[inline(never)]
fn run(sem: &Semaphore, options: &AcquireOptions, cycles: u64) -> Res<()> {
    for _ in 0..cycles {
        sem.try_acquire_with("cycling", options)?.release()?;
    }
    Ok(())
}

fn main() -> Res<()> {
    let args = parse()?;
    let temp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir_in("/dev/shm")?;
            temp.path().to_path_buf()
        }
    };
    let path = dir.join("cycle.json");
    let mut open = OpenOptions::new();
    open.durable(args.durable);
    if args.detached {
        open.auto_reap(false);
    }
    let capacity = u32::try_from(args.holders + 1)?;
    let sem = open.open(&path, capacity)?;
    for i in 0..args.holders {
        sem.try_acquire_with(&format!("other-{i}"), &AcquireOptions::new().detached(true))?
            .keep()?;
    }
    let options = AcquireOptions::new().detached(args.detached);
    // One cycle before the measured ones: the witness directory and the lock file exist.
    sem.try_acquire_with("cycling", &options)?.release()?;
    let cpu_start = cpu_ns();
    eprintln!("cycles start");
    let start = Instant::now();
    run(&sem, &options, args.cycles)?;
    let per = start.elapsed().as_secs_f64() / args.cycles as f64;
    eprintln!("cycles end");
    let cpu = cpu_ns()
        .zip(cpu_start)
        .map(|(end, start)| end.saturating_sub(start));
    let cpu = cpu.map_or("-".to_string(), |ns| {
        format!("{:.1}", ns as f64 / args.cycles as f64 / 1e3)
    });
    println!(
        "{} cycles, {:.1} us per cycle, {cpu} us CPU per cycle",
        args.cycles,
        per * 1e6
    );
    Ok(())
}

/// The CPU time this (single-threaded) process has run so far, in nanoseconds.
fn cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}
