//! The main job: `cargo run --example workers` starts several worker processes that share one
//! semaphore file, prints who got which slot when, and checks that capacity was never exceeded.
//!
//! Options (all optional):
//!
//! ```text
//! --workers N    worker processes to start (default 5)
//! --capacity N   slots in the semaphore (default 2)
//! --cycles N     times each worker takes a slot (default 3)
//! --hold-ms N    how long a worker holds its slot, in milliseconds (default 200, jittered)
//! --path FILE    the semaphore's state file (default: a fresh file in the temp directory)
//! --redis URL    share a semaphore in a Redis key instead (redis://HOST[:PORT][/DB]/KEY;
//!                needs `--features redis` and a running redis-server)
//! --kill N       SIGKILL worker N while it holds its first slot, and show the slot coming
//!                back by itself (crash resilience)
//! --window-ms N  how long the timeline holds a line back to print it in time order
//!                (default 50)
//! ```
//!
//! The workers are this program re-executed with a hidden `--worker` argument. Each one loops:
//! take a slot (waiting in the semaphore's queue while all are taken: first come, first
//! served, and the slot is handed over by the release that frees it), hold it, release it.
//! The timeline shows when each worker queued, how many were ahead, and the order they were
//! served in (each grant takes the next fencing token, so tokens increase in the order of
//! service, also when a worker is served before one that queued earlier).
//! Lines reach the parent through one pipe per worker, so they arrive slightly out of order;
//! the parent keeps them in a small reorder buffer keyed by the time the worker stamped on
//! them and prints a line once every live worker has reported something later, or once it is
//! `--window-ms` old. The crash demo's own lines carry the parent's time on the same clock.
//! An independent checker (`examples/common/witness.rs`: its own counter file under its own
//! lock, plus one `O_EXCL` marker file per slot in use; not the library's liveness witness
//! files) counts who is inside. The program exits with status 1 if the checker ever saw more than `capacity` inside, a slot used twice,
//! a release that failed, or a semaphore that is not empty at the end; 2 for bad arguments.
//!
//! With `--redis URL` the workers share a semaphore in one key of a Redis server instead, with
//! the same timeline, checker and summary (`cargo run --example workers --features redis --
//! --redis redis://127.0.0.1:6390/0/workers`; a throwaway server: `redis-server --port 6390
//! --save '' --appendonly no`). Holds there have leases ([`REDIS_LEASE`] here, renewed in the
//! background), so a worker killed with `--kill` gets its slot back once its lease has run out.
//! The URL reaches the workers in their environment, not on their command line.

#[path = "common/witness.rs"]
mod witness;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use filesem::{AcquireOptions, Semaphore};
use witness::Witness;

const USAGE: &str = "\
usage: cargo run --example workers -- [--workers N] [--capacity N] [--cycles N] [--hold-ms N] [--path FILE | --redis URL] [--kill N] [--window-ms N]

Starts N worker processes that compete for a semaphore with a few slots, prints a timeline
of who held which slot, and exits non-zero if the semaphore ever let too many in.
--kill N kills worker N with SIGKILL in the middle of its first hold: its slot comes back
by itself as soon as it is provably dead.
--redis redis://HOST[:PORT][/DB]/KEY shares a semaphore in a Redis key instead (build with
--features redis; a throwaway server: redis-server --port 6390 --save '' --appendonly no).";

/// The lease of the workers' holds on Redis (renewed by their permits a third of it apart):
/// short, so that `--kill` shows the slot coming back within seconds.
const REDIS_LEASE: Duration = Duration::from_secs(3);

/// The variable that gives a worker the Redis URL (kept off the command line, where `ps`
/// would show a password in it).
const URL_VARIABLE: &str = "FILESEM_WORKERS_REDIS_URL";

/// Where the semaphore lives.
#[derive(Clone, Debug)]
enum Place {
    File(PathBuf),
    Redis(String),
}

