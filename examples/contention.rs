//! Multi-process contention on one semaphore, against the raw-syscall floor's own run:
//! `cargo run --release --example contention [-- --seconds 3 --rounds 1 --procs 1,2,4,8
//! --media tmpfs,disk --strategies try-backoff,wait --config default --durable]`.
//!
//! For each medium (tmpfs, the normal disk) and each process count P, it runs P copies of
//! this program (re-executed as workers) for `--seconds` (default 3) each:
//!
//! - **floor**: each worker repeats the floor's cycle (`benches/support/floor.rs`: two locked
//!   read-modify-writes with raw system calls, waiting for the lock in the kernel);
//! - **library**, once per strategy: each worker repeats acquire + `release` on a semaphore
//!   of capacity 2, in the configuration `--config` (`default` or `bare`, see
//!   `benches/support/config.rs`). `try-backoff` calls `try_acquire` and, when the semaphore
//!   is full (`NoCapacity`), sleeps (20 us doubling to 1 ms, with jitter) and tries again, the
//!   seed's way; `wait` calls `acquire`, which queues and is handed the slot.
//!
//! Between the two halves of every cycle, every worker enters and leaves an independent
//! **witness**: a separate counter file, updated in place under its own flock. Entering
//! counts a violation when more than 2 workers are inside: for the library, the check that
//! the semaphore never admits a third holder (the count must be 0, and the run fails
//! otherwise). The floor admits everyone and is not judged; it runs the witness only so that
//! both sides pay its cost (two small in-place updates under a lock) and the ratio compares
//! like with like.
//!
//! Workers start together (each reports `ready` on stdout, then waits for `go` on stdin), and
//! every wait of the parent has a deadline. With `--rounds R`, the runs at one P repeat R
//! times in a rotating order, and the table shows medians, so that a change in the machine's
//! load hits every side alike.
//!
//! Columns: total completed cycles per second and the slowest..fastest worker (floor, then
//! library); the library's throughput over the floor's (median of the rounds' ratios, and
//! their range); refused attempts per second; how long getting a slot took, p50 and p99 (for
//! the library: from the first attempt to holding the permit, refusals, sleeps and queueing
//! included; for the floor: its first locked step, lock wait included); CPU time per cycle
//! (user + system, from `/proc/self/stat`); the witness's violations and the most holders it
//! saw inside at once. Hand-off latency between two processes and the CPU cost of a sleeping
//! waiter are measured by `examples/handoff.rs`.

// Shared with the benchmarks, which use the parts this harness does not.
#[allow(dead_code)]
#[path = "../benches/support/config.rs"]
mod config;
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

use config::Config;
use floor::Floor;
use place::{Medium, Place};

/// The semaphore's capacity in every library run.
const CAPACITY: u64 = 2;
/// How long workers may take to start, or to finish after their run time; also the longest a
/// waiting `acquire` may wait.
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
    /// try again: the seed's way.
    TryWithBackoff,
    /// `acquire`: join the queue in the state file and be handed the slot.
    Wait,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::TryWithBackoff => "try-backoff",
            Strategy::Wait => "wait",
        }
    }

    fn parse(arg: &str) -> Option<Strategy> {
        [Strategy::TryWithBackoff, Strategy::Wait]
            .into_iter()
            .find(|s| s.name() == arg)
    }
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::Library(strategy) => strategy.name(),
        }
    }

    fn parse(arg: &str) -> Option<Kind> {
        match arg {
            "floor" => Some(Kind::Floor),
            other => Strategy::parse(other).map(Kind::Library),
        }
    }
}

fn parse_config(arg: &str) -> Option<Config> {
    Config::ALL.into_iter().find(|c| c.name() == arg)
}

struct Options {
    seconds: f64,
    rounds: usize,
    procs: Vec<usize>,
    media: Vec<Medium>,
    strategies: Vec<Strategy>,
    config: Config,
    durable: bool,
}

