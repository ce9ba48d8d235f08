//! Leases have a floor ([`MIN_LEASE`]), renewals never flood the state file, and the
//! keep-alive thread belongs to its permit: it stops with it and never renews a released or
//! kept hold.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use filesem::{AcquireOptions, Error, HoldMode, MIN_LEASE, OpenOptions, Semaphore};
use serde_json::Value;

fn quick() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durable(false).lock_timeout(Duration::from_secs(10));
    o
}

fn file_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The leases just below the floor that the tests try.
const TOO_SHORT: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(1),
    Duration::from_millis(999),
];

fn assert_invalid_lease(what: &str, lease: Duration, r: filesem::Result<impl std::fmt::Debug>) {
    match r {
        Err(Error::InvalidLease {
            lease: got, min, ..
        }) => assert_eq!((got, min), (lease, MIN_LEASE), "{what}"),
        other => panic!("{what} with a lease of {lease:?}: expected InvalidLease, got {other:?}"),
    }
}

#[test]
fn a_lease_below_the_minimum_is_refused_and_every_file_stays_as_it_was() {
    // 0, 1 ms and 999 ms are refused by every acquire and by a default lease at open, before
    // anything is written: the directory is byte for byte the same afterwards.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    let sem = quick().open(&path, 2).unwrap();
    let _held = sem
        .try_acquire_with("held", &AcquireOptions::new().lease(MIN_LEASE))
        .unwrap();
    let before = common::snapshot(dir.path());
    let witnesses = common::snapshot(&dir.path().join("s.json.witness"));
    for lease in TOO_SHORT {
        let opts = AcquireOptions::new().lease(lease).metadata("k", "v");
        assert_invalid_lease(
            "try_acquire_with",
            lease,
            sem.try_acquire_with("new", &opts),
        );
        assert_invalid_lease("acquire_with", lease, sem.acquire_with("new", &opts));
        let waiting = opts.clone().timeout(Duration::from_secs(30));
        assert_invalid_lease(
            "acquire_with a timeout",
            lease,
            sem.acquire_with("new", &waiting),
        );
        // The same lease from the handle's default, at open, for an existing and a new path.
        let mut options = quick();
        options.default_lease(Some(lease));
        assert_invalid_lease("open", lease, options.open(&path, 2));
        assert_invalid_lease("open_existing", lease, options.open_existing(&path));
        assert_invalid_lease("recover", lease, options.recover(&path, 2));
        let elsewhere = dir.path().join("new").join("t.json");
        assert_invalid_lease(
            "open of a new semaphore",
            lease,
            options.open(&elsewhere, 1),
        );
        assert_eq!(common::snapshot(dir.path()), before, "{lease:?}");
        assert_eq!(
            common::snapshot(&dir.path().join("s.json.witness")),
            witnesses,
            "{lease:?}"
        );
    }
    // The floor itself is a valid lease.
    let permit = sem
        .try_acquire_with("floor", &AcquireOptions::new().lease(MIN_LEASE))
        .unwrap();
    assert_eq!(permit.lease(), Some(MIN_LEASE));
    assert_eq!(file_json(&path)["holders"][1]["lease_ms"], 1000);
}

/// One version of the state file seen by [`versions_written_by`]: its inode and the time its
/// bytes were written.
#[derive(Debug, PartialEq)]
struct Version {
    ino: u64,
    written: SystemTime,
}