impl Place {
    /// Opens (or creates) the semaphore with `capacity` slots.
    fn open(&self, capacity: u32) -> Result<Semaphore, String> {
        match self {
            Place::File(path) => Semaphore::open(path, capacity).map_err(|e| e.to_string()),
            Place::Redis(url) => open_redis(url, capacity),
        }
    }
}

/// The port of `url` if it names a server on this machine (`127.0.0.1`, `localhost`), where
/// a throwaway server can be started for it; `None` otherwise.
#[cfg(feature = "redis")]
fn local_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("redis://")?;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None => (host_port, 6379),
    };
    matches!(host, "127.0.0.1" | "localhost").then_some(port)
}

/// Opens the semaphore in the Redis key at `url`, saying clearly when no server answers.
#[cfg(feature = "redis")]
fn open_redis(url: &str, capacity: u32) -> Result<Semaphore, String> {
    let mut options = filesem::OpenOptions::new();
    options.default_lease(Some(REDIS_LEASE));
    options.open_redis(url, capacity).map_err(|e| match e {
        filesem::Error::RedisUnreachable { .. } | filesem::Error::RedisTimeout { .. } => {
            match local_port(url) {
                Some(port) => format!(
                    "no Redis server answers there: {e}\n\
                     start a throwaway one with `redis-server --port {port} --save '' \
                     --appendonly no` and run this again"
                ),
                None => format!(
                    "no Redis server answers there: {e}\n\
                     start a throwaway one with `redis-server --port 6390 --save '' \
                     --appendonly no` and pass --redis redis://127.0.0.1:6390/0/workers"
                ),
            }
        }
        e => e.to_string(),
    })
}

/// Without the `redis` feature there is no Redis store to open.
#[cfg(not(feature = "redis"))]
fn open_redis(_: &str, _: u32) -> Result<Semaphore, String> {
    Err(
        "this build has no Redis support: run `cargo run --example workers --features redis \
         -- --redis URL`"
            .to_string(),
    )
}

/// The settings of a run, shared by the parent and (as arguments) its workers.
#[derive(Clone, Debug)]
struct Config {
    workers: u32,
    capacity: u32,
    cycles: u32,
    hold_ms: u64,
    path: Option<PathBuf>,
    /// A Redis URL to use instead of a file.
    redis: Option<String>,
    /// The worker (1-based) to SIGKILL during its first hold.
    kill: Option<u32>,
    /// How long a timeline line may wait for earlier ones still in a pipe, in milliseconds.
    window_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: 5,
            capacity: 2,
            cycles: 3,
            hold_ms: 200,
            path: None,
            redis: None,
            kill: None,
            window_ms: 50,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        return worker(&args[1..]);
    }
    match parse(&args) {
        Ok(Some(config)) => parent(&config),
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Parses `--name value` and `--name=value` options; `Ok(None)` for `--help`.
fn parse(args: &[String]) -> Result<Option<Config>, String> {
    let mut config = Config::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        const KNOWN: [&str; 8] = [
            "--workers",
            "--capacity",
            "--cycles",
            "--hold-ms",
            "--path",
            "--redis",
            "--kill",
            "--window-ms",
        ];
        if !KNOWN.contains(&name) {
            return Err(format!("unknown option {name}"));
        }
        let value = match inline.or_else(|| rest.next().cloned()) {
            Some(v) => v,
            None => return Err(format!("{name} needs a value")),
        };
        let number = |max: u64| -> Result<u64, String> {
            match value.parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "{name} takes a number from 1 to {max}, not {value:?}"
                )),
            }
        };
        match name {
            "--workers" => config.workers = number(64)? as u32,
            "--capacity" => config.capacity = number(u64::from(filesem::MAX_CAPACITY))? as u32,
            "--cycles" => config.cycles = number(10_000)? as u32,
            "--hold-ms" => config.hold_ms = number(60_000)?,
            "--path" => config.path = Some(PathBuf::from(value)),
            "--redis" => config.redis = Some(value),
            "--kill" => config.kill = Some(number(64)? as u32),
            "--window-ms" => config.window_ms = number(60_000)?,
            _ => return Err(format!("unknown option {name}")),
        }
    }
    if config.path.is_some() && config.redis.is_some() {
        return Err("--path and --redis exclude each other".to_string());
    }
    if let Some(n) = config.kill.filter(|&n| n > config.workers) {
        return Err(format!(
            "--kill {n}: there are only {} workers (--workers {})",
            config.workers, config.workers
        ));
    }
    Ok(Some(config))
}

