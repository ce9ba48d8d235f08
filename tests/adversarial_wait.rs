//! Attacks on the waiting guarantees: many processes queueing with random priorities,
//! timeouts, cancels, panicking `on_wait` callbacks and SIGKILLs, judged by an observer that
//! reads every state file it can catch (queue order, hand-off order, no idle slot while
//! someone waits) and by kill-tolerant per-slot markers; a waiter stopped past its expiry;
//! the directories pulled away under a waiter. Every wait has a deadline.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{ChildSpec, Group, arg, say};
use filesem::{AcquireOptions, CancelToken, Error, OpenOptions, Semaphore};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

fn quick() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durable(false).lock_timeout(Duration::from_secs(10));
    o
}

fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.contains(") Z "),
        Err(_) => false,
    }
}

/// Claims the marker of a slot: created whole (written to a private name, then hard-linked),
/// so a reader never sees it empty. A marker already there belongs to a dead process
/// (replaced) or to a live holder of the same slot: a violation, said to the parent.
fn claim_marker(markers: &Path, slot: u32, me: u32) -> PathBuf {
    let marker = markers.join(format!("slot-{slot}"));
    let mine = markers.join(format!("tmp-{me}"));
    fs::write(&mine, me.to_string()).unwrap();
    let start = Instant::now();
    loop {
        match fs::hard_link(&mine, &marker) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let other = fs::read_to_string(&marker).unwrap_or_default();
                let pid: u32 = other.parse().unwrap_or(0);
                if pid != 0 && process_alive(pid) {
                    if start.elapsed() > Duration::from_secs(2) {
                        say(format!("VIOLATION slot {slot} held by live pid {pid} too"));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                // Only the dead one's marker goes: compare before removing.
                if fs::read_to_string(&marker).unwrap_or_default() == other {
                    let _ = fs::remove_file(&marker);
                }
            }
            Err(e) => panic!("marker {}: {e}", marker.display()),
        }
    }
    let _ = fs::remove_file(&mine);
    marker
}

// ---------------------------------------------------------------------------------------
// The observer: every snapshot of the state file it can read, checked alone and against the
// one before.

#[derive(Clone, Debug)]
struct Seen {
    /// What tells the entry apart for its whole life: a waiter's ticket (kept once it is
    /// granted), else the token of a direct grant.
    key: u64,
    /// The fencing token; 0 for a waiter.
    token: u64,
    id: String,
    /// The priority the process asked for, from the metadata (it outlives the hand-off,
    /// which clears the `priority` field); `i64::MIN` for a `try_acquire` probe.
    priority: i64,
    slot: Option<u64>,
}

#[derive(Clone, Debug)]
struct Snapshot {
    capacity: usize,
    holders: Vec<Seen>,
    waiters: Vec<Seen>,
}

fn parse(bytes: &[u8]) -> Option<Snapshot> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let list = |key: &str| -> Vec<Seen> {
        v[key]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|e| Seen {
                key: e["ticket"].as_u64().or(e["token"].as_u64()).unwrap_or(0),
                token: e["token"].as_u64().unwrap_or(0),
                id: e["id"].as_str().unwrap_or_default().to_string(),
                priority: e["metadata"]["prio"]
                    .as_str()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(i64::MIN),
                slot: e["slot"].as_u64(),
            })
            .collect()
    };
    Some(Snapshot {
        capacity: v["capacity"].as_u64()? as usize,
        holders: list("holders"),
        waiters: list("waiters"),
    })
}

/// What one snapshot shows that must never be: more holders than slots, a slot twice or out
/// of range, an idle slot while someone waits, a queue out of (priority, arrival) order.
fn check_alone(s: &Snapshot, out: &mut Vec<String>) {
    if s.holders.len() > s.capacity {
        out.push(format!(
            "{} holders, capacity {}",
            s.holders.len(),
            s.capacity
        ));
    }
    let mut slots: Vec<_> = s.holders.iter().filter_map(|h| h.slot).collect();
    slots.sort_unstable();
    if slots.windows(2).any(|w| w[0] == w[1]) || slots.iter().any(|&x| x >= s.capacity as u64) {
        out.push(format!("slots {slots:?} on capacity {}", s.capacity));
    }
    if !s.waiters.is_empty() && s.holders.len() < s.capacity {
        out.push(format!(
            "{} waiting while {} of {} slots are held: {s:?}",
            s.waiters.len(),
            s.holders.len(),
            s.capacity
        ));
    }
    for w in s.waiters.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.priority < b.priority || (a.priority == b.priority && a.key > b.key) {
            out.push(format!("queue out of order: {a:?} before {b:?}"));
        }
    }
}

