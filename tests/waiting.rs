//! Waiting for a slot: arrival order, priorities, hand-off, timeouts, cancellation, signals
//! and dead waiters, with real processes where the behaviour is between processes.
//!
//! Child processes are this test binary run again with `FILESEM_WAITING_ROLE` set (see
//! [`child_process_entry`]); they talk to the test over stdout lines starting with `@@`, and
//! take orders on stdin. Every wait for a child has a deadline, and children are killed when
//! their handle is dropped, so a failing test cannot hang or leave processes behind.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use filesem::{AcquireOptions, CancelToken, Error, HoldMode, Liveness, OpenOptions, Semaphore};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long any single expected event may take before the test fails. Generous: the machine
/// is shared.
const DEADLINE: Duration = Duration::from_secs(60);

const ROLE: &str = "FILESEM_WAITING_ROLE";

fn open(path: &Path) -> Semaphore {
    OpenOptions::new()
        .durable(false)
        .lock_timeout(Duration::from_secs(30))
        .open_existing(path)
        .unwrap()
}

fn new_semaphore(capacity: u32) -> (tempfile::TempDir, PathBuf, Semaphore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sem.json");
    let sem = OpenOptions::new()
        .durable(false)
        .lock_timeout(Duration::from_secs(30))
        .open(&path, capacity)
        .unwrap();
    (dir, path, sem)
}

fn ids(infos: Vec<filesem::HolderInfo>) -> Vec<String> {
    infos.into_iter().map(|h| h.id).collect()
}

/// Calls `f` until it returns `Some`, failing the test after [`DEADLINE`].
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------
// Child processes

/// Not a test: the body of child processes. Without `FILESEM_WAITING_ROLE` it does nothing.
///
/// Role `wait` (env `SEM`, `ID`, optional `PRIORITY`, `TIMEOUT_MS`, `SIGNALS`): acquires
/// with the waiting API, printing `@@ queued AHEAD` from `on_wait`, then
/// `@@ acquired TOKEN SLOT` or `@@ error KIND WAITED_MS`; with `SIGNALS` it counts SIGUSR1
/// and prints `@@ signals N`. After acquiring it waits for `release` on stdin, releases and
/// prints `@@ released`.
#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    assert_eq!(role, "wait");
    let path = PathBuf::from(std::env::var("SEM").unwrap());
    let id = std::env::var("ID").unwrap();
    if std::env::var_os("SIGNALS").is_some() {
        install_sigusr1_counter();
    }
    let sem = open(&path);
    let mut opts = AcquireOptions::new().on_wait(|s| {
        println!("@@ queued {}", s.ahead);
        std::io::stdout().flush().unwrap();
    });
    if let Ok(p) = std::env::var("PRIORITY") {
        opts = opts.priority(p.parse().unwrap());
    }
    if let Ok(ms) = std::env::var("TIMEOUT_MS") {
        opts = opts.timeout(Duration::from_millis(ms.parse().unwrap()));
    }
    let start = Instant::now();
    let result = sem.acquire_with(id.as_str(), &opts);
    let waited_ms = start.elapsed().as_millis();
    if std::env::var_os("SIGNALS").is_some() {
        println!("@@ signals {}", signal_count());
    }
    match result {
        Ok(permit) => {
            println!("@@ acquired {} {}", permit.token(), permit.slot());
            std::io::stdout().flush().unwrap();
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "release");
            permit.release().unwrap();
            println!("@@ released");
        }
        Err(e) => {
            let kind = match e {
                Error::Timeout { .. } => "timeout",
                Error::Cancelled { .. } => "cancelled",
                _ => "other",
            };
            println!("@@ error {kind} {waited_ms} {e}");
        }
    }
    std::io::stdout().flush().unwrap();
}

