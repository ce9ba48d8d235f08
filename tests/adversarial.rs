//! Attacks on the safety guarantees: files of the wrong kind planted where ours go, numbers at
//! the edge of the calendar, threads and forks racing one handle, holders in other pid and
//! time namespaces whose witness went missing, and a Go-style writer interleaved with ours.
//! Every wait has a deadline: an operation that would hang fails the test instead.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{ChildSpec, Group, arg, say};
use filesem::{AcquireOptions, Error, OpenOptions, Semaphore};
use serde_json::{Value, json};

/// Runs `f` on a thread and returns its result, failing the test if it takes longer than
/// `secs` (the thread is left behind; the test process ends soon after).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not return within {secs} s: it hangs")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

fn quick() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durable(false).lock_timeout(Duration::from_secs(5));
    o
}

fn witness_dir(path: &Path) -> PathBuf {
    let mut d = path.as_os_str().to_os_string();
    d.push(".witness");
    PathBuf::from(d)
}

/// The owner record this process writes, taken from a detached hold on a scratch semaphore.
fn my_owner(dir: &Path) -> Value {
    let probe = dir.join("owner-probe.json");
    let sem = Semaphore::open(&probe, 1).unwrap();
    let opts = AcquireOptions::new().detached(true);
    drop(sem.try_acquire_with("me", &opts).unwrap());
    let v: Value = serde_json::from_slice(&fs::read(&probe).unwrap()).unwrap();
    v["holders"][0]["owner"].clone()
}

#[test]
fn state_file_that_is_a_fifo_is_refused_without_hanging_and_recover_leaves_it() {
    // Opening a FIFO for reading blocks until a writer comes: a planted FIFO must give a typed
    // error naming the path, not hang every process (and, under the lock, everyone else).
    // recover moves aside only regular files: the FIFO is refused and left where it is.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    quick().open(&path, 1).unwrap();
    fs::remove_file(&path).unwrap();
    mkfifo(&path);
    let before = common::snapshot(dir.path());
    let untrusted_fifo = |what: &str, err: Error| match &err {
        Error::Untrusted {
            path: p,
            object,
            problem,
            ..
        } => {
            assert_eq!((p, object), (&path, &path), "{what}");
            assert!(
                problem.contains("a FIFO, not a regular file"),
                "{what}: {problem}"
            );
        }
        other => panic!("{what}: expected Untrusted, got {other:?}"),
    };
    let p = path.clone();
    let err = within(10, "open_existing on a FIFO", move || {
        Semaphore::open_existing(&p).unwrap_err()
    });
    untrusted_fifo("open_existing", err);
    let p = path.clone();
    let err = within(10, "open on a FIFO", move || {
        quick().open(&p, 1).unwrap_err()
    });
    untrusted_fifo("open", err);
    let p = path.clone();
    let err = within(10, "recover on a FIFO", move || {
        Semaphore::recover(&p, 1).unwrap_err()
    });
    untrusted_fifo("recover", err);
    assert!(
        fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_fifo_like(),
        "the FIFO was left in place"
    );
    assert_eq!(
        common::snapshot(dir.path()),
        before,
        "nothing renamed or created"
    );
}

trait IsFifo {
    fn is_fifo_like(&self) -> bool;
}

impl IsFifo for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

