//! Multi-process contention on one semaphore, against the raw-syscall floor's own run:
//! `cargo run --release --example contention [-- --seconds 3 --rounds 1 --procs 1,2,4,8
//! --media tmpfs,disk --durable]`.
//!
//! For each medium (tmpfs, the normal disk) and each process count P, it runs P copies of
//! this program (re-executed as workers) for `--seconds` (default 3):
//!
//! - **floor**: each worker repeats the floor's cycle (`benches/support/floor.rs`: two locked
//!   read-modify-writes with raw system calls, waiting for the lock in the kernel);
//! - **library**: each worker repeats `try_acquire` + `release` on a semaphore of capacity 2;
//!   when it is full (`NoCapacity`), the worker sleeps (20 us doubling to 1 ms, with jitter)
//!   and tries again.
//!
//! Between the two halves of every cycle, both kinds of worker enter and leave an
//! independent **witness**: a separate counter file, updated in place under its own flock.
//! Entering counts a violation when more than 2 workers are inside: for the library, the
//! check that the semaphore never admits a third holder (the count must be 0, and the run
//! fails otherwise). The floor admits everyone and is not judged; it runs the witness only so
//! that both sides pay its cost (two small in-place updates under a lock) and the ratio
//! compares like with like.
//!
//! Workers start together (each reports `ready` on stdout, then waits for `go` on stdin), and
//! every wait of the parent has a deadline. With `--rounds R`, floor and library runs
//! alternate R times per process count (which goes first alternates too), and the table shows
//! medians, so that a change in the machine's load hits both alike.
//!
//! Columns: total completed cycles per second and the slowest..fastest worker (floor, then
//! library); the library's throughput over the floor's (median of the rounds' ratios, and
//! their range); refused attempts per second; CPU time per cycle (user + system, from
//! `/proc/self/stat`); the witness's violations (the run fails unless 0) and the most holders
//! it saw inside at once.

// Shared with the benchmarks, which use the parts this harness does not.
#[allow(dead_code)]
#[path = "../benches/support/floor.rs"]
mod floor;
#[allow(dead_code)]
#[path = "../benches/support/place.rs"]
mod place;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use floor::Floor;
use place::{Medium, Place};

/// The semaphore's capacity in every library run.
const CAPACITY: u64 = 2;
/// How long workers may take to start, or to finish after their run time.
const GRACE: Duration = Duration::from_secs(30);

type Failure = Box<dyn std::error::Error>;

/// What a worker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Floor,
    Library(Strategy),
}

/// How a library worker gets a slot when the semaphore is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    /// `try_acquire`; after `NoCapacity`, sleep (20 us doubling to 1 ms, +-25% jitter) and
    /// try again: the seed's way. A waiting acquire is another variant, measured the same way.
    TryWithBackoff,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::Library(Strategy::TryWithBackoff) => "try-backoff",
        }
    }

    fn parse(arg: &str) -> Option<Kind> {
        match arg {
            "floor" => Some(Kind::Floor),
            "try-backoff" => Some(Kind::Library(Strategy::TryWithBackoff)),
            _ => None,
        }
    }
}

struct Options {
    seconds: f64,
    rounds: usize,
    procs: Vec<usize>,
    media: Vec<Medium>,
    durable: bool,
}

fn usage() -> String {
    "usage: contention [--seconds S] [--rounds R] [--procs 1,2,4,8] [--media tmpfs,disk] [--durable]".into()
}

