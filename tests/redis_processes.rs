//! Redis semaphores shared by real processes (the test binary re-running itself in a role,
//! see `tests/common/mod.rs`), each test with a private `redis-server` (SKIPPED without one,
//! a failure under `CI=true`): random SIGKILLs under contention, a holder stopped past its
//! lease, the server restarted mid-run, and the queue across processes.
//!
//! The capacity is checked independently of Redis: a holder claims one of `capacity` marker
//! files with `O_EXCL` after its grant and removes it before its release; finding them all
//! taken is a violation. The parent removes the markers of a process it kills (its slot
//! cannot be granted again before its lease runs out, seconds later).

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use filesem::{AcquireOptions, CancelToken, Error, OpenOptions, Semaphore};

use common::{ChildSpec, Group, arg, deadline, role, say, wait_for_parent};
use redis_server::RedisServer;

/// Timeouts short enough that a stopped or restarted server costs a worker a second, not
/// the test's deadline.
fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .lock_timeout(Duration::from_secs(5));
    o
}

#[test]
#[ignore = "a child-process role, started by the tests in this file"]
fn child_process() {
    // Not a test of its own: the body of the processes the tests in this file start.
    let Some(role) = role() else {
        return;
    };
    let url = arg("URL");
    match role.as_str() {
        "worker" => worker(&url),
        "holder" => holder(&url),
        "waiter" => waiter(&url),
        "threads" => threads(&url),
        other => panic!("unknown role {other}"),
    }
}

fn child(role: &str, name: &str, url: &str) -> ChildSpec {
    ChildSpec::new(name, "child_process", role).arg("URL", url)
}

// ------------------------------------------------------------------------------- workers

/// Loops until stdin closes: acquire (waiting in the queue), claim a marker, log the grant,
/// hold a few milliseconds, drop the marker, release. Errors (a restarted server) are
/// counted and retried. Says `DONE grants errors lost steps retries` at the end (the last
/// two from its client's counters), `VIOLATION ...` when every marker is taken.
fn worker(url: &str) {
    common::seed("worker");
    let capacity: usize = arg("CAPACITY").parse().unwrap();
    let markers = std::path::PathBuf::from(arg("MARKERS"));
    let log = std::path::PathBuf::from(arg("LOG"));
    let lease = Duration::from_millis(arg("LEASE_MS").parse().unwrap());
    let mut o = options();
    o.default_lease(Some(lease));
    let sem = o.open_redis_existing(url).unwrap();
    let me = std::process::id();
    let id = format!("worker-{me}");
    let stop = CancelToken::new();
    std::thread::spawn({
        let stop = stop.clone();
        move || {
            wait_for_parent();
            stop.cancel();
        }
    });
    let opts = AcquireOptions::new()
        .timeout(Duration::from_secs(60))
        .cancel_token(&stop);
    let (mut grants, mut errors, mut lost) = (0u64, 0u64, 0u64);
    say("READY");
    while !stop.is_cancelled() {
        let permit = match sem.acquire_with(&id, &opts) {
            Ok(p) => p,
            Err(Error::Cancelled { .. }) => break,
            Err(e) => {
                errors += 1;
                eprintln!("worker {me}: {e}");
                std::thread::sleep(Duration::from_millis(20 + fastrand::u64(..30)));
                continue;
            }
        };
        grants += 1;
        let marker = claim(&markers, capacity, me);
        let line = format!(
            "{} {} {me}\n",
            permit.token(),
            permit.acquired_at().timestamp_micros()
        );
        fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_micros(fastrand::u64(..8_000)));
        if permit.is_lost() {
            lost += 1;
        }
        if let Some(marker) = marker {
            fs::remove_file(marker).unwrap();
        }
        if let Err(e) = permit.release() {
            errors += 1;
            eprintln!("worker {me}: release: {e}");
        }
    }
    let stats = sem.redis_stats().unwrap();
    say(format!(
        "DONE {grants} {errors} {lost} {} {}",
        stats.steps, stats.retries
    ));
}

