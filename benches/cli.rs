//! `filesem run SEM -- true` against `flock LOCKFILE true`: runs per second of each, in
//! alternating rounds of the same run, on tmpfs (`/dev/shm`) and on the disk of the target
//! directory. Both are bound by process start-up, so the target is filesem >= 0.8x flock.
//!
//! Run with `cargo bench --features cli --bench cli`; `-- --runs N --rounds R` changes the
//! size (default 300 runs per round, 5 rounds). GNU parallel's `sem` is measured too when it
//! is installed (fewer runs: it is slow).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let mut runs = 300usize;
    let mut rounds = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds R")
            }
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    let filesem = env!("CARGO_BIN_EXE_filesem");
    let has_sem = which("sem");
    let mut places = Vec::new();
    if Path::new("/dev/shm").is_dir() {
        places.push(("tmpfs", PathBuf::from("/dev/shm")));
    }
    places.push(("disk", PathBuf::from(env!("CARGO_TARGET_TMPDIR"))));
    println!(
        "{runs} runs per round, {rounds} rounds, alternating; runs per second (median of rounds)"
    );
    for (name, base) in places {
        let dir = tempfile::tempdir_in(&base).expect("temp dir");
        let sem = dir.path().join("bench.json");
        let lock = dir.path().join("bench.flock");
        let quiet = |mut c: Command| {
            c.stdout(Stdio::null()).stderr(Stdio::null());
            c
        };
        // Alternate run by run, so that load from elsewhere hits both alike.
        let mut filesem_rates = Vec::new();
        let mut flock_rates = Vec::new();
        for _ in 0..rounds {
            let (f, l) = alternate(
                runs,
                || {
                    let mut c = quiet(Command::new(filesem));
                    c.args(["run", "-q"]).arg(&sem).arg("true");
                    c
                },
                || {
                    let mut c = quiet(Command::new("flock"));
                    c.arg(&lock).arg("true");
                    c
                },
            );
            filesem_rates.push(f);
            flock_rates.push(l);
        }
        let (f, l) = (median(&mut filesem_rates), median(&mut flock_rates));
        let ratios: Vec<String> = filesem_rates
            .iter()
            .zip(&flock_rates)
            .map(|(f, l)| format!("{:.2}", f / l))
            .collect();
        println!(
            "{name:>5} ({}): filesem run {f:6.0}/s   flock {l:6.0}/s   ratio {:.2}x (rounds: {})",
            base.display(),
            f / l,
            ratios.join(" ")
        );
        if has_sem {
            let sem_rate = rate(runs.min(20), || {
                let mut c = quiet(Command::new("sem"));
                c.args(["--will-cite", "--fg", "--id"])
                    .arg(format!("filesem-bench-{}", std::process::id()))
                    .arg("true");
                c
            });
            println!("{name:>5}: GNU sem {sem_rate:.1}/s");
        }
    }
}

/// Runs `command()` to completion `runs` times in a row; returns runs per second.
fn rate(runs: usize, command: impl Fn() -> Command) -> f64 {
    let start = Instant::now();
    for _ in 0..runs {
        run(command());
    }
    runs as f64 / start.elapsed().as_secs_f64()
}

/// Runs `a()` and `b()` alternately, `runs` times each; returns each one's runs per second.
fn alternate(runs: usize, a: impl Fn() -> Command, b: impl Fn() -> Command) -> (f64, f64) {
    let (mut time_a, mut time_b) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..runs {
        let start = Instant::now();
        run(a());
        time_a += start.elapsed();
        let start = Instant::now();
        run(b());
        time_b += start.elapsed();
    }
    (
        runs as f64 / time_a.as_secs_f64(),
        runs as f64 / time_b.as_secs_f64(),
    )
}

/// Runs `command` to completion; panics if it fails (a broken benchmark must not print a
/// number).
fn run(mut command: Command) {
    let status = command.status().expect("spawn");
    assert!(status.success(), "a benchmarked run failed: {status}");
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