/// What two snapshots in a row show that must never be: a new holder served while a waiter
/// that was ahead of it (earlier in the queue, or an older waiter of at least its priority
/// when the new holder was not queued yet) is still waiting in the same entry; a new holder
/// whose fencing token is not above every token an earlier snapshot showed (`max_token`).
fn check_pair(before: &Snapshot, after: &Snapshot, max_token: u64, out: &mut Vec<String>) {
    let still_waiting: Vec<&Seen> = after
        .waiters
        .iter()
        .filter(|w| before.waiters.iter().any(|b| b.key == w.key))
        .collect();
    for h in &after.holders {
        if before.holders.iter().any(|b| b.key == h.key) {
            continue;
        }
        if h.token <= max_token {
            out.push(format!(
                "{} was granted token {} after a grant of token {max_token}",
                h.id, h.token
            ));
        }
        let position = before.waiters.iter().position(|w| w.key == h.key);
        for w in &still_waiting {
            let was_ahead = match position {
                Some(i) => before.waiters[..i].iter().any(|b| b.key == w.key),
                None => w.priority >= h.priority,
            };
            if was_ahead {
                out.push(format!(
                    "{} (entry {}, priority {}) was served while {} (entry {}, priority {}) \
                     ahead of it still waits",
                    h.id, h.key, h.priority, w.id, w.key, w.priority
                ));
            }
        }
    }
}

/// Reads the state file until `stop`; returns (snapshots checked, violations).
fn observe(path: PathBuf, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let mut out = Vec::new();
    let mut last: Option<(Vec<u8>, Snapshot)> = None;
    let mut seen = 0;
    // The largest fencing token of a holder in any snapshot before the current one.
    let mut max_token = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(bytes) = fs::read(&path) else { continue };
        if last.as_ref().is_some_and(|(b, _)| *b == bytes) {
            std::thread::yield_now();
            continue;
        }
        let snap = parse(&bytes).unwrap_or_else(|| panic!("unparseable state: {bytes:?}"));
        seen += 1;
        check_alone(&snap, &mut out);
        if let Some((_, before)) = &last {
            max_token = max_token.max(before.holders.iter().map(|h| h.token).max().unwrap_or(0));
            check_pair(before, &snap, max_token, &mut out);
        }
        last = Some((bytes, snap));
        if out.len() > 20 {
            break;
        }
    }
    (seen, out)
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn waiters_with_random_priorities_timeouts_cancels_panics_and_kills_are_served_in_order() {
    // Never more than capacity; the queue is ordered by (priority, arrival) and served in that
    // order; each new holder's fencing token is above every earlier one; try_acquire never
    // jumps it; a timeout, cancel or panic in on_wait leaves no entry
    // and leaks no slot; a killed waiter never blocks the queue; nobody hangs.
    let seed = common::seed("waiters_with_random_priorities");
    let capacity = fastrand::u32(1..=3);
    let children = 14;
    eprintln!("capacity {capacity}, {children} processes");
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let markers = dir.path().join("markers");
    fs::create_dir(&markers).unwrap();
    let sem = quick().open(&path, capacity).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let observer = {
        let (path, stop) = (path.clone(), Arc::clone(&stop));
        std::thread::spawn(move || observe(path, stop))
    };

    let mut group = Group::new();
    for i in 0..children {
        group.spawn(
            ChildSpec::new(format!("w{i}"), "child_process", "churn")
                .arg("PATH", path.display())
                .arg("ID", format!("w{i}"))
                .arg("MARKERS", markers.display())
                .seed(common::derive_seed(seed, i as u64))
                .arg("ROUNDS", 20),
        );
    }
    group.expect_all("ready", common::deadline(60));
    group.send_all("go");

    // Kill a few at random moments, holders and waiters alike; probe with try_acquire.
    let deadline = common::deadline(60);
    let victims: Vec<usize> = (0..3).map(|_| fastrand::usize(..children)).collect();
    let probe = AcquireOptions::new();
    let (mut probes, mut probe_grants) = (0, 0);
    for &v in &victims {
        let until = Instant::now() + Duration::from_millis(fastrand::u64(20..300));
        while Instant::now() < until {
            probes += 1;
            match sem.try_acquire_with("probe", &probe) {
                Ok(p) => {
                    probe_grants += 1;
                    p.release().unwrap();
                }
                Err(Error::NoCapacity { .. }) => {}
                Err(e) => panic!("probe: {e}"),
            }
            std::thread::sleep(Duration::from_millis(fastrand::u64(1..10)));
        }
        group.kill(v, deadline);
    }
    let finished = group.finish(common::deadline(60));
    stop.store(true, Ordering::Relaxed);
    let (snapshots, mut violations) = observer.join().unwrap();

    let mut totals: HashMap<String, u64> = HashMap::new();
    for f in &finished {
        for line in &f.lines {
            if line.starts_with("VIOLATION") {
                violations.push(format!("{}: {line}", f.name));
            }
        }
        for done in f.lines_of("done") {
            for pair in done.split(' ') {
                let (k, n) = pair.split_once('=').unwrap();
                *totals.entry(k.to_string()).or_default() += n.parse::<u64>().unwrap();
            }
        }
        let killed = victims.contains(&finished.iter().position(|g| g.name == f.name).unwrap());
        if !killed {
            assert!(
                f.status.success() && !f.lines_of("done").is_empty(),
                "{} did not finish its rounds: {:?} {:?}",
                f.name,
                f.status,
                f.lines
            );
        }
    }
    eprintln!(
        "{snapshots} snapshots checked; outcomes {totals:?}; {probes} probes, {probe_grants} granted"
    );
    assert!(violations.is_empty(), "violations: {violations:#?}");
    // The killed ones are provably dead: one reap leaves nothing behind.
    sem.reap().unwrap();
    assert_eq!(sem.count().unwrap(), 0, "{:?}", sem.holders().unwrap());
    assert!(sem.waiters().unwrap().is_empty(), "{:?}", sem.waiters());
    assert_eq!(sem.available().unwrap(), capacity as usize);
}

