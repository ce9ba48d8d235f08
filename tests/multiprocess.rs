//! Many real processes competing for one semaphore file: the independent witness never sees
//! more than `capacity` inside, no release is lost, and the file ends empty.
//!
//! The parent re-executes this test binary (the ignored test `child_process`) once per
//! worker. Every worker first says `ready`, then waits for `go`, so all of them are running
//! before the state file exists and all race to create it (the first-use race).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::witness::Witness;
use common::{ChildSpec, Group, arg, say};
use filesem::{Error, OpenOptions};
use serial_test::serial;

/// One stress run.
struct Run<'a> {
    label: &'a str,
    dir: &'a Path,
    processes: usize,
    cycles: usize,
    capacity: u32,
    durable: bool,
    /// The longest a worker holds its slot, in microseconds (each hold is random below it).
    hold_us: u64,
}

/// The counts a run measured.
#[derive(Debug)]
struct Measured {
    grants: u64,
}

fn run(r: &Run<'_>) -> Measured {
    let seed = common::seed(r.label);
    let path = r.dir.join("state").join("sem.json");
    let witness = Witness::create(r.dir.join("witness"), r.capacity).unwrap();
    let started = Instant::now();
    let mut group = Group::new();
    for i in 0..r.processes {
        group.spawn(
            ChildSpec::new(format!("worker-{i}"), "child_process", "worker")
                .arg("PATH", path.display())
                .arg("WITNESS", witness.dir().display())
                .arg("CAPACITY", r.capacity)
                .arg("CYCLES", r.cycles)
                .arg("DURABLE", r.durable)
                .arg("HOLD_US", r.hold_us)
                .arg("ID", format!("worker-{i}"))
                .seed(common::derive_seed(seed, i as u64)),
        );
    }
    group.expect_all("ready", common::deadline(30));
    assert!(!path.exists(), "no worker may touch the file before `go`");
    group.send_all("go");
    let finished = group.finish(common::deadline(120));
    let elapsed = started.elapsed();

    let mut grants = 0u64;
    let mut refusals = 0u64;
    let mut all_tokens = Vec::new();
    for f in &finished {
        let errors = f.lines_of("error");
        assert!(errors.is_empty(), "{}: {errors:?}", f.name);
        assert!(f.status.success(), "{} exited with {}", f.name, f.status);
        let done = f.lines_of("done");
        assert_eq!(done.len(), 1, "{}: {:?}", f.name, f.lines);
        let n: Vec<u64> = done[0].split(' ').map(|w| w.parse().unwrap()).collect();
        assert_eq!(n[0], r.cycles as u64, "{} completes every cycle", f.name);
        grants += n[0];
        refusals += n[1];
        let tokens: Vec<u64> = f.lines_of("tokens")[0]
            .split(' ')
            .map(|w| w.parse().unwrap())
            .collect();
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "{}: one process sees strictly increasing tokens: {tokens:?}",
            f.name
        );
        all_tokens.extend(tokens);
    }

    let report = witness.report().unwrap();
    let distinct: HashSet<u64> = all_tokens.iter().copied().collect();
    println!(
        "{}: seed={seed}, {} processes x {} cycles, capacity {}, durable {}, hold < {} us: \
         {grants} grants, {refusals} refusals, max inside {}, violations {}, {:.2?}",
        r.label,
        r.processes,
        r.cycles,
        r.capacity,
        r.durable,
        r.hold_us,
        report.max_inside,
        report.violations.len(),
        elapsed,
    );
    assert!(
        report.violations.is_empty(),
        "{} violations, the first: {:?}",
        report.violations.len(),
        &report.violations[..report.violations.len().min(10)]
    );
    assert!(report.max_inside <= r.capacity);
    assert_eq!(report.inside, 0);
    assert_eq!(report.grants, grants, "the witness saw every grant");
    assert_eq!(
        distinct.len(),
        all_tokens.len(),
        "fencing tokens are never reused"
    );
    assert!(report.duplicate_tokens().is_empty());

    let sem = OpenOptions::new().open_existing(&path).unwrap();
    assert_eq!(sem.count().unwrap(), 0, "every release reached the file");
    assert!(sem.holders().unwrap().is_empty());
    assert_eq!(sem.capacity().unwrap(), r.capacity);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let next = doc["next_token"].as_u64().unwrap();
    assert!(next > *all_tokens.iter().max().unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "sem.json" && n != "sem.json.lock" && n != "sem.json.witness")
        .collect();
    assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
    let witness_dir = path.with_file_name("sem.json.witness");
    if witness_dir.exists() {
        let files: Vec<_> = std::fs::read_dir(&witness_dir).unwrap().collect();
        assert!(
            files.is_empty(),
            "every hold's liveness witness file is gone: {files:?}"
        );
    }
    Measured { grants }
}

#[test]
#[serial]
fn eight_processes_never_exceed_capacity_one_on_tmpfs() {
    // Mutual exclusion across processes: never two inside a capacity-1 semaphore.
    let dir = common::tmpfs_dir();
    let m = run(&Run {
        label: "capacity 1, tmpfs",
        dir: dir.path(),
        processes: 8,
        cycles: 300,
        capacity: 1,
        durable: false,
        hold_us: 300,
    });
    assert_eq!(m.grants, 8 * 300);
}

