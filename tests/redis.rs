//! The Redis store through the public API, against a real `redis-server` (a private one per
//! test on a free port, see `tests/common/redis_server.rs`; without `redis-server` each test
//! prints SKIPPED, and fails under `CI=true`). One process; the multi-process scenarios are
//! in `tests/redis_processes.rs`.

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use filesem::{AcquireOptions, Error, HoldMode, Liveness, MIN_LEASE, OpenOptions, Semaphore};
use redis::Commands;

use common::{deadline, wait_until};
use redis_server::RedisServer;

/// Short timeouts, so that a stopped or killed server fails an operation within a second or
/// two; a short lock timeout bounds the settling of an unknown outcome.
fn impatient() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.connect_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(300))
        .lock_timeout(Duration::from_secs(2));
    o
}

/// A plain connection of the `redis` crate, to look at and meddle with keys behind the
/// semaphore's back.
fn raw(server: &RedisServer) -> redis::Connection {
    let client = redis::Client::open(server.server_url()).unwrap();
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    con
}

/// The key's value as JSON.
fn stored(server: &RedisServer, key: &str) -> serde_json::Value {
    let bytes: Vec<u8> = raw(server).get(key).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn server_time(server: &RedisServer) -> DateTime<Utc> {
    let (seconds, micros): (i64, u32) = redis::cmd("TIME").query(&mut raw(server)).unwrap();
    DateTime::from_timestamp(seconds, micros * 1_000).unwrap()
}

#[test]
fn open_creates_the_key_and_open_existing_adopts_it() {
    // The key is created once with the capacity asked for; afterwards the key decides, as a
    // state file does; a missing key is NotFound and creates nothing.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("gpus");
    let sem = Semaphore::open_redis(&url, 0).unwrap();
    assert_eq!(sem.capacity().unwrap(), 1, "0 means 1, as for files");
    assert_eq!(
        sem.path().to_str(),
        Some(format!("redis://127.0.0.1:{}/0/gpus", server.port()).as_str())
    );
    assert_eq!(sem.resolved_path(), sem.path());
    let doc = stored(&server, "gpus");
    assert_eq!(doc["capacity"], 1);
    assert_eq!(doc["holders"], serde_json::json!([]));

    let again = Semaphore::open_redis_existing(&url).unwrap();
    assert_eq!(again.capacity().unwrap(), 1);
    let err = Semaphore::open_redis(&url, 3).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CapacityMismatch {
                requested: 3,
                on_file: 1,
                ..
            }
        ),
        "{err}"
    );
    let mut create_new = OpenOptions::new();
    create_new.create_new(true);
    let err = create_new.open_redis(&url, 1).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");

    let missing = server.url("nope");
    let err = Semaphore::open_redis_existing(&missing).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(
        err.path().to_str(),
        Some(format!("redis://127.0.0.1:{}/0/nope", server.port()).as_str())
    );
    let exists: bool = raw(&server).exists("nope").unwrap();
    assert!(!exists);
    assert!(Semaphore::open_redis(&server.url("big"), 2_000_000).is_err());
}

