//! A timeout bounds the whole acquire, its waits for the state lock `PATH.lock` included: with
//! the lock held by another process (running or stopped), `acquire_timeout`, `acquire_with`
//! and `try_acquire_with` given a timeout end at their deadline with `Error::LockBusy` naming
//! the pid that holds the lock, not after the lock timeout; a queued acquire whose deadline
//! comes while a stopped process holds the lock returns at once and leaks nothing; a timed
//! call waits for a busy lock past the lock timeout when its deadline allows. `filesem run -n`
//! and `-w` behave the same from the command line (module `cli`, with the `cli` feature).
//!
//! Every lock holder and waiter is a real process; every wait has a deadline. No timing is
//! asserted except generous upper bounds that tell "kept its deadline" from "waited for the
//! 10 s lock timeout", and lower bounds that follow from a lock held for a known time.

mod common;

#[cfg(feature = "cli")]
#[path = "common/cli.rs"]
mod cli_common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{ChildSpec, Group, arg, say};
use filesem::{AcquireOptions, Error, OpenOptions, Permit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// The lock timeout of these tests: long, so that a call that waited for it is told apart from
/// one that kept its deadline.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// How much later than its deadline a call may return in these tests: far more than the few
/// milliseconds it takes even on a loaded machine, far less than the lock timeout (a 1 s call
/// returns in under 5 s).
const OVERRUN: Duration = Duration::from_secs(4);

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durable(false).lock_timeout(LOCK_TIMEOUT);
    o
}

fn lock_path(path: &Path) -> PathBuf {
    path.with_extension("json.lock")
}

/// Starts a child that takes the flock on `PATH.lock` (as a process inside its critical
/// section) and holds it until killed or told; returns its index once it holds the lock.
fn hold_lock(group: &mut Group, path: &Path) -> usize {
    let idx = group.spawn(
        ChildSpec::new("locker", "child_process", "lock").arg("LOCK", lock_path(path).display()),
    );
    group.expect(idx, "locked", common::deadline(30));
    idx
}

/// Stops child `idx` with SIGSTOP and waits until the kernel shows it stopped.
fn stop(group: &Group, idx: usize) {
    common::stop_process(group.pid(idx));
}

/// Whether the kernel can name the holder of a lock in `dir`: tmpfs (whose `st_dev` is the
/// device `/proc/locks` prints) and a `/proc` of this process's pid namespace.
fn kernel_tells(dir: &Path) -> bool {
    let own_proc = fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse::<u32>().ok())
        == Some(std::process::id());
    dir.starts_with("/dev/shm") && own_proc
}

/// `holder` is `pid` where the kernel tells; elsewhere it may be unknown, never another pid.
fn assert_holder(holder: Option<u32>, pid: u32, dir: &Path) {
    if kernel_tells(dir) {
        assert_eq!(holder, Some(pid), "the lock's holder");
    } else {
        eprintln!("NOTE: the kernel cannot name lock holders here; holder = {holder:?}");
        assert!(holder.is_none_or(|h| h == pid), "{holder:?} is not {pid}");
    }
}

/// Runs `f` on a thread and returns its result, failing the test if it takes longer than
/// `secs` seconds (so that a regression hangs nothing).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not return within {secs} s"))
}

/// Checks that `result` is a `LockBusy` for the semaphore at `path`, held by `pid`, that came
/// after the deadline `timeout` (the call started no earlier than `start`) and well before
/// the lock timeout.
fn assert_busy(
    result: filesem::Result<Permit>,
    path: &Path,
    pid: u32,
    start: Instant,
    timeout: Duration,
) {
    let elapsed = start.elapsed();
    match result {
        Err(
            ref e @ Error::LockBusy {
                path: ref p,
                ref lock_path,
                waited,
                holder,
            },
        ) => {
            assert_eq!(p, path);
            assert_eq!(lock_path, &self::lock_path(path));
            assert!(waited <= elapsed, "{waited:?} > {elapsed:?}");
            assert_holder(holder, pid, path.parent().unwrap());
            assert!(e.is_contention());
            let message = e.to_string();
            assert!(message.contains("was busy for"), "{message}");
            if let Some(pid) = holder {
                assert!(
                    message.ends_with(&format!(" (held by pid {pid})")),
                    "{message}"
                );
            }
        }
        other => panic!("expected LockBusy, got {other:?}"),
    }
    assert!(
        elapsed >= timeout,
        "returned after {elapsed:?}, before its deadline"
    );
    assert!(
        elapsed < timeout + OVERRUN,
        "returned after {elapsed:?}: it waited for the lock timeout, not its deadline"
    );
}