static SIGNALS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn count_signal(_: nix::libc::c_int) {
    SIGNALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn signal_count() -> usize {
    SIGNALS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs a SIGUSR1 handler without `SA_RESTART`, so every signal interrupts the waiting
/// system call with `EINTR`.
#[allow(unsafe_code)] // installing a signal handler is unsafe; this one only bumps an atomic
fn install_sigusr1_counter() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(count_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler is async-signal-safe (one atomic add).
    unsafe { sigaction(Signal::SIGUSR1, &action) }.unwrap();
}

/// A child process and its stdin; killed when dropped.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Proc {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Children whose `@@` lines arrive on one channel, tagged with the child's index.
struct Procs {
    tx: Sender<(usize, String)>,
    rx: Receiver<(usize, String)>,
    pending: std::collections::VecDeque<(usize, Vec<String>)>,
    procs: Vec<Proc>,
}

impl Procs {
    fn new() -> Procs {
        let (tx, rx) = mpsc::channel();
        Procs {
            tx,
            rx,
            pending: Default::default(),
            procs: Vec::new(),
        }
    }

    /// Starts a waiting child; returns its index.
    fn spawn_waiter(&mut self, path: &Path, id: &str, env: &[(&str, String)]) -> usize {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["child_process_entry", "--exact", "--nocapture", "-q"])
            .env(ROLE, "wait")
            .env("SEM", path)
            .env("ID", id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let index = self.procs.len();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("@@ ")
                    && tx.send((index, rest.to_string())).is_err()
                {
                    break;
                }
            }
        });
        self.procs.push(Proc {
            name: id.to_string(),
            child,
            stdin,
        });
        index
    }

    /// The next `@@` line of any child (lines set aside by [`expect`](Procs::expect) first),
    /// within [`DEADLINE`].
    fn next(&mut self, what: &str) -> (usize, Vec<String>) {
        if let Some(line) = self.pending.pop_front() {
            return line;
        }
        self.receive(what)
    }

    fn receive(&self, what: &str) -> (usize, Vec<String>) {
        match self.rx.recv_timeout(DEADLINE) {
            Ok((i, line)) => (i, line.split(' ').map(str::to_string).collect()),
            Err(RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}"),
            Err(RecvTimeoutError::Disconnected) => panic!("children gone waiting for {what}"),
        }
    }

    /// The next line of child `i`, which must start with `word`; lines of other children
    /// that arrive first are set aside for [`next`](Procs::next).
    fn expect(&mut self, i: usize, word: &str) -> Vec<String> {
        let what = format!("`{word}` from {}", self.procs[i].name);
        let fields = match self.pending.iter().position(|(from, _)| *from == i) {
            Some(at) => self.pending.remove(at).unwrap().1,
            None => loop {
                let (from, fields) = self.receive(&what);
                if from == i {
                    break fields;
                }
                self.pending.push_back((from, fields));
            },
        };
        assert_eq!(fields[0], word, "expected {what}, got {fields:?}");
        fields
    }
}

/// The ticket of the waiter `id` on file: the number it queued with, which names its witness.
fn ticket(path: &Path, id: &str) -> u64 {
    common::entry_on_file(path, "waiters", id)
        .ticket
        .unwrap_or_else(|| panic!("waiter {id} has no ticket"))
}

/// Starts waiters one after the other, each on file before the next starts; returns their
/// tickets.
fn queue_in_order(
    procs: &mut Procs,
    sem: &Semaphore,
    path: &Path,
    waiters: &[(&str, i32)],
) -> Vec<u64> {
    let mut tickets = Vec::new();
    for &(id, priority) in waiters {
        let i = procs.spawn_waiter(path, id, &[("PRIORITY", priority.to_string())]);
        procs.expect(i, "queued");
        assert!(ids(sem.waiters().unwrap()).contains(&id.to_string()));
        tickets.push(ticket(path, id));
    }
    tickets
}

/// Releases `first` and then lets each of the `waiting` waiters go in turn; returns the order
/// they acquired in, checking each was the only holder, was served from the entry it queued
/// with (its `ticket`), and got a fencing token above every token granted before.
fn serve_all(
    procs: &mut Procs,
    sem: &Semaphore,
    first: filesem::Permit,
    tickets: &[u64],
) -> Vec<String> {
    let mut last = first.token();
    first.release().unwrap();
    let mut order = Vec::new();
    for _ in 0..tickets.len() {
        let (i, fields) = procs.next("the next acquire");
        assert_eq!(fields[0], "acquired", "{fields:?}");
        let token: u64 = fields[1].parse().unwrap();
        assert!(token > last, "token {token} granted after token {last}");
        last = token;
        let held = common::entry_on_file(sem.path(), "holders", &procs.procs[i].name);
        assert_eq!((held.token, held.ticket), (Some(token), Some(tickets[i])));
        assert_eq!(ids(sem.holders().unwrap()), [procs.procs[i].name.clone()]);
        order.push(procs.procs[i].name.clone());
        procs.procs[i].send("release");
        procs.expect(i, "released");
    }
    assert!(sem.waiters().unwrap().is_empty());
    assert_eq!(sem.count().unwrap(), 0);
    order
}