#[test]
fn acquire_release_and_queries_report_the_values_on_the_server() {
    // Tokens, slots, counts, holders with their leases and owners, as a file semaphore has
    // them; every hold has the 30 s lease and a keep-alive from the start.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let sem = Semaphore::open_redis(&server.url("s"), 2).unwrap();
    let a = sem.try_acquire("a").unwrap();
    let b = sem
        .try_acquire_with("b", &AcquireOptions::new().metadata("job", "7"))
        .unwrap();
    // Every token is at least the server's clock in microseconds at its grant.
    let first = u64::try_from(server_time(&server).timestamp_micros()).unwrap();
    assert!(
        a.token() <= first && a.token() > first - 600_000_000,
        "{}",
        a.token()
    );
    assert_eq!((a.slot(), b.slot()), (0, 1));
    assert!(b.token() > a.token(), "{} after {}", b.token(), a.token());
    assert_eq!(a.lease(), Some(filesem::DEFAULT_REDIS_LEASE));
    assert!(a.is_kept_alive(), "a Redis hold renews itself");
    assert!(a.is_held().unwrap());
    assert!(!a.is_lost());
    let err = sem.try_acquire("c").unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoCapacity {
                capacity: 2,
                held: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_contention());
    let err = sem.try_acquire("a").unwrap_err();
    assert!(matches!(err, Error::AlreadyHeld { .. }), "{err}");
    assert_eq!(sem.count().unwrap(), 2);
    assert_eq!(sem.available().unwrap(), 0);

    let holders = sem.holders().unwrap();
    let ids: Vec<&str> = holders.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let h = &holders[1];
    assert_eq!(h.metadata["job"], "7");
    assert_eq!(h.mode, HoldMode::ProcessBound);
    assert_eq!(h.owner.as_ref().unwrap().pid, std::process::id());
    assert_eq!(
        h.expires_at.unwrap() - h.acquired_at,
        chrono::Duration::seconds(30)
    );
    assert!(
        matches!(&h.liveness, Liveness::Unknown { evidence } if evidence.contains("leases only")),
        "{}",
        h.liveness
    );
    // The server's clock, not ours, stamped the grant.
    let now = server_time(&server);
    assert!(h.acquired_at <= now && now - h.acquired_at < chrono::Duration::minutes(1));

    a.release().unwrap();
    assert_eq!(sem.count().unwrap(), 1);
    sem.release("b").unwrap();
    assert_eq!(sem.count().unwrap(), 0);
    let b_token = b.token();
    let err = b.release().unwrap_err();
    assert!(
        matches!(err, Error::Lost { token, .. } if token == b_token),
        "{err}"
    );
    let err = sem.release("b").unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err}");
    let doc = stored(&server, "s");
    assert!(doc["next_token"].as_u64().unwrap() > b_token, "{doc}");
}