// ---------------------------------------------------------------------------------------
// The worker process.
// ---------------------------------------------------------------------------------------

/// What a worker reports to the parent, one tab-separated line per event on stdout:
/// `ready`, `queued ahead holders capacity`, `entered slot token inside queued
/// waited_ms`, `left slot inside held_ms`, `violation text`, `error text`, `done grants
/// waits`; each after the kind and the time since the start of the run in microseconds.
fn emit(epoch_us: u64, kind: &str, fields: &[&dyn std::fmt::Display]) {
    let mut line = format!("{kind}\t{}", now_us().saturating_sub(epoch_us));
    for f in fields {
        let _ = write!(line, "\t{f}");
    }
    let mut out = std::io::stdout().lock();
    // If the parent is gone there is nobody to tell; the worker just carries on.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn worker(args: &[String]) -> ExitCode {
    let value = |name: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_default()
    };
    let id = value("--id");
    let place = match std::env::var(URL_VARIABLE) {
        Ok(url) => Place::Redis(url),
        Err(_) => Place::File(PathBuf::from(value("--path"))),
    };
    let capacity: u32 = value("--capacity").parse().unwrap_or(1);
    let cycles: u32 = value("--cycles").parse().unwrap_or(1);
    let hold_ms: u64 = value("--hold-ms").parse().unwrap_or(1);
    let epoch: u64 = value("--epoch-us").parse().unwrap_or(0);
    let mut rng = fastrand::Rng::with_seed(value("--seed").parse().unwrap_or(0));
    let fail = |what: String| {
        emit(epoch, "error", &[&what]);
        ExitCode::FAILURE
    };

    let witness = match Witness::create(value("--checker"), capacity) {
        Ok(w) => w,
        Err(e) => return fail(format!("checker: {e}")),
    };
    let sem = match place.open(capacity) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    emit(epoch, "ready", &[]);
    // Start together: wait for the parent's "go" (or for its end).
    let _ = std::io::stdin().lock().read_line(&mut String::new());

    let queued = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts = AcquireOptions::new().on_wait({
        let queued = queued.clone();
        move |status| {
            queued.store(true, std::sync::atomic::Ordering::SeqCst);
            let holders = status.holders.join(", ");
            emit(
                epoch,
                "queued",
                &[&status.ahead, &holders, &status.capacity],
            );
        }
    });
    let mut waits = 0u64;
    for _ in 0..cycles {
        let waiting_since = Instant::now();
        queued.store(false, std::sync::atomic::Ordering::SeqCst);
        // Waits in the queue when every slot is taken; the releasing worker hands its slot
        // to the head of the queue.
        let permit = match sem.acquire_with(id.as_str(), &opts) {
            Ok(p) => p,
            Err(e) => return fail(e.to_string()),
        };
        let waited_ms = waiting_since.elapsed().as_millis();
        let was_queued = u8::from(queued.load(std::sync::atomic::Ordering::SeqCst));
        waits += u64::from(was_queued);
        let (slot, token) = (permit.slot(), permit.token());
        let entered = match witness.enter(slot, &id, token) {
            Ok(e) => e,
            Err(e) => return fail(format!("checker: {e}")),
        };
        emit(
            epoch,
            "entered",
            &[&slot, &token, &entered.inside, &was_queued, &waited_ms],
        );
        for v in &entered.violations {
            emit(epoch, "violation", &[v]);
        }

        let held_for = Duration::from_millis(hold_ms / 2 + rng.u64(0..=hold_ms));
        std::thread::sleep(held_for);

        let (inside, violations) = match witness.leave(slot, &id, token) {
            Ok(r) => r,
            Err(e) => return fail(format!("checker: {e}")),
        };
        emit(epoch, "left", &[&slot, &inside, &held_for.as_millis()]);
        for v in &violations {
            emit(epoch, "violation", &[v]);
        }
        if let Err(e) = permit.release() {
            // NotHeld or Lost here would mean the semaphore lost our entry.
            return fail(format!("release failed: {e}"));
        }
        // No rest needed for fairness: acquiring again queues behind everyone waiting.
    }
    emit(epoch, "done", &[&cycles, &waits]);
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------
// The parent process.
// ---------------------------------------------------------------------------------------