fn usage() -> String {
    "usage: contention [--seconds S] [--rounds R] [--procs 1,2,4,8] [--media tmpfs,disk] \
     [--strategies try-backoff,wait] [--config default|bare] [--durable]"
        .into()
}

fn parse_options(args: &[String]) -> Result<Options, Failure> {
    let mut options = Options {
        seconds: 3.0,
        rounds: 1,
        procs: vec![1, 2, 4, 8],
        media: vec![Medium::Tmpfs, Medium::Disk],
        strategies: vec![Strategy::TryWithBackoff, Strategy::Wait],
        config: Config::Default,
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
            "--strategies" => {
                options.strategies = value()?
                    .split(',')
                    .map(|s| Strategy::parse(s).ok_or(format!("unknown strategy {s:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--config" => {
                let v = value()?;
                options.config = parse_config(v).ok_or(format!("unknown config {v:?}"))?;
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
        || options.strategies.is_empty()
    {
        return Err(format!(
            "--seconds, --rounds, --procs and --strategies must be positive\n{}",
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

/// A worker: `--worker KIND CONFIG DIR INDEX DURABLE`. Prints `ready`, waits for
/// `go MILLIS` on stdin, runs, writes how long each acquire took (microseconds, u32
/// little-endian) to `DIR/latency-INDEX`, and prints `done CYCLES REFUSALS CPU_MICROS`.
fn worker(args: &[String]) -> Result<(), Failure> {
    let [kind, config, dir, index, durable] = args else {
        return Err("worker arguments: KIND CONFIG DIR INDEX DURABLE".into());
    };
    let kind = Kind::parse(kind).ok_or("unknown worker kind")?;
    let config = parse_config(config).ok_or("unknown config")?;
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
            let sem = config
                .options(durable)
                .open_existing(dir.join("sem.json"))?;
            Subject::Library(sem, strategy)
        }
    };
    let acquire_options = config.acquire_options().timeout(GRACE);
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
    let mut latencies: Vec<u32> = Vec::new();
    let micros = |since: Instant| u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX);
    while Instant::now() < end {
        let started = Instant::now();
        match &mut subject {
            Subject::Floor(floor) => {
                floor.step()?;
                latencies.push(micros(started));
                witness.enter()?;
                witness.leave()?;
                floor.step()?;
            }
            Subject::Library(sem, strategy) => {
                let permit = match strategy {
                    Strategy::Wait => sem.acquire_with(&id, &acquire_options)?,
                    Strategy::TryWithBackoff => {
                        let mut backoff = Duration::from_micros(20);
                        loop {
                            match sem.try_acquire_with(&id, &acquire_options) {
                                Ok(permit) => break permit,
                                Err(filesem::Error::NoCapacity { .. }) => refusals += 1,
                                Err(e) => return Err(e.into()),
                            }
                            let quarter = backoff / 4;
                            let jitter = Duration::from_nanos(fastrand::u64(
                                ..=u64::try_from(quarter.as_nanos() * 2).unwrap_or(0),
                            ));
                            thread::sleep(backoff - quarter + jitter);
                            backoff = (backoff * 2).min(Duration::from_millis(1));
                        }
                    }
                };
                latencies.push(micros(started));
                witness.enter()?;
                witness.leave()?;
                permit.release()?;
            }
        }
        cycles += 1;
    }
    let cpu = match (cpu_start, cpu_time()) {
        (Some(a), Some(b)) => (b - a).as_micros().to_string(),
        _ => "-".to_string(),
    };
    let bytes: Vec<u8> = latencies.iter().flat_map(|l| l.to_le_bytes()).collect();
    fs::write(dir.join(format!("latency-{index}")), bytes)?;
    writeln!(out, "done {cycles} {refusals} {cpu}")?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The parent

/// What one run of P workers did.
struct RunResult {
    /// Completed cycles per worker.
    cycles: Vec<u64>,
    refusals: u64,
    /// Total CPU time of the workers during the run, if known.
    cpu: Option<Duration>,
    seconds: f64,
    /// How long each acquire took, in microseconds, all workers together.
    latencies: Vec<u32>,
    /// The witness's counts (judged for the library only).
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
#[derive(Default)]
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
            Some(v) if !v.is_empty() => micros(median(v)),
            _ => "-".to_string(),
        }
    }

    /// The `q`-quantile of every acquire's duration over all rounds.
    fn latency(&self, q: f64) -> String {
        let mut all: Vec<u32> = self
            .0
            .iter()
            .flat_map(|r| r.latencies.iter().copied())
            .collect();
        if all.is_empty() {
            return "-".to_string();
        }
        all.sort_unstable();
        let i = ((all.len() - 1) as f64 * q).round() as usize;
        micros(f64::from(all[i]) / 1e6)
    }

    fn violations(&self) -> u64 {
        self.0.iter().map(|r| r.violations).sum()
    }

    fn max_inside(&self) -> u64 {
        self.0.iter().map(|r| r.max_inside).max().unwrap_or(0)
    }
}

/// Seconds as `12 us` or `3.4 ms`.
fn micros(seconds: f64) -> String {
    if seconds >= 0.01 {
        format!("{:.0} ms", seconds * 1e3)
    } else if seconds >= 0.001 {
        format!("{:.1} ms", seconds * 1e3)
    } else {
        format!("{:.0} us", seconds * 1e6)
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

/// One run of `procs` workers of `kind` in `dir`, prepared by [`prepare`].
fn run_workers(
    kind: Kind,
    dir: &Path,
    procs: usize,
    options: &Options,
) -> Result<RunResult, Failure> {
    let exe = std::env::current_exe()?;
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children = Vec::with_capacity(procs);
    for index in 0..procs {
        let spawned = Command::new(&exe)
            .arg("--worker")
            .arg(kind.arg())
            .arg(options.config.name())
            .arg(dir)
            .arg(index.to_string())
            .arg(if options.durable { "durable" } else { "plain" })
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
        let Some(stdout) = child.stdout.take() else {
            children.push(child);
            kill_all(&mut children);
            return Err("a worker has no stdout".into());
        };
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
    let (cycles, refusals, cpu, seconds) = match drive(&mut children, &rx, procs, options.seconds) {
        Ok(reports) => reports,
        Err(e) => {
            kill_all(&mut children);
            return Err(e);
        }
    };
    let deadline = Instant::now() + GRACE;
    for i in 0..children.len() {
        loop {
            if let Some(status) = children[i].try_wait()? {
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
    let mut latencies = Vec::new();
    for index in 0..procs {
        let bytes = fs::read(dir.join(format!("latency-{index}")))?;
        latencies.extend(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
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
        latencies,
        violations,
        max_inside,
    })
}

type Reports = (Vec<u64>, u64, Option<Duration>, f64);

/// Waits for every worker's `ready`, sends `go`, and collects every `done`, each wait with a
/// deadline.
fn drive(
    children: &mut [Child],
    rx: &mpsc::Receiver<(usize, String)>,
    procs: usize,
    seconds: f64,
) -> Result<Reports, Failure> {
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
    // A waiting worker may finish its last acquire up to GRACE after the run time.
    let done = wait_for("done", started + Duration::from_millis(millis) + 2 * GRACE)?;
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
    options: &Options,
) -> Result<PathBuf, Failure> {
    let dir = place
        .path()
        .join(format!("{}-p{procs}-r{round}", kind.arg()));
    fs::create_dir(&dir)?;
    Witness::create(&dir.join("witness"))?;
    match kind {
        Kind::Floor => {
            Floor::create(&dir.join("floor.json"), options.durable)?;
        }
        Kind::Library(_) => {
            options
                .config
                .options(options.durable)
                .open(dir.join("sem.json"), CAPACITY as u32)?;
        }
    }
    Ok(dir)
}

/// Fails unless every holder released and nobody is left in the queue.
fn check_released(dir: &Path) -> Result<(), Failure> {
    let sem = filesem::Semaphore::open_existing(dir.join("sem.json"))?;
    let (holders, waiters) = (sem.count()?, sem.waiters()?.len());
    if holders + waiters > 0 {
        return Err(format!(
            "{holders} holders and {waiters} waiters left on {}",
            sem.path().display()
        )
        .into());
    }
    Ok(())
}

/// The floor's runs and each strategy's runs at one process count.
struct Row {
    procs: usize,
    floor: Runs,
    library: Vec<Runs>,
}

fn measure(place: &Place, procs: usize, options: &Options) -> Result<Row, Failure> {
    let kinds: Vec<Kind> = std::iter::once(Kind::Floor)
        .chain(options.strategies.iter().copied().map(Kind::Library))
        .collect();
    let mut row = Row {
        procs,
        floor: Runs::default(),
        library: options.strategies.iter().map(|_| Runs::default()).collect(),
    };
    for round in 0..options.rounds {
        // Rotate the order, so that a drift in the machine's load hits every kind alike.
        for k in 0..kinds.len() {
            let i = (k + round) % kinds.len();
            let kind = kinds[i];
            let dir = prepare(place, kind, procs, round, options)?;
            let result = run_workers(kind, &dir, procs, options)?;
            if i == 0 {
                row.floor.0.push(result);
            } else {
                check_released(&dir)?;
                row.library[i - 1].0.push(result);
            }
        }
    }
    Ok(row)
}

fn print_table(strategy: Strategy, index: usize, rows: &[Row]) -> u64 {
    println!(
        "library = {} ({})",
        strategy.name(),
        match strategy {
            Strategy::TryWithBackoff => "try_acquire, sleep and retry when full",
            Strategy::Wait => "acquire: queue and be handed the slot",
        }
    );
    println!(
        "{:>2} {:>9} {:>13} {:>9} {:>13} {:>6} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>4} {:>6}",
        "P",
        "floor c/s",
        "(per worker)",
        "lib c/s",
        "(per worker)",
        "ratio",
        "(range)",
        "refused/s",
        "acq p50",
        "acq p99",
        "CPU/c fl",
        "CPU/c lib",
        "viol",
        "inside"
    );
    let mut violations = 0;
    for row in rows {
        let lib = &row.library[index];
        let ratios: Vec<f64> = row
            .floor
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
        violations += lib.violations();
        println!(
            "{:>2} {:>9.0} {:>13} {:>9.0} {:>13} {:>5.2}x {:>10} {:>9.0} {:>9} {:>9} {:>9} {:>9} {:>4} {:>6}",
            row.procs,
            row.floor.rate(),
            row.floor.spread(),
            lib.rate(),
            lib.spread(),
            median(ratios),
            range,
            lib.refusal_rate(),
            lib.latency(0.5),
            lib.latency(0.99),
            row.floor.cpu_per_cycle(),
            lib.cpu_per_cycle(),
            lib.violations(),
            lib.max_inside(),
        );
    }
    violations
}

fn run(options: &Options) -> Result<(), Failure> {
    let target = std::env::current_exe()?
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let durability = if options.durable { "durable" } else { "plain" };
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
            "\n{} ({durability}), capacity {CAPACITY}, config {}, {} round(s) of {} s per run",
            place.describe(),
            options.config.name(),
            options.rounds,
            options.seconds,
        );
        let mut rows = Vec::new();
        for &procs in &options.procs {
            rows.push(measure(&place, procs, options)?);
        }
        for (index, &strategy) in options.strategies.iter().enumerate() {
            violations += print_table(strategy, index, &rows);
        }
        println!(
            "floor acquire p50/p99: {}",
            rows.iter()
                .map(|r| format!(
                    "P={} {}/{}",
                    r.procs,
                    r.floor.latency(0.5),
                    r.floor.latency(0.99)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if violations > 0 {
        return Err(format!("{violations} capacity violations").into());
    }
    Ok(())
}
