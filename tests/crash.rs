//! Processes killed at the worst moments: while holding a slot, and while holding the lock
//! file. Nothing may hang, and every left-over is either cleaned up or clearly removable.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{ChildSpec, Group, arg, say};
use filesem::{Error, OpenOptions, Semaphore};
use nix::sys::signal::Signal;
use std::os::unix::process::ExitStatusExt;

/// A lock timeout for the parent's operations: long enough for a loaded machine, short
/// enough that a hang fails the test instead of the CI job.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn holder_killed_with_sigkill_keeps_its_entry_until_removed() {
    // A SIGKILLed holder cannot release: with reaping off its entry stays and blocks the
    // slot; remove clears it, and the next acquire works at once.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    Semaphore::open(&path, 1).unwrap();
    let mut group = Group::new();
    let idx = group.spawn(
        ChildSpec::new("victim", "child_process", "hold")
            .arg("PATH", path.display())
            .arg("ID", "victim"),
    );
    let held = group.expect(idx, "held", common::deadline(30));
    let token: u64 = held.split(' ').nth(1).unwrap().parse().unwrap();
    let pid = group.pid(idx);
    let status = group.kill(idx, common::deadline(10));
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));

    // Reaping off: this test is about what stays on file without it (as in the Go package).
    let sem = OpenOptions::new()
        .auto_reap(false)
        .lock_timeout(LOCK_TIMEOUT)
        .open(&path, 1)
        .unwrap();
    assert_eq!(sem.count().unwrap(), 1);
    let holders = sem.holders().unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].id, "victim");
    assert_eq!(holders[0].token, Some(token));
    assert_eq!(holders[0].owner.as_ref().map(|o| o.pid), Some(pid));
    assert!(
        holders[0].liveness.is_stale(),
        "shown as provably dead, yet kept: {}",
        holders[0].liveness
    );
    assert_eq!(sem.available().unwrap(), 0);
    assert!(matches!(
        sem.try_acquire("survivor"),
        Err(Error::NoCapacity { held: 1, .. })
    ));

    assert_eq!(sem.remove(["victim"]).unwrap(), ["victim"]);
    assert_eq!(sem.count().unwrap(), 0);
    let permit = sem.try_acquire("survivor").unwrap();
    assert!(permit.token() > token);
    assert_eq!(permit.slot(), 0);
}

#[test]
fn process_killed_while_holding_the_lock_file_does_not_block_others() {
    // The kernel drops a killed process's flock: the next operation gets the lock. While the
    // lock is held, waiting is bounded by the lock timeout.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let sem = OpenOptions::new()
        .lock_timeout(LOCK_TIMEOUT)
        .open(&path, 1)
        .unwrap();
    let mut group = Group::new();
    let idx = group.spawn(
        ChildSpec::new("locker", "child_process", "lock")
            .arg("LOCK", dir.path().join("sem.json.lock").display()),
    );
    group.expect(idx, "locked", common::deadline(30));

    let impatient = OpenOptions::new()
        .lock_timeout(Duration::from_millis(200))
        .open_existing(&path)
        .unwrap();
    let start = Instant::now();
    assert!(matches!(
        impatient.try_acquire("waiter"),
        Err(Error::LockTimeout { .. })
    ));
    assert!(start.elapsed() >= Duration::from_millis(200));

    let status = group.kill(idx, common::deadline(10));
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
    let permit = sem.try_acquire("waiter").unwrap();
    assert_eq!(sem.count().unwrap(), 1);
    permit.release().unwrap();
    assert_eq!(sem.count().unwrap(), 0);
    assert!(
        dir.path().join("sem.json.lock").exists(),
        "the lock file stays"
    );
}