#[test]
fn fifos_and_symlinks_in_the_witness_directory_never_hang_queries_reap_or_open() {
    // Witness files are probed and orphans cleaned up by opening them: a FIFO (or a link to
    // one) planted there must be skipped, not block the prober, which may hold the lock.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    quick().open(&path, 2).unwrap();
    let wdir = witness_dir(&path);
    fs::create_dir_all(&wdir).unwrap();
    // Token 7 is on file and its witness file is now a FIFO; 99 is an orphan FIFO; 98 a link
    // to a FIFO outside.
    mkfifo(&wdir.join("7"));
    mkfifo(&wdir.join("99"));
    let outside = dir.path().join("outside-fifo");
    mkfifo(&outside);
    std::os::unix::fs::symlink(&outside, wdir.join("98")).unwrap();
    let ino = fs::metadata(wdir.join("7")).unwrap().ino();
    let dev = fs::metadata(wdir.join("7")).unwrap().dev();
    let doc = json!({"capacity": 2, "next_token": 8, "holders": [{
        "id": "planted", "acquired_at": "2026-01-01T00:00:00Z", "token": 7, "slot": 0,
        "owner": my_owner(dir.path()), "witness": {"dev": dev, "ino": ino}}]});
    fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();

    let p = path.clone();
    let holders = within(10, "holders() probing a FIFO witness", move || {
        quick().open_existing(&p).unwrap().holders().unwrap()
    });
    assert_eq!(holders.len(), 1);
    assert!(
        !holders[0].liveness.is_stale(),
        "a FIFO is no evidence of death: {}",
        holders[0].liveness
    );
    let p = path.clone();
    within(
        10,
        "reap() with FIFOs in the witness directory",
        move || quick().open_existing(&p).unwrap().reap().unwrap(),
    );
    let p = path.clone();
    within(10, "open() cleaning up orphan witnesses", move || {
        quick().open(&p, 2).unwrap()
    });
    assert!(outside.exists(), "the link's target is left alone");
}

#[test]
fn sparse_multi_terabyte_state_file_is_corrupt_not_an_abort() {
    // A state file is read whole: a huge one (here sparse, 1 TiB) must be refused as corrupt,
    // not allocated, which aborts the process.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    quick().open(&path, 1).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(1 << 40).unwrap();
    drop(f);
    let mut group = Group::new();
    let idx = group.spawn(
        ChildSpec::new("reader", "child_process", "open_existing").arg("PATH", path.display()),
    );
    let line = group.expect(idx, "result", common::deadline(30));
    assert!(line.starts_with("result corrupt"), "{line}");
    let done = group.finish(common::deadline(10));
    assert!(done[0].status.success(), "{:?}", done[0].status);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        1 << 40,
        "left as it was"
    );
}

#[test]
fn leases_beyond_the_calendar_never_panic_nor_make_the_file_unreadable() {
    // A lease is user input (and lease_ms is read from the file): lease arithmetic must not
    // overflow into a panic, nor write a date that the next read rejects as corrupt.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let sem = quick().open(&path, 2).unwrap();
    for lease in [Duration::MAX, Duration::from_secs(400_000 * 365 * 86_400)] {
        let s = sem.clone();
        let r = within(10, "acquire with a huge lease", move || {
            s.try_acquire_with("huge", &AcquireOptions::new().lease(lease))
                .map(|p| p.release())
        });
        assert!(
            !matches!(r, Err(Error::Corrupt { .. }) | Ok(Err(_))),
            "{r:?}"
        );
        let holders = sem.holders();
        assert!(holders.is_ok(), "the file stays readable: {holders:?}");
    }
    // A holder with a long lease that is still on file: every reader must parse it.
    let _long = sem
        .try_acquire_with(
            "long",
            &AcquireOptions::new().lease(Duration::from_secs(20_000 * 365 * 86_400)),
        )
        .unwrap();
    assert!(Semaphore::open_existing(&path).is_ok());
    let holders = sem.holders().unwrap();
    assert!(!holders[0].liveness.is_stale(), "{}", holders[0].liveness);

    // A queued waiter with an absurd lease_ms on file: handing it a slot must not panic.
    let doc = json!({"capacity": 1, "next_token": 10, "holders": [{
        "id": "gone", "acquired_at": "2026-01-01T00:00:00Z", "token": 8, "slot": 0, "detached": true}],
        "waiters": [{"id": "next", "acquired_at": "2026-01-01T00:00:00Z", "token": 9,
        "detached": true, "lease_ms": u64::MAX}]});
    fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    drop(_long);
    let s = Semaphore::open_existing(&path).unwrap();
    let r = within(10, "release handing off to a waiter", move || {
        s.release("gone")
    });
    assert!(r.is_ok(), "{r:?}");
    let holders = Semaphore::open_existing(&path).unwrap().holders().unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].id, "next");
}