/// Claims a free marker among `capacity`; `None` (after saying `VIOLATION`) if every one is
/// taken by another holder.
fn claim(markers: &Path, capacity: usize, me: u32) -> Option<std::path::PathBuf> {
    for slot in 0..capacity {
        let marker = markers.join(format!("m{slot}"));
        if let Ok(mut f) = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
        {
            write!(f, "{me}").unwrap();
            return Some(marker);
        }
    }
    let taken: Vec<String> = (0..capacity)
        .map(|s| fs::read_to_string(markers.join(format!("m{s}"))).unwrap_or_default())
        .collect();
    say(format!("VIOLATION every marker taken, by {taken:?}"));
    None
}

/// Removes the markers of the killed process `pid`.
fn clean_markers(markers: &Path, pid: u32) {
    for entry in fs::read_dir(markers).unwrap() {
        let path = entry.unwrap().path();
        if fs::read_to_string(&path).is_ok_and(|who| who == pid.to_string()) {
            let _ = fs::remove_file(path);
        }
    }
}

/// The grants in the log: (token, acquired_at in microseconds).
fn logged(log: &Path) -> Vec<(u64, i64)> {
    fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// What a run of workers showed.
struct Run {
    violations: Vec<String>,
    grants: Vec<(u64, i64)>,
    kills: u32,
    errors: u64,
    lost: u64,
    elapsed: Duration,
    /// The surviving workers' grants, steps and lost races.
    contention: String,
}

/// Runs 8 workers on the capacity-2 semaphore at `url` until `target` grants are logged,
/// calling `meddle` (with the number logged so far) between looks; SIGKILLs a random worker
/// after every 60-120 grants while `kill` says so, starting another in its place. (A killed
/// holder keeps its slot for its lease and the grace, 4 s, and so does a killed waiter once
/// the queue hands it a slot: killing more often would leave the workers little but
/// waiting.)
fn run_workers(
    url: &str,
    seed: u64,
    target: usize,
    min_kills: u32,
    mut kill: impl FnMut(usize) -> bool,
    mut meddle: impl FnMut(usize),
) -> Run {
    let dir = common::tmpfs_dir();
    let markers = dir.path().join("markers");
    fs::create_dir(&markers).unwrap();
    let log = dir.path().join("grants.log");
    fs::write(&log, "").unwrap();
    let mut group = Group::new();
    let spawn = |group: &mut Group| {
        let n = group.len() as u64;
        let idx = group.spawn(
            child("worker", &format!("worker#{n}"), url)
                .arg("CAPACITY", 2)
                .arg("MARKERS", markers.display())
                .arg("LOG", log.display())
                .arg("LEASE_MS", 2000)
                .seed(common::derive_seed(seed, n)),
        );
        group.expect(idx, "READY", deadline(60));
        idx
    };
    let mut workers: Vec<usize> = (0..8).map(|_| spawn(&mut group)).collect();
    let mut kills = 0;
    let until = deadline(300);
    let gap = || 60 + fastrand::usize(..60);
    let started = Instant::now();
    let mut next_kill = gap();
    loop {
        let done = logged(&log).len();
        // On a loaded machine a kill and its replacement's start can take long enough for
        // many grants to pass: the run goes on until it has killed `min_kills` workers too.
        if done >= target && kills >= min_kills {
            break;
        }
        assert!(
            Instant::now() < until,
            "only {done} of {target} grants before the deadline ({kills} kills)"
        );
        meddle(done);
        if done >= next_kill && (kill(done) || kills < min_kills) {
            let i = fastrand::usize(..workers.len());
            let pid = group.pid(workers[i]);
            group.kill(workers[i], deadline(10));
            clean_markers(&markers, pid);
            kills += 1;
            workers[i] = spawn(&mut group);
            next_kill = done + gap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    let finished = group.finish(deadline(120));
    let violations = finished
        .iter()
        .flat_map(|f| f.lines_of("VIOLATION"))
        .map(str::to_string)
        .collect();
    let (mut errors, mut lost) = (0, 0);
    let (mut survivors, mut steps, mut retries) = (0, 0, 0);
    for &idx in &workers {
        let f = &finished[idx];
        assert!(f.status.success(), "{} failed: {}", f.name, f.status);
        let done = f.lines_of("DONE");
        assert_eq!(done.len(), 1, "{}: {:?}", f.name, f.lines);
        let n: Vec<u64> = done[0].split(' ').map(|n| n.parse().unwrap()).collect();
        errors += n[1];
        lost += n[2];
        survivors += n[0];
        steps += n[3];
        retries += n[4];
    }
    Run {
        violations,
        grants: logged(&log),
        kills,
        errors,
        lost,
        elapsed,
        contention: format!(
            "survivors: {survivors} grants, {steps} steps, {retries} lost races \
             ({:.2} per grant)",
            retries as f64 / survivors.max(1) as f64
        ),
    }
}

/// Tokens are distinct, and increase in the order of the grants (the server's time of the
/// read that granted them; one write may grant several at one time).
fn check_tokens(grants: &[(u64, i64)]) {
    let mut by_time = grants.to_vec();
    by_time.sort_by_key(|&(token, at)| (at, token));
    for pair in by_time.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "token {} granted at {} before token {} at {}",
            pair[0].0,
            pair[0].1,
            pair[1].0,
            pair[1].1
        );
    }
}

/// Waits until every entry left by killed processes is reaped by its lease: no holder and
/// no waiter, the whole capacity available.
fn wait_until_empty(sem: &Semaphore) {
    common::wait_until(deadline(60), "killed holders' leases to run out", || {
        sem.reap().unwrap();
        sem.count().unwrap() == 0 && sem.waiters().unwrap().is_empty()
    });
    assert_eq!(sem.available().unwrap(), 2);
}

#[test]
fn workers_killed_at_random_never_exceed_the_capacity_and_their_slots_come_back() {
    // 8 processes, capacity 2, 1600 grants, a SIGKILL every 60-120 grants: the markers
    // never see three holders, tokens never repeat and grow in grant order, and every killed
    // holder's slot comes back when its 2 s lease runs out.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let seed = common::seed("workers_killed_at_random");
    let url = server.url("stress");
    let sem = options().open_redis(&url, 2).unwrap();
    let run = run_workers(&url, seed, 1600, 10, |done| done < 1450, |_| {});
    let stats = format!(
        "seed={seed} processes=8 capacity=2 grants={} in {:.1} s kills={} errors={} lost={} \
         violations={}",
        run.grants.len(),
        run.elapsed.as_secs_f64(),
        run.kills,
        run.errors,
        run.lost,
        run.violations.len()
    );
    println!("redis stress: {stats}; {}", run.contention);
    assert!(run.violations.is_empty(), "{stats}: {:?}", run.violations);
    assert!(run.kills >= 10, "{stats}");
    check_tokens(&run.grants);
    wait_until_empty(&sem);
}

#[test]
fn a_server_restarted_mid_run_loses_no_grant_and_reuses_no_token() {
    // appendonly yes + appendfsync always: the server is SIGKILLed and restarted in the
    // middle of a contention run; workers see errors for a moment, then go on, with no
    // capacity violation and no token handed out twice.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    server.restart_durable();
    let seed = common::seed("server_restarted_mid_run");
    let url = server.url("durable");
    let sem = options().open_redis(&url, 2).unwrap();
    let mut restarted = false;
    let run = run_workers(
        &url,
        seed,
        1000,
        0,
        |_| false,
        |done| {
            if !restarted && done >= 400 {
                server.restart();
                restarted = true;
            }
        },
    );
    let stats = format!(
        "seed={seed} grants={} in {:.1} s errors={} lost={} violations={}",
        run.grants.len(),
        run.elapsed.as_secs_f64(),
        run.errors,
        run.lost,
        run.violations.len()
    );
    println!("redis restart: {stats}; {}", run.contention);
    assert!(restarted);
    assert!(run.violations.is_empty(), "{stats}: {:?}", run.violations);
    let mut tokens: Vec<u64> = run.grants.iter().map(|g| g.0).collect();
    tokens.sort_unstable();
    let before = tokens.len();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        before,
        "a token was handed out twice: {stats}"
    );
    check_tokens(&run.grants);
    wait_until_empty(&sem);
}

