//! Crash resilience: slots of provably dead holders come back by themselves; live holders,
//! and holders that cannot be judged, keep theirs.
//!
//! Child processes are this test binary re-executed with `FILESEM_ROLE` set (see
//! `child_main`); they talk over stdout lines with a `@` prefix and are killed on drop.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use filesem::{AcquireOptions, Error, HoldMode, Liveness, OpenOptions, Semaphore};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- child processes

/// A child process speaking the `@`-line protocol; killed and reaped on drop.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(role: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env("FILESEM_ROLE", role)
            .env("FILESEM_ARGS", args.join("\u{1f}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(l) = line.strip_prefix('@') {
                    if tx.send(l.to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        Proc {
            stdin: child.stdin.take(),
            child,
            lines: rx,
        }
    }

    /// The next protocol line, within the deadline.
    fn line(&self) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("child {} sent no line within {DEADLINE:?}", self.pid()))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Closes stdin (the child's signal to finish) and waits for a successful exit.
    fn finish(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "child {} failed: {status}", self.pid());
                return self.lines.try_iter().collect();
            }
            assert!(
                start.elapsed() < DEADLINE,
                "child {} did not exit",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn args() -> Vec<String> {
    std::env::var("FILESEM_ARGS")
        .unwrap_or_default()
        .split('\u{1f}')
        .map(str::to_string)
        .collect()
}

/// Sends one protocol line. It starts on a fresh line: libtest may have printed
/// "test child_main ... " without a newline.
fn say(line: &str) {
    println!("\n@{line}");
    std::io::stdout().flush().unwrap();
}

fn wait_stdin_eof() {
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
}

fn quick() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durable(false);
    o
}

#[test]
fn child_main() {
    // Not a test: the entry point of the child processes the other tests spawn.
    let Ok(role) = std::env::var("FILESEM_ROLE") else {
        return;
    };
    let a = args();
    let path = Path::new(&a[0]);
    let out = |s: String| say(&s);
    match role.as_str() {
        "hold" => {
            let sem = quick().open(path, a[2].parse().unwrap()).unwrap();
            let permit = sem.try_acquire(a[1].as_str()).unwrap();
            out(format!("READY {} {}", permit.token(), permit.slot()));
            wait_stdin_eof();
            permit.release().unwrap();
        }
        "hold-inherit" => {
            let sem = quick().open(path, 1).unwrap();
            let permit = sem.try_acquire(a[1].as_str()).unwrap();
            let fd = permit
                .inherit_witness()
                .unwrap()
                .expect("process-bound hold has a witness");
            let mut grandchild = Command::new("sleep").arg("600").spawn().unwrap();
            drop(fd);
            out(format!("READY {}", grandchild.id()));
            wait_stdin_eof();
            let _ = grandchild.kill();
            let _ = grandchild.wait();
        }
        "detach" => {
            let sem = quick().open(path, 1).unwrap();
            let opts = AcquireOptions::new().detached(true);
            let permit = sem.try_acquire_with(a[1].as_str(), &opts).unwrap();
            out(format!("READY {}", permit.token()));
            // Dropping the permit of a detached hold leaves it held.
        }
        "release" => {
            let sem = Semaphore::open_existing(path).unwrap();
            sem.release(&a[1]).unwrap();
            out("RELEASED".into());
        }
        "stress-worker" => stress_worker(path, &a[1], a[2].parse().unwrap(), Path::new(&a[3])),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

// ---------------------------------------------------------------- helpers

fn sem_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("sem.json")
}

fn shm_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

fn verdict_of(sem: &Semaphore, id: &str) -> Liveness {
    sem.holders()
        .unwrap()
        .into_iter()
        .find(|h| h.id == id)
        .unwrap_or_else(|| panic!("{id} not on file"))
        .liveness
}

/// The owner record this process writes, as JSON (taken from a real acquire).
fn my_owner(dir: &Path) -> Value {
    let path = dir.join("probe.json");
    let sem = quick().open(&path, 1).unwrap();
    let opts = AcquireOptions::new().detached(true);
    // A detached permit stays held when dropped.
    let _detached = sem.try_acquire_with("me", &opts).unwrap();
    let v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    v["holders"][0]["owner"].clone()
}

fn holder_with_owner(id: &str, owner: Value) -> Value {
    json!({"id": id, "acquired_at": "2026-01-01T00:00:00Z", "token": 1, "slot": 0, "owner": owner})
}

fn proc_start_time(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

// ---------------------------------------------------------------- tests

#[test]
fn killed_holder_is_shown_dead_then_its_slot_comes_back() {
    // SIGKILL frees the slot for the next try_acquire, with no manual step.
    let dir = shm_dir();
    let path = sem_path(&dir);
    let mut holder = Proc::spawn("hold", &[path.to_str().unwrap(), "victim", "1"]);
    assert!(holder.line().starts_with("READY"));
    let sem = quick().open(&path, 1).unwrap();
    let alive = verdict_of(&sem, "victim");
    assert!(matches!(alive, Liveness::Alive { .. }), "{alive}");
    assert!(matches!(
        sem.try_acquire("next"),
        Err(Error::NoCapacity { .. })
    ));

    holder.kill9();
    let dead = verdict_of(&sem, "victim");
    assert_eq!(dead.name(), "dead");
    assert!(dead.evidence().contains("witness lock"), "{dead}");
    assert_eq!(sem.available().unwrap(), 1);
    let permit = sem.try_acquire("next").unwrap();
    let ids: Vec<String> = sem.holders().unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(ids, ["next"]);
    assert_eq!(permit.slot(), 0);
    let witnesses = fs::read_dir(dir.path().join("sem.json.witness"))
        .unwrap()
        .count();
    assert_eq!(witnesses, 1, "the dead holder's witness file is removed");
}

#[test]
fn killed_holder_keeps_its_slot_when_auto_reap_is_off() {
    // The seed's behaviour stays available: without reaping, remove is the cleanup.
    let dir = shm_dir();
    let path = sem_path(&dir);
    let mut holder = Proc::spawn("hold", &[path.to_str().unwrap(), "victim", "1"]);
    assert!(holder.line().starts_with("READY"));
    holder.kill9();
    let sem = quick().auto_reap(false).open(&path, 1).unwrap();
    assert!(matches!(
        sem.try_acquire("next"),
        Err(Error::NoCapacity { .. })
    ));
    assert_eq!(sem.available().unwrap(), 0);
    assert_eq!(sem.count().unwrap(), 1);
    assert_eq!(sem.remove(["victim"]).unwrap(), ["victim"]);
    assert!(sem.try_acquire("next").is_ok());
}

#[test]
fn inherited_witness_keeps_the_hold_until_the_child_exits() {
    // Held witness = alive, even when the acquiring process is gone.
    let dir = shm_dir();
    let path = sem_path(&dir);
    let mut holder = Proc::spawn("hold-inherit", &[path.to_str().unwrap(), "parent"]);
    let line = holder.line();
    let grandchild: i32 = line.strip_prefix("READY ").unwrap().parse().unwrap();
    let gc = nix::unistd::Pid::from_raw(grandchild);
    holder.kill9();

    let sem = quick().open(&path, 1).unwrap();
    let v = verdict_of(&sem, "parent");
    assert!(matches!(v, Liveness::Alive { .. }), "{v}");
    assert!(matches!(
        sem.try_acquire("next"),
        Err(Error::NoCapacity { .. })
    ));

    nix::sys::signal::kill(gc, nix::sys::signal::Signal::SIGKILL).unwrap();
    // The grandchild was re-parented; wait until it is gone (or a zombie of init's).
    let start = Instant::now();
    while verdict_of(&sem, "parent").name() != "dead" {
        assert!(start.elapsed() < DEADLINE, "witness never freed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(sem.try_acquire("next").is_ok());
}

#[test]
fn pid_reuse_and_zombies_are_dead_a_matching_pid_is_alive() {
    // A reused pid (other start time) or a zombie proves the holder dead; pid + start time match proves it alive.
    let dir = shm_dir();
    let path = sem_path(&dir);
    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = sleeper.id();
    let mut zombie = Command::new("true").spawn().unwrap();
    let zpid = zombie.id();
    let start = Instant::now();
    while !fs::read_to_string(format!("/proc/{zpid}/stat"))
        .unwrap()
        .contains(") Z ")
    {
        assert!(start.elapsed() < DEADLINE, "child never became a zombie");
        std::thread::sleep(Duration::from_millis(2));
    }
    let me = my_owner(dir.path());
    let with = |pid: u32, start: u64| {
        let mut o = me.clone();
        o["pid"] = json!(pid);
        o["start_time"] = json!(start);
        o
    };
    let st = proc_start_time(pid);
    let holders = vec![
        {
            let mut h = holder_with_owner("reused", with(pid, st + 7));
            h["token"] = json!(1);
            h
        },
        {
            let mut h = holder_with_owner("running", with(pid, st));
            h["token"] = json!(2);
            h
        },
        {
            let mut h = holder_with_owner("zombie", with(zpid, proc_start_time(zpid)));
            h["token"] = json!(3);
            h
        },
    ];
    fs::write(
        &path,
        serde_json::to_vec(&json!({"capacity": 3, "holders": holders})).unwrap(),
    )
    .unwrap();
    let sem = quick().open(&path, 3).unwrap();
    let reused = verdict_of(&sem, "reused");
    assert!(
        reused.is_stale() && reused.evidence().contains("reused"),
        "{reused}"
    );
    let running = verdict_of(&sem, "running");
    assert!(matches!(running, Liveness::Alive { .. }), "{running}");
    let z = verdict_of(&sem, "zombie");
    assert!(z.is_stale() && z.evidence().contains("zombie"), "{z}");
    let reaped: Vec<String> = sem.reap().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(reaped, ["reused", "zombie"]);
    assert_eq!(sem.count().unwrap(), 1);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    zombie.wait().unwrap();
}

#[test]
fn entries_that_cannot_be_judged_keep_their_slot() {
    // Another host, another pid namespace, no owner, a lost witness: never reaped on a guess.
    let dir = shm_dir();
    let path = sem_path(&dir);
    let me = my_owner(dir.path());
    let dead_pid = {
        let mut c = Command::new("true").spawn().unwrap();
        let p = c.id();
        c.wait().unwrap();
        p
    };
    let mut other_host = me.clone();
    other_host["machine_id"] = json!("0123456789abcdef0123456789abcdef");
    other_host["boot_id"] = json!("11111111-2222-3333-4444-555555555555");
    other_host["host"] = json!("elsewhere");
    other_host["pid"] = json!(dead_pid);
    let mut other_ns = me.clone();
    other_ns["pid_ns"] = json!(1);
    other_ns["pid"] = json!(dead_pid);
    let mut rebooted = me.clone();
    rebooted["boot_id"] = json!("11111111-2222-3333-4444-555555555555");
    let mut dead_here = me.clone();
    dead_here["pid"] = json!(dead_pid);
    let mut missing_witness = holder_with_owner("lost-witness", me.clone());
    missing_witness["witness"] = json!({"dev": 1, "ino": 1});
    missing_witness["token"] = json!(9);
    let doc = json!({"capacity": 10, "holders": [
        holder_with_owner("other-host", other_host),
        holder_with_owner("other-ns", other_ns),
        holder_with_owner("rebooted", rebooted),
        holder_with_owner("dead-here", dead_here),
        {"id": "go-written", "acquired_at": "2026-01-01T00:00:00Z"},
        missing_witness,
    ]});
    fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    let sem = quick().open(&path, 10).unwrap();
    let verdicts: BTreeMap<String, String> = sem
        .holders()
        .unwrap()
        .into_iter()
        .map(|h| (h.id, h.liveness.name().to_string()))
        .collect();
    let has_machine_id = me.get("machine_id").is_some_and(|m| !m.is_null());
    let expected = BTreeMap::from([
        ("other-host".to_string(), "unknown"),
        ("other-ns".to_string(), "unknown"),
        (
            "rebooted".to_string(),
            if has_machine_id { "dead" } else { "unknown" },
        ),
        ("dead-here".to_string(), "dead"),
        ("go-written".to_string(), "unknown"),
        ("lost-witness".to_string(), "alive"), // falls back to the pid: this process
    ]);
    let expected: BTreeMap<String, String> = expected
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    assert_eq!(verdicts, expected);
    let go = sem
        .holders()
        .unwrap()
        .into_iter()
        .find(|h| h.id == "go-written")
        .unwrap();
    assert_eq!(go.mode, HoldMode::Unowned);
}

#[test]
fn detached_hold_survives_its_process_and_is_released_by_id_elsewhere() {
    // The seed's session use: a hold that outlives the process that took it.
    let dir = shm_dir();
    let path = sem_path(&dir);
    let p = Proc::spawn("detach", &[path.to_str().unwrap(), "session-1"]);
    assert!(p.line().starts_with("READY"));
    p.finish();
    let sem = quick().open(&path, 1).unwrap();
    let h = &sem.holders().unwrap()[0];
    assert_eq!((h.id.as_str(), h.mode), ("session-1", HoldMode::Detached));
    assert_eq!(h.liveness.name(), "unknown");
    assert!(sem.reap().unwrap().is_empty());
    assert!(matches!(
        sem.try_acquire("x"),
        Err(Error::NoCapacity { .. })
    ));
    let r = Proc::spawn("release", &[path.to_str().unwrap(), "session-1"]);
    assert_eq!(r.line(), "RELEASED");
    r.finish();
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn lease_expires_and_is_reaped_renew_extends_it() {
    // A lease ends a hold nobody can judge; renew keeps it; a reaped permit reports Lost.
    let dir = shm_dir();
    let path = sem_path(&dir);
    let sem = quick().open(&path, 1).unwrap();
    let opts = AcquireOptions::new()
        .detached(true)
        .lease(Duration::from_millis(300));
    let permit = sem.try_acquire_with("leased", &opts).unwrap();
    let first_end = sem.holders().unwrap()[0].expires_at.unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let renewed = permit.renew().unwrap().unwrap();
    assert!(renewed > first_end);
    assert!(permit.is_held().unwrap());
    // Past expiry plus grace: stale, and an acquire takes the slot.
    let until = Instant::now() + filesem::LEASE_GRACE + Duration::from_millis(400);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(verdict_of(&sem, "leased").name(), "expired");
    assert!(!permit.is_held().unwrap());
    let next = sem.try_acquire("next").unwrap();
    assert!(next.token() > permit.token());
    match permit.renew() {
        Err(Error::Lost { id, token, .. }) => assert_eq!((id.as_str(), token), ("leased", 1)),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(matches!(permit.release(), Err(Error::Lost { .. })));
    assert_eq!(
        sem.holders().unwrap()[0].id,
        "next",
        "the stale permit left the newcomer alone"
    );
}

#[test]
fn keep_alive_holds_a_job_longer_than_its_lease() {
    // Background renewal keeps a leased hold while eager reapers run.
    let dir = shm_dir();
    let path = sem_path(&dir);
    let sem = quick().open(&path, 1).unwrap();
    let opts = AcquireOptions::new()
        .detached(true)
        .lease(Duration::from_millis(600));
    let permit = sem.try_acquire_with("long", &opts).unwrap();
    let keep_alive = permit.keep_alive();
    let until = Instant::now() + Duration::from_millis(600) * 3 + filesem::LEASE_GRACE;
    let mut reaps = 0;
    while Instant::now() < until {
        assert!(sem.reap().unwrap().is_empty(), "a renewed hold was reaped");
        reaps += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reaps > 10);
    assert!(!keep_alive.is_lost() && keep_alive.is_running());
    assert!(permit.is_held().unwrap());
    sem.remove(["long"]).unwrap();
    let start = Instant::now();
    while !keep_alive.is_lost() {
        assert!(
            start.elapsed() < DEADLINE,
            "keep-alive never noticed the loss"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(keep_alive);
    assert!(matches!(permit.release(), Err(Error::Lost { .. })));
}

#[test]
fn keep_turns_a_process_bound_hold_into_a_detached_one() {
    // keep() drops the witness and marks the entry detached, so no reaper takes it.
    let dir = shm_dir();
    let path = sem_path(&dir);
    let sem = quick().open(&path, 1).unwrap();
    let permit = sem.try_acquire("s").unwrap();
    assert_eq!(sem.holders().unwrap()[0].mode, HoldMode::ProcessBound);
    permit.keep().unwrap();
    let h = &sem.holders().unwrap()[0];
    assert_eq!(h.mode, HoldMode::Detached);
    assert_eq!(h.liveness.name(), "unknown");
    assert_eq!(
        fs::read_dir(dir.path().join("sem.json.witness"))
            .unwrap()
            .count(),
        0
    );
    assert!(sem.reap().unwrap().is_empty());
    sem.release("s").unwrap();
}

// ---------------------------------------------------------------- stress with a killer

/// A worker: acquire, record itself in a per-slot marker (the independent witness), hold a
/// moment, remove the marker, release; until stdin closes. Prints `VIOLATION` lines.
fn stress_worker(path: &Path, id: &str, capacity: u32, markers: &Path) {
    let sem = quick().open(path, capacity).unwrap();
    let me = std::process::id();
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        wait_stdin_eof();
        let _ = tx.send(());
    });
    let (mut grants, mut refusals) = (0u64, 0u64);
    say("READY");
    while rx.try_recv().is_err() {
        let permit = match sem.try_acquire(id) {
            Ok(p) => p,
            Err(Error::NoCapacity { .. }) => {
                refusals += 1;
                std::thread::sleep(Duration::from_micros(200 + fastrand::u64(..800)));
                continue;
            }
            Err(e) => panic!("worker {id}: {e}"),
        };
        grants += 1;
        if permit.slot() >= capacity {
            say(&format!("VIOLATION slot {} >= capacity", permit.slot()));
        }
        let marker = markers.join(format!("slot-{}", permit.slot()));
        claim_marker(&marker, me);
        std::thread::sleep(Duration::from_micros(500 + fastrand::u64(..1500)));
        let _ = fs::remove_file(&marker);
        permit.release().unwrap();
    }
    say(&format!("DONE {grants} {refusals}"));
}

/// Creates the slot marker. A marker already there is either left by a killed process (its
/// pid dies while the marker stays: replaced) or belongs to a live holder of the same slot,
/// which removes it when it releases: a violation. A process in the middle of exiting has
/// already lost its witness lock but may still show as running, hence the wait.
fn claim_marker(marker: &Path, me: u32) {
    loop {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
        {
            Ok(mut f) => {
                write!(f, "{me}").unwrap();
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let other = fs::read_to_string(marker).unwrap_or_default();
                let pid: u32 = other.parse().unwrap_or(0);
                let start = Instant::now();
                while pid != 0 && process_alive(pid) {
                    if fs::read_to_string(marker).unwrap_or_default() != other {
                        say(&format!(
                            "VIOLATION slot marker {} of live pid {pid} changed while we held the slot",
                            marker.display()
                        ));
                        return;
                    }
                    if start.elapsed() > Duration::from_secs(2) {
                        say(&format!(
                            "VIOLATION slot marker {} held by live pid {pid}",
                            marker.display()
                        ));
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                let _ = fs::remove_file(marker);
            }
            Err(e) => panic!("marker: {e}"),
        }
    }
}

fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.contains(") Z "),
        Err(_) => false,
    }
}

#[test]
fn stress_holders_killed_at_random_never_exceed_capacity_or_leak_slots() {
    // 8 looping processes on capacity 2, random SIGKILLs: witness shows no violation, no leaked slot.
    let seed: u64 = std::env::var("FILESEM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    fastrand::seed(seed);
    let secs: u64 = std::env::var("FILESEM_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let dir = shm_dir();
    let path = sem_path(&dir);
    let markers = dir.path().join("markers");
    fs::create_dir(&markers).unwrap();
    let spawn = |i: usize| {
        let id = format!("worker-{i}");
        let p = Proc::spawn(
            "stress-worker",
            &[path.to_str().unwrap(), &id, "2", markers.to_str().unwrap()],
        );
        assert_eq!(p.line(), "READY");
        p
    };
    let mut workers: Vec<Proc> = (0..8).map(spawn).collect();
    let mut violations = Vec::new();
    let mut kills = 0;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20 + fastrand::u64(..80)));
        let i = fastrand::usize(..workers.len());
        workers[i].kill9();
        violations.extend(
            workers[i]
                .lines
                .try_iter()
                .filter(|l| l.starts_with("VIOLATION")),
        );
        kills += 1;
        workers[i] = spawn(i);
    }
    let (mut grants, mut refusals) = (0u64, 0u64);
    for w in workers {
        for line in w.finish() {
            if let Some(counts) = line.strip_prefix("DONE ") {
                let mut it = counts.split(' ').map(|n| n.parse::<u64>().unwrap());
                grants += it.next().unwrap();
                refusals += it.next().unwrap();
            } else if line.starts_with("VIOLATION") {
                violations.push(line);
            }
        }
    }
    let sem = quick().open(&path, 2).unwrap();
    let reaped = sem.reap().unwrap();
    println!(
        "stress: seed={seed} secs={secs} processes=8 capacity=2 kills={kills} \
         grants(survivors)={grants} refusals={refusals} reaped_at_end={} violations={}",
        reaped.len(),
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:?}");
    assert!(kills > 10 && grants > 0);
    assert_eq!(
        sem.count().unwrap(),
        0,
        "no leaked slot after reaping the killed"
    );
    assert_eq!(sem.available().unwrap(), 2);
    let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(doc["capacity"], 2);
}