#[test]
fn threads_sharing_a_handle_each_wait_at_most_the_lock_timeout() {
    // The lock timeout bounds each operation's wait. Threads of one handle are serialized in
    // process; that queue must count against the same deadline, or the last of N threads waits
    // N timeouts while another process holds the lock.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    quick().open(&path, 1).unwrap();
    let mut group = Group::new();
    let idx = group.spawn(
        ChildSpec::new("locker", "child_process", "lock")
            .arg("LOCK", dir.path().join("sem.json.lock").display()),
    );
    group.expect(idx, "locked", common::deadline(30));
    let timeout = Duration::from_secs(1);
    let sem = OpenOptions::new()
        .lock_timeout(timeout)
        .open_existing(&path)
        .unwrap();
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let sem = sem.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let r = sem.try_acquire(&format!("t{i}"));
                (start.elapsed(), r.map(|_| ()))
            })
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let _ = tx.send(results);
    });
    let results = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("threads did not finish");
    for (waited, r) in results {
        assert!(matches!(r, Err(Error::LockTimeout { .. })), "{r:?}");
        // Generous: serialized timeouts would make the last thread wait 6 s.
        assert!(
            waited < timeout * 3,
            "a thread waited {waited:?} with a lock timeout of {timeout:?}"
        );
    }
    group.kill(idx, common::deadline(10));
}

#[test]
#[allow(unsafe_code)] // Reviewed: fork in a test, to prove a forked child never hangs.
fn forked_child_of_a_busy_multithreaded_process_gets_an_answer_not_a_hang() {
    // A child forked while another thread was inside an operation inherits a locked in-process
    // mutex with nobody to unlock it: its own operations must still end within the lock timeout.
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let sem = OpenOptions::new()
        .durable(false)
        .lock_timeout(Duration::from_millis(300))
        .open(&path, 2)
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (sem, stop) = (sem.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(p) = sem.try_acquire("busy") {
                    let _ = p.release();
                }
            }
        })
    };
    let mut hung = 0;
    for _ in 0..20 {
        // SAFETY: the child makes one library call, which must end by itself, then _exit.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = match sem.count() {
                    Ok(_) => match sem.try_acquire("child") {
                        Ok(p) => {
                            std::mem::forget(p);
                            0
                        }
                        Err(_) => 1,
                    },
                    Err(_) => 2,
                };
                // SAFETY: _exit skips destructors and atexit handlers.
                unsafe { libc::_exit(code) };
            }
            ForkResult::Parent { child } => {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    match waitpid(child, Some(WaitPidFlag::WNOHANG)).unwrap() {
                        WaitStatus::StillAlive if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        WaitStatus::StillAlive => {
                            let _ =
                                nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                            let _ = waitpid(child, None);
                            hung += 1;
                            break;
                        }
                        _ => break,
                    }
                }
            }
        }
        let _ = sem.remove(["child"]);
    }
    stop.store(true, Ordering::SeqCst);
    busy.join().unwrap();
    assert_eq!(hung, 0, "{hung} of 20 forked children hung");
}

#[test]
fn temp_files_of_a_semaphore_with_a_longer_name_are_not_taken_for_leftovers() {
    // Opening `a.json` removes its own killed writers' temp files; those of `a.json.x` (which
    // may be mid-write under *its* lock) start with the same prefix and must be left alone.
    let dir = common::tmpfs_dir();
    let other = dir.path().join(".a.json.x.abcdefgh.filesem-tmp");
    let ours = dir.path().join(".a.json.abcdefgh.filesem-tmp");
    fs::write(&other, b"{}").unwrap();
    fs::write(&ours, b"{}").unwrap();
    quick().open(dir.path().join("a.json"), 1).unwrap();
    assert!(!ours.exists(), "our own leftover is removed");
    assert!(
        other.exists(),
        "another semaphore's temp file is left alone"
    );
}