fn pid_of(group: &Group, idx: usize) -> Pid {
    Pid::from_raw(group.pid(idx) as i32)
}

/// Starts a waiter for `id`; returns its index and the ticket it queued with.
fn spawn_waiter(group: &mut Group, path: &Path, id: &str) -> (usize, u64) {
    let idx = group.spawn(
        ChildSpec::new(id, "child_process", "wait")
            .arg("PATH", path.display())
            .arg("ID", id),
    );
    group.expect(idx, "queued", common::deadline(60));
    let ticket = common::entry_on_file(path, "waiters", id).ticket;
    (idx, ticket.expect("a waiter has a ticket"))
}

/// Waits for waiter `idx` to say it acquired; checks that it was served from the entry it
/// queued with (`ticket`, in the state file at `path`) and got the token on file, above its
/// ticket; returns that token.
fn acquired_token(group: &mut Group, idx: usize, path: &Path, id: &str, ticket: u64) -> u64 {
    let line = group.expect(idx, "acquired", common::deadline(60));
    let token: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let held = common::entry_on_file(path, "holders", id);
    assert_eq!((held.token, held.ticket), (Some(token), Some(ticket)));
    assert!(
        token > ticket,
        "token {token} taken at the grant, after ticket {ticket}"
    );
    token
}

/// The queue on file: (ID, ticket) of each waiter, in service order.
fn queue_of(path: &Path) -> Vec<(String, u64)> {
    common::entries_on_file(path, "waiters")
        .into_iter()
        .map(|w| (w.id, w.ticket.unwrap_or(0)))
        .collect()
}