struct Worker {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

/// Kills every worker still running when the parent leaves early.
struct Workers(Vec<Worker>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            if let Ok(None) = w.child.try_wait() {
                let _ = w.child.kill();
                let _ = w.child.wait();
            }
        }
    }
}

/// What the parent learns from the timeline.
#[derive(Default)]
struct Tally {
    grants: u64,
    waits: u64,
    max_inside: u32,
    problems: Vec<String>,
    done: u32,
    killed: Option<Killed>,
}

/// The worker killed on purpose, and what became of its slot.
struct Killed {
    worker: usize,
    slot: String,
    /// When it was killed, in microseconds since the start of the run.
    at_us: u64,
    came_back_after: Option<Duration>,
}

/// The reorder buffer between the workers' pipes and the screen.
///
/// Every line is keyed by the time it happened (microseconds since `epoch`: stamped by the
/// worker, or by the parent for its own lines) and printed in that order. A line is printed
/// once no earlier one can still arrive (every worker whose pipe is open has reported
/// something at or after it: each pipe delivers its worker's events in order), or once it is
/// `window` old, so a worker that waits quietly in the queue does not hold the screen up.
struct Timeline {
    epoch_us: u64,
    window_us: u64,
    /// Lines not printed yet, by (time, arrival number).
    pending: std::collections::BTreeMap<(u64, u64), String>,
    arrivals: u64,
    /// Per worker: the time of its latest event while its pipe is open, `None` once closed.
    latest: Vec<Option<u64>>,
}

impl Timeline {
    fn new(epoch_us: u64, window_ms: u64, workers: usize) -> Timeline {
        Timeline {
            epoch_us,
            window_us: window_ms * 1000,
            pending: std::collections::BTreeMap::new(),
            arrivals: 0,
            latest: vec![Some(0); workers],
        }
    }

    /// Now, in microseconds since the start of the run (the workers' clock).
    fn now_us(&self) -> u64 {
        now_us().saturating_sub(self.epoch_us)
    }

    /// Notes that worker `i` has reported an event that happened at `t_us`.
    fn seen(&mut self, i: usize, t_us: u64) {
        if let Some(Some(latest)) = self.latest.get_mut(i) {
            *latest = (*latest).max(t_us);
        }
    }

    /// Notes that worker `i`'s pipe closed: nothing earlier can come from it any more.
    fn closed(&mut self, i: usize) {
        if let Some(latest) = self.latest.get_mut(i) {
            *latest = None;
        }
    }

    /// Queues `line` to be printed in the place of time `t_us`.
    fn push(&mut self, t_us: u64, line: String) {
        self.arrivals += 1;
        self.pending.insert((t_us, self.arrivals), line);
    }

    /// Prints the lines nothing earlier can still overtake, or that waited long enough.
    fn flush_ready(&mut self) {
        let settled = self
            .latest
            .iter()
            .flatten()
            .min()
            .copied()
            .unwrap_or(u64::MAX);
        let cutoff = settled.max(self.now_us().saturating_sub(self.window_us));
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > cutoff {
                break;
            }
            print_line(&entry.remove());
        }
    }

    /// Prints every line still held back.
    fn flush_all(&mut self) {
        while let Some((_, line)) = self.pending.pop_first() {
            print_line(&line);
        }
    }
}

impl Drop for Timeline {
    /// Even when the run fails early, every line received is shown before the error.
    fn drop(&mut self) {
        self.flush_all();
    }
}