/// Starts `ChildSpec` role `ns_holder` through `wrapper`: it acquires, deletes its own witness
/// file (as a careless cleanup would), says `held TOKEN` and holds until told to go.
fn spawn_holder_without_witness(group: &mut Group, path: &Path, wrapper: &[&str]) -> usize {
    let idx = group.spawn(
        ChildSpec::new("holder", "child_process", "ns_holder")
            .arg("PATH", path.display())
            .via(wrapper),
    );
    group.expect(idx, "held", common::deadline(30));
    idx
}

#[test]
fn holder_in_another_time_namespace_is_never_judged_dead_by_start_time() {
    // Start times in /proc/PID/stat are shown shifted by the reader's time namespace: a live
    // holder in another time namespace whose witness went missing must not look like a reused
    // pid (dead) to a checker outside.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root for unshare --time");
        return;
    }
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    quick().open(&path, 1).unwrap();
    let mut group = Group::new();
    let idx = spawn_holder_without_witness(
        &mut group,
        &path,
        &["unshare", "--time", "--boottime", "100000", "--"],
    );
    let sem = quick().open_existing(&path).unwrap();
    let verdict = sem.holders().unwrap()[0].liveness.clone();
    assert!(!verdict.is_stale(), "live holder judged stale: {verdict}");
    assert!(
        matches!(sem.try_acquire("outsider"), Err(Error::NoCapacity { .. })),
        "a live holder was reaped"
    );
    group.kill(idx, common::deadline(10));
}

#[test]
fn checker_seeing_another_namespaces_proc_never_judges_a_live_holder_dead() {
    // A checker that entered the holder's pid namespace but kept the outer /proc reads other
    // processes' stat files under the holder's pid: that is no evidence of pid reuse.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root for unshare/nsenter");
        return;
    }
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    quick().open(&path, 1).unwrap();
    let mut group = Group::new();
    let idx = spawn_holder_without_witness(
        &mut group,
        &path,
        &["unshare", "--pid", "--fork", "--mount-proc", "--"],
    );
    let unshare = group.pid(idx);
    let children = fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
    let holder: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let target = holder.to_string();
    let checker = group.spawn(
        ChildSpec::new("checker", "child_process", "check")
            .arg("PATH", path.display())
            .via(&["nsenter", "-t", &target, "--pid", "--"]),
    );
    let verdict = group.expect(checker, "verdict", common::deadline(30));
    let acquire = group.expect(checker, "acquire", common::deadline(30));
    assert!(!verdict.starts_with("verdict dead"), "{verdict}");
    assert_eq!(acquire, "acquire NoCapacity", "a live holder was reaped");
    group.kill(idx, common::deadline(10));
}

/// An independent count of processes inside, kept in `<dir>/inside` under its own flock
/// (never the semaphore's); an entry that makes it exceed `capacity` appends to
/// `<dir>/violations`.
struct Inside {
    dir: PathBuf,
    capacity: u32,
}

impl Inside {
    fn change(&self, by: i64) {
        use nix::fcntl::{Flock, FlockArg};
        use std::io::Write;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("inside.lock"))
            .unwrap();
        let _held = Flock::lock(lock, FlockArg::LockExclusive).unwrap();
        let file = self.dir.join("inside");
        let n: i64 = fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
            + by;
        if n > i64::from(self.capacity) {
            let mut v = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("violations"))
                .unwrap();
            writeln!(v, "{n} inside, capacity {}", self.capacity).unwrap();
        }
        fs::write(&file, n.to_string()).unwrap();
    }
}