#[test]
#[serial]
fn eight_processes_never_exceed_capacity_three_on_tmpfs() {
    // Counting across processes: at most three inside, every slot used by one at a time.
    let dir = common::tmpfs_dir();
    let m = run(&Run {
        label: "capacity 3, tmpfs",
        dir: dir.path(),
        processes: 8,
        cycles: 300,
        capacity: 3,
        durable: false,
        hold_us: 300,
    });
    assert_eq!(m.grants, 8 * 300);
}

#[test]
#[serial]
fn eight_processes_share_a_durable_semaphore_on_disk() {
    // The fsync'd write path (temp file, rename, directory fsync) keeps the same guarantees.
    let dir = common::disk_dir();
    let m = run(&Run {
        label: "capacity 2, disk, durable",
        dir: dir.path(),
        processes: 8,
        cycles: 40,
        capacity: 2,
        durable: true,
        hold_us: 20_000,
    });
    assert_eq!(m.grants, 8 * 40);
}

/// The worker role. Settings come from the parent through the environment.
fn worker() {
    let path = arg("PATH");
    let capacity: u32 = arg("CAPACITY").parse().unwrap();
    let cycles: usize = arg("CYCLES").parse().unwrap();
    let durable: bool = arg("DURABLE").parse().unwrap();
    let hold_us: u64 = arg("HOLD_US").parse().unwrap();
    let id = arg("ID");
    let mut rng = fastrand::Rng::with_seed(common::seed(&id));
    let witness = Witness::create(arg("WITNESS"), capacity).unwrap();

    say("ready");
    common::wait_for_parent();
    // The first-use race: every worker opens (and may create) the file at once.
    let sem = match OpenOptions::new().durable(durable).open(&path, capacity) {
        Ok(sem) => sem,
        Err(e) => {
            say(format!("error open: {e}"));
            return;
        }
    };

    let mut refusals = 0u64;
    let mut tokens = Vec::with_capacity(cycles);
    let mut errors = 0;
    for cycle in 0..cycles {
        let permit = loop {
            match sem.try_acquire(id.as_str()) {
                Ok(p) => break p,
                Err(Error::NoCapacity { .. }) => {
                    refusals += 1;
                    std::thread::sleep(Duration::from_micros(rng.u64(20..400)));
                }
                Err(e) => {
                    say(format!("error acquire: {e}"));
                    return;
                }
            }
        };
        let (slot, token) = (permit.slot(), permit.token());
        tokens.push(token);
        let entered = witness.enter(slot, &id, token).unwrap();
        for v in entered.violations {
            say(format!("violation {v}"));
        }
        std::thread::sleep(Duration::from_micros(rng.u64(0..hold_us)));
        let (_, violations) = witness.leave(slot, &id, token).unwrap();
        for v in violations {
            say(format!("violation {v}"));
        }
        // All three ways a hold ends, each of which must find its own entry.
        let released = match cycle % 10 {
            0 => permit
                .keep()
                .map_err(|e| e.error)
                .and_then(|()| sem.release(&id)),
            1 | 2 => {
                drop(permit);
                Ok(())
            }
            _ => permit.release(),
        };
        if let Err(e) = released {
            say(format!("error release in cycle {cycle}: {e}"));
            errors += 1;
        }
        if errors > 5 {
            return;
        }
    }
    say(format!("done {} {refusals}", tokens.len()));
    let list: Vec<String> = tokens.iter().map(u64::to_string).collect();
    say(format!("tokens {}", list.join(" ")));
}

#[test]
#[ignore = "a child-process role, started by the other tests in this file"]
fn child_process() {
    // Not a test of its own: the body of the worker processes the tests above start.
    match common::role().as_deref() {
        Some("worker") => worker(),
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}

#[test]
fn witness_reports_excess_shared_slots_and_unbalanced_leaves() {
    // The witness is not vacuous: it records exactly the failures the stress runs look for.
    let dir = common::tmpfs_dir();
    let witness = Witness::create(dir.path().join("witness"), 1).unwrap();
    assert!(witness.enter(0, "a", 1).unwrap().violations.is_empty());
    let second = witness.enter(0, "b", 2).unwrap();
    assert_eq!(second.inside, 2);
    assert_eq!(second.violations.len(), 2, "{:?}", second.violations);
    assert!(second.violations[0].contains("2 inside a semaphore of capacity 1"));
    assert!(second.violations[1].contains("already used by a 1"));
    let outside = witness.enter(5, "c", 2).unwrap();
    assert!(
        outside
            .violations
            .iter()
            .any(|v| v.contains("outside 0..1"))
    );
    assert!(witness.leave(0, "a", 1).unwrap().1.is_empty());
    assert!(
        !witness.leave(0, "b", 2).unwrap().1.is_empty(),
        "b never got its marker"
    );
    let report = witness.report().unwrap();
    assert_eq!((report.inside, report.max_inside, report.grants), (1, 3, 3));
    assert_eq!(report.tokens, [1, 2, 2]);
    assert_eq!(report.duplicate_tokens(), [2]);
    assert_eq!(report.violations.len(), 5, "{:?}", report.violations);
}