#[test]
fn a_waiter_stopped_past_its_expiry_queues_again_behind_and_never_takes_a_lost_slot() {
    // A waiter that stops refreshing is dropped so the queue moves; when it resumes it joins
    // at the back with a new ticket instead of claiming the place (or slot) it no longer owns.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let sem = quick().open(&path, 1).unwrap();
    let first = sem.try_acquire("first").unwrap();
    let mut group = Group::new();
    let (stopped, old_ticket) = spawn_waiter(&mut group, &path, "stopped");
    let (next, next_ticket) = spawn_waiter(&mut group, &path, "next");
    kill(pid_of(&group, stopped), Signal::SIGSTOP).unwrap();
    common::wait_until(
        common::deadline(40),
        "the stopped waiter's entry to expire",
        || queue_of(&path) == [("next".to_string(), next_ticket)],
    );
    first.release().unwrap();
    let next_token = acquired_token(&mut group, next, &path, "next", next_ticket);
    kill(pid_of(&group, stopped), Signal::SIGCONT).unwrap();
    common::wait_until(
        common::deadline(40),
        "the resumed waiter to queue again",
        || queue_of(&path).iter().any(|(id, _)| id == "stopped"),
    );
    let again = queue_of(&path);
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(
        again[0].1 > next_token,
        "a new ticket, after the others: {again:?}"
    );
    let holders: Vec<_> = sem.holders().unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(holders, ["next"], "the resumed waiter took nothing");
    group.send(next, "release");
    group.expect(next, "released", common::deadline(60));
    // Served from the entry it queued again with, never the one it lost.
    let token = acquired_token(&mut group, stopped, &path, "stopped", again[0].1);
    assert!(token > next_token);
    assert_ne!(again[0].1, old_ticket);
    group.send_all("release");
    group.expect(stopped, "released", common::deadline(60));
    group.finish(common::deadline(60));
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn removing_the_witness_directory_under_a_waiter_neither_hangs_it_nor_frees_a_live_slot() {
    // The witness watch goes away (IN_IGNORED); a live holder whose witness file vanished is
    // still judged by its pid, so it keeps its slot; its release is still seen and handed over.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let sem = quick().open(&path, 1).unwrap();
    let mut group = Group::new();
    let holder = group.spawn(
        ChildSpec::new("holder", "child_process", "hold")
            .arg("PATH", path.display())
            .arg("ID", "holder"),
    );
    group.expect(holder, "acquired", common::deadline(60));
    let (waiter, ticket) = spawn_waiter(&mut group, &path, "waiter");
    let mut witness = path.as_os_str().to_os_string();
    witness.push(".witness");
    fs::remove_dir_all(&witness).unwrap();
    // A queued waiter looks at least every few seconds; a reap by anyone must keep the holder.
    sem.reap().unwrap();
    let holders: Vec<_> = sem.holders().unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(holders, ["holder"]);
    assert_eq!(queue_of(&path), [("waiter".to_string(), ticket)]);
    group.send(holder, "release");
    group.expect(holder, "released", common::deadline(60));
    acquired_token(&mut group, waiter, &path, "waiter", ticket);
    group.send_all("release");
    group.expect(waiter, "released", common::deadline(60));
    group.finish(common::deadline(60));
}

#[test]
fn moving_the_semaphore_directory_away_moves_the_wait_with_it() {
    // A waiter is bound to the directory it opened, as an open file is to its inode: after
    // the directory is renamed it is still queued there, is granted there when the holder
    // releases, and nothing is created at the old path.
    let root = common::tmpfs_dir();
    let dir = root.path().join("d");
    let path = dir.join("sem.json");
    let sem = quick().open(&path, 1).unwrap();
    let first = sem.try_acquire("first").unwrap();
    let mut group = Group::new();
    let (waiter, ticket) = spawn_waiter(&mut group, &path, "waiter");
    let moved = root.path().join("moved");
    fs::rename(&dir, &moved).unwrap();
    first.release().unwrap();
    acquired_token(
        &mut group,
        waiter,
        &moved.join("sem.json"),
        "waiter",
        ticket,
    );
    let in_moved = quick().open_existing(moved.join("sem.json")).unwrap();
    let holders: Vec<_> = in_moved
        .holders()
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(holders, ["waiter"]);
    group.send_all("release");
    group.expect(waiter, "released", common::deadline(60));
    group.finish(common::deadline(60));
    assert_eq!(in_moved.count().unwrap(), 0);
    assert!(!dir.exists(), "nothing was created at the old path");
}

// ---------------------------------------------------------------------------------------
// Child processes

/// One round of a churning waiter: a random priority and a random way to wait.
fn churn_round(sem: &Semaphore, id: &str, markers: &Path, counts: &mut HashMap<&str, u64>) {
    let priority = fastrand::i32(-1..=1);
    let mut opts = AcquireOptions::new()
        .priority(priority)
        .metadata("prio", priority.to_string());
    let mode = fastrand::u8(0..4);
    let limit = Duration::from_millis(fastrand::u64(1..120));
    let token = CancelToken::new();
    match mode {
        1 => opts = opts.timeout(limit),
        2 => {
            opts = opts.cancel_token(&token);
            let t = token.clone();
            std::thread::spawn(move || {
                std::thread::sleep(limit);
                t.cancel();
            });
        }
        3 => opts = opts.on_wait(|_| panic!("on_wait panics on purpose")),
        _ => {}
    }
    let start = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| sem.acquire_with(id, &opts)));
    let outcome = match result {
        Ok(Ok(permit)) => {
            let me = std::process::id();
            let marker = claim_marker(markers, permit.slot(), me);
            std::thread::sleep(Duration::from_micros(fastrand::u64(200..6_000)));
            let _ = fs::remove_file(marker);
            permit.release().unwrap();
            "granted"
        }
        // Out of time waiting for a slot, or for the lock (busy until the deadline).
        Ok(Err(e @ (Error::Timeout { .. } | Error::LockBusy { .. }))) => {
            if start.elapsed() < limit {
                say(format!(
                    "VIOLATION {e} after {:?}, before its {limit:?}",
                    start.elapsed()
                ));
            }
            if matches!(e, Error::Timeout { .. }) {
                "timeout"
            } else {
                "busy"
            }
        }
        Ok(Err(Error::Cancelled { .. })) => "cancelled",
        Ok(Err(e)) => panic!("{id}: {e}"),
        Err(_) => "panicked",
    };
    if outcome != "granted" {
        // A call that gave up holds nothing: its entry is gone, or (the lock busy when its
        // deadline came) left with its witness unlocked, provably dead, for others to reap.
        let live = |only: Option<&[Option<u64>]>| -> Vec<_> {
            sem.waiters()
                .unwrap()
                .into_iter()
                .chain(sem.holders().unwrap())
                .filter(|h| h.id == id && !h.liveness.is_stale())
                .filter(|h| only.is_none_or(|tokens| tokens.contains(&h.token)))
                .collect()
        };
        let left = live(None);
        if !left.is_empty() {
            // An entry being reaped meanwhile may be read before its removal and probed after
            // its witness file went (no evidence then): read again, and it is gone.
            let tokens: Vec<_> = left.iter().map(|h| h.token).collect();
            let still = live(Some(&tokens));
            if !still.is_empty() {
                say(format!("VIOLATION {outcome} left a live entry: {still:?}"));
            }
        }
    }
    *counts.entry(outcome).or_default() += 1;
}