#[test]
fn a_dropped_permit_releases_and_a_detached_one_keeps_its_lease() {
    // Drop releases a process-bound hold; a detached hold stays, with its lease, unrenewed.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let sem = Semaphore::open_redis(&server.url("s"), 2).unwrap();
    drop(sem.try_acquire("gone").unwrap());
    assert_eq!(sem.count().unwrap(), 0);
    let opts = AcquireOptions::new().detached(true).lease(MIN_LEASE);
    let detached = sem.try_acquire_with("session", &opts).unwrap();
    assert!(!detached.is_kept_alive(), "a detached hold is not renewed");
    drop(detached);
    let h = &sem.holders().unwrap()[0];
    assert_eq!((h.id.as_str(), h.mode), ("session", HoldMode::Detached));
    assert_eq!(
        h.expires_at.unwrap() - h.acquired_at,
        chrono::Duration::seconds(1)
    );
    // Nothing renews it: after the lease and the grace, reap removes it as expired.
    let until = deadline(60);
    let mut reaped = Vec::new();
    wait_until(until, "the detached lease to expire", || {
        reaped = sem.reap().unwrap();
        !reaped.is_empty()
    });
    assert_eq!(reaped[0].id, "session");
    assert!(matches!(reaped[0].liveness, Liveness::Expired { .. }));
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn keep_turns_a_hold_detached_with_the_lease_it_has() {
    // The Go package's session use: the hold outlives the permit, stops renewing, and ends
    // by release (or its lease).
    let Some(server) = RedisServer::start() else {
        return;
    };
    let sem = Semaphore::open_redis(&server.url("s"), 1).unwrap();
    let permit = sem.try_acquire("session-1").unwrap();
    let token = permit.token();
    permit.keep().map_err(|e| e.error).unwrap();
    let h = &sem.holders().unwrap()[0];
    assert_eq!((h.mode, h.token), (HoldMode::Detached, Some(token)));
    assert!(h.expires_at.is_some());
    sem.release("session-1").unwrap();
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn leases_come_from_the_acquire_the_handle_or_the_store() {
    // AcquireOptions::lease wins over OpenOptions::default_lease, which wins over the 30 s
    // every Redis hold gets; a lease under MIN_LEASE is refused before anything is written.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("s");
    let mut o = OpenOptions::new();
    o.default_lease(Some(Duration::from_secs(5)));
    let sem = o.open_redis(&url, 3).unwrap();
    assert_eq!(
        sem.try_acquire("a").unwrap().lease(),
        Some(Duration::from_secs(5))
    );
    let own = AcquireOptions::new().lease(Duration::from_secs(2));
    assert_eq!(
        sem.try_acquire_with("b", &own).unwrap().lease(),
        Some(Duration::from_secs(2))
    );
    let short = AcquireOptions::new().lease(Duration::from_millis(500));
    let err = sem.try_acquire_with("c", &short).unwrap_err();
    assert!(matches!(err, Error::InvalidLease { .. }), "{err}");
    o.default_lease(Some(Duration::from_millis(10)));
    let err = o.open_redis(&url, 3).unwrap_err();
    assert!(matches!(err, Error::InvalidLease { .. }), "{err}");
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn waiting_times_out_or_is_handed_the_slot() {
    // A timed-out wait leaves the queue; a release hands the slot to the waiter with the
    // next token.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let sem = Semaphore::open_redis(&server.url("s"), 1).unwrap();
    let first = sem.try_acquire("first").unwrap();
    let err = sem
        .acquire_timeout("late", Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(sem.waiters().unwrap().is_empty());

    let (tx, rx) = mpsc::channel();
    let waiter = sem.clone();
    std::thread::spawn(move || tx.send(waiter.acquire("second")).unwrap());
    let until = deadline(30);
    wait_until(until, "the waiter to queue", || {
        sem.waiters().unwrap().len() == 1
    });
    let w = &sem.waiters().unwrap()[0];
    assert_eq!((w.id.as_str(), w.token), ("second", None));
    assert!(w.expires_at.is_some(), "a waiter has an expiry");
    assert_eq!(sem.available().unwrap(), 0);
    let first_token = first.token();
    first.release().unwrap();
    let second = rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!(second.id(), "second");
    assert!(second.token() > first_token);
    assert!(second.is_kept_alive());
    assert_eq!(
        sem.holders().unwrap()[0].token,
        Some(second.token()),
        "the hand-off wrote the grant"
    );
}

#[test]
fn priorities_order_the_queue_and_set_capacity_hands_slots_to_it() {
    // Higher priority first, then first come first served; raising the capacity grants the
    // queue's head; lowering it evicts nobody.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let sem = Semaphore::open_redis(&server.url("s"), 1).unwrap();
    let _held = sem.try_acquire("held").unwrap();
    let (tx, rx) = mpsc::channel();
    for (id, priority) in [("low", 0), ("high", 5)] {
        let waiter = sem.clone();
        let tx = tx.clone();
        let opts = AcquireOptions::new().priority(priority);
        std::thread::spawn(move || tx.send((id, waiter.acquire_with(id, &opts))).unwrap());
        let n = if id == "low" { 1 } else { 2 };
        wait_until(deadline(30), "the waiter to queue", || {
            sem.waiters().unwrap().len() == n
        });
    }
    let order: Vec<String> = sem.waiters().unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(order, ["high", "low"]);
    sem.set_capacity(2).unwrap();
    let (id, high) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(id, "high");
    let high = high.unwrap();
    assert_eq!(high.slot(), 1);
    assert_eq!(sem.capacity().unwrap(), 2);
    let err = sem.set_capacity(0).unwrap_err();
    assert!(matches!(err, Error::InvalidCapacity { .. }), "{err}");
    sem.set_capacity(1).unwrap();
    assert_eq!(sem.count().unwrap(), 2, "lowering evicts nobody");
    assert_eq!(sem.remove(["held", "zz"]).unwrap(), ["held"]);
    assert!(sem.remove(["held"]).unwrap().is_empty());
    assert_eq!(sem.waiters().unwrap().len(), 1, "still over capacity");
    drop(high);
    let (id, low) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(id, "low");
    assert_eq!(low.unwrap().slot(), 0);
}

#[test]
fn bad_locations_and_credentials_get_typed_errors_without_the_password() {
    // Nothing is contacted for a bad URL; a refused password is RedisAuth; a closed port is
    // RedisUnreachable; no message, path or Debug output shows the password.
    let Some(server) = RedisServer::start_with_password("hunter2") else {
        return;
    };
    for (url, words) in [
        ("rediss://:hunter2@h/k", "TLS"),
        ("redis://h", "key is missing"),
        ("http://h/k", "scheme"),
    ] {
        let err = Semaphore::open_redis(url, 1).unwrap_err();
        assert!(matches!(err, Error::InvalidLocation { .. }), "{err}");
        assert!(err.to_string().contains(words), "{err}");
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    }
    let good = server.url("s");
    let sem = Semaphore::open_redis(&good, 1).unwrap();
    let shown = format!("{} {sem:?}", sem.path().display());
    assert!(
        !shown.contains("hunter2") && shown.contains(":***@"),
        "{shown}"
    );

    let wrong = good.replace("hunter2", "wrong");
    let err = Semaphore::open_redis(&wrong, 1).unwrap_err();
    assert!(matches!(err, Error::RedisAuth { .. }), "{err}");
    assert!(!format!("{err} {err:?}").contains("wrong"), "{err:?}");
    let none = format!("redis://127.0.0.1:{}/0/s", server.port());
    let err = Semaphore::open_redis(&none, 1).unwrap_err();
    assert!(matches!(err, Error::RedisAuth { .. }), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = impatient()
        .open_redis(&format!("redis://127.0.0.1:{port}/0/s"), 1)
        .unwrap_err();
    assert!(matches!(err, Error::RedisUnreachable { .. }), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn a_key_the_server_forgot_counts_on_above_the_tokens_its_holders_still_have() {
    // A DEL (or FLUSHDB, an eviction) and a restart without persistence forget the key while
    // its holders may still fence with their tokens: the semaphore created again in its
    // place hands out only larger ones, and the forgotten permit never takes its hold back.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url("forgot");
    let sem = impatient().open_redis(&url, 1).unwrap();
    let first = sem.try_acquire("first").unwrap();
    let _: () = raw(&server).del("forgot").unwrap();
    let again = impatient().open_redis(&url, 1).unwrap();
    let second = again.try_acquire("second").unwrap();
    assert!(
        second.token() > first.token(),
        "{} after {}",
        second.token(),
        first.token()
    );
    assert!(
        !first.is_held().unwrap_or(false),
        "a forgotten hold is not taken back"
    );
    // A permit finds its entry by token: the forgotten one must not take the new holder's.
    let err = first.release().unwrap_err();
    assert!(matches!(err, Error::Lost { .. }), "{err}");
    assert!(second.is_held().unwrap());
    assert_eq!(stored(&server, "forgot")["holders"][0]["id"], "second");

    server.restart();
    let third = impatient()
        .open_redis(&url, 1)
        .unwrap()
        .try_acquire("third")
        .unwrap();
    assert!(
        third.token() > second.token(),
        "{} after {}",
        third.token(),
        second.token()
    );
    assert_eq!(stored(&server, "forgot")["holders"][0]["id"], "third");
    assert_eq!(
        stored(&server, "forgot")["next_token"].as_u64(),
        Some(third.token() + 1)
    );
}

#[test]
fn a_key_rolled_back_to_an_older_value_hands_out_no_token_again() {
    // A restart from an older snapshot (or a failover to a replica that lacked the last
    // writes) puts back an older document: the grants after it still get tokens above every
    // token handed out since that document was current.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let sem = impatient().open_redis(&server.url("rolled"), 3).unwrap();
    let snapshot: Vec<u8> = raw(&server).get("rolled").unwrap();
    let mut highest = 0;
    for id in ["a", "b", "c"] {
        let permit = sem.try_acquire(id).unwrap();
        highest = highest.max(permit.token());
        permit.keep().unwrap();
    }
    let _: () = raw(&server).set("rolled", &snapshot).unwrap();
    assert_eq!(sem.count().unwrap(), 0, "the grants are forgotten");
    let after = sem.try_acquire("d").unwrap();
    assert!(after.token() > highest, "{} after {highest}", after.token());
    assert_eq!(
        stored(&server, "rolled")["next_token"].as_u64(),
        Some(after.token() + 1)
    );
}

#[test]
fn garbage_and_other_types_in_the_key_are_corrupt_and_left_unchanged() {
    // Every operation fails closed on a key that is not a state document, and changes
    // nothing; that includes a key of another Redis type and a value over 64 MiB.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = raw(&server);
    let url = server.url("s");
    let garbage = br#"{"capacity": 2, "holders": [{"id": "x", "token": 41"#.to_vec();
    let _: () = con.set("s", &garbage).unwrap();
    let corrupt = |e: Error| matches!(e, Error::Corrupt { .. });
    assert!(corrupt(Semaphore::open_redis(&url, 2).unwrap_err()));
    assert!(corrupt(Semaphore::open_redis_existing(&url).unwrap_err()));
    let after: Vec<u8> = con.get("s").unwrap();
    assert_eq!(after, garbage);

    let _: () = con.del("s").unwrap();
    let sem = Semaphore::open_redis(&url, 2).unwrap();
    let _: () = con.del("s").unwrap();
    let _: () = con.rpush("s", &["a", "b"]).unwrap();
    let err = sem.try_acquire("a").unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { reason, .. } if reason.contains("holds a list")),
        "{err}"
    );
    assert!(corrupt(sem.holders().unwrap_err()));
    assert!(corrupt(sem.count().unwrap_err()));
    assert!(corrupt(sem.set_capacity(3).unwrap_err()));
    assert!(corrupt(sem.reap().unwrap_err()));
    let items: Vec<String> = con.lrange("s", 0, -1).unwrap();
    assert_eq!(items, ["a", "b"]);

    let _: () = con.del("s").unwrap();
    let huge = vec![b' '; (64 << 20) + 1];
    let _: () = con.set("s", &huge).unwrap();
    let err = sem.count().unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { reason, .. } if reason.contains("more than")),
        "{err}"
    );
    let len: usize = con.strlen("s").unwrap();
    assert_eq!(len, huge.len());
}

#[test]
fn recover_moves_a_corrupt_key_aside_with_a_token_floor() {
    // The old value goes to KEY.corrupt-<server time> untouched, a fresh semaphore takes its
    // place, and its tokens start above every token the old value shows and the clock.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = raw(&server);
    let url = server.url("s");
    let garbage = br#"{"next_token": 9000000000000000, "holders": [{"tok"#.to_vec();
    let _: () = con.set("s", &garbage).unwrap();
    let recovered = Semaphore::recover_redis(&url, 3).unwrap();
    let aside = recovered.moved_to.expect("moved aside");
    let aside = aside.to_str().unwrap();
    let prefix = format!("redis://127.0.0.1:{}/0/s.corrupt-", server.port());
    assert!(aside.starts_with(&prefix), "{aside}");
    let aside_key = &aside[prefix.len() - "s.corrupt-".len()..];
    let kept: Vec<u8> = con.get(aside_key).unwrap();
    assert_eq!(kept, garbage);
    let sem = recovered.semaphore;
    assert_eq!(sem.capacity().unwrap(), 3);
    assert_eq!(sem.try_acquire("a").unwrap().token(), 9_000_000_000_000_001);

    // A key of another type has no tokens: the server's clock bounds them.
    let _: () = con.del("s").unwrap();
    let _: () = con.hset("s", "f", "v").unwrap();
    let before = server_time(&server);
    let recovered = Semaphore::recover_redis(&url, 1).unwrap();
    assert!(recovered.moved_to.is_some());
    let token = recovered.semaphore.try_acquire("b").unwrap().token();
    assert!(
        token >= u64::try_from(before.timestamp_micros()).unwrap(),
        "{token}"
    );
    // A valid key is left alone; a missing one is created.
    let again = Semaphore::recover_redis(&url, 7).unwrap();
    assert!(again.moved_to.is_none());
    assert_eq!(again.semaphore.capacity().unwrap(), 1);
    let fresh = Semaphore::recover_redis(&server.url("new"), 2).unwrap();
    assert!(fresh.moved_to.is_none());
    assert_eq!(fresh.semaphore.capacity().unwrap(), 2);
}

#[test]
fn file_and_redis_semaphores_of_the_same_name_never_touch_each_other() {
    // A file semaphore `jobs` and a Redis key `jobs` side by side: opening and using either
    // creates nothing on the other side and changes nothing there.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = common::tmpfs_dir();
    let path = dir.path().join("jobs");
    let redis_sem = Semaphore::open_redis(&server.url("jobs"), 1).unwrap();
    let _r = redis_sem.try_acquire("on-redis").unwrap();
    assert!(common::snapshot(dir.path()).is_empty(), "no file was made");
    let before: Vec<u8> = raw(&server).get("jobs").unwrap();

    let file_sem = OpenOptions::new().durable(false).open(&path, 1).unwrap();
    let _f = file_sem.try_acquire("on-file").unwrap();
    let keys: Vec<String> = raw(&server).keys("*").unwrap();
    assert_eq!(keys, ["jobs"]);
    let after: Vec<u8> = raw(&server).get("jobs").unwrap();
    assert_eq!(after, before);
    assert_eq!(file_sem.holders().unwrap()[0].id, "on-file");
    assert_eq!(redis_sem.holders().unwrap()[0].id, "on-redis");
    assert!(file_sem.redis_stats().is_none());
    assert!(redis_sem.redis_stats().unwrap().commits >= 2);
}

#[test]
fn a_stopped_server_fails_operations_with_typed_errors_and_recovery_follows() {
    // SIGSTOP: every operation fails with RedisTimeout within its timeouts (plus a margin),
    // never hangs; after SIGCONT the same handle works, and the hold taken before is intact.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let sem = impatient().open_redis(&server.url("s"), 2).unwrap();
    let held = sem.try_acquire("held").unwrap();
    server.pause();
    let bounded = Duration::from_secs(15);
    let started = Instant::now();
    let err = sem.try_acquire("new").unwrap_err();
    assert!(matches!(err, Error::RedisTimeout { .. }), "{err}");
    assert!(started.elapsed() < bounded, "{:?}", started.elapsed());
    for result in [
        sem.count().map(|_| ()),
        sem.holders().map(|_| ()),
        sem.set_capacity(3),
        sem.release("held"),
        sem.acquire_timeout("waiter", Duration::from_millis(100))
            .map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::RedisTimeout { .. }), "{err}");
    }
    assert!(started.elapsed() < bounded * 5, "{:?}", started.elapsed());
    server.resume();
    let new = sem.try_acquire("new").unwrap();
    assert!(
        new.token() > held.token(),
        "{} after {}",
        new.token(),
        held.token()
    );
    assert!(held.is_held().unwrap());
    assert_eq!(sem.count().unwrap(), 2);
}

#[test]
fn a_permit_whose_renewals_fail_for_a_whole_lease_is_lost_for_good() {
    // The server is down longer than the lease: the permit finds out on its own clock
    // (is_held false, is_lost true, the callback with LeaseExpired), and once the server is
    // back it never renews the entry again; releasing still removes it.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    // appendonly: the entry survives the server's death.
    server.restart_durable();
    let sem = impatient().open_redis(&server.url("s"), 1).unwrap();
    let opts = AcquireOptions::new().lease(MIN_LEASE);
    let mut permit = sem.try_acquire_with("job", &opts).unwrap();
    let (tx, rx) = mpsc::channel();
    permit
        .keep_alive_with(move |e| {
            let _ = tx.send(e.to_string());
        })
        .unwrap();
    let renewed = sem.holders().unwrap()[0].expires_at;
    server.kill();
    let lost = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(
        lost.contains("ran out before it could be renewed"),
        "{lost}"
    );
    assert!(permit.is_lost());
    assert!(!permit.is_held().unwrap(), "answered without the server");
    assert!(!permit.is_kept_alive());

    server.restart();
    let entry = sem.holders().unwrap();
    assert_eq!(entry.len(), 1, "nobody reaped it meanwhile");
    let at_restart = entry[0].expires_at;
    assert!(at_restart >= renewed);
    let err = permit.renew().unwrap_err();
    assert!(matches!(err, Error::LeaseExpired { .. }), "{err}");
    let err = sem.try_acquire("job").unwrap_err();
    assert!(matches!(err, Error::AlreadyHeld { .. }), "{err}");
    // Several renewal periods later the entry is still as it was: not renewed back.
    std::thread::sleep(MIN_LEASE);
    assert_eq!(sem.holders().unwrap()[0].expires_at, at_restart);
    assert!(!permit.is_held().unwrap());
    permit.release().unwrap();
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn an_acquire_the_replicas_did_not_confirm_is_released_and_fails() {
    // With replica acknowledgement on a server without replicas, a grant is undone and the
    // acquire fails with NotReplicated; other operations report it, their change made.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("s");
    Semaphore::open_redis(&url, 1).unwrap();
    let mut o = OpenOptions::new();
    o.replica_ack(1, Duration::from_millis(50));
    let sem = o.open_redis_existing(&url).unwrap();
    let err = sem.try_acquire("a").unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotReplicated {
                wanted: 1,
                acked: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(sem.count().unwrap(), 0, "the grant was released again");
    let err = sem
        .acquire_timeout("b", Duration::from_secs(5))
        .unwrap_err();
    assert!(matches!(err, Error::NotReplicated { .. }), "{err}");
    assert_eq!(sem.count().unwrap(), 0);
    let err = sem.set_capacity(4).unwrap_err();
    assert!(matches!(err, Error::NotReplicated { .. }), "{err}");
    assert_eq!(sem.capacity().unwrap(), 4, "the change is on the primary");
}

#[test]
fn a_waiter_wakes_on_a_notice_and_a_cancel_ends_its_wait() {
    // The waiter sleeps on its doorbell and its cancel socket together: a cancel ends the
    // wait at once and leaves the queue; a release is seen without polling the server.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let sem = Semaphore::open_redis(&server.url("s"), 1).unwrap();
    let held = sem.try_acquire("held").unwrap();
    let token = filesem::CancelToken::new();
    let opts = AcquireOptions::new().cancel_token(&token);
    let (tx, rx) = mpsc::channel();
    let waiter = sem.clone();
    std::thread::spawn(move || tx.send(waiter.acquire_with("w", &opts)).unwrap());
    wait_until(deadline(30), "the waiter to queue", || {
        sem.waiters().unwrap().len() == 1
    });
    token.cancel();
    let err = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err}");
    assert!(sem.waiters().unwrap().is_empty());

    let (tx, rx) = mpsc::channel();
    let waiter = sem.clone();
    std::thread::spawn(move || tx.send(waiter.acquire("w2")).unwrap());
    wait_until(deadline(30), "the waiter to queue", || {
        sem.waiters().unwrap().len() == 1
    });
    held.release().unwrap();
    let permit = rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!(permit.id(), "w2");
}

#[test]
fn the_readme_example_works_against_a_server() {
    // The README's Redis example, with a private server's URL (the README compiles it but
    // has no server to run it against).
    let Some(server) = RedisServer::start_with_password("s3cret") else {
        return;
    };
    let url = server.url("gpus");
    assert!(url.starts_with("redis://:s3cret@127.0.0.1:") && url.ends_with("/0/gpus"));
    let sem = Semaphore::open_redis(&url, 4).unwrap();
    let opts = AcquireOptions::new().timeout(Duration::from_secs(60));
    let permit = sem.acquire_with("trainer-7", &opts).unwrap();
    println!(
        "GPU {} with fencing token {}",
        permit.slot(),
        permit.token()
    );
    assert_eq!(permit.slot(), 0);
    assert!(permit.token() > 1_700_000_000_000_000, "{}", permit.token());
    assert!(!permit.is_lost());
    permit.release().unwrap();
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn acquires_timing_out_under_contention_leave_no_entry_behind() {
    // A call that times out leaves the queue (and hands on a slot handed to it meanwhile)
    // even when its leave loses races to other writers: on Redis nothing but a lease would
    // end an entry left behind, so the slots would stay taken for the lease.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("contended-timeouts");
    let handles: Vec<Semaphore> = (0..4)
        .map(|_| Semaphore::open_redis(&url, 2).unwrap())
        .collect();
    let workers: Vec<_> = handles
        .iter()
        .enumerate()
        .flat_map(|(h, sem)| (0..20).map(move |t| (h, t, sem.clone())))
        .map(|(h, t, sem)| {
            std::thread::spawn(move || {
                let id = format!("h{h}-t{t}");
                let mut outcomes = (0, 0);
                for _ in 0..25 {
                    let patience = Duration::from_millis(fastrand::u64(1..20));
                    match sem.acquire_timeout(&id, patience) {
                        Ok(permit) => {
                            std::thread::sleep(Duration::from_millis(1));
                            permit.release().unwrap();
                            outcomes.0 += 1;
                        }
                        Err(Error::Timeout { .. } | Error::Contended { .. }) => outcomes.1 += 1,
                        Err(other) => panic!("{id}: {other:?}"),
                    }
                }
                outcomes
            })
        })
        .collect();
    let (mut grants, mut timeouts) = (0, 0);
    for worker in workers {
        let (g, t) = worker.join().unwrap();
        grants += g;
        timeouts += t;
    }
    assert_eq!(grants + timeouts, 4 * 20 * 25);
    assert!(
        grants > 0 && timeouts > 0,
        "{grants} grants, {timeouts} timeouts"
    );
    let sem = &handles[0];
    let ids = |list: Vec<filesem::HolderInfo>| list.into_iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(ids(sem.holders().unwrap()), Vec::<String>::new());
    assert_eq!(ids(sem.waiters().unwrap()), Vec::<String>::new());
    assert_eq!(sem.available().unwrap(), 2);
}