#[test]
fn killing_one_of_several_holders_leaves_only_its_entry() {
    // Killing one of several holders loses no other process's update: exactly its entry remains.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    OpenOptions::new().durable(false).open(&path, 3).unwrap();
    let mut group = Group::new();
    let victim = group.spawn(
        ChildSpec::new("victim", "child_process", "hold")
            .arg("PATH", path.display())
            .arg("ID", "victim"),
    );
    group.expect(victim, "held", common::deadline(30));
    for i in 0..2 {
        let idx = group.spawn(
            ChildSpec::new(format!("worker-{i}"), "child_process", "hold")
                .arg("PATH", path.display())
                .arg("ID", format!("worker-{i}")),
        );
        group.expect(idx, "held", common::deadline(30));
    }
    // Reaping off, so that the dead victim's entry stays for the check below.
    let sem = OpenOptions::new()
        .auto_reap(false)
        .lock_timeout(LOCK_TIMEOUT)
        .open_existing(&path)
        .unwrap();
    assert_eq!(sem.count().unwrap(), 3);
    group.kill(victim, common::deadline(10));
    let finished = group.finish(common::deadline(30));
    for f in &finished[1..] {
        assert!(f.status.success(), "{} exited with {}", f.name, f.status);
        assert!(
            f.lines.iter().any(|l| l == "released"),
            "{}: {:?}",
            f.name,
            f.lines
        );
    }
    let ids: Vec<String> = sem.holders().unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(ids, ["victim"]);
    sem.remove(["victim"]).unwrap();
    assert_eq!(sem.available().unwrap(), 3);
}

#[test]
fn temp_file_left_by_a_killed_writer_is_removed_by_open() {
    // A writer killed between creating its temp file and the rename leaves it behind; the
    // next open removes it (recognisably ours), and nothing else in the directory.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sem.json");
    Semaphore::open(&path, 1).unwrap();
    let leftover = dir.path().join(".sem.json.k1LL3dXy.filesem-tmp");
    fs::write(&leftover, b"{\"capacity\": 1, \"hol").unwrap();
    let foreign = dir.path().join("sem.json.tmp");
    fs::write(&foreign, b"the Go package's temp name is not ours").unwrap();
    let sem = Semaphore::open(&path, 1).unwrap();
    assert!(!leftover.exists());
    assert!(foreign.exists());
    assert_eq!(sem.count().unwrap(), 0);
}

/// Takes a slot as `ID` on the semaphore at `PATH` and says `held <token>`; then waits for
/// the parent and releases.
fn hold() {
    let sem = Semaphore::open_existing(arg("PATH")).unwrap();
    let permit = sem.try_acquire(arg("ID").as_str()).unwrap();
    say(format!("held {}", permit.token()));
    common::wait_for_parent();
    permit.release().unwrap();
    say("released");
}

/// Takes the flock on `PATH.lock` directly, as a process inside its critical section does,
/// and says `locked`; then waits.
fn lock() {
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

#[test]
#[ignore = "a child-process role, started by the other tests in this file"]
fn child_process() {
    // Not a test of its own: the body of the processes the tests above start and kill.
    match common::role().as_deref() {
        Some("hold") => hold(),
        Some("lock") => lock(),
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}

#[test]
fn free_witness_counts_as_dead_in_a_directory_created_by_open() {
    // The filesystem check must see the directory open creates, or dead holders there would
    // never be reaped.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("new/nested/sem.json");
    let sem = OpenOptions::new().durable(false).open(&path, 1).unwrap();
    // An entry of this process whose witness file exists but is not locked: as after a crash.
    let witness_dir = dir.path().join("new/nested/sem.json.witness");
    fs::create_dir(&witness_dir).unwrap();
    fs::write(witness_dir.join("5"), b"").unwrap();
    let meta = fs::metadata(witness_dir.join("5")).unwrap();
    let probe = dir.path().join("probe.json");
    let owner = {
        let p = Semaphore::open(&probe, 1).unwrap();
        let opts = filesem::AcquireOptions::new().detached(true);
        let _kept = p.try_acquire_with("me", &opts).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&probe).unwrap()).unwrap();
        v["holders"][0]["owner"].clone()
    };
    use std::os::unix::fs::MetadataExt;
    let doc = serde_json::json!({"capacity": 1, "next_token": 6, "holders": [{
        "id": "crashed", "acquired_at": "2026-01-01T00:00:00Z", "token": 5, "slot": 0,
        "owner": owner, "witness": {"dev": meta.dev(), "ino": meta.ino()}}]});
    fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    let verdict = &sem.holders().unwrap()[0].liveness;
    assert_eq!(verdict.name(), "dead", "{verdict}");
    assert!(verdict.evidence().contains("witness lock 5 was released"));
    let permit = sem.try_acquire("next").unwrap();
    assert_eq!(permit.token(), 6);
}