/// Watches `path` for `window` and returns every version of it seen (each write replaces the
/// file by `rename`, so a new inode is a new write).
fn versions_written_by(path: &Path, window: Duration) -> Vec<Version> {
    let mut seen: Vec<Version> = Vec::new();
    let start = Instant::now();
    while start.elapsed() < window {
        if let Ok(m) = std::fs::metadata(path)
            && seen.last().is_none_or(|v| v.ino != m.ino())
        {
            seen.push(Version {
                ino: m.ino(),
                written: m.modified().unwrap(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    seen
}

#[test]
fn keep_alive_with_the_minimum_lease_writes_at_most_three_times_a_second() {
    // Renewals of a 1 s lease come every third of it, never closer: over 3 s at most 10
    // writes (one at the start of the window, then one per 333 ms), each at least 333 ms
    // after the one before (less the file system's timestamp granularity). A slow machine
    // only makes the writes rarer.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    let sem = quick().open(&path, 1).unwrap();
    let mut permit = sem
        .try_acquire_with("renewed", &AcquireOptions::new().lease(MIN_LEASE))
        .unwrap();
    permit.keep_alive().unwrap();
    let versions = versions_written_by(&path, Duration::from_secs(3));
    let writes = versions.len().saturating_sub(1);
    assert!(writes <= 10, "{writes} writes in 3 s: {versions:?}");
    let granularity = Duration::from_millis(20);
    for pair in versions.windows(2).skip(1) {
        let gap = pair[1]
            .written
            .duration_since(pair[0].written)
            .unwrap_or_default();
        assert!(
            gap + granularity >= MIN_LEASE / 3,
            "renewals {gap:?} apart: {versions:?}"
        );
    }
    // And it does renew: the lease end moves on (however slow the machine).
    let first = sem.holders().unwrap()[0].expires_at.unwrap();
    common::wait_until(common::deadline(60), "a renewal", || {
        sem.holders().unwrap()[0].expires_at.unwrap() > first
    });
    assert!(!permit.is_lost());
    permit.release().unwrap();
}

/// Starts a keep-alive on `permit` whose `on_lost` callback holds a clone of the returned
/// counter: the counter counts calls, and its strong count tells whether the thread (which
/// owns the callback) still exists.
fn watched(permit: &mut filesem::Permit) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let in_thread = Arc::clone(&calls);
    permit
        .keep_alive_with(move |_| {
            in_thread.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    assert!(permit.is_kept_alive());
    calls
}

#[test]
fn the_keep_alive_ends_with_its_permit_and_never_renews_a_released_or_kept_hold() {
    // release, keep and drop stop the thread before they act and wait for it: when they
    // return, the thread and its callback are gone, the callback never ran, and nothing
    // writes the file any more.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    let sem = quick().open(&path, 1).unwrap();
    let opts = AcquireOptions::new().lease(MIN_LEASE);
    for end in ["release", "drop", "keep", "stop"] {
        let mut permit = sem.try_acquire_with(end, &opts).unwrap();
        let calls = watched(&mut permit);
        // Let it renew at least once, so that the thread is mid-life when it is stopped.
        let first = sem.holders().unwrap()[0].expires_at.unwrap();
        common::wait_until(common::deadline(60), "a renewal", || {
            sem.holders().unwrap()[0].expires_at.unwrap() > first
        });
        match end {
            "release" => permit.release().unwrap(),
            "drop" => drop(permit),
            "keep" => permit.keep().unwrap(),
            _ => {
                permit.stop_keep_alive();
                assert!(!permit.is_kept_alive());
                assert!(!permit.is_lost());
                permit.release().unwrap();
            }
        }
        assert_eq!(Arc::strong_count(&calls), 1, "{end}: the thread still runs");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "{end}: reported a loss");
        if end == "keep" {
            // Kept as detached, without witness: no renewal put the witness back.
            let h = &sem.holders().unwrap()[0];
            assert_eq!(h.mode, HoldMode::Detached);
            assert!(file_json(&path)["holders"][0].get("witness").is_none());
            sem.release("keep").unwrap();
        }
        assert_eq!(sem.count().unwrap(), 0, "{end}");
    }
}

#[test]
fn the_keep_alive_reports_a_lost_hold_once_and_stops() {
    // A hold removed by someone else: the callback runs once, is_lost says so, the thread
    // ends by itself, and release reports Lost without touching anything.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    let sem = quick().open(&path, 1).unwrap();
    for lease in [Some(MIN_LEASE), None] {
        let opts = match lease {
            Some(l) => AcquireOptions::new().lease(l),
            None => AcquireOptions::new(),
        };
        let mut permit = sem.try_acquire_with("lost", &opts).unwrap();
        let calls = watched(&mut permit);
        assert_eq!(sem.remove(["lost"]).unwrap(), ["lost"]);
        common::wait_until(common::deadline(60), "the loss to be noticed", || {
            permit.is_lost()
        });
        common::wait_until(common::deadline(60), "the thread to end", || {
            Arc::strong_count(&calls) == 1
        });
        assert!(!permit.is_kept_alive());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{lease:?}");
        let newcomer = sem.try_acquire("lost").unwrap();
        assert!(matches!(permit.release(), Err(Error::Lost { .. })));
        assert_eq!(sem.holders().unwrap()[0].token, Some(newcomer.token()));
        newcomer.release().unwrap();
    }
}

#[test]
fn a_permit_with_its_keep_alive_moves_to_a_worker_thread() {
    // The renewer is part of the permit: moving the permit moves it; the worker's release
    // stops it.
    let dir = common::tmpfs_dir();
    let sem = quick().open(dir.path().join("s.json"), 1).unwrap();
    let mut permit = sem
        .try_acquire_with("job", &AcquireOptions::new().lease(MIN_LEASE))
        .unwrap();
    let calls = watched(&mut permit);
    let worker = std::thread::spawn(move || {
        assert!(permit.is_kept_alive());
        permit.release()
    });
    worker.join().unwrap().unwrap();
    assert_eq!(Arc::strong_count(&calls), 1);
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
#[allow(unsafe_code)] // fork(2), reviewed: the child makes one call into this crate, then _exit
fn keep_alive_in_a_forked_child_is_not_the_owner() {
    // A forked child must not renew the parent's hold: keep_alive refuses there.
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    let dir = common::tmpfs_dir();
    let sem: Semaphore = quick().open(dir.path().join("s.json"), 1).unwrap();
    let mut permit = sem.try_acquire("parent").unwrap();
    // SAFETY: the child only calls `keep_alive` (which returns at once on a pid mismatch,
    // without locking, I/O or threads) and then `_exit`, running no destructors.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let code = match permit.keep_alive() {
                Err(Error::NotOwner { .. }) => 0,
                _ => 1,
            };
            // SAFETY: _exit is async-signal-safe and skips atexit handlers and destructors.
            unsafe { libc::_exit(code) };
        }
        ForkResult::Parent { child } => {
            let deadline = common::deadline(10);
            let status = loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)).unwrap() {
                    WaitStatus::StillAlive if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    WaitStatus::StillAlive => {
                        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                        let _ = waitpid(child, None);
                        panic!("forked child did not exit in time");
                    }
                    other => break other,
                }
            };
            assert_eq!(status, WaitStatus::Exited(child, 0));
        }
    }
    assert!(!permit.is_kept_alive());
    assert_eq!(sem.holders().unwrap()[0].id, "parent");
    permit.release().unwrap();
}