// ---------------------------------------------------------------------------------------
// Order and priority

#[test]
fn five_waiting_processes_acquire_in_arrival_order() {
    // First come, first served: a capacity-1 semaphore serves its queue in arrival order.
    let (_dir, path, sem) = new_semaphore(1);
    let first = sem.try_acquire("first").unwrap();
    let mut procs = Procs::new();
    let names = ["w0", "w1", "w2", "w3", "w4"];
    let waiters: Vec<_> = names.iter().map(|n| (*n, 0)).collect();
    let tickets = queue_in_order(&mut procs, &sem, &path, &waiters);
    assert_eq!(ids(sem.waiters().unwrap()), names);
    assert!(tickets.windows(2).all(|w| w[0] < w[1]), "{tickets:?}");
    assert_eq!(serve_all(&mut procs, &sem, first, &tickets), names);
}

#[test]
fn waiting_processes_are_served_by_priority_then_arrival() {
    // Higher priority first; equal priorities keep their arrival order; fencing tokens rise
    // in that order of service, not in the order of arrival.
    let (_dir, path, sem) = new_semaphore(1);
    let first = sem.try_acquire("first").unwrap();
    let mut procs = Procs::new();
    let waiters = [("p0", 0), ("p5a", 5), ("p0b", 0), ("p9", 9), ("p5b", 5)];
    let tickets = queue_in_order(&mut procs, &sem, &path, &waiters);
    let expected = ["p9", "p5a", "p5b", "p0", "p0b"];
    assert_eq!(ids(sem.waiters().unwrap()), expected);
    assert_eq!(serve_all(&mut procs, &sem, first, &tickets), expected);
}

// ---------------------------------------------------------------------------------------
// Dead waiters, hand-off, try_acquire

#[test]
fn a_waiter_killed_while_queued_leaves_the_queue() {
    // A dead waiter is judged like a dead holder and removed by the waiter behind it.
    let (_dir, path, sem) = new_semaphore(1);
    let first = sem.try_acquire("first").unwrap();
    let mut procs = Procs::new();
    let tickets = queue_in_order(&mut procs, &sem, &path, &[("doomed", 0), ("next", 0)]);
    let doomed = &sem.waiters().unwrap()[0];
    assert_eq!(doomed.token, None, "a waiter has no fencing token yet");
    assert_eq!(doomed.mode, HoldMode::ProcessBound);
    assert_eq!(
        doomed.owner.as_ref().unwrap().pid,
        procs.procs[0].child.id()
    );
    assert!(
        matches!(doomed.liveness, Liveness::Alive { .. }),
        "{:?}",
        doomed.liveness
    );
    let witness = path
        .with_extension("json.witness")
        .join(tickets[0].to_string());
    assert!(witness.exists());
    procs.procs[0].kill();
    eventually("the dead waiter to leave the queue", || {
        (ids(sem.waiters().unwrap()) == ["next"]).then_some(())
    });
    // Deleted right after the write that removed the entry commits.
    eventually("the dead waiter's witness file to be removed", || {
        (!witness.exists()).then_some(())
    });
    let first_token = first.token();
    first.release().unwrap();
    let fields = procs.expect(1, "acquired");
    let token = fields[1].parse::<u64>().unwrap();
    assert!(token > tickets[1] && token > first_token, "{token}");
    assert_eq!(sem.holders().unwrap()[0].token, Some(token));
    assert_eq!(ids(sem.holders().unwrap()), ["next"]);
    procs.procs[1].send("release");
    procs.expect(1, "released");
}

