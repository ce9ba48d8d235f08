//! Crash resilience: slots of provably dead holders come back by themselves; live holders,
//! and holders that cannot be judged, keep theirs.
//!
//! Child processes are this test binary re-executed in a role (the ignored test
//! `child_process`, started through `common::Group`); they say `READY` over stdout once they
//! hold what the test needs, and are killed on drop.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{ChildSpec, Group, arg, say, wait_for_parent};
use filesem::{AcquireOptions, Error, HoldMode, Liveness, OpenOptions, Semaphore};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

// ---------------------------------------------------------------- child processes

/// Opens the semaphore without fsync: these tests are about liveness, not durability.
fn quick() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durable(false);
    o
}

/// Takes a slot as `ID` on the semaphore of `CAPACITY` at `PATH`, says `READY <token> <slot>`,
/// waits for the parent and releases.
fn hold() {
    let sem = quick()
        .open(arg("PATH"), arg("CAPACITY").parse().unwrap())
        .unwrap();
    let permit = sem.try_acquire(arg("ID").as_str()).unwrap();
    say(format!("READY {} {}", permit.token(), permit.slot()));
    wait_for_parent();
    permit.release().unwrap();
}

/// Takes a slot as `ID` at `PATH`, hands its witness to a `sleep 600` grandchild and says
/// `READY <grandchild pid>`; waits for the parent, then kills the grandchild.
fn hold_inherit() {
    let sem = quick().open(arg("PATH"), 1).unwrap();
    let permit = sem.try_acquire(arg("ID").as_str()).unwrap();
    let fd = permit
        .inherit_witness()
        .unwrap()
        .expect("process-bound hold has a witness");
    let mut grandchild = Command::new("sleep").arg("600").spawn().unwrap();
    drop(fd);
    say(format!("READY {}", grandchild.id()));
    wait_for_parent();
    let _ = grandchild.kill();
    let _ = grandchild.wait();
}

/// Waits for a slot as `ID` at `PATH` (capacity 1), says `QUEUED` when it has to wait and
/// `READY <token>` once granted, waits for the parent and releases.
fn wait_hold() {
    let sem = quick().open(arg("PATH"), 1).unwrap();
    let opts = AcquireOptions::new().on_wait(|_| say("QUEUED"));
    let permit = sem.acquire_with(arg("ID").as_str(), &opts).unwrap();
    say(format!("READY {}", permit.token()));
    wait_for_parent();
    permit.release().unwrap();
}

/// Takes a detached slot as `ID` at `PATH`, says `READY <token>` and exits holding it.
fn detach() {
    let sem = quick().open(arg("PATH"), 1).unwrap();
    let opts = AcquireOptions::new().detached(true);
    let permit = sem.try_acquire_with(arg("ID").as_str(), &opts).unwrap();
    say(format!("READY {}", permit.token()));
    // Dropping the permit of a detached hold leaves it held.
}

/// Releases `ID` at `PATH` (a hold this process never took) and says `RELEASED`.
fn release() {
    let sem = Semaphore::open_existing(arg("PATH")).unwrap();
    sem.release(&arg("ID")).unwrap();
    say("RELEASED");
}