/// One Go-package-style step under `PATH.lock`: read, keep only what Go knows (capacity,
/// holders' id and acquired_at), apply `f`, write through Go's fixed `PATH.tmp` and rename.
fn go_step(path: &Path, f: impl FnOnce(i64, &mut Vec<Value>) -> bool) -> bool {
    use nix::fcntl::{Flock, FlockArg};
    let mut lock_path = path.as_os_str().to_os_string();
    lock_path.push(".lock");
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .unwrap();
    let _held = Flock::lock(lock, FlockArg::LockExclusive).unwrap();
    let doc: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    let capacity = doc["capacity"].as_i64().unwrap();
    let mut holders: Vec<Value> = doc["holders"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|h| json!({"id": h["id"], "acquired_at": h["acquired_at"]}))
        .collect();
    let ok = f(capacity, &mut holders);
    let go = json!({"capacity": capacity, "holders": holders});
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&go).unwrap()).unwrap();
    fs::rename(&tmp, path).unwrap();
    ok
}

#[test]
fn go_style_writer_interleaved_with_filesem_processes_never_exceeds_capacity() {
    // The Go package locks the same PATH.lock and rewrites the file keeping only the fields it
    // knows (dropping tokens, owners, witnesses): mixed with our processes, the number inside
    // must still never exceed the capacity, and no process may lose its own entry.
    let seed = common::seed("go_style_writer_interleaved");
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    quick().open(&path, 2).unwrap();
    let mut group = Group::new();
    for (i, role) in ["filesem", "filesem", "filesem", "go", "go"]
        .iter()
        .enumerate()
    {
        group.spawn(
            ChildSpec::new(
                format!("{role}-{i}"),
                "child_process",
                &format!("mixed_{role}"),
            )
            .arg("PATH", path.display())
            .arg("DIR", dir.path().display())
            .arg("ID", format!("{role}-{i}"))
            .seed(common::derive_seed(seed, i as u64)),
        );
    }
    group.expect_all("ready", common::deadline(30));
    group.send_all("go");
    let done = group.finish(common::deadline(60));
    let mut grants = 0u64;
    for d in &done {
        assert!(d.status.success(), "{} failed: {:?}", d.name, d.lines);
        let n: u64 = d.lines_of("grants")[0].parse().unwrap();
        assert!(n > 0, "{} never got a slot", d.name);
        grants += n;
    }
    let violations = fs::read_to_string(dir.path().join("violations")).unwrap_or_default();
    assert_eq!(violations, "", "capacity exceeded");
    let sem = quick().open_existing(&path).unwrap();
    assert_eq!(sem.count().unwrap(), 0, "{:?}", sem.holders().unwrap());
    eprintln!("mixed Go-style and filesem run: {grants} grants, 0 violations");
}

#[test]
fn holders_killed_at_random_moments_leave_only_provably_dead_entries_and_no_files() {
    // Processes looping acquire/release with no pause are SIGKILLed at random instants (inside
    // the critical section, between witness creation and the state write, between entry
    // removal and witness unlock): the state must parse, every leftover entry must be provably
    // dead and reaped, and no temp or witness file may stay behind.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    quick().open(&path, 2).unwrap();
    let seed = common::seed("holders_killed_at_random_moments");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut group = Group::new();
    let mut kills = 0;
    for round in 0..12 {
        let idx = group.spawn(
            ChildSpec::new(format!("churn-{round}"), "child_process", "churn")
                .arg("PATH", path.display())
                .arg("ID", format!("churn-{}", round % 3)),
        );
        group.expect(idx, "ready", common::deadline(30));
        let until = Instant::now() + Duration::from_micros(rng.u64(0..30_000));
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        group.kill(idx, common::deadline(10));
        kills += 1;
    }
    let sem = quick().open(&path, 2).unwrap();
    let before = sem.holders().unwrap();
    for h in &before {
        assert!(
            h.liveness.is_stale(),
            "seed {seed}: {} is {}",
            h.id,
            h.liveness
        );
    }
    let reaped = sem.reap().unwrap();
    assert_eq!(reaped.len(), before.len(), "seed {seed}");
    assert_eq!(sem.count().unwrap(), 0, "seed {seed}");
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".filesem-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "seed {seed}: {leftovers:?}");
    let witnesses: Vec<_> = fs::read_dir(witness_dir(&path))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(witnesses.is_empty(), "seed {seed}: {witnesses:?}");
    eprintln!(
        "seed {seed}: {kills} kills, {} dead entries reaped",
        reaped.len()
    );
}