fn parse_options(args: &[String]) -> Result<Options, Failure> {
    let mut options = Options {
        seconds: 3.0,
        rounds: 1,
        procs: vec![1, 2, 4, 8],
        media: vec![Medium::Tmpfs, Medium::Disk],
        durable: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--seconds" => options.seconds = value()?.parse()?,
            "--rounds" => options.rounds = value()?.parse()?,
            "--procs" => {
                options.procs = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--media" => {
                options.media = value()?
                    .split(',')
                    .map(|m| match m {
                        "tmpfs" => Ok(Medium::Tmpfs),
                        "disk" => Ok(Medium::Disk),
                        other => Err(format!("unknown medium {other:?}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--durable" => options.durable = true,
            "--help" | "-h" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage()).into()),
        }
    }
    if options.seconds.is_nan()
        || options.seconds <= 0.0
        || options.rounds == 0
        || options.procs.contains(&0)
    {
        return Err(format!(
            "--seconds, --rounds and --procs must be positive\n{}",
            usage()
        )
        .into());
    }
    Ok(options)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("--worker") {
        worker(&args[1..])
    } else {
        parse_options(&args).and_then(|options| run(&options))
    };
    if let Err(e) = result {
        eprintln!("contention: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// The witness

/// The independent witness: `[inside, violations, max_inside]` as little-endian u64s in a
/// file of its own, updated in place under its own flock.
struct Witness {
    file: Option<File>,
}

impl Witness {
    fn create(path: &Path) -> io::Result<()> {
        fs::write(path, [0u8; 24])
    }

    fn open(path: &Path) -> io::Result<Witness> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Witness { file: Some(file) })
    }

    /// Applies `change` to the counters under the witness's lock.
    fn update(&mut self, change: impl FnOnce(&mut [u64; 3])) -> io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("witness lost"))?;
        let locked =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
        let mut bytes = [0u8; 24];
        locked.read_exact_at(&mut bytes, 0)?;
        let mut counters = decode(&bytes);
        change(&mut counters);
        locked.write_all_at(&encode(&counters), 0)?;
        let file = locked.unlock().map_err(|(_, e)| io::Error::from(e))?;
        self.file = Some(file);
        Ok(())
    }

    fn enter(&mut self) -> io::Result<()> {
        self.update(|[inside, violations, max]| {
            *inside += 1;
            if *inside > CAPACITY {
                *violations += 1;
            }
            *max = (*max).max(*inside);
        })
    }

    fn leave(&mut self) -> io::Result<()> {
        self.update(|[inside, _, _]| *inside = inside.saturating_sub(1))
    }
}

fn decode(bytes: &[u8; 24]) -> [u64; 3] {
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    [word(0), word(1), word(2)]
}

fn encode(counters: &[u64; 3]) -> [u8; 24] {
    let mut bytes = [0u8; 24];
    for (i, c) in counters.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&c.to_le_bytes());
    }
    bytes
}

// ---------------------------------------------------------------------------------------
// Workers