#[test]
#[ignore = "a child-process role, started by the other tests in this file"]
fn child_process() {
    // Not a test of its own: the body of the processes the tests in this file start and kill.
    match common::role().as_deref() {
        Some("hold") => hold(),
        Some("hold-inherit") => hold_inherit(),
        Some("wait-hold") => wait_hold(),
        Some("detach") => detach(),
        Some("release") => release(),
        Some("stress-worker") => stress_worker(
            Path::new(&arg("PATH")),
            &arg("ID"),
            arg("CAPACITY").parse().unwrap(),
            Path::new(&arg("MARKERS")),
        ),
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}

/// Starts one child in `role` on the semaphore at `path` as holder `id`.
fn child(role: &str, path: &Path, id: &str) -> ChildSpec {
    ChildSpec::new(id, "child_process", role)
        .arg("PATH", path.display())
        .arg("ID", id)
}

/// Sends SIGKILL to child `idx` and checks that SIGKILL is what ended it.
fn kill9(group: &mut Group, idx: usize) {
    let status = group.kill(idx, common::deadline(10));
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
}

/// Closes every child's stdin and checks that each one exited successfully.
fn finish_all(group: Group) {
    for f in group.finish(common::deadline(30)) {
        assert!(f.status.success(), "child {} failed: {}", f.name, f.status);
    }
}

// ---------------------------------------------------------------- helpers

fn sem_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("sem.json")
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
    let dir = common::tmpfs_dir();
    let path = sem_path(&dir);
    let mut group = Group::new();
    let holder = group.spawn(child("hold", &path, "victim").arg("CAPACITY", 1));
    group.expect(holder, "READY", common::deadline(30));
    let sem = quick().open(&path, 1).unwrap();
    let alive = verdict_of(&sem, "victim");
    assert!(matches!(alive, Liveness::Alive { .. }), "{alive}");
    assert!(matches!(
        sem.try_acquire("next"),
        Err(Error::NoCapacity { .. })
    ));

    kill9(&mut group, holder);
    let dead = verdict_of(&sem, "victim");
    assert_eq!(dead.name(), "dead");
    assert!(dead.evidence().contains("witness lock"), "{dead}");
    assert_eq!(sem.available().unwrap(), 1);
    let permit = sem.try_acquire("next").unwrap();
    let ids: Vec<String> = sem.holders().unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(ids, ["next"]);
    assert_eq!(permit.slot(), 0);
    // The dead holder's witness file (and its spares) are removed: only the new holder's is
    // left, one file under its number and its spare name.
    let witness_dir = dir.path().join("sem.json.witness");
    assert_eq!(numbered(&witness_dir), [permit.token()]);
    use std::os::unix::fs::MetadataExt;
    let ours = fs::metadata(witness_dir.join(permit.token().to_string())).unwrap();
    for entry in fs::read_dir(&witness_dir).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        assert_eq!((meta.dev(), meta.ino()), (ours.dev(), ours.ino()));
    }
}

/// The witness files of `dir` named by a number (not the spares a handle keeps), sorted.
fn numbered(dir: &std::path::Path) -> Vec<u64> {
    let mut numbers: Vec<u64> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
        .collect();
    numbers.sort_unstable();
    numbers
}

/// Whether every file in `dir` is a spare this process keeps locked (none is free).
fn only_held_spares(dir: &std::path::Path) -> bool {
    fs::read_dir(dir).unwrap().all(|e| {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let file = fs::File::open(e.path()).unwrap();
        let locked =
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock).is_err();
        name.starts_with("spare-") && locked
    })
}