#[test]
#[allow(unsafe_code)] // Reviewed: fork in a test, to prove a forked child cannot end the parent's hold.
fn forked_childs_explicit_release_does_not_end_the_parents_hold() {
    // Drop in a forked child leaves the parent's hold alone; an explicit release() of the
    // same copy must not end it either (the parent still uses the resource).
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    let dir = common::tmpfs_dir();
    let sem = quick().open(dir.path().join("f.json"), 1).unwrap();
    let permit = sem.try_acquire("parent").unwrap();
    let token = permit.token();
    // SAFETY: the child makes one library call and then calls _exit.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let code = i32::from(permit.release().is_err());
            // SAFETY: _exit skips destructors and atexit handlers.
            unsafe { libc::_exit(code) };
        }
        ForkResult::Parent { child } => {
            let deadline = common::deadline(10);
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)).unwrap() {
                    WaitStatus::StillAlive if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    WaitStatus::StillAlive => {
                        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                        let _ = waitpid(child, None);
                        panic!("forked child did not exit in time");
                    }
                    WaitStatus::Exited(_, code) => {
                        assert_eq!(code, 1, "release in the child must fail (NotOwner)");
                        break;
                    }
                    other => panic!("forked child ended with {other:?}"),
                }
            }
            let holders = sem.holders().unwrap();
            assert_eq!(holders.len(), 1, "the parent's entry is gone");
            assert_eq!(holders[0].token, Some(token));
            assert!(
                holders[0].liveness.evidence().contains("is held"),
                "the parent's witness was unlocked: {}",
                holders[0].liveness
            );
            permit.release().unwrap();
        }
    }
}

#[test]
fn a_renewal_restores_the_slot_and_token_a_go_write_dropped() {
    // Permit::slot promises that slots of current holders never coincide (which GPU to use);
    // a Go rewrite drops the `slot` and `token` fields, and the holder's next renewal puts
    // them back, so the next grant does not reuse its slot.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let sem = quick().open(&path, 2).unwrap();
    let first = sem
        .try_acquire_with(
            "first",
            &AcquireOptions::new().lease(Duration::from_secs(60)),
        )
        .unwrap();
    assert_eq!(first.slot(), 0);
    go_step(&path, |_, _| true);
    assert_eq!(
        sem.holders().unwrap()[0].slot,
        None,
        "the Go write dropped the slot"
    );
    first.renew().unwrap();
    let h = &sem.holders().unwrap()[0];
    assert_eq!((h.slot, h.token), (Some(0), Some(first.token())));
    let second = sem.try_acquire("second").unwrap();
    assert_eq!(second.slot(), 1, "two live holders got one slot");
}