// --------------------------------------------------------------- a holder stopped too long

/// Takes a hold with a 1 s lease and a keep-alive that says `LOST <error>`; says
/// `HELD <token>`; on `check`, says what the permit thinks; releases when stdin closes.
fn holder(url: &str) {
    let sem = options().open_redis_existing(url).unwrap();
    let opts = AcquireOptions::new().lease(filesem::MIN_LEASE);
    let mut permit = sem.try_acquire_with("stopped", &opts).unwrap();
    permit
        .keep_alive_with(|e| say(format!("LOST {e}")))
        .unwrap();
    say(format!("HELD {}", permit.token()));
    assert_eq!(wait_for_parent(), "check");
    let renew = match permit.renew() {
        Ok(_) => "renewed".to_string(),
        Err(Error::LeaseExpired { .. }) => "lease-expired".to_string(),
        Err(e) => format!("error {e}"),
    };
    say(format!(
        "STATE held={} lost={} renew={renew}",
        permit.is_held().unwrap(),
        permit.is_lost()
    ));
    wait_for_parent();
    let released = permit.release();
    say(format!("RELEASED {}", released.is_ok()));
}

#[test]
fn a_holder_stopped_past_its_lease_loses_the_slot_and_learns_it() {
    // SIGSTOP the holder: its lease runs out, the next holder gets the slot with a larger
    // token; after SIGCONT the stopped one finds out (callback, is_held false) and never
    // renews its hold back.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("s");
    let sem = options().open_redis(&url, 1).unwrap();
    let mut group = Group::new();
    let idx = group.spawn(child("holder", "holder", &url));
    let held = group.expect(idx, "HELD", deadline(60));
    let stopped_token: u64 = held["HELD ".len()..].parse().unwrap();
    let pid = nix::unistd::Pid::from_raw(group.pid(idx) as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let next = {
        let resume = resume_on_drop(pid);
        let next = sem
            .acquire_timeout("next", Duration::from_secs(60))
            .unwrap();
        drop(resume);
        next
    };
    assert!(next.token() > stopped_token);
    let lost = group.expect(idx, "LOST", deadline(60));
    assert!(
        lost.contains("ran out before it could be renewed"),
        "{lost}"
    );
    group.send(idx, "check");
    let state = group.expect(idx, "STATE", deadline(60));
    assert_eq!(state, "STATE held=false lost=true renew=lease-expired");
    let holders = sem.holders().unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].token, Some(next.token()));
    group.send(idx, "release");
    let released = group.expect(idx, "RELEASED", deadline(60));
    assert_eq!(released, "RELEASED false", "its entry was reaped: Lost");
    assert_eq!(sem.holders().unwrap()[0].token, Some(next.token()));
    assert!(next.is_held().unwrap());
}