#[test]
fn timed_acquires_with_the_lock_held_elsewhere_end_at_their_deadline_with_lock_busy() {
    // acquire_timeout, acquire_with and try_acquire_with given a timeout end by their
    // deadline with a contention error naming the lock's holder, change nothing on disk; only
    // a call without a timeout waits for the lock timeout (LockTimeout, naming it too).
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    let sem = options().open(&path, 1).unwrap();
    let mut group = Group::new();
    let locker = hold_lock(&mut group, &path);
    stop(&group, locker);
    let pid = group.pid(locker);
    let before = common::snapshot(dir.path());
    let one = Duration::from_secs(1);

    let s = sem.clone();
    let start = Instant::now();
    let r = within(30, "acquire_timeout", move || s.acquire_timeout("a", one));
    assert_busy(r, &path, pid, start, one);

    let s = sem.clone();
    let start = Instant::now();
    let opts = AcquireOptions::new().timeout(one).priority(3);
    let r = within(30, "acquire_with", move || s.acquire_with("b", &opts));
    assert_busy(r, &path, pid, start, one);

    // As `filesem run -n`: never waits for a slot, and at most its timeout for the lock.
    let s = sem.clone();
    let start = Instant::now();
    let opts = AcquireOptions::new().timeout(one);
    let r = within(30, "try_acquire_with", move || {
        s.try_acquire_with("c", &opts)
    });
    assert_busy(r, &path, pid, start, one);

    // A zero timeout is one attempt: the busy lock is tried for a few milliseconds.
    let s = sem.clone();
    let start = Instant::now();
    let r = within(30, "acquire_timeout(0)", move || {
        s.acquire_timeout("d", Duration::ZERO)
    });
    assert_busy(r, &path, pid, start, Duration::ZERO);

    // Without a timeout, the lock timeout (here a short one) still applies, and names the
    // holder too.
    let impatient = options()
        .lock_timeout(Duration::from_millis(300))
        .open_existing(&path)
        .unwrap();
    match within(30, "try_acquire", move || impatient.try_acquire("e")) {
        Err(Error::LockTimeout { holder, .. }) => assert_holder(holder, pid, dir.path()),
        other => panic!("expected LockTimeout, got {other:?}"),
    }

    assert_eq!(common::snapshot(dir.path()), before, "nothing was written");
    group.kill(locker, common::deadline(10));
    assert_eq!(
        sem.try_acquire("f").unwrap().slot(),
        0,
        "the lock works again"
    );
}

#[test]
fn a_timed_acquire_waits_for_a_busy_lock_past_the_lock_timeout_until_it_frees() {
    // The caller's deadline, not the lock timeout, bounds the lock wait: with a 2 s lock
    // timeout, a 6 s acquire gets its slot after the lock was busy for 3 s.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    let sem = options()
        .lock_timeout(Duration::from_secs(2))
        .open(&path, 1)
        .unwrap();
    let mut group = Group::new();
    let locker = hold_lock(&mut group, &path);
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn({
        let sem = sem.clone();
        move || {
            let r = sem.acquire_timeout("w", Duration::from_secs(6));
            let _ = tx.send(start.elapsed());
            r.map(|p| (p.slot(), p.release()))
        }
    });
    // The lock is busy for 3 s: longer than the lock timeout, shorter than the deadline.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        rx.try_recv().is_err(),
        "the acquire gave up while the lock was busy, before its deadline"
    );
    group.kill(locker, common::deadline(10));
    let elapsed = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the acquire returned");
    let (slot, released) = waiter.join().unwrap().expect("a slot once the lock freed");
    assert_eq!(slot, 0);
    released.unwrap();
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(sem.available().unwrap(), 1);
}

/// What a `timed_acquire` child reported: its result and how long the call took.
#[derive(Debug, PartialEq)]
enum Reported {
    Granted { slot: u32, token: u64 },
    Timeout,
    LockBusy { holder: Option<u32> },
}

fn parse_result(line: &str) -> (Reported, Duration) {
    let words: Vec<&str> = line.split(' ').collect();
    let ms = |w: &str| Duration::from_millis(w.parse().unwrap());
    match words.as_slice() {
        ["result", "granted", slot, token, elapsed] => (
            Reported::Granted {
                slot: slot.parse().unwrap(),
                token: token.parse().unwrap(),
            },
            ms(elapsed),
        ),
        ["result", "timeout", elapsed] => (Reported::Timeout, ms(elapsed)),
        ["result", "lock-busy", holder, elapsed] => (
            Reported::LockBusy {
                holder: holder.parse().ok(),
            },
            ms(elapsed),
        ),
        _ => panic!("unexpected report {line:?}"),
    }
}