#[test]
fn an_exhausted_or_absurd_token_counter_fails_closed() {
    // Permits find their entry by token: a token granted twice would let one permit's
    // release remove another holder's entry. Counters past 2^53 are corruption; a counter
    // that has handed out every token refuses further grants. The file stays as it was.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    for (next, expect) in [
        (u64::MAX, "above 2^53"),
        (filesem::MAX_TOKEN + 1, "exhausted"),
    ] {
        let doc = json!({"capacity": 3, "next_token": next, "holders": []});
        fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let before = fs::read(&path).unwrap();
        let err = quick()
            .open_existing(&path)
            .and_then(|sem| sem.try_acquire("a").map(|_| ()))
            .unwrap_err();
        match (&err, expect) {
            (Error::Corrupt { path: p, reason }, "above 2^53") => {
                assert_eq!(p, &path);
                assert!(reason.contains(expect), "{reason}");
            }
            (Error::TokensExhausted { path: p }, "exhausted") => {
                assert_eq!(p, &path);
                // The way out is a new semaphore; recover cannot lower a counter.
                assert!(
                    err.to_string().contains("use a new semaphore path"),
                    "{err}"
                );
            }
            (other, _) => panic!("{expect}: got {other:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), before);
    }
    // As the error says, recover cannot help: the file is valid, and it changes nothing.
    let recovered = filesem::Semaphore::recover(&path, 3).unwrap();
    assert!(
        recovered.moved_to.is_none(),
        "a parseable file is not moved aside"
    );
}

#[test]
fn stopped_processes_are_alive_and_never_hang_the_others() {
    // SIGSTOP at random moments of a process looping acquire/release: others get an answer
    // (a slot, NoCapacity or LockTimeout) within their lock timeout, never a hang, and a
    // stopped holder is alive: its slot is not reaped.
    common::seed("stopped_processes_are_alive");
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    quick().open(&path, 1).unwrap();
    let mut group = Group::new();
    let idx = group.spawn(
        ChildSpec::new("churn", "child_process", "churn")
            .arg("PATH", path.display())
            .arg("ID", "churn"),
    );
    group.expect(idx, "ready", common::deadline(30));
    let pid = nix::unistd::Pid::from_raw(group.pid(idx) as i32);
    let sem = OpenOptions::new()
        .durable(false)
        .lock_timeout(Duration::from_millis(300))
        .open_existing(&path)
        .unwrap();
    let (mut timeouts, mut refused, mut granted) = (0, 0, 0);
    for _ in 0..15 {
        std::thread::sleep(Duration::from_micros(fastrand::u64(0..5_000)));
        // Stopped for sure before the observer starts: a SIGSTOP still in flight would let
        // the child take the lock between the observer's acquire and its release.
        common::stop_process(group.pid(idx));
        let s = sem.clone();
        let r = within(
            10,
            "try_acquire while another process is stopped",
            move || s.try_acquire("observer").map(|p| p.release()),
        );
        match r {
            Ok(released) => {
                released.unwrap();
                granted += 1;
            }
            Err(Error::LockTimeout { .. }) => timeouts += 1,
            Err(Error::NoCapacity { .. }) => {
                refused += 1;
                let h = sem.holders().unwrap();
                assert!(
                    h.iter().all(|h| !h.liveness.is_stale()),
                    "a stopped holder was judged stale: {h:?}"
                );
            }
            Err(e) => panic!("unexpected {e}"),
        }
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    }
    group.kill(idx, common::deadline(10));
    eprintln!("stopped 15 times: {granted} granted, {refused} refused, {timeouts} lock timeouts");
}

#[test]
#[ignore = "not a test of its own: the body of the processes the tests above start"]
fn child_process() {
    match common::role().as_deref() {
        Some("lock") => {
            use nix::fcntl::{Flock, FlockArg};
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(arg("LOCK"))
                .unwrap();
            let _held = Flock::lock(file, FlockArg::LockExclusive).unwrap();
            say("locked");
            common::wait_for_parent();
        }
        Some("open_existing") => {
            let r = Semaphore::open_existing(arg("PATH"));
            match r {
                Err(Error::Corrupt { reason, .. }) => say(format!("result corrupt {reason}")),
                other => say(format!("result other {other:?}")),
            }
        }
        Some("ns_holder") => {
            let path = PathBuf::from(arg("PATH"));
            let sem = quick().open_existing(&path).unwrap();
            let permit = sem.try_acquire("inner").unwrap();
            fs::remove_file(witness_dir(&path).join(permit.token().to_string())).unwrap();
            say(format!("held {}", permit.token()));
            common::wait_for_parent();
            drop(permit);
        }
        Some("check") => {
            let sem = quick().open_existing(arg("PATH")).unwrap();
            let v = sem.holders().unwrap()[0].liveness.clone();
            say(format!("verdict {} {}", v.name(), v.evidence()));
            match sem.try_acquire("outsider") {
                Ok(_) => say("acquire ok"),
                Err(Error::NoCapacity { .. }) => say("acquire NoCapacity"),
                Err(e) => say(format!("acquire error {e}")),
            }
        }
        Some("mixed_filesem") => {
            let inside = Inside {
                dir: PathBuf::from(arg("DIR")),
                capacity: 2,
            };
            let sem = quick().open_existing(arg("PATH")).unwrap();
            let id = arg("ID");
            common::seed(&id);
            say("ready");
            common::wait_for_parent();
            let (start, mut grants) = (Instant::now(), 0);
            while start.elapsed() < Duration::from_millis(1500) {
                match sem.try_acquire(&id) {
                    Ok(permit) => {
                        inside.change(1);
                        grants += 1;
                        std::thread::sleep(Duration::from_micros(fastrand::u64(200..1500)));
                        inside.change(-1);
                        permit.release().unwrap();
                    }
                    Err(Error::NoCapacity { .. }) => {
                        std::thread::sleep(Duration::from_micros(fastrand::u64(100..800)));
                    }
                    Err(e) => panic!("{id}: {e}"),
                }
            }
            say(format!("grants {grants}"));
        }
        Some("mixed_go") => {
            let inside = Inside {
                dir: PathBuf::from(arg("DIR")),
                capacity: 2,
            };
            let path = PathBuf::from(arg("PATH"));
            let id = arg("ID");
            common::seed(&id);
            say("ready");
            common::wait_for_parent();
            let (start, mut grants) = (Instant::now(), 0);
            while start.elapsed() < Duration::from_millis(1500) {
                let me = id.clone();
                let got = go_step(&path, |capacity, holders| {
                    if holders.len() as i64 >= capacity {
                        return false;
                    }
                    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
                    holders.push(json!({"id": me, "acquired_at": at}));
                    true
                });
                if !got {
                    std::thread::sleep(Duration::from_micros(fastrand::u64(100..800)));
                    continue;
                }
                inside.change(1);
                grants += 1;
                std::thread::sleep(Duration::from_micros(fastrand::u64(200..1500)));
                inside.change(-1);
                go_step(&path, |_, holders| {
                    holders.retain(|h| h["id"] != json!(id));
                    true
                });
            }
            say(format!("grants {grants}"));
        }
        Some("churn") => {
            let sem = quick().open_existing(arg("PATH")).unwrap();
            let id = arg("ID");
            say("ready");
            loop {
                if let Ok(permit) = sem.try_acquire(&id) {
                    let _ = permit.release();
                }
            }
        }
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}

#[test]
fn a_semaphores_lock_file_is_refused_as_a_state_file() {
    // `recover X.lock` would move X's lock file aside and break X's exclusion; every entry
    // point refuses the lock file of an existing semaphore and changes nothing.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("gpus.json");
    let sem = quick().open(&path, 2).unwrap();
    let _permit = sem.try_acquire("a").unwrap();
    let lock = dir.path().join("gpus.json.lock");
    let before = common::snapshot(dir.path());
    let refused = |r: Result<(), Error>| match r {
        Err(Error::IsLockFile { path, semaphore }) => {
            assert_eq!(
                (path.as_path(), semaphore.as_path()),
                (lock.as_path(), path_of(&sem))
            );
        }
        other => panic!("expected IsLockFile, got {other:?}"),
    };
    refused(filesem::Semaphore::recover(&lock, 1).map(|_| ()));
    refused(quick().open(&lock, 1).map(|_| ()));
    refused(quick().open_existing(&lock).map(|_| ()));
    assert_eq!(common::snapshot(dir.path()), before);
    // A semaphore that is itself named `*.lock` (no state file beside it) is fine.
    let own = dir.path().join("other.lock");
    assert!(quick().open(&own, 1).is_ok());
}

fn path_of(sem: &filesem::Semaphore) -> &std::path::Path {
    sem.path()
}