/// CPU time of this process so far (user + system), from `/proc/self/stat` (in USER_HZ =
/// 100 ticks per second); `None` where there is no such file.
fn cpu_time() -> Option<Duration> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// A worker: `--worker KIND DIR INDEX DURABLE`. Prints `ready`, waits for `go MILLIS` on
/// stdin, runs, prints `done CYCLES REFUSALS CPU_MICROS`.
fn worker(args: &[String]) -> Result<(), Failure> {
    let [kind, dir, index, durable] = args else {
        return Err("worker arguments: KIND DIR INDEX DURABLE".into());
    };
    let kind = Kind::parse(kind).ok_or("unknown worker kind")?;
    let dir = PathBuf::from(dir);
    let durable = durable == "durable";
    let mut witness = Witness::open(&dir.join("witness"))?;

    enum Subject {
        Floor(Floor),
        Library(filesem::Semaphore, Strategy),
    }
    let mut subject = match kind {
        Kind::Floor => Subject::Floor(Floor::open(&dir.join("floor.json"), durable)?),
        Kind::Library(strategy) => {
            let sem = filesem::OpenOptions::new()
                .durable(durable)
                .open_existing(dir.join("sem.json"))?;
            Subject::Library(sem, strategy)
        }
    };
    let id = format!("worker-{index}");

    let mut out = io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    let millis: u64 = line
        .strip_prefix("go ")
        .ok_or("expected `go MILLIS` on stdin")?
        .trim()
        .parse()?;

    let cpu_start = cpu_time();
    let end = Instant::now() + Duration::from_millis(millis);
    let (mut cycles, mut refusals) = (0u64, 0u64);
    let first_backoff = Duration::from_micros(20);
    let mut backoff = first_backoff;
    while Instant::now() < end {
        match &mut subject {
            Subject::Floor(floor) => {
                floor.step()?;
                witness.enter()?;
                witness.leave()?;
                floor.step()?;
                cycles += 1;
            }
            Subject::Library(sem, Strategy::TryWithBackoff) => match sem.try_acquire(&id) {
                Ok(permit) => {
                    witness.enter()?;
                    witness.leave()?;
                    permit.release()?;
                    cycles += 1;
                    backoff = first_backoff;
                }
                Err(filesem::Error::NoCapacity { .. }) => {
                    refusals += 1;
                    let quarter = backoff / 4;
                    let jitter =
                        Duration::from_nanos(fastrand::u64(..=quarter.as_nanos() as u64 * 2));
                    thread::sleep(backoff - quarter + jitter);
                    backoff = (backoff * 2).min(Duration::from_millis(1));
                }
                Err(e) => return Err(e.into()),
            },
        }
    }
    let cpu = match (cpu_start, cpu_time()) {
        (Some(a), Some(b)) => (b - a).as_micros().to_string(),
        _ => "-".to_string(),
    };
    writeln!(out, "done {cycles} {refusals} {cpu}")?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The parent

/// What one run of P workers did.
struct RunResult {
    // `violations` and `max_inside` are the witness's counts (judged for the library only).
    /// Completed cycles per worker.
    cycles: Vec<u64>,
    refusals: u64,
    /// Total CPU time of the workers during the run, if known.
    cpu: Option<Duration>,
    seconds: f64,
    violations: u64,
    max_inside: u64,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.cycles.iter().sum::<u64>() as f64 / self.seconds
    }

    /// CPU time per completed cycle, in seconds.
    fn cpu_per_cycle(&self) -> Option<f64> {
        let total: u64 = self.cycles.iter().sum();
        self.cpu
            .filter(|_| total > 0)
            .map(|cpu| cpu.as_secs_f64() / total as f64)
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The runs of one kind at one process count, one per round.
struct Runs(Vec<RunResult>);

impl Runs {
    /// Median total cycles per second.
    fn rate(&self) -> f64 {
        median(self.0.iter().map(RunResult::rate).collect())
    }

    /// The slowest and the fastest worker over all rounds, in cycles per second.
    fn spread(&self) -> String {
        let per_worker = self
            .0
            .iter()
            .flat_map(|r| r.cycles.iter().map(move |&c| c as f64 / r.seconds));
        let (min, max) = per_worker.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        format!("{min:.0}..{max:.0}")
    }

    fn refusal_rate(&self) -> f64 {
        median(
            self.0
                .iter()
                .map(|r| r.refusals as f64 / r.seconds)
                .collect(),
        )
    }

    fn cpu_per_cycle(&self) -> String {
        let known: Option<Vec<f64>> = self.0.iter().map(RunResult::cpu_per_cycle).collect();
        match known {
            Some(v) if !v.is_empty() => format!("{:.0} us", median(v) * 1e6),
            _ => "-".to_string(),
        }
    }
}

/// Kills and reaps the children still running (by their own handles).
fn kill_all(children: &mut [Child]) {
    for child in children {
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

fn run_workers(
    kind: Kind,
    dir: &Path,
    procs: usize,
    seconds: f64,
    durable: bool,
) -> Result<RunResult, Failure> {
    let exe = std::env::current_exe()?;
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children = Vec::with_capacity(procs);
    for index in 0..procs {
        let spawned = Command::new(&exe)
            .arg("--worker")
            .arg(kind.arg())
            .arg(dir)
            .arg(index.to_string())
            .arg(if durable { "durable" } else { "plain" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                kill_all(&mut children);
                return Err(e.into());
            }
        };
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((index, line)).is_err() {
                    break;
                }
            }
        });
        children.push(child);
    }
    drop(tx);
    let (cycles, refusals, cpu, seconds) = match drive(&mut children, &rx, procs, seconds) {
        Ok(reports) => reports,
        Err(e) => {
            kill_all(&mut children);
            return Err(e);
        }
    };
    let deadline = Instant::now() + GRACE;
    for child in &mut children {
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    kill_all(&mut children);
                    return Err(format!("a worker failed: {status}").into());
                }
                break;
            }
            if Instant::now() > deadline {
                kill_all(&mut children);
                return Err("a worker did not exit".into());
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    let mut bytes = [0u8; 24];
    File::open(dir.join("witness"))?.read_exact_at(&mut bytes, 0)?;
    let [inside, violations, max_inside] = decode(&bytes);
    if inside != 0 {
        return Err(format!("the witness counts {inside} workers still inside").into());
    }
    Ok(RunResult {
        cycles,
        refusals,
        cpu,
        seconds,
        violations,
        max_inside,
    })
}

type Drive = (Vec<u64>, u64, Option<Duration>, f64);

/// Waits for every worker's `ready`, sends `go`, and collects every `done`, each wait with a
/// deadline.
fn drive(
    children: &mut [Child],
    rx: &mpsc::Receiver<(usize, String)>,
    procs: usize,
    seconds: f64,
) -> Result<Drive, Failure> {
    let wait_for = |word: &str, deadline: Instant| -> Result<Vec<String>, Failure> {
        let mut lines: Vec<Option<String>> = vec![None; procs];
        while lines.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, line)) if line.starts_with(word) => lines[i] = Some(line),
                Ok((i, line)) => {
                    return Err(format!("worker {i} said {line:?}, expected {word}").into());
                }
                Err(_) => return Err(format!("workers did not say {word} in time").into()),
            }
        }
        Ok(lines.into_iter().flatten().collect())
    };
    wait_for("ready", Instant::now() + GRACE)?;
    let millis = (seconds * 1000.0).round() as u64;
    let started = Instant::now();
    for child in children.iter_mut() {
        let stdin = child.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "go {millis}")?;
        stdin.flush()?;
    }
    let done = wait_for("done", started + Duration::from_millis(millis) + GRACE)?;
    let elapsed = Duration::from_millis(millis).as_secs_f64();
    let (mut cycles, mut refusals, mut cpu) = (Vec::new(), 0u64, Some(Duration::ZERO));
    for line in done {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, c, r, t] = fields[..] else {
            return Err(format!("bad report {line:?}").into());
        };
        cycles.push(c.parse()?);
        refusals += r.parse::<u64>()?;
        cpu = match (cpu, t.parse::<u64>()) {
            (Some(sum), Ok(us)) => Some(sum + Duration::from_micros(us)),
            _ => None,
        };
    }
    Ok((cycles, refusals, cpu, elapsed))
}