#[test]
fn a_waiter_killed_just_before_its_turn_does_not_block_the_next_one() {
    // A slot handed to a waiter that died before noticing is an ordinary dead holder: reaped.
    let (_dir, path, sem) = new_semaphore(1);
    let first = sem.try_acquire("first").unwrap();
    let mut procs = Procs::new();
    let tickets = queue_in_order(&mut procs, &sem, &path, &[("doomed", 0), ("next", 0)]);
    procs.procs[0].kill();
    let first_token = first.token();
    first.release().unwrap();
    let fields = procs.expect(1, "acquired");
    let token = fields[1].parse::<u64>().unwrap();
    assert!(token > tickets[1] && token > first_token, "{token}");
    assert_eq!(sem.holders().unwrap()[0].token, Some(token));
    assert_eq!(ids(sem.holders().unwrap()), ["next"]);
    procs.procs[1].send("release");
    procs.expect(1, "released");
}

#[test]
fn try_acquire_is_refused_while_a_slot_is_handed_to_a_queued_waiter() {
    // The releaser's own write hands the slot to the queue head; nobody can take it between.
    let (_dir, path, sem) = new_semaphore(1);
    let first = sem.try_acquire("first").unwrap();
    let mut procs = Procs::new();
    let tickets = queue_in_order(&mut procs, &sem, &path, &[("queued", 0)]);
    assert!(matches!(
        sem.try_acquire("late"),
        Err(Error::NoCapacity { .. })
    ));
    assert_eq!(sem.available().unwrap(), 0);

    // Stop the waiter so that only the release can move the slot. Holding the lock file
    // while stopping it makes sure it is not stopped inside a critical section.
    let lock_path = path.with_extension("json.lock");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
        .unwrap();
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    kill(procs.procs[0].pid(), Signal::SIGSTOP).unwrap();
    drop(lock);

    let first_token = first.token();
    first.release().unwrap();
    let holders = sem.holders().unwrap();
    assert_eq!(ids(holders.clone()), ["queued"]);
    let token = holders[0].token.expect("the hand-off gave a token");
    assert!(token > tickets[0] && token > first_token, "{token}");
    assert!(sem.waiters().unwrap().is_empty());
    assert!(matches!(
        sem.try_acquire("late"),
        Err(Error::NoCapacity { .. })
    ));
    assert_eq!(sem.available().unwrap(), 0);

    kill(procs.procs[0].pid(), Signal::SIGCONT).unwrap();
    let fields = procs.expect(0, "acquired");
    assert_eq!(fields[1].parse::<u64>().unwrap(), token);
    procs.procs[0].send("release");
    procs.expect(0, "released");
    assert_eq!(sem.available().unwrap(), 1);
}

#[test]
fn raising_the_capacity_hands_the_new_slots_to_waiters() {
    // set_capacity frees slots for the queue in its own write.
    let (_dir, path, sem) = new_semaphore(1);
    let _first = sem.try_acquire("first").unwrap();
    let mut procs = Procs::new();
    queue_in_order(&mut procs, &sem, &path, &[("a", 0), ("b", 0)]);
    sem.set_capacity(3).unwrap();
    let holders = sem.holders().unwrap();
    assert_eq!(ids(holders.clone()), ["first", "a", "b"]);
    let tokens: Vec<u64> = holders.iter().map(|h| h.token.unwrap()).collect();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "in grant order: {tokens:?}"
    );
    for i in 0..2 {
        let fields = procs.expect(i, "acquired");
        assert_eq!(fields[1].parse::<u64>().unwrap(), tokens[i + 1]);
        assert_eq!(fields[2], (i + 1).to_string(), "slots 1 and 2");
    }
    assert_eq!(sem.available().unwrap(), 0);
}

// ---------------------------------------------------------------------------------------
// Timeouts, cancellation, signals