#[test]
fn a_waiter_granted_a_slot_is_judged_by_the_witness_its_ticket_names() {
    // A waiter's witness is named by the ticket it queued with and keeps that name once the
    // hand-off gives it a token: held = alive, released = dead, by that witness (not by a
    // guess from the pid); cleanup of orphan witnesses leaves it while the entry is on file,
    // and reaping the entry deletes it.
    let dir = common::tmpfs_dir();
    let path = sem_path(&dir);
    let sem = quick().open(&path, 1).unwrap();
    let first = sem.try_acquire("first").unwrap();
    let mut group = Group::new();
    let waiter = group.spawn(child("wait-hold", &path, "waiter"));
    group.expect(waiter, "QUEUED", common::deadline(30));
    let ticket = common::entry_on_file(&path, "waiters", "waiter")
        .ticket
        .expect("a waiter has a ticket");
    let witness = dir.path().join(format!("sem.json.witness/{ticket}"));
    assert!(witness.exists(), "{}", witness.display());

    first.release().unwrap();
    let line = group.expect(waiter, "READY", common::deadline(30));
    let token: u64 = line.strip_prefix("READY ").unwrap().parse().unwrap();
    assert_ne!(token, ticket, "the hand-off takes a new token");
    let held = common::entry_on_file(&path, "holders", "waiter");
    assert_eq!((held.token, held.ticket), (Some(token), Some(ticket)));
    let alive = verdict_of(&sem, "waiter");
    assert_eq!(alive.name(), "alive", "{alive}");
    assert_eq!(alive.evidence(), format!("witness lock {ticket} is held"));

    kill9(&mut group, waiter);
    // `open` removes witness files no entry refers to; this one is free but still named.
    let sem = quick().open(&path, 1).unwrap();
    assert!(witness.exists(), "orphan cleanup removed a witness on file");
    let dead = verdict_of(&sem, "waiter");
    assert_eq!(dead.name(), "dead", "{dead}");
    assert_eq!(
        dead.evidence(),
        format!("witness lock {ticket} was released")
    );

    // The acquire reaps the dead entry in its way, then deletes the witness it names.
    let next = sem.try_acquire("next").unwrap();
    let ids: Vec<String> = sem.holders().unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(ids, ["next"]);
    assert!(next.token() > token);
    assert!(!witness.exists(), "the reaped entry's witness is removed");
}

#[test]
fn killed_holder_keeps_its_slot_when_auto_reap_is_off() {
    // The seed's behaviour stays available: without reaping, remove is the cleanup.
    let dir = common::tmpfs_dir();
    let path = sem_path(&dir);
    let mut group = Group::new();
    let holder = group.spawn(child("hold", &path, "victim").arg("CAPACITY", 1));
    group.expect(holder, "READY", common::deadline(30));
    kill9(&mut group, holder);
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
    let dir = common::tmpfs_dir();
    let path = sem_path(&dir);
    let mut group = Group::new();
    let holder = group.spawn(child("hold-inherit", &path, "parent"));
    let line = group.expect(holder, "READY", common::deadline(30));
    let grandchild: i32 = line.strip_prefix("READY ").unwrap().parse().unwrap();
    let gc = nix::unistd::Pid::from_raw(grandchild);
    kill9(&mut group, holder);

    let sem = quick().open(&path, 1).unwrap();
    let v = verdict_of(&sem, "parent");
    assert!(matches!(v, Liveness::Alive { .. }), "{v}");
    assert!(matches!(
        sem.try_acquire("next"),
        Err(Error::NoCapacity { .. })
    ));

    nix::sys::signal::kill(gc, nix::sys::signal::Signal::SIGKILL).unwrap();
    // The grandchild was re-parented; wait until it is gone (or a zombie of init's).
    common::wait_until(common::deadline(30), "the witness to be freed", || {
        verdict_of(&sem, "parent").name() == "dead"
    });
    assert!(sem.try_acquire("next").is_ok());
}