/// Starts a child that waits for a slot as `ID` with a timeout of `timeout`; it says `queued`
/// once on file, then its result.
fn timed_acquire(group: &mut Group, path: &Path, id: &str, timeout: Duration) -> usize {
    group.spawn(
        ChildSpec::new(id, "child_process", "timed_acquire")
            .arg("PATH", path.display())
            .arg("ID", id)
            .arg("TIMEOUT_MS", timeout.as_millis()),
    )
}

fn state(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_queued_acquire_ends_at_its_deadline_while_a_stopped_process_holds_the_lock_and_leaks_nothing()
{
    // A waiter whose deadline comes while a stopped process holds the lock returns at once
    // (not after the lock timeout), and its entry is judged dead by its free witness while
    // the waiter's process still runs: the slot handed to it later is reaped and free again.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    let sem = options().open(&path, 1).unwrap();
    let holder = sem.try_acquire("holder").unwrap();
    let mut group = Group::new();
    let timeout = Duration::from_secs(3);
    let waiter = timed_acquire(&mut group, &path, "waiter", timeout);
    group.expect(waiter, "queued", common::deadline(30));
    // Its witness file is named by the ticket it took when it queued.
    let ticket = common::entry_on_file(&path, "waiters", "waiter")
        .ticket
        .unwrap();
    let locker = hold_lock(&mut group, &path);
    stop(&group, locker);

    let line = group.expect(waiter, "result", common::deadline(60));
    let (reported, elapsed) = parse_result(&line);
    eprintln!("the waiter returned {reported:?} after {elapsed:?} (timeout {timeout:?})");
    match reported {
        Reported::Timeout => {}
        Reported::LockBusy { holder } => assert_holder(holder, group.pid(locker), dir.path()),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        elapsed < timeout + OVERRUN,
        "returned {elapsed:?} after the call, more than its {timeout:?} and a few ms: it \
         waited for the 10 s lock timeout"
    );

    // Still on file (the lock was busy), but dead by its witness while its process lives.
    let waiters = sem.waiters().unwrap();
    assert_eq!(waiters.len(), 1, "{waiters:?}");
    assert_eq!(waiters[0].token, None, "a waiter has no fencing token yet");
    assert_eq!(
        common::entry_on_file(&path, "waiters", "waiter").ticket,
        Some(ticket)
    );
    assert_eq!(
        waiters[0].liveness.name(),
        "dead",
        "{}",
        waiters[0].liveness
    );
    assert!(
        waiters[0]
            .liveness
            .evidence()
            .contains(&format!("witness lock {ticket} was released")),
        "{}",
        waiters[0].liveness
    );

    kill(Pid::from_raw(group.pid(locker) as i32), Signal::SIGCONT).unwrap();
    group.kill(locker, common::deadline(10));
    // The release hands the slot to the head of the queue, the dead waiter: a slot that must
    // not be lost with it.
    holder.release().unwrap();
    let holders = sem.holders().unwrap();
    let handed = holders.iter().any(|h| h.id == "waiter");
    eprintln!("slot handed to the abandoned entry before the reap: {handed}");
    let reaped = sem.reap().unwrap();
    assert_eq!(reaped.len(), 1, "{reaped:?}");
    assert_eq!(reaped[0].id, "waiter");
    assert_eq!(
        reaped[0].token.is_some(),
        handed,
        "a token only once granted"
    );
    assert_eq!(reaped[0].waiter, !handed);
    assert!(sem.holders().unwrap().is_empty());
    assert!(sem.waiters().unwrap().is_empty());
    assert_eq!(sem.available().unwrap(), 1, "the slot is free again");
    let witness = dir.path().join("s.json.witness").join(ticket.to_string());
    assert!(!witness.exists(), "the reap removed the witness file");
    // The waiter's process lived through all of this: the witness, not its pid, proved it gone.
    let finished = group.finish(common::deadline(30));
    assert!(finished[0].status.success(), "{:?}", finished[0]);
    assert_eq!(finished[0].lines_of("released"), Vec::<&str>::new());
}

#[test]
fn a_slot_handed_over_while_the_waiter_waits_for_a_busy_lock_is_its_permit_at_the_deadline() {
    // A grant written just before the deadline, while the waiter's own step waits for a lock
    // that stays busy, is returned as the permit (seen without the lock), not thrown away.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    let sem = options().open(&path, 1).unwrap();
    let holder = sem.try_acquire("holder").unwrap();
    let mut group = Group::new();
    let timeout = Duration::from_secs(4);
    let waiter = timed_acquire(&mut group, &path, "waiter", timeout);
    group.expect(waiter, "queued", common::deadline(30));
    let queued = Instant::now();
    // This process holds the lock from now on, as another process would.
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(lock_path(&path))
        .unwrap();
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    // The waiter refreshes its entry every 2 s: by now it waits for the lock in that step.
    std::thread::sleep(Duration::from_millis(2600).saturating_sub(queued.elapsed()));
    // The hand-off a releasing process writes under the lock: the holder's entry goes, the
    // head of the queue moves into `holders` with a slot.
    let mut doc = state(&path);
    let entry = doc["waiters"].as_array_mut().unwrap().remove(0);
    let mut entry = entry.as_object().unwrap().clone();
    // The releaser takes the grant's fencing token from the counter (the waiter's entry
    // carries only its ticket until then).
    let token = doc["next_token"].as_u64().unwrap();
    doc["next_token"] = (token + 1).into();
    entry.insert("token".into(), token.into());
    entry.insert("slot".into(), 0.into());
    entry.remove("expires_at");
    doc["holders"] = Value::Array(vec![Value::Object(entry)]);
    let temp = dir.path().join("s.json.handoff");
    fs::write(&temp, serde_json::to_vec(&doc).unwrap()).unwrap();
    fs::rename(&temp, &path).unwrap();

    let line = group.expect(waiter, "result", common::deadline(60));
    let (reported, elapsed) = parse_result(&line);
    eprintln!("the waiter returned {reported:?} after {elapsed:?} (timeout {timeout:?})");
    assert_eq!(reported, Reported::Granted { slot: 0, token });
    drop(lock);
    // The permit is the waiter's to release; the old holder's entry is gone.
    let finished = group.finish(common::deadline(30));
    assert_eq!(finished[0].lines_of("released"), vec!["ok"]);
    assert!(matches!(holder.release(), Err(Error::Lost { .. })));
    assert_eq!(sem.available().unwrap(), 1);
}

#[test]
#[ignore = "not a test of its own: the body of the processes the tests above start"]
fn child_process() {
    match common::role().as_deref() {
        Some("lock") => {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(arg("LOCK"))
                .unwrap();
            let _held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .unwrap();
            say("locked");
            common::wait_for_parent();
        }
        Some("timed_acquire") => {
            let sem = options().open_existing(arg("PATH")).unwrap();
            let timeout = Duration::from_millis(arg("TIMEOUT_MS").parse().unwrap());
            let opts = AcquireOptions::new()
                .timeout(timeout)
                .on_wait(|_| say("queued"));
            let start = Instant::now();
            let r = sem.acquire_with(arg("ID").as_str(), &opts);
            let ms = start.elapsed().as_millis();
            let permit = match r {
                Ok(permit) => {
                    say(format!(
                        "result granted {} {} {ms}",
                        permit.slot(),
                        permit.token()
                    ));
                    Some(permit)
                }
                Err(Error::Timeout { .. }) => {
                    say(format!("result timeout {ms}"));
                    None
                }
                Err(Error::LockBusy { holder, .. }) => {
                    let holder = holder.map_or("none".to_string(), |p| p.to_string());
                    say(format!("result lock-busy {holder} {ms}"));
                    None
                }
                Err(other) => panic!("unexpected {other:?}"),
            };
            // Alive until the parent is done with its checks.
            common::wait_for_parent();
            if let Some(permit) = permit {
                permit.release().unwrap();
                say("released ok");
            }
        }
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}

/// The same deadlines from the command line: `filesem run -n` and `-w`.
#[cfg(feature = "cli")]
mod cli {
    use super::*;
    use filesem::Semaphore;
    use std::process::{Child, Output, Stdio};

    use crate::cli_common::{DEADLINE, filesem};

    /// `filesem ARGS...` started in the background, with its output collected.
    fn start(args: &[&str], path: &Path) -> Child {
        filesem()
            .args(args)
            .arg(path)
            .args(["--", "true"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start filesem")
    }

    /// Waits for `child` to end (killing it at the deadline); its output and how long it ran
    /// since `started`.
    fn finish(child: Child, started: Instant) -> (Output, Duration) {
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(output) => (output.expect("wait for filesem"), started.elapsed()),
            Err(_) => {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                panic!("filesem did not end within {DEADLINE:?}");
            }
        }
    }

    /// Runs `filesem ARGS... PATH -- true` to its end.
    fn run(args: &[&str], path: &Path) -> (Output, Duration) {
        let started = Instant::now();
        finish(start(args, path), started)
    }

    /// Checks the report of a busy state lock: the first line names the lock file, a wait of
    /// about a second and, where the kernel tells, the pid; the hint says how to look at it.
    fn assert_busy_report(stderr: &str, path: &Path, pid: u32) {
        let mut lines = stderr.lines();
        let first = lines.next().unwrap_or_default();
        let prefix = format!(
            "filesem: no slot: the state lock `{}` was busy for ",
            lock_path(path).display()
        );
        let waited = first
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("unexpected report: {stderr}"));
        if kernel_tells(path.parent().unwrap()) {
            let waited = waited
                .strip_suffix(&format!(" (held by pid {pid})"))
                .unwrap_or_else(|| panic!("the holder is not named: {stderr}"));
            assert!(waited == "1 s" || waited.starts_with("1."), "{stderr}");
            let hint = lines.next().unwrap_or_default();
            assert!(
                hint.starts_with("filesem: hint: ")
                    && hint.contains(&format!("`ps -o pid,stat,etime,args -p {pid}`")),
                "{stderr}"
            );
        } else {
            eprintln!("NOTE: the kernel cannot name lock holders here: {first}");
        }
    }

    #[test]
    fn run_n_and_w_1_end_in_about_a_second_naming_the_stopped_process_that_holds_the_lock() {
        // A process stopped in its critical section holds SEMFILE.lock: `run -n` and
        // `run -w 1` exit with the conflict code in about a second (not after the 10 s lock
        // timeout, with 125), say that the state lock was busy and who holds it; `-q` prints
        // nothing, `-E` chooses the code; nothing is run or written.
        let dir = common::tmpfs_dir();
        let path = dir.path().join("s.json");
        Semaphore::open(&path, 1).unwrap();
        let mut group = Group::new();
        let locker = hold_lock(&mut group, &path);
        stop(&group, locker);
        let pid = group.pid(locker);
        let before = common::snapshot(dir.path());
        let one = Duration::from_secs(1);

        for args in [&["run", "-n"][..], &["run", "-w", "1"][..]] {
            let (out, took) = run(args, &path);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(took >= one, "{args:?} gave up after {took:?}");
            assert!(took < one + OVERRUN, "{args:?} took {took:?}: {stderr}");
            assert_busy_report(&stderr, &path, pid);
            assert!(out.stdout.is_empty());
        }
        // The cron recipe: silent, and -E picks the code.
        for (args, code) in [
            (&["run", "-n", "-q"][..], 1),
            (&["run", "-w", "1", "-q", "-E", "75"][..], 75),
        ] {
            let (out, took) = run(args, &path);
            assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
            assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
            assert!(took < one + OVERRUN, "{args:?} took {took:?}");
        }
        assert_eq!(common::snapshot(dir.path()), before, "nothing was written");
        kill(Pid::from_raw(pid as i32), Signal::SIGCONT).unwrap();
        group.kill(locker, common::deadline(10));
        let (out, _) = run(&["run", "-n"], &path);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }

    #[test]
    fn run_w_waits_past_the_lock_timeout_for_a_busy_state_lock_and_runs_the_command() {
        // `-w 30` bounds the whole acquire: a state lock busy for 11 s (longer than the 10 s
        // lock timeout) delays the command, it does not fail it with 125.
        let dir = common::tmpfs_dir();
        let path = dir.path().join("s.json");
        Semaphore::open(&path, 1).unwrap();
        let mut group = Group::new();
        let locker = hold_lock(&mut group, &path);
        let started = Instant::now();
        let mut waiting = start(&["run", "-w", "30"], &path);
        std::thread::sleep(Duration::from_secs(11));
        let gave_up = waiting.try_wait().expect("try_wait");
        assert!(
            gave_up.is_none(),
            "gave up while the lock was busy: {gave_up:?}"
        );
        group.kill(locker, common::deadline(10));
        let (out, took) = finish(waiting, started);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(took >= Duration::from_secs(11), "{took:?}");
        assert_eq!(
            Semaphore::open_existing(&path)
                .unwrap()
                .available()
                .unwrap(),
            1
        );
    }
}