/// Sends SIGCONT to `pid` when dropped, so that a failing test never leaves it stopped.
fn resume_on_drop(pid: nix::unistd::Pid) -> impl Drop {
    struct Resume(nix::unistd::Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
        }
    }
    Resume(pid)
}

// --------------------------------------------------------------------------- the queue

/// Waits for the slot with the priority and lease given; says `QUEUED` when it waits and
/// `GRANTED <token>` when it holds; releases on `release` and says `RELEASED`.
fn waiter(url: &str) {
    let sem = options().open_redis_existing(url).unwrap();
    let opts = AcquireOptions::new()
        .priority(arg("PRIORITY").parse().unwrap())
        .lease(Duration::from_millis(arg("LEASE_MS").parse().unwrap()))
        .timeout(Duration::from_secs(120))
        .on_wait(|_| say("QUEUED"));
    let permit = sem.acquire_with(&arg("ID"), &opts).unwrap();
    say(format!("GRANTED {}", permit.token()));
    assert_eq!(wait_for_parent(), "release");
    permit.release().unwrap();
    say("RELEASED");
}

fn queue_up(group: &mut Group, url: &str, id: &str, priority: i32, lease_ms: u64) -> usize {
    let idx = group.spawn(
        child("waiter", id, url)
            .arg("ID", id)
            .arg("PRIORITY", priority)
            .arg("LEASE_MS", lease_ms),
    );
    group.expect(idx, "QUEUED", deadline(60));
    idx
}