#[test]
fn acquire_timeout_returns_timeout_no_earlier_than_its_duration_and_leaves_no_entry() {
    // Timeout is its own error, never early, and the queue is left clean.
    let (_dir, _path, sem) = new_semaphore(1);
    let _held = sem.try_acquire("holder").unwrap();
    let d = Duration::from_millis(300);
    let start = Instant::now();
    let err = sem.acquire_timeout("late", d).unwrap_err();
    let elapsed = start.elapsed();
    match err {
        Error::Timeout { waited, ref path } => {
            assert!(waited >= d, "{waited:?}");
            assert_eq!(path, sem.path());
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(elapsed >= d, "{elapsed:?}");
    assert!(err.is_contention());
    assert!(sem.waiters().unwrap().is_empty());
    assert_eq!(ids(sem.holders().unwrap()), ["holder"]);
}

#[test]
fn a_timed_out_process_leaves_the_queue_and_the_next_is_served() {
    // A waiter that gave up does not take the slot that frees after it left.
    let (_dir, path, sem) = new_semaphore(1);
    let first = sem.try_acquire("first").unwrap();
    let mut procs = Procs::new();
    let t = procs.spawn_waiter(&path, "impatient", &[("TIMEOUT_MS", "500".into())]);
    procs.expect(t, "queued");
    let tickets = queue_in_order(&mut procs, &sem, &path, &[("patient", 0)]);
    let fields = procs.expect(t, "error");
    assert_eq!(fields[1], "timeout");
    assert!(fields[2].parse::<u64>().unwrap() >= 500);
    assert_eq!(ids(sem.waiters().unwrap()), ["patient"]);
    first.release().unwrap();
    let fields = procs.expect(1, "acquired");
    let held = common::entry_on_file(&path, "holders", "patient");
    assert_eq!(
        held.ticket,
        Some(tickets[0]),
        "served from the entry it queued with"
    );
    assert_eq!(Some(fields[1].parse::<u64>().unwrap()), held.token);
    procs.procs[1].send("release");
    procs.expect(1, "released");
}

#[test]
fn zero_duration_makes_one_attempt_and_max_duration_waits_without_limit() {
    // ZERO never queues; MAX does not overflow the deadline and waits for the hand-off.
    let (_dir, _path, sem) = new_semaphore(1);
    let free = sem.acquire_timeout("quick", Duration::ZERO).unwrap();
    assert_eq!(free.slot(), 0);
    let err = sem.acquire_timeout("zero", Duration::ZERO).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(sem.waiters().unwrap().is_empty());

    let (tx, rx) = mpsc::channel();
    let waiter = sem.clone();
    std::thread::spawn(move || {
        let r = waiter.acquire_timeout("patient", Duration::MAX);
        tx.send(r.map(|p| (p.id().to_string(), p.token()))).unwrap();
    });
    eventually("the waiter to queue", || {
        (ids(sem.waiters().unwrap()) == ["patient"]).then_some(())
    });
    let free_token = free.token();
    free.release().unwrap();
    let (id, token) = rx.recv_timeout(DEADLINE).unwrap().unwrap();
    assert_eq!(id, "patient");
    assert!(token > free_token, "{token} after {free_token}");
}

#[test]
fn a_cancelled_wait_returns_cancelled_and_leaves_no_entry() {
    // Cancellation from another thread wakes the waiter, which leaves the queue.
    let (_dir, _path, sem) = new_semaphore(1);
    let _held = sem.try_acquire("holder").unwrap();
    let token = CancelToken::new();
    let (tx, rx) = mpsc::channel();
    let waiter = sem.clone();
    let opts = AcquireOptions::new().cancel_token(&token);
    std::thread::spawn(move || tx.send(waiter.acquire_with("w", &opts)).unwrap());
    eventually("the waiter to queue", || {
        (!sem.waiters().unwrap().is_empty()).then_some(())
    });
    token.cancel();
    let err = rx.recv_timeout(DEADLINE).unwrap().unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    assert!(!err.is_contention());
    assert!(sem.waiters().unwrap().is_empty());
    assert_eq!(ids(sem.holders().unwrap()), ["holder"]);

    // A token cancelled before the call stops it before it queues.
    let opts = AcquireOptions::new().cancel_token(&token);
    let err = sem.acquire_with("again", &opts).unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    assert!(sem.waiters().unwrap().is_empty());
}

#[test]
fn repeated_signals_during_a_wait_do_not_fail_it() {
    // EINTR resumes the wait: a signal storm ends neither in an error nor in a lost wake-up.
    let (_dir, path, sem) = new_semaphore(1);
    let first = sem.try_acquire("first").unwrap();
    let mut procs = Procs::new();
    let i = procs.spawn_waiter(&path, "signalled", &[("SIGNALS", "1".into())]);
    procs.expect(i, "queued");
    for _ in 0..200 {
        kill(procs.procs[i].pid(), Signal::SIGUSR1).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    first.release().unwrap();
    let fields = procs.expect(i, "signals");
    let count: usize = fields[1].parse().unwrap();
    assert!(count > 0, "the child saw no signal");
    procs.expect(i, "acquired");
    procs.procs[i].send("release");
    procs.expect(i, "released");
}

#[test]
fn signals_during_a_timed_wait_do_not_restart_its_deadline() {
    // The deadline is absolute: a wait under a constant signal storm still times out.
    let (_dir, path, sem) = new_semaphore(1);
    let _held = sem.try_acquire("holder").unwrap();
    let mut procs = Procs::new();
    let i = procs.spawn_waiter(
        &path,
        "signalled",
        &[("SIGNALS", "1".into()), ("TIMEOUT_MS", "700".into())],
    );
    procs.expect(i, "queued");
    let pid = procs.procs[i].pid();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let storm = std::thread::spawn(move || {
        let mut sent = 0u64;
        while stop_rx.try_recv().is_err() {
            if kill(pid, Signal::SIGUSR1).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        sent
    });
    let fields = procs.expect(i, "signals");
    let count: usize = fields[1].parse().unwrap();
    let fields = procs.expect(i, "error");
    stop_tx.send(()).ok();
    let sent = storm.join().unwrap();
    println!("signals sent {sent}, received during the wait {count}");
    assert!(count > 0, "the child saw no signal");
    assert_eq!(fields[1], "timeout", "{fields:?}");
    assert!(fields[2].parse::<u64>().unwrap() >= 700);
    assert!(sem.waiters().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// Queue maintenance and reporting

#[test]
fn a_waiter_whose_entry_vanished_queues_again() {
    // A Go write drops the queue (and remove() can too): the waiter joins again.
    let (_dir, path, sem) = new_semaphore(1);
    let first = sem.try_acquire("first").unwrap();
    let (tx, rx) = mpsc::channel();
    let waiter = sem.clone();
    std::thread::spawn(move || {
        tx.send(waiter.acquire("w")).unwrap();
    });
    let queued_ticket = || {
        let waiters = common::entries_on_file(&path, "waiters");
        waiters.first().and_then(|w| w.ticket)
    };
    let old = eventually("the waiter to queue", queued_ticket);
    // What the Go package writes: only the fields it knows.
    let holder = &sem.holders().unwrap()[0];
    let go = format!(
        "{{\n  \"capacity\": 1,\n  \"holders\": [{{\"id\": \"first\", \"acquired_at\": \"{}\"}}]\n}}\n",
        holder.acquired_at.to_rfc3339()
    );
    std::fs::write(path.with_extension("go-tmp"), go).unwrap();
    std::fs::rename(path.with_extension("go-tmp"), &path).unwrap();
    let new = eventually("the waiter to queue again", || {
        queued_ticket().filter(|&t| t != old)
    });
    assert_eq!(ids(sem.waiters().unwrap()), ["w"]);
    sem.remove(["w"]).unwrap();
    let newer = eventually("the waiter to queue after remove", || {
        queued_ticket().filter(|&t| t != new)
    });
    drop(first);
    // `first` lost its token in the Go write; it is found by ID and time and released.
    let permit = rx.recv_timeout(DEADLINE).unwrap().unwrap();
    let held = common::entry_on_file(&path, "holders", "w");
    assert_eq!(
        held.ticket,
        Some(newer),
        "served from the entry it queued with last"
    );
    assert_eq!(held.token, Some(permit.token()));
    assert!(permit.token() > newer);
}

#[test]
fn a_waiter_whose_semaphore_is_removed_says_so_and_holds_nothing() {
    // `rm -rf` deletes the files before the directory, so a waiter first finds the state
    // file gone: it ends with Removed (or DirectoryGone if it looks after the directory
    // went too), never with NotFound ("no semaphore at"), and leaves no witness file behind.
    for whole_directory in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("v");
        let path = dir.join("s.json");
        let sem = OpenOptions::new()
            .durable(false)
            .lock_timeout(Duration::from_secs(30))
            .open(&path, 1)
            .unwrap();
        sem.try_acquire("h").unwrap().keep().unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = sem.clone();
        std::thread::spawn(move || {
            tx.send(waiter.acquire("w").map(drop)).unwrap();
        });
        eventually("the waiter to queue", || {
            (ids(sem.waiters().unwrap()) == ["w"]).then_some(())
        });
        if whole_directory {
            std::fs::remove_dir_all(&dir).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        let result = rx.recv_timeout(DEADLINE).expect("the waiter ends");
        match (whole_directory, result) {
            (false, Err(Error::Removed { path: p })) => {
                assert_eq!(p, path);
                let witnesses = std::fs::read_dir(dir.join("s.json.witness")).unwrap();
                assert_eq!(witnesses.count(), 0, "the waiter's witness went with it");
            }
            (true, Err(Error::Removed { .. } | Error::DirectoryGone { .. })) => {
                assert!(!dir.exists(), "nothing created in its place");
            }
            (_, other) => panic!("whole directory {whole_directory}: {other:?}"),
        }
    }
}

#[test]
fn on_wait_reports_holders_capacity_and_position_once() {
    // The CLI's "waiting for a slot" line gets who holds and how many are ahead.
    enum Msg {
        Waiting(filesem::WaitStatus),
        Acquired(filesem::Result<filesem::Permit>),
    }
    let (_dir, _path, sem) = new_semaphore(2);
    let a = sem.try_acquire("a").unwrap();
    let b = sem.try_acquire("b").unwrap();
    let (tx, rx) = mpsc::channel();
    for (n, id) in ["w1", "w2"].into_iter().enumerate() {
        let waiter = sem.clone();
        let tx = tx.clone();
        let report = tx.clone();
        let opts = AcquireOptions::new().on_wait(move |s| {
            report.send(Msg::Waiting(s.clone())).unwrap();
        });
        // The permit travels back, so that the test decides when it is released.
        std::thread::spawn(move || {
            tx.send(Msg::Acquired(waiter.acquire_with(id, &opts)))
                .unwrap()
        });
        eventually("the waiter to queue", || {
            (sem.waiters().unwrap().len() == n + 1).then_some(())
        });
    }
    let mut statuses = Vec::new();
    for _ in 0..2 {
        match rx.recv_timeout(DEADLINE).unwrap() {
            Msg::Waiting(status) => statuses.push(status),
            Msg::Acquired(r) => panic!("acquired before a release: {r:?}"),
        }
    }
    statuses.sort_by_key(|s| s.ahead);
    for (ahead, s) in statuses.iter().enumerate() {
        assert_eq!(s.ahead, ahead);
        assert_eq!(s.capacity, 2);
        assert_eq!(s.holders, ["a", "b"]);
        assert_eq!(s.path, sem.path());
    }
    let mut served = Vec::new();
    for holder in [a, b] {
        holder.release().unwrap();
        match rx.recv_timeout(DEADLINE).unwrap() {
            Msg::Acquired(r) => served.push(r.unwrap()),
            Msg::Waiting(s) => panic!("on_wait called twice: {s:?}"),
        }
    }
    let ids: Vec<&str> = served.iter().map(|p| p.id()).collect();
    assert_eq!(ids, ["w1", "w2"]);
    assert!(rx.try_recv().is_err(), "on_wait is called once per acquire");
}

#[test]
fn a_queued_id_cannot_be_acquired_again() {
    // One ID, one place: queued counts as held for AlreadyHeld.
    let (_dir, _path, sem) = new_semaphore(1);
    let _held = sem.try_acquire("holder").unwrap();
    let token = CancelToken::new();
    let (tx, rx) = mpsc::channel();
    let waiter = sem.clone();
    let opts = AcquireOptions::new().cancel_token(&token);
    std::thread::spawn(move || tx.send(waiter.acquire_with("w", &opts)).unwrap());
    eventually("the waiter to queue", || {
        (!sem.waiters().unwrap().is_empty()).then_some(())
    });
    assert!(matches!(
        sem.try_acquire("w"),
        Err(Error::AlreadyHeld { .. })
    ));
    assert!(matches!(
        sem.acquire_timeout("w", Duration::from_secs(1)),
        Err(Error::AlreadyHeld { .. })
    ));
    token.cancel();
    assert!(rx.recv_timeout(DEADLINE).unwrap().is_err());
}