#[test]
#[ignore = "not a test of its own: the body of the processes the tests above start"]
fn child_process() {
    match common::role().as_deref() {
        Some("churn") => {
            // A panicking on_wait is part of the game: keep its message off the test output.
            std::panic::set_hook(Box::new(|_| {}));
            let id = arg("ID");
            common::seed(&format!("waiter {id}"));
            let sem = quick().open_existing(arg("PATH")).unwrap();
            let markers = PathBuf::from(arg("MARKERS"));
            let rounds: u32 = arg("ROUNDS").parse().unwrap();
            say("ready");
            common::wait_for_parent();
            let mut counts = HashMap::new();
            for _ in 0..rounds {
                churn_round(&sem, &id, &markers, &mut counts);
            }
            let summary: Vec<_> = counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
            say(format!("done {}", summary.join(" ")));
            std::io::stdout().flush().unwrap();
        }
        Some("wait") => {
            let sem = quick().open_existing(arg("PATH")).unwrap();
            let id = arg("ID");
            let opts = AcquireOptions::new().on_wait(|s| say(format!("queued {}", s.ahead)));
            match sem.acquire_with(id.as_str(), &opts) {
                Ok(permit) => {
                    say(format!("acquired {} {}", permit.token(), permit.slot()));
                    common::wait_for_parent();
                    permit.release().unwrap();
                    say("released");
                }
                Err(e) => say(format!("error {e}")),
            }
        }
        Some("hold") => {
            let sem = quick().open_existing(arg("PATH")).unwrap();
            let permit = sem.try_acquire(arg("ID").as_str()).unwrap();
            say(format!("acquired {} {}", permit.token(), permit.slot()));
            common::wait_for_parent();
            permit.release().unwrap();
            say("released");
        }
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}