#[test]
fn waiters_in_other_processes_are_served_by_priority_then_arrival_by_hand_off() {
    // Four processes queue behind a holder in this one; each release hands the slot to the
    // next in another process: higher priority first, first come first served within one,
    // tokens growing in that order.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("q");
    let sem = options().open_redis(&url, 1).unwrap();
    let held = sem.try_acquire("parent").unwrap();
    let mut group = Group::new();
    let mut idx = std::collections::HashMap::new();
    for (id, priority) in [("a", 0), ("b", 0), ("vip", 5), ("c", 0)] {
        idx.insert(id, queue_up(&mut group, &url, id, priority, 30_000));
    }
    let queue: Vec<String> = sem.waiters().unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(queue, ["vip", "a", "b", "c"]);
    let mut last = held.token();
    held.release().unwrap();
    for id in ["vip", "a", "b", "c"] {
        let i = idx[id];
        let granted = group.expect(i, "GRANTED", deadline(60));
        let token: u64 = granted["GRANTED ".len()..].parse().unwrap();
        assert!(token > last, "{id}: {token} after {last}");
        last = token;
        assert_eq!(sem.holders().unwrap()[0].id, id);
        group.send(i, "release");
        group.expect(i, "RELEASED", deadline(60));
    }
    assert_eq!(sem.count().unwrap(), 0);
    group.finish(deadline(60));
}

#[test]
fn a_killed_waiter_at_the_head_of_the_queue_is_skipped_after_its_lease() {
    // The head of the queue is SIGKILLed: the slot released to it (or its queue entry) runs
    // out by its lease, and the next waiter gets the slot; nobody has to remove it.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("q");
    let sem = options().open_redis(&url, 1).unwrap();
    let held = sem.try_acquire("parent").unwrap();
    let parent_token = held.token();
    let mut group = Group::new();
    let dead = queue_up(&mut group, &url, "dead", 0, 1_000);
    let next = queue_up(&mut group, &url, "next", 0, 30_000);
    group.kill(dead, deadline(10));
    held.release().unwrap();
    let granted = group.expect(next, "GRANTED", deadline(60));
    let token: u64 = granted["GRANTED ".len()..].parse().unwrap();
    assert!(token > parent_token);
    let holders = sem.holders().unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].id, "next");
    assert!(sem.waiters().unwrap().is_empty());
    group.send(next, "release");
    group.expect(next, "RELEASED", deadline(60));
}

#[test]
fn a_killed_queue_head_with_a_2s_lease_expires_by_that_lease_and_the_next_waiter_gets_the_slot() {
    // A waiter's expiry in the queue is its acquire's lease (not a fixed 6 s): the killed head
    // is dropped once its 2 s lease plus the grace has passed, while the slot is still held,
    // and the waiter behind it gets the slot at the release.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("q");
    let sem = options().open_redis(&url, 1).unwrap();
    let held = sem
        .try_acquire_with(
            "parent",
            &AcquireOptions::new().lease(Duration::from_secs(120)),
        )
        .unwrap();
    let mut group = Group::new();
    let dead = queue_up(&mut group, &url, "dead", 0, 2_000);
    let next = queue_up(&mut group, &url, "next", 0, 30_000);
    let queue = sem.waiters().unwrap();
    let now = server_time(&server);
    // Each entry's expiry is at most its lease ahead of the server's clock, and at least
    // two thirds of it (it is renewed a third of its lease apart).
    assert_eq!(queue[0].id, "dead");
    let ahead = |w: &filesem::HolderInfo| w.expires_at.unwrap() - now;
    assert!(
        ahead(&queue[0]) <= chrono::TimeDelta::seconds(2),
        "{:?}",
        queue[0]
    );
    assert_eq!(queue[1].id, "next");
    assert!(
        ahead(&queue[1]) >= chrono::TimeDelta::seconds(19),
        "{:?}",
        queue[1]
    );
    assert!(
        ahead(&queue[1]) <= chrono::TimeDelta::seconds(30),
        "{:?}",
        queue[1]
    );
    group.kill(dead, deadline(10));
    common::wait_until(deadline(60), "the dead head to leave the queue", || {
        sem.waiters().unwrap().iter().all(|w| w.id != "dead")
    });
    // Dropped from the queue, never granted: the parent still holds the only slot.
    let holders = sem.holders().unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].id, "parent");
    let waiting: Vec<String> = sem.waiters().unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(waiting, ["next"]);
    let parent_token = held.token();
    held.release().unwrap();
    let granted = group.expect(next, "GRANTED", deadline(60));
    let token: u64 = granted["GRANTED ".len()..].parse().unwrap();
    assert!(token > parent_token);
    group.send(next, "release");
    group.expect(next, "RELEASED", deadline(60));
}