/// A fresh directory for one run, with the state and witness files in place.
fn prepare(
    place: &Place,
    kind: Kind,
    procs: usize,
    round: usize,
    durable: bool,
) -> Result<PathBuf, Failure> {
    let dir = place
        .path()
        .join(format!("{}-p{procs}-r{round}", kind.arg()));
    fs::create_dir(&dir)?;
    Witness::create(&dir.join("witness"))?;
    match kind {
        Kind::Floor => {
            Floor::create(&dir.join("floor.json"), durable)?;
        }
        Kind::Library(_) => {
            filesem::OpenOptions::new()
                .durable(durable)
                .open(dir.join("sem.json"), CAPACITY as u32)?;
        }
    }
    Ok(dir)
}

fn check_released(dir: &Path) -> Result<(), Failure> {
    let sem = filesem::Semaphore::open_existing(dir.join("sem.json"))?;
    match sem.count()? {
        0 => Ok(()),
        n => Err(format!("{n} holders left on {}", sem.path().display()).into()),
    }
}

fn run(options: &Options) -> Result<(), Failure> {
    let target = std::env::current_exe()?
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let durability = if options.durable { "durable" } else { "plain" };
    let library = Kind::Library(Strategy::TryWithBackoff);
    let mut violations = 0;
    for &medium in &options.media {
        let place = match medium {
            Medium::Tmpfs => place::tmpfs(),
            Medium::Disk => place::disk(&[&target.join("tmp")]),
        };
        let place = match place {
            Ok(p) => p,
            Err(why) => {
                eprintln!("skipping {}: {why}", medium.name());
                continue;
            }
        };
        println!(
            "\n{} ({durability}), capacity {CAPACITY}, {} round(s) of {} s per P, library = {}",
            place.describe(),
            options.rounds,
            options.seconds,
            library.arg()
        );
        println!(
            "{:>2} {:>10} {:>13} {:>10} {:>13} {:>6} {:>11} {:>10} {:>8} {:>9} {:>10} {:>6}",
            "P",
            "floor c/s",
            "(per worker)",
            "lib c/s",
            "(per worker)",
            "ratio",
            "(range)",
            "refusals/s",
            "CPU/c fl",
            "CPU/c lib",
            "violations",
            "inside"
        );
        for &procs in &options.procs {
            let (mut floor, mut lib) = (Runs(Vec::new()), Runs(Vec::new()));
            for round in 0..options.rounds {
                // Alternate which goes first, so that a drift in the machine's load hits both.
                for kind in if round % 2 == 0 {
                    [Kind::Floor, library]
                } else {
                    [library, Kind::Floor]
                } {
                    let dir = prepare(&place, kind, procs, round, options.durable)?;
                    let result = run_workers(kind, &dir, procs, options.seconds, options.durable)?;
                    if kind == Kind::Floor {
                        floor.0.push(result);
                    } else {
                        check_released(&dir)?;
                        lib.0.push(result);
                    }
                }
            }
            let ratios: Vec<f64> = floor
                .0
                .iter()
                .zip(&lib.0)
                .map(|(f, l)| l.rate() / f.rate())
                .collect();
            let range = format!(
                "{:.2}..{:.2}",
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max)
            );
            let run_violations: u64 = lib.0.iter().map(|r| r.violations).sum();
            violations += run_violations;
            println!(
                "{:>2} {:>10.0} {:>13} {:>10.0} {:>13} {:>5.2}x {:>11} {:>10.0} {:>8} {:>9} {:>10} {:>6}",
                procs,
                floor.rate(),
                floor.spread(),
                lib.rate(),
                lib.spread(),
                median(ratios),
                range,
                lib.refusal_rate(),
                floor.cpu_per_cycle(),
                lib.cpu_per_cycle(),
                run_violations,
                lib.0.iter().map(|r| r.max_inside).max().unwrap_or(0),
            );
        }
    }
    if violations > 0 {
        return Err(format!("{violations} capacity violations").into());
    }
    Ok(())
}
