//! Every `Duration` the API takes, at the extremes: 0, 1 ns, `u64::MAX` seconds and
//! `Duration::MAX`, each through a real operation. Durations too large for the clock or the
//! calendar mean "no limit"; nothing panics or overflows.

mod common;

use std::fs::File;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use filesem::{AcquireOptions, Error, MIN_LEASE, OpenOptions, Permit, Semaphore};
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

/// The four extremes every setting is tried with.
const EXTREMES: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_secs(u64::MAX),
    Duration::MAX,
];

/// Whether `d` is too large to be a limit on this clock (the two huge extremes).
fn huge(d: Duration) -> bool {
    d >= Duration::from_secs(u64::MAX)
}

/// The last instant RFC 3339 writes with a four-digit year: where a lease too long for the
/// calendar ends.
fn end_of_calendar() -> DateTime<Utc> {
    "9999-12-31T23:59:59Z".parse().unwrap()
}

/// Runs `f` on another thread; panics if it does not return within `secs` (so a wait without
/// limit that never ends fails the test instead of hanging it).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not return within {secs} s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Locks `PATH.lock` as another process would (its own open file description).
fn hold_lock_file(path: &Path) -> Flock<File> {
    let lock = File::options()
        .read(true)
        .write(true)
        .open(path.with_extension("json.lock"))
        .unwrap();
    Flock::lock(lock, FlockArg::LockExclusiveNonblock).unwrap()
}

fn file_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Waits until `sem` has `n` queued waiters.
fn until_queued(sem: &Semaphore, n: usize) {
    common::wait_until(common::deadline(30), "the waiter to queue", || {
        sem.waiters().unwrap().len() == n
    });
}

#[test]
fn lock_timeout_at_every_extreme_opens_acquires_and_waits_or_times_out() {
    // 0 and 1 ns make one attempt at the lock; u64::MAX s and Duration::MAX wait without
    // limit (they used to panic with "overflow when adding duration to instant").
    for d in EXTREMES {
        let dir = common::tmpfs_dir();
        let path = dir.path().join("s.json");
        let mut options = OpenOptions::new();
        options.durable(false).lock_timeout(d);
        let sem = options.open(&path, 1).unwrap();
        assert_eq!(sem.capacity().unwrap(), 1, "{d:?}");
        let permit = sem.try_acquire("free").unwrap();
        assert_eq!((permit.token(), permit.slot()), (1, 0), "{d:?}");
        permit.release().unwrap();

        let held = hold_lock_file(&path);
        if huge(d) {
            // Waits for the lock as long as it takes: here until the other holder lets go.
            let waiting = std::thread::spawn({
                let sem = sem.clone();
                move || sem.try_acquire("waited").map(|p| p.token())
            });
            std::thread::sleep(Duration::from_millis(200));
            assert!(!waiting.is_finished(), "{d:?}: gave up on a held lock");
            drop(held);
            let token = within(30, "acquire behind a lock held 200 ms", move || {
                waiting.join().unwrap()
            });
            assert_eq!(token.unwrap(), 2, "{d:?}");
        } else {
            match sem.try_acquire("refused") {
                Err(Error::LockTimeout {
                    lock_path, waited, ..
                }) => {
                    assert_eq!(lock_path, path.with_extension("json.lock"), "{d:?}");
                    assert!(waited >= d, "{d:?}: {waited:?}");
                }
                other => panic!("{d:?}: expected LockTimeout, got {other:?}"),
            }
            drop(held);
            assert_eq!(
                sem.count().unwrap(),
                0,
                "{d:?}: the refused acquire wrote nothing"
            );
        }
    }
}

#[test]
fn acquire_timeout_at_every_extreme_times_out_or_waits_without_limit() {
    // 0 and 1 ns give up at once and leave no queue entry; the huge ones wait until a slot
    // is handed over, through both AcquireOptions::timeout and acquire_timeout.
    for (d, through_options) in EXTREMES.into_iter().flat_map(|d| [(d, true), (d, false)]) {
        let dir = common::tmpfs_dir();
        let sem = OpenOptions::new()
            .durable(false)
            .open(dir.path().join("s.json"), 1)
            .unwrap();
        let acquire = move |sem: &Semaphore, id: &str| -> filesem::Result<Permit> {
            if through_options {
                sem.acquire_with(id, &AcquireOptions::new().timeout(d))
            } else {
                sem.acquire_timeout(id, d)
            }
        };
        // A free slot is taken at once, whatever the timeout.
        let first = acquire(&sem, "first").unwrap();
        assert_eq!(first.token(), 1, "{d:?}");
        if huge(d) {
            let waiting = std::thread::spawn({
                let sem = sem.clone();
                move || acquire(&sem, "second").map(|p| (p.id().to_string(), p.token()))
            });
            until_queued(&sem, 1);
            first.release().unwrap();
            let got = within(30, "a waiter without limit", move || {
                waiting.join().unwrap()
            });
            // It queued with ticket 2; the hand-off gives it the next token.
            assert_eq!(got.unwrap(), ("second".to_string(), 3), "{d:?}");
        } else {
            match acquire(&sem, "second") {
                Err(Error::Timeout { path, .. }) => assert_eq!(path, sem.path(), "{d:?}"),
                other => panic!("{d:?}: expected Timeout, got {other:?}"),
            }
            assert!(
                sem.waiters().unwrap().is_empty(),
                "{d:?}: left a queue entry"
            );
            assert_eq!(sem.holders().unwrap()[0].id, "first");
        }
    }
}

