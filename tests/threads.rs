//! Threads in one process: sharing one handle, or holding separate handles on one path. The
//! in-process mutex serializes a handle's threads; separate handles meet at the lock file.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::witness::Witness;
use filesem::{Error, OpenOptions, Semaphore};

const THREADS: usize = 8;
const CYCLES: usize = 150;

/// Runs `CYCLES` acquire/hold/release cycles on `sem` as holder `id`, with random pauses
/// drawn from `seed`; returns its tokens.
fn cycle(sem: &Semaphore, id: &str, witness: &Witness, seed: u64) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tokens = Vec::new();
    for i in 0..CYCLES {
        let permit = loop {
            match sem.try_acquire(id) {
                Ok(p) => break p,
                Err(Error::NoCapacity { .. }) => {
                    std::thread::sleep(Duration::from_micros(rng.u64(10..200)));
                }
                Err(e) => panic!("{id}: acquire: {e}"),
            }
        };
        let entered = witness.enter(permit.slot(), id, permit.token()).unwrap();
        assert!(entered.violations.is_empty(), "{:?}", entered.violations);
        std::thread::sleep(Duration::from_micros(rng.u64(0..100)));
        let (_, violations) = witness.leave(permit.slot(), id, permit.token()).unwrap();
        assert!(violations.is_empty(), "{violations:?}");
        tokens.push(permit.token());
        if i % 2 == 0 {
            permit
                .release()
                .unwrap_or_else(|e| panic!("{id}: release: {e}"));
        } else {
            drop(permit);
        }
    }
    tokens
}

fn check(path: &Path, witness: &Witness, capacity: u32, tokens: Vec<u64>) {
    let report = witness.report().unwrap();
    println!(
        "{THREADS} threads x {CYCLES} cycles, capacity {capacity}: {} grants, max inside {}, \
         violations {}",
        report.grants,
        report.max_inside,
        report.violations.len()
    );
    assert!(
        report.violations.is_empty(),
        "{} violations, the first: {:?}",
        report.violations.len(),
        &report.violations[..report.violations.len().min(10)]
    );
    assert!(report.max_inside <= capacity);
    assert_eq!(report.inside, 0);
    assert_eq!(report.grants, (THREADS * CYCLES) as u64);
    let distinct: HashSet<u64> = tokens.iter().copied().collect();
    assert_eq!(distinct.len(), THREADS * CYCLES, "tokens are never reused");
    let sem = Semaphore::open_existing(path).unwrap();
    assert_eq!(sem.count().unwrap(), 0);
    assert_eq!(sem.available().unwrap(), capacity as usize);
}

#[test]
fn threads_sharing_one_handle_never_exceed_capacity() {
    // One handle shared by many threads: counts balance, never more than capacity inside.
    let seed = common::seed("threads_sharing_one_handle");
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let sem = OpenOptions::new().durable(false).open(&path, 2).unwrap();
    let witness = Arc::new(Witness::create(dir.path().join("witness"), 2).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let sem = sem.clone();
            let witness = Arc::clone(&witness);
            let seed = common::derive_seed(seed, t as u64);
            std::thread::spawn(move || cycle(&sem, &format!("thread-{t}"), &witness, seed))
        })
        .collect();
    let tokens = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    check(&path, &witness, 2, tokens);
}

#[test]
fn two_handles_on_one_path_in_one_process_exclude_each_other() {
    // Separate handles do not share the in-process mutex; the lock file must still exclude.
    let seed = common::seed("two_handles_on_one_path");
    let dir = common::tmpfs_dir();
    let path = dir.path().join("sem.json");
    let first = OpenOptions::new().durable(false).open(&path, 1).unwrap();
    let second = OpenOptions::new().durable(false).open(&path, 1).unwrap();
    let witness = Arc::new(Witness::create(dir.path().join("witness"), 1).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let sem = if t % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            let witness = Arc::clone(&witness);
            let seed = common::derive_seed(seed, t as u64);
            std::thread::spawn(move || cycle(&sem, &format!("thread-{t}"), &witness, seed))
        })
        .collect();
    let tokens = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    check(&path, &witness, 1, tokens);
}

#[test]
fn permit_released_on_another_thread_frees_the_slot() {
    // A Permit is Send: it can be handed to the thread that does the work and released there.
    let dir = common::tmpfs_dir();
    let sem = Semaphore::open(dir.path().join("sem.json"), 1).unwrap();
    let permit = sem.try_acquire("mover").unwrap();
    let token = permit.token();
    let released = std::thread::spawn(move || {
        assert_eq!(permit.token(), token);
        permit.release()
    })
    .join()
    .unwrap();
    assert!(released.is_ok(), "{released:?}");
    assert_eq!(sem.count().unwrap(), 0);
}