#[test]
fn a_lone_waiter_refreshes_its_expiry_a_third_of_its_lease_apart() {
    // A Redis waiter writes the key only to renew its expiry, a third of its lease apart: with
    // a 9 s lease at most 4 writes in 10 s (a fixed 2 s refresh would make 5), each moving
    // its expiry by at least 3 s of the server's time, to 9 s after the renewal.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("q");
    let sem = options().open_redis(&url, 1).unwrap();
    // Detached: its lease is never renewed, so the waiter is the only writer.
    let held = sem
        .try_acquire_with(
            "parent",
            &AcquireOptions::new()
                .detached(true)
                .lease(Duration::from_secs(120)),
        )
        .unwrap();
    let mut group = Group::new();
    let waiter = queue_up(&mut group, &url, "w", 0, 9_000);
    let client = redis::Client::open(server.server_url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let read =
        |con: &mut redis::Connection| -> String { redis::cmd("GET").arg("q").query(con).unwrap() };
    let mut last = read(&mut con);
    let mut writes = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
        let now = read(&mut con);
        if now != last {
            writes.push(now.clone());
            last = now;
        }
    }
    assert!(
        (1..=4).contains(&writes.len()),
        "{} writes in 10 s",
        writes.len()
    );
    let expiries: Vec<chrono::DateTime<chrono::Utc>> = writes
        .iter()
        .map(|doc| {
            let v: serde_json::Value = serde_json::from_str(doc).unwrap();
            let w = &v["waiters"][0];
            assert_eq!(w["id"], "w", "only the waiter's entry changes: {doc}");
            assert_eq!(v["holders"][0]["id"], "parent");
            w["expires_at"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    for pair in expiries.windows(2) {
        assert!(
            pair[1] - pair[0] >= chrono::TimeDelta::seconds(3),
            "{expiries:?}"
        );
    }
    let queue = sem.waiters().unwrap();
    assert_eq!(queue.len(), 1);
    held.release().unwrap();
    group.expect(waiter, "GRANTED", deadline(60));
    group.send(waiter, "release");
    group.expect(waiter, "RELEASED", deadline(60));
}

/// The server's clock (`TIME`).
fn server_time(server: &RedisServer) -> chrono::DateTime<chrono::Utc> {
    let client = redis::Client::open(server.server_url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut con).unwrap();
    chrono::DateTime::from_timestamp(secs, (micros * 1000) as u32).unwrap()
}

// ----------------------------------------------------------------- keep-alive threads

/// The threads of this process.
fn threads_now() -> usize {
    fs::read_dir("/proc/self/task").unwrap().count()
}

/// Takes and releases a hold (which starts what runs once per process), then takes one
/// with a 300 s lease (its keep-alive thread due 50 s later) and says `SHORT <new threads>`;
/// then takes one with a 1 s lease, waits for its renewal, and says `LONG <new threads>`.
fn threads(url: &str) {
    let sem = options().open_redis_existing(url).unwrap();
    let long = AcquireOptions::new().lease(Duration::from_secs(300));
    sem.try_acquire_with("warm-up", &long)
        .unwrap()
        .release()
        .unwrap();
    let before = threads_now();
    let short = sem.try_acquire_with("short", &long).unwrap();
    assert!(short.is_kept_alive(), "a pending keep-alive counts");
    say(format!("SHORT {}", threads_now() - before));
    short.release().unwrap();
    let held = sem
        .try_acquire_with("renewed", &AcquireOptions::new().lease(filesem::MIN_LEASE))
        .unwrap();
    let first = sem.holders().unwrap()[0].expires_at.unwrap();
    common::wait_until(deadline(60), "a renewal", || {
        sem.holders().unwrap()[0].expires_at.unwrap() > first
    });
    say(format!("LONG {}", threads_now() - before));
    held.release().unwrap();
}

#[test]
fn a_redis_hold_released_early_never_starts_a_keep_alive_thread_and_a_longer_one_is_renewed() {
    // A Redis permit's keep-alive thread starts half a renewal interval after the grant:
    // short holds cost no thread, a hold that lives on is renewed by one.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("t");
    options().open_redis(&url, 1).unwrap();
    let mut group = Group::new();
    let child = group.spawn(child("threads", "threads", &url));
    assert_eq!(group.expect(child, "SHORT", deadline(60)), "SHORT 0");
    assert_eq!(group.expect(child, "LONG", deadline(60)), "LONG 1");
    group.finish(deadline(60));
}
