//! Fencing tokens across processes: they strictly increase in the order slots are granted,
//! also when waiters of higher priority are served before waiters that queued earlier.
//!
//! Each child process (this test binary re-run in a role, see `common::Group`) appends
//! `ID TOKEN` to a shared log with one `O_APPEND` write while it holds the only slot of a
//! capacity-1 semaphore, so the log lists the grants in the order they were made.

mod common;

use std::fs::{self, OpenOptions as FileOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{ChildSpec, Group, arg, say};
use filesem::{AcquireOptions, OpenOptions, Semaphore};

fn quick() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durable(false).lock_timeout(Duration::from_secs(30));
    o
}

/// The grants in the log at `path`, in its order: (ID, token).
fn grants(path: &Path) -> Vec<(String, u64)> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (id, token) = l.split_once(' ').unwrap();
            (id.to_string(), token.parse().unwrap())
        })
        .collect()
}

/// Checks that the tokens of `grants` strictly increase, starting above `floor`.
fn assert_rising(grants: &[(String, u64)], floor: u64) {
    let mut last = floor;
    for (id, token) in grants {
        assert!(
            *token > last,
            "{id} was granted token {token} after token {last}: {grants:?}"
        );
        last = *token;
    }
}

#[test]
fn waiters_served_by_priority_get_tokens_in_the_order_they_are_served() {
    // A fencing resource that saw one grant's token must accept every later grant's: the
    // order of service (priority, then arrival) is the order of the tokens, not the order of
    // arrival.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let log = dir.path().join("grants.log");
    let sem = quick().open(&path, 1).unwrap();
    let gate = sem.try_acquire("gate").unwrap();
    let arrivals = [("a", 0), ("b", 5), ("c", -1), ("d", 9), ("e", 5), ("f", 0)];
    let mut group = Group::new();
    for (id, priority) in arrivals {
        let child = group.spawn(
            ChildSpec::new(id, "child_process", "log")
                .arg("PATH", path.display())
                .arg("LOG", log.display())
                .arg("ID", id)
                .arg("PRIORITIES", priority)
                .arg("HOLD_MS", 0),
        );
        // Queued before the next one starts: the arrival order is the spawn order.
        group.expect(child, "queued", common::deadline(60));
    }
    let queue: Vec<String> = sem.waiters().unwrap().into_iter().map(|w| w.id).collect();
    let served = ["d", "b", "e", "a", "f", "c"];
    assert_eq!(queue, served);
    let gate_token = gate.token();
    gate.release().unwrap();
    let finished = group.finish(common::deadline(120));

    let logged = grants(&log);
    let order: Vec<&str> = logged.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(order, served, "granted in the queue's order");
    assert_rising(&logged, gate_token);
    for f in &finished {
        assert!(f.status.success(), "{} failed: {:?}", f.name, f.lines);
        let said: Vec<u64> = f
            .lines_of("granted")
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
        let in_log: Vec<u64> = (logged.iter())
            .filter(|(id, _)| *id == f.name)
            .map(|&(_, t)| t)
            .collect();
        assert_eq!(said, in_log, "{} logged the token its permit has", f.name);
    }
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn tokens_rise_in_grant_order_while_processes_queue_with_random_priorities() {
    // Processes loop: wait for the slot with a random priority, log the token while holding
    // it, release. Every grant, direct or handed over from the queue, has a larger token than
    // every grant before it.
    let seed = common::seed("tokens_rise_in_grant_order");
    let (processes, rounds) = (6, 15);
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let log = dir.path().join("grants.log");
    let sem = quick().open(&path, 1).unwrap();
    let mut group = Group::new();
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..processes {
        let priorities: Vec<String> = (0..rounds).map(|_| rng.i32(-2..=2).to_string()).collect();
        group.spawn(
            ChildSpec::new(format!("p{i}"), "child_process", "log")
                .arg("PATH", path.display())
                .arg("LOG", log.display())
                .arg("ID", format!("p{i}"))
                .arg("PRIORITIES", priorities.join(","))
                .arg("HOLD_MS", 2)
                .arg("WAIT_FOR_GO", 1),
        );
    }
    group.expect_all("ready", common::deadline(60));
    group.send_all("go");
    let finished = group.finish(common::deadline(240));
    for f in &finished {
        assert!(f.status.success(), "{} failed: {:?}", f.name, f.lines);
    }

    let logged = grants(&log);
    let queued = (finished.iter().flat_map(|f| &f.lines))
        .filter(|l| *l == "queued")
        .count();
    eprintln!(
        "{} grants, {queued} of them after waiting in the queue",
        logged.len()
    );
    assert_eq!(logged.len(), processes * rounds);
    assert_rising(&logged, 0);
    assert_eq!(sem.count().unwrap(), 0);
    assert!(sem.waiters().unwrap().is_empty());
}

/// Not a test: the body of the child processes. Role `log`: for each priority in
/// `PRIORITIES` (comma-separated), waits for a slot as `ID` on `PATH` with that priority
/// (saying `queued` when it has to wait), appends `ID TOKEN` to `LOG` while holding it, says
/// `granted TOKEN`, holds it up to `HOLD_MS` more milliseconds and releases it. With
/// `WAIT_FOR_GO`, says `ready` first and waits for a line from the parent.
#[test]
fn a_semaphore_created_where_an_earlier_one_was_used_never_hands_out_smaller_tokens() {
    // The lock file is never deleted: if the state file of a semaphore is removed (by hand,
    // or by a recovery that failed in an older version) and a new one is created at the
    // path, its holders' tokens must stay above those of the earlier holders, which may still
    // be fencing a resource. A fresh path still starts at 1.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let sem = quick().open(&path, 2).unwrap();
    let first = sem.try_acquire("first").unwrap();
    assert_eq!(first.token(), 1, "a fresh semaphore counts from 1");
    let second = sem.try_acquire("second").unwrap();
    assert_eq!(second.token(), 2);
    let clock = u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap();
    fs::remove_file(&path).unwrap();

    let again = quick().open(&path, 2).unwrap();
    let newcomer = again.try_acquire("newcomer").unwrap();
    assert!(
        newcomer.token() >= clock,
        "the counter starts at the clock: {} < {clock}",
        newcomer.token()
    );
    drop((first, second, newcomer));

    // Without the lock file, a witness directory that holds higher numbers (say, taken
    // after the clock was set back) bounds the new counter too.
    fs::remove_file(&path).unwrap();
    fs::remove_file(dir.path().join("s.json.lock")).unwrap();
    let witness_dir = dir.path().join("s.json.witness");
    let far = 8_000_000_000_000_000u64;
    fs::write(witness_dir.join(far.to_string()), b"").unwrap();
    // Not a name filesem makes: above the token range, so ignored.
    fs::write(witness_dir.join((filesem::MAX_TOKEN + 1).to_string()), b"").unwrap();
    let third = quick().open(&path, 2).unwrap();
    assert_eq!(third.try_acquire("third").unwrap().token(), far + 1);

    // A new path: no lock file, no witness directory.
    let fresh = quick().open(dir.path().join("fresh.json"), 1).unwrap();
    assert_eq!(fresh.try_acquire("x").unwrap().token(), 1);
}

#[test]
#[ignore = "a child-process role, started by the other tests in this file"]
fn child_process() {
    match common::role().as_deref() {
        Some("log") => {
            let id = arg("ID");
            common::seed(&format!("log {id}"));
            let sem: Semaphore = quick().open_existing(arg("PATH")).unwrap();
            let hold_ms: u64 = arg("HOLD_MS").parse().unwrap();
            if std::env::var_os("FILESEM_TEST_WAIT_FOR_GO").is_some() {
                say("ready");
                common::wait_for_parent();
            }
            for priority in arg("PRIORITIES").split(',') {
                let opts = AcquireOptions::new()
                    .priority(priority.parse().unwrap())
                    .on_wait(|_| say("queued"));
                let permit = sem.acquire_with(id.as_str(), &opts).unwrap();
                let mut file = FileOptions::new()
                    .append(true)
                    .create(true)
                    .open(arg("LOG"))
                    .unwrap();
                file.write_all(format!("{id} {}\n", permit.token()).as_bytes())
                    .unwrap();
                say(format!("granted {}", permit.token()));
                std::thread::sleep(Duration::from_millis(fastrand::u64(0..=hold_ms)));
                permit.release().unwrap();
            }
        }
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}