#[test]
fn pid_reuse_and_zombies_are_dead_a_matching_pid_is_alive() {
    // A reused pid (other start time) or a zombie proves the holder dead; pid + start time match proves it alive.
    let dir = common::tmpfs_dir();
    let path = sem_path(&dir);
    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = sleeper.id();
    let mut zombie = Command::new("true").spawn().unwrap();
    let zpid = zombie.id();
    common::wait_until(common::deadline(30), "the child to become a zombie", || {
        fs::read_to_string(format!("/proc/{zpid}/stat"))
            .unwrap()
            .contains(") Z ")
    });
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
    let dir = common::tmpfs_dir();
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
    let dir = common::tmpfs_dir();
    let path = sem_path(&dir);
    let mut group = Group::new();
    let detacher = group.spawn(child("detach", &path, "session-1"));
    group.expect(detacher, "READY", common::deadline(30));
    finish_all(group);
    let sem = quick().open(&path, 1).unwrap();
    let h = &sem.holders().unwrap()[0];
    assert_eq!((h.id.as_str(), h.mode), ("session-1", HoldMode::Detached));
    assert_eq!(h.liveness.name(), "unknown");
    assert!(sem.reap().unwrap().is_empty());
    assert!(matches!(
        sem.try_acquire("x"),
        Err(Error::NoCapacity { .. })
    ));
    let mut group = Group::new();
    let releaser = group.spawn(child("release", &path, "session-1"));
    assert_eq!(
        group.expect(releaser, "RELEASED", common::deadline(30)),
        "RELEASED"
    );
    finish_all(group);
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn lease_expires_and_is_reaped_renew_extends_it() {
    // A lease ends a hold nobody can judge; renew keeps it; a reaped permit reports Lost.
    let dir = common::tmpfs_dir();
    let path = sem_path(&dir);
    let sem = quick().open(&path, 1).unwrap();
    let opts = AcquireOptions::new()
        .detached(true)
        .lease(filesem::MIN_LEASE);
    let permit = sem.try_acquire_with("leased", &opts).unwrap();
    let first_end = sem.holders().unwrap()[0].expires_at.unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let renewed = permit.renew().unwrap().unwrap();
    assert!(renewed > first_end);
    assert_eq!(sem.holders().unwrap()[0].expires_at, Some(renewed));
    assert!(permit.is_held().unwrap());
    // Past expiry plus grace: stale, and an acquire takes the slot.
    common::wait_until(
        common::deadline(60),
        "the lease and its grace to pass",
        || verdict_of(&sem, "leased").name() == "expired",
    );
    assert!(
        chrono::Utc::now() > renewed + chrono::Duration::from_std(filesem::LEASE_GRACE).unwrap()
    );
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
    let dir = common::tmpfs_dir();
    let path = sem_path(&dir);
    let sem = quick().open(&path, 1).unwrap();
    let lease = filesem::MIN_LEASE;
    let opts = AcquireOptions::new().detached(true).lease(lease);
    let mut permit = sem.try_acquire_with("long", &opts).unwrap();
    permit.keep_alive().unwrap();
    assert!(permit.is_kept_alive());
    let until = Instant::now() + lease * 3 + filesem::LEASE_GRACE;
    let mut reaps = 0;
    while Instant::now() < until {
        assert!(sem.reap().unwrap().is_empty(), "a renewed hold was reaped");
        reaps += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reaps > 10);
    assert!(!permit.is_lost() && permit.is_kept_alive());
    assert!(permit.is_held().unwrap());
    sem.remove(["long"]).unwrap();
    common::wait_until(
        common::deadline(30),
        "keep-alive to notice the loss",
        || permit.is_lost(),
    );
    common::wait_until(common::deadline(30), "keep-alive to stop", || {
        !permit.is_kept_alive()
    });
    assert!(matches!(permit.release(), Err(Error::Lost { .. })));
}

#[test]
fn keep_turns_a_process_bound_hold_into_a_detached_one() {
    // keep() drops the witness and marks the entry detached, so no reaper takes it.
    let dir = common::tmpfs_dir();
    let path = sem_path(&dir);
    let sem = quick().open(&path, 1).unwrap();
    let permit = sem.try_acquire("s").unwrap();
    assert_eq!(sem.holders().unwrap()[0].mode, HoldMode::ProcessBound);
    permit.keep().unwrap();
    let h = &sem.holders().unwrap()[0];
    assert_eq!(h.mode, HoldMode::Detached);
    assert_eq!(h.liveness.name(), "unknown");
    // Its witness file is gone; the handle's spare, locked, waits for the next hold.
    let witness_dir = dir.path().join("sem.json.witness");
    assert!(numbered(&witness_dir).is_empty());
    assert!(only_held_spares(&witness_dir));
    assert!(sem.reap().unwrap().is_empty());
    sem.release("s").unwrap();
}

// ---------------------------------------------------------------- stress with a killer

/// A worker: acquire, record itself in a per-slot marker (the independent witness), hold a
/// moment, remove the marker, release; until stdin closes. Prints `VIOLATION` lines.
fn stress_worker(path: &Path, id: &str, capacity: u32, markers: &Path) {
    common::seed(id);
    let sem = quick().open(path, capacity).unwrap();
    let me = std::process::id();
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        wait_for_parent();
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
            say(format!("VIOLATION slot {} >= capacity", permit.slot()));
        }
        let marker = markers.join(format!("slot-{}", permit.slot()));
        claim_marker(&marker, me);
        std::thread::sleep(Duration::from_micros(500 + fastrand::u64(..1500)));
        let _ = fs::remove_file(&marker);
        permit.release().unwrap();
    }
    say(format!("DONE {grants} {refusals}"));
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
                        say(format!(
                            "VIOLATION slot marker {} of live pid {pid} changed while we held the slot",
                            marker.display()
                        ));
                        return;
                    }
                    if start.elapsed() > Duration::from_secs(2) {
                        say(format!(
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
    let seed = common::seed("stress_holders_killed_at_random");
    let secs: u64 = std::env::var("FILESEM_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let dir = common::tmpfs_dir();
    let path = sem_path(&dir);
    let markers = dir.path().join("markers");
    fs::create_dir(&markers).unwrap();
    let mut group = Group::new();
    // Worker `i` (holder id `worker-i`) is child `workers[i]` of the group; a killed worker
    // stays in the group, so what it said before dying is still read at the end. Each new
    // process gets the next seed derived from the test's.
    let spawn = |group: &mut Group, i: usize| {
        let n = group.len() as u64;
        let idx = group.spawn(
            child("stress-worker", &path, &format!("worker-{i}"))
                .arg("CAPACITY", 2)
                .arg("MARKERS", markers.display())
                .seed(common::derive_seed(seed, n)),
        );
        assert_eq!(group.expect(idx, "READY", common::deadline(30)), "READY");
        idx
    };
    let mut workers: Vec<usize> = (0..8).map(|i| spawn(&mut group, i)).collect();
    let mut kills = 0;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20 + fastrand::u64(..80)));
        let i = fastrand::usize(..workers.len());
        kill9(&mut group, workers[i]);
        kills += 1;
        workers[i] = spawn(&mut group, i);
    }
    let finished = group.finish(common::deadline(30));
    // Violations from every process, the killed ones included.
    let violations: Vec<String> = finished
        .iter()
        .flat_map(|f| f.lines_of("VIOLATION"))
        .map(|l| format!("VIOLATION {l}"))
        .collect();
    let (mut grants, mut refusals) = (0u64, 0u64);
    for &idx in &workers {
        let f = &finished[idx];
        assert!(f.status.success(), "child {} failed: {}", f.name, f.status);
        let done = f.lines_of("DONE");
        assert_eq!(done.len(), 1, "{}: {:?}", f.name, f.lines);
        let mut it = done[0].split(' ').map(|n| n.parse::<u64>().unwrap());
        grants += it.next().unwrap();
        refusals += it.next().unwrap();
    }
    let sem = quick().open(&path, 2).unwrap();
    let reaped = sem.reap().unwrap();
    // Every grant took one token from the counter, which started at 1: all grants, killed
    // workers' included.
    let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let all_grants = doc["next_token"].as_u64().unwrap() - 1;
    println!(
        "stress: seed={seed} secs={secs} processes=8 capacity=2 kills={kills} \
         grants={all_grants} (survivors' {grants}) refusals(survivors)={refusals} \
         reaped_at_end={} violations={}",
        reaped.len(),
        violations.len()
    );
    assert!(all_grants >= grants);
    assert!(violations.is_empty(), "{violations:?}");
    assert!(kills > 10 && grants > 0);
    assert_eq!(
        sem.count().unwrap(),
        0,
        "no leaked slot after reaping the killed"
    );
    assert_eq!(sem.available().unwrap(), 2);
    assert_eq!(doc["capacity"], 2);
}