/// Prints a timeline line. Unlike `println!` it does not panic on a closed stdout
/// (`| head`), which in `Timeline`'s `Drop` would abort before the workers are stopped.
fn print_line(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// One timeline line: time, worker, event, gauge.
fn timeline_line(t_us: u64, name: &str, event: &str, bar: &str) -> String {
    let time = format!("{:.3}s", t_us as f64 / 1e6);
    format!("{time:>8}  {name:<10} {event:<52} {bar}")
}

/// The time field of a worker's event line (microseconds since the start of the run).
fn event_time(line: &str) -> u64 {
    line.split('\t')
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

fn parent(config: &Config) -> ExitCode {
    match run(config) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the demo; `Ok(true)` when every check passed.
fn run(config: &Config) -> Result<bool, String> {
    let temp = tempfile::Builder::new()
        .prefix("filesem-workers-")
        .tempdir()
        .map_err(|e| format!("cannot create a temp directory: {e}"))?;
    let (place, keep_note) = match (&config.path, &config.redis) {
        (_, Some(url)) => (
            Place::Redis(url.clone()),
            format!(
                " (a key on a Redis server; holds have {} s leases there, renewed in the \
                 background)",
                REDIS_LEASE.as_secs()
            ),
        ),
        (Some(p), None) => (Place::File(p.clone()), String::new()),
        (None, None) => (
            Place::File(temp.path().join("workers.json")),
            " (a fresh file, removed at the end; pass --path FILE to keep one)".to_string(),
        ),
    };
    let witness = Witness::create(temp.path().join("checker"), config.capacity)
        .map_err(|e| format!("cannot create the checker directory: {e}"))?;
    let sem = place.open(config.capacity)?;
    // As the semaphore shows it: a Redis URL without its password.
    let path = sem.path().to_path_buf();
    let already = sem.count().map_err(|e| e.to_string())?;
    if already > 0 {
        return Err(format!(
            "the semaphore at {} already has {already} holder(s); this demo needs an empty one \
             (remove them, or pick another --path or --redis key)",
            path.display()
        ));
    }

    println!(
        "filesem workers: {} processes share a semaphore with {} slots",
        config.workers, config.capacity
    );
    let what = match place {
        Place::File(_) => "state file",
        Place::Redis(_) => "state key ",
    };
    println!("  {what}: {}{keep_note}", path.display());
    println!(
        "  checker:    {} (an independent count of who is inside)",
        witness.dir().display()
    );
    println!(
        "  each worker takes a slot {} times and holds it about {} ms; when all are taken it \
         queues (first come, first served)",
        config.cycles, config.hold_ms
    );
    println!();

    let epoch = now_us();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let (tx, rx) = mpsc::channel::<(usize, Option<String>)>();
    let mut workers = Workers(Vec::new());
    for i in 0..config.workers as usize {
        let name = format!("worker-{}", i + 1);
        let mut command = Command::new(&exe);
        command.args(["--worker", "--id", &name]);
        match &place {
            Place::File(path) => command.arg("--path").arg(path).env_remove(URL_VARIABLE),
            Place::Redis(url) => command.env(URL_VARIABLE, url),
        };
        let mut child = command
            .arg("--checker")
            .arg(witness.dir())
            .args(["--capacity", &config.capacity.to_string()])
            .args(["--cycles", &config.cycles.to_string()])
            .args(["--hold-ms", &config.hold_ms.to_string()])
            .args(["--epoch-us", &epoch.to_string()])
            .args(["--seed", &fastrand::u64(..).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((i, Some(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((i, None));
        });
        let stdin = child.stdin.take();
        workers.0.push(Worker { name, child, stdin });
    }
    drop(tx);
    let pids: Vec<String> = workers
        .0
        .iter()
        .map(|w| format!("{} (pid {})", w.name, w.child.id()))
        .collect();
    println!("started {}", pids.join(", "));

    // Generous: the whole run if every hold were serialized, three times over, plus slack.
    let serial_ms =
        u64::from(config.workers) * u64::from(config.cycles) * (config.hold_ms * 2 + 40);
    let deadline = Instant::now() + Duration::from_millis(serial_ms * 3) + Duration::from_secs(30);

    // Handshake: everyone has opened the semaphore, then everyone starts at once.
    let mut ready = 0;
    let mut early = Vec::new();
    while ready < workers.0.len() {
        match recv(&rx, deadline)? {
            None => {}
            Some((_, Some(line))) if line.starts_with("ready\t") => ready += 1,
            Some((i, Some(line))) => early.push((i, line)),
            Some((i, None)) => {
                return Err(format!(
                    "{} ended before it was ready: {early:?}",
                    workers.0[i].name
                ));
            }
        }
    }
    for w in &mut workers.0 {
        if let Some(stdin) = w.stdin.as_mut() {
            let _ = writeln!(stdin, "go");
        }
        w.stdin = None;
    }

    println!();
    println!("{:>8}  {:<10} {:<52} inside", "time", "worker", "event");
    let mut tally = Tally::default();
    let mut timeline = Timeline::new(epoch, config.window_ms, workers.0.len());
    for (i, line) in early {
        let t_us = event_time(&line);
        timeline.seen(i, t_us);
        let text = show(&workers.0[i].name, &line, config.capacity, &mut tally);
        timeline.push(t_us, text);
    }
    let mut open = workers.0.len();
    while open > 0 {
        match recv(&rx, deadline)? {
            Some((i, Some(line))) => {
                let t_us = event_time(&line);
                timeline.seen(i, t_us);
                let text = show(&workers.0[i].name, &line, config.capacity, &mut tally);
                timeline.push(t_us, text);
                // Acts at once (the kill cannot wait for the screen); only its lines queue.
                crash_demo(
                    config,
                    &sem,
                    &witness,
                    &mut workers,
                    (i, &line),
                    &mut tally,
                    &mut timeline,
                )?;
            }
            Some((i, None)) => {
                open -= 1;
                timeline.closed(i);
            }
            None => {}
        }
        timeline.flush_ready();
    }
    timeline.flush_all();
    drop(timeline);
    for (i, w) in workers.0.iter_mut().enumerate() {
        if tally.killed.as_ref().is_some_and(|k| k.worker == i) {
            continue; // killed on purpose and already reaped
        }
        loop {
            match w.child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => {
                    tally
                        .problems
                        .push(format!("{} exited with {status}", w.name));
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => return Err(format!("{} did not exit in time", w.name)),
                Err(e) => return Err(format!("waiting for {}: {e}", w.name)),
            }
        }
    }

    summarize(config, &path, &sem, &witness, tally)
}

/// With `--kill N`: kills worker N when it enters its first slot, shows its entry's verdict,
/// and later when its slot came back.
fn crash_demo(
    config: &Config,
    sem: &Semaphore,
    witness: &Witness,
    workers: &mut Workers,
    (i, line): (usize, &str),
    tally: &mut Tally,
    timeline: &mut Timeline,
) -> Result<(), String> {
    let fields: Vec<&str> = line.split('\t').collect();
    if fields[0] != "entered" || fields.len() < 4 {
        return Ok(());
    }
    let entered_us = event_time(line);
    let (slot, token) = (fields[2].to_string(), fields[3].parse::<u64>().unwrap_or(0));
    if let Some(k) = &mut tally.killed {
        if k.came_back_after.is_none() && k.slot == slot && k.worker != i {
            let after = Duration::from_micros(entered_us.saturating_sub(k.at_us));
            k.came_back_after = Some(after);
            // Right after the entry that took the slot back.
            timeline.push(
                entered_us,
                timeline_line(
                    entered_us,
                    "",
                    &format!(
                        "slot {slot} came back {} ms after the kill, with no manual step",
                        after.as_millis()
                    ),
                    "",
                ),
            );
        }
        return Ok(());
    }
    if config.kill != Some(i as u32 + 1) {
        return Ok(());
    }
    let victim = &mut workers.0[i];
    let (name, pid) = (victim.name.clone(), victim.child.id());
    let slot_number: u32 = slot.parse().unwrap_or(0);
    let killed = witness
        .kill_inside(slot_number, &name, token, || {
            victim.child.kill()?;
            victim.child.wait().map(|_| ())
        })
        .map_err(|e| format!("checker: {e}"))?;
    if killed.is_none() {
        return Ok(()); // it already left; try again at its next entry
    }
    let killed_us = timeline.now_us();
    timeline.push(
        killed_us,
        timeline_line(
            killed_us,
            &name,
            &format!("KILLED with SIGKILL (pid {pid}) while holding slot {slot}"),
            "",
        ),
    );
    let verdict = sem
        .holders()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|h| h.id == name);
    let verdict = match verdict {
        Some(h) => format!("its entry now: {}", h.liveness),
        None => "its entry is already reaped".to_string(),
    };
    let looked_us = timeline.now_us();
    timeline.push(looked_us, timeline_line(looked_us, "", &verdict, ""));
    tally.killed = Some(Killed {
        worker: i,
        slot,
        at_us: killed_us,
        came_back_after: None,
    });
    Ok(())
}

/// Receives the next line from any worker: `None` if none came within a few milliseconds
/// (so that the timeline can print what has waited long enough); fails when the deadline
/// has passed.
fn recv(
    rx: &mpsc::Receiver<(usize, Option<String>)>,
    deadline: Instant,
) -> Result<Option<(usize, Option<String>)>, String> {
    const TICK: Duration = Duration::from_millis(10);
    let too_late =
        || "the workers did not finish in time (deadline passed); stopped them".to_string();
    let left = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left.min(TICK)) {
        Ok(message) => Ok(Some(message)),
        Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => Ok(None),
        Err(_) => Err(too_late()),
    }
}

/// The timeline line for a worker's event; updates the tally.
fn show(name: &str, line: &str, capacity: u32, tally: &mut Tally) -> String {
    let fields: Vec<&str> = line.split('\t').collect();
    let (kind, t_us) = (
        fields[0],
        fields
            .get(1)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0),
    );
    let f = |n: usize| fields.get(n).copied().unwrap_or("?");
    let (event, inside) = match kind {
        "queued" => (
            format!("queued: {} ahead; {} slots held by {}", f(2), f(4), f(3)),
            None,
        ),
        "entered" => {
            let mut event = format!("entered slot {} (token {})", f(2), f(3));
            if f(5) == "1" {
                let _ = write!(event, " after waiting {} ms", f(6));
            }
            tally.grants += 1;
            (event, f(4).parse::<u32>().ok())
        }
        "left" => (
            format!("left slot {} after {} ms", f(2), f(4)),
            f(3).parse::<u32>().ok(),
        ),
        "violation" => {
            tally.problems.push(format!("{name}: {}", f(2)));
            (format!("VIOLATION: {}", f(2)), None)
        }
        "error" => {
            tally.problems.push(format!("{name}: {}", f(2)));
            (format!("ERROR: {}", f(2)), None)
        }
        "done" => {
            tally.waits += f(3).parse::<u64>().unwrap_or(0);
            tally.done += 1;
            (
                format!("done: {} grants, {} after waiting", f(2), f(3)),
                None,
            )
        }
        _ => (format!("(unexpected output: {line:?})"), None),
    };
    let bar = match inside {
        Some(n) => {
            tally.max_inside = tally.max_inside.max(n);
            format!("{} {n}/{capacity}", gauge(n, capacity))
        }
        None => String::new(),
    };
    timeline_line(t_us, name, &event, &bar)
}

/// `[##.]`: one `#` per holder inside, `.` per free slot, `!` per holder over capacity.
fn gauge(inside: u32, capacity: u32) -> String {
    if capacity > 16 {
        return String::new();
    }
    let mut s = String::from("[");
    for i in 0..capacity.max(inside) {
        s.push(if i >= capacity {
            '!'
        } else if i < inside {
            '#'
        } else {
            '.'
        });
    }
    s.push(']');
    s
}

fn summarize(
    config: &Config,
    path: &Path,
    sem: &Semaphore,
    witness: &Witness,
    mut tally: Tally,
) -> Result<bool, String> {
    if config.redis.is_some()
        && let Some(k) = &tally.killed
    {
        // On Redis nothing proves the killed worker dead: its entry goes once its lease (and
        // the grace) has run out, when an acquire or a reap looks.
        let start = Instant::now();
        let limit = REDIS_LEASE + filesem::LEASE_GRACE + Duration::from_secs(10);
        while sem.count().map_err(|e| e.to_string())? > 0 && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(100));
            sem.reap().map_err(|e| e.to_string())?;
        }
        println!();
        println!(
            "worker-{}'s hold on slot {} ended with its lease, {} ms after the last worker \
             finished (a Redis semaphore judges holders by leases only)",
            k.worker + 1,
            k.slot,
            start.elapsed().as_millis()
        );
    }
    println!();
    println!("final state of {}:", path.display());
    let holders = sem.holders().map_err(|e| e.to_string())?;
    let count = sem.count().map_err(|e| e.to_string())?;
    let available = sem.available().map_err(|e| e.to_string())?;
    let ids: Vec<&str> = holders.iter().map(|h| h.id.as_str()).collect();
    println!(
        "  count {count}, available {available} of {}, holders: {}",
        config.capacity,
        if ids.is_empty() {
            "none".to_string()
        } else {
            ids.join(", ")
        }
    );
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            println!("  | {line}");
        }
    }

    let report = witness.report().map_err(|e| format!("checker: {e}"))?;
    for v in &report.violations {
        if !tally.problems.iter().any(|p| p.ends_with(v.as_str())) {
            tally.problems.push(format!("checker: {v}"));
        }
    }
    if count != 0 {
        tally
            .problems
            .push(format!("{count} holder(s) left on file: {ids:?}"));
    }
    if report.inside != 0 {
        tally
            .problems
            .push(format!("the checker still counts {} inside", report.inside));
    }
    let dups = report.duplicate_tokens();
    if !dups.is_empty() {
        tally
            .problems
            .push(format!("fencing tokens handed out twice: {dups:?}"));
    }
    // A worker killed during its first hold got one grant and never finished.
    let killed = u32::from(tally.killed.is_some());
    let expected =
        u64::from(config.workers - killed) * u64::from(config.cycles) + u64::from(killed);
    if tally.grants != expected || tally.done != config.workers - killed {
        tally.problems.push(format!(
            "{} of {expected} grants and {} of {} workers finished",
            tally.grants,
            tally.done,
            config.workers - killed
        ));
    }
    if let Some(n) = config.kill {
        match &tally.killed {
            None => tally
                .problems
                .push(format!("worker {n} was never caught holding a slot")),
            Some(k) if k.came_back_after.is_none() && tally.grants < expected => {
                tally
                    .problems
                    .push(format!("slot {} never came back after the kill", k.slot));
            }
            Some(_) => {}
        }
    }

    println!();
    println!(
        "summary: {} workers x {} cycles = {} grants, {} after waiting in the queue, \
         at most {} of {} inside at once (checker: {}), {} violations",
        config.workers,
        config.cycles,
        tally.grants,
        tally.waits,
        tally.max_inside,
        config.capacity,
        report.max_inside,
        report.violations.len(),
    );
    if let Some(k) = &tally.killed {
        let back = k
            .came_back_after
            .map_or("it was not needed again".to_string(), |d| {
                format!("its slot came back after {} ms", d.as_millis())
            });
        println!(
            "crash: {} was killed with SIGKILL after 1 grant (so {expected} grants in all); {back}",
            config.kill.map_or(String::new(), |n| format!("worker-{n}"))
        );
    }
    if tally.problems.is_empty() {
        println!(
            "OK: never more than {} inside, every slot used by one holder at a time, \
             every release landed",
            config.capacity
        );
        Ok(true)
    } else {
        println!("FAILED:");
        for p in tally.problems.iter().take(20) {
            println!("  - {p}");
        }
        if tally.problems.len() > 20 {
            println!("  ... and {} more", tally.problems.len() - 20);
        }
        Ok(false)
    }
}