#[test]
fn leases_below_the_minimum_are_refused_and_huge_ones_end_with_the_calendar() {
    // 0 and 1 ns: InvalidLease naming both durations. u64::MAX s and Duration::MAX: the
    // lease ends 9999-12-31T23:59:59Z, renew returns that, keep-alive starts and stops.
    for d in EXTREMES {
        let dir = common::tmpfs_dir();
        let path = dir.path().join("s.json");
        let sem = OpenOptions::new().durable(false).open(&path, 2).unwrap();
        let opts = AcquireOptions::new().lease(d);
        if !huge(d) {
            for result in [
                sem.try_acquire_with("a", &opts),
                sem.acquire_with("a", &opts),
            ] {
                match result {
                    Err(Error::InvalidLease { lease, min, .. }) => {
                        assert_eq!((lease, min), (d, MIN_LEASE));
                    }
                    other => panic!("{d:?}: expected InvalidLease, got {other:?}"),
                }
            }
            continue;
        }
        let mut permit = sem.try_acquire_with("a", &opts).unwrap();
        assert_eq!(permit.lease(), Some(d));
        assert_eq!(
            sem.holders().unwrap()[0].expires_at,
            Some(end_of_calendar())
        );
        assert_eq!(
            file_json(&path)["holders"][0]["lease_ms"],
            u64::MAX,
            "{d:?}: the length in ms saturates"
        );
        assert_eq!(permit.renew().unwrap(), Some(end_of_calendar()));
        assert!(permit.is_held().unwrap());
        permit.keep_alive().unwrap();
        assert!(permit.is_kept_alive());
        // The thread sleeps for a third of the lease; stopping it must not wait for that.
        within(30, "stopping a keep-alive with a huge lease", move || {
            permit.stop_keep_alive();
            assert!(!permit.is_kept_alive());
            permit.release()
        })
        .unwrap();

        // The same lease for a waiter, granted by hand-off.
        let first = sem.try_acquire("h1").unwrap();
        let _second = sem.try_acquire("h2").unwrap();
        let waiting = std::thread::spawn({
            let sem = sem.clone();
            let opts = AcquireOptions::new().lease(d);
            move || sem.acquire_with("w", &opts).map(|p| p.renew())
        });
        until_queued(&sem, 1);
        first.release().unwrap();
        let renewed = within(30, "a waiter with a huge lease", move || {
            waiting.join().unwrap()
        });
        assert_eq!(renewed.unwrap().unwrap(), Some(end_of_calendar()), "{d:?}");
    }
}

#[test]
fn default_lease_at_every_extreme_is_refused_at_open_or_ends_with_the_calendar() {
    // The handle's default lease is checked when the handle is opened, before anything is
    // created; a huge one gives every acquire a lease to the end of the calendar.
    for d in EXTREMES {
        let dir = common::tmpfs_dir();
        let path = dir.path().join("sub").join("s.json");
        let mut options = OpenOptions::new();
        options.durable(false).default_lease(Some(d));
        match options.open(&path, 1) {
            Err(Error::InvalidLease { lease, min, .. }) => {
                assert!(!huge(d));
                assert_eq!((lease, min), (d, MIN_LEASE));
                assert!(
                    common::snapshot(dir.path()).is_empty(),
                    "{d:?}: nothing created"
                );
            }
            Ok(sem) => {
                assert!(huge(d), "{d:?} was accepted");
                let permit = sem.try_acquire("a").unwrap();
                assert_eq!(permit.lease(), Some(d));
                assert_eq!(permit.renew().unwrap(), Some(end_of_calendar()));
                assert_eq!(
                    sem.holders().unwrap()[0].expires_at,
                    Some(end_of_calendar())
                );
            }
            Err(other) => panic!("{d:?}: {other:?}"),
        }
    }
}
