//! Every public operation and error variant, starting with the seed's own examples.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use filesem::{AcquireOptions, Error, HoldMode, Holder, OpenOptions, Semaphore};

/// The seed's `MyHolder`: any type with an ID can hold a slot.
struct MyHolder {
    id: String,
}

impl Holder for MyHolder {
    fn id(&self) -> &str {
        &self.id
    }
}

fn ids(sem: &Semaphore) -> Vec<String> {
    sem.holders().unwrap().into_iter().map(|h| h.id).collect()
}

#[test]
fn seed_basic_example_gives_exclusive_access() {
    // Capacity 1: one holder at a time; the seed's Acquire/Release sequence works as written.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("semaphore.json"), 1).unwrap();
    let holder = MyHolder {
        id: "process-123".into(),
    };
    let permit = sem.try_acquire(&holder).unwrap();
    assert_eq!(permit.id(), "process-123");
    let other = MyHolder {
        id: "process-456".into(),
    };
    match sem.try_acquire(&other) {
        Err(Error::NoCapacity {
            path,
            capacity,
            held,
        }) => {
            assert_eq!(path, sem.path());
            assert_eq!((capacity, held), (1, 1));
        }
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    permit.keep().unwrap();
    sem.release(holder.id()).unwrap();
    assert_eq!(sem.count().unwrap(), 0);
    let again = sem.try_acquire(&other).unwrap();
    assert_eq!(again.id(), "process-456");
}

#[test]
fn seed_shared_example_admits_up_to_capacity_three() {
    // Capacity 3: three workers get in, the fourth is refused; queries agree.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("shared.json"), 3).unwrap();
    let mut permits = Vec::new();
    for i in 0..3 {
        let holder = MyHolder {
            id: format!("worker-{i}"),
        };
        permits.push(sem.try_acquire(&holder).unwrap());
        assert_eq!(sem.count().unwrap(), i + 1);
        assert_eq!(sem.available().unwrap(), 3 - (i + 1));
    }
    assert!(matches!(
        sem.try_acquire("worker-3"),
        Err(Error::NoCapacity {
            capacity: 3,
            held: 3,
            ..
        })
    ));
    assert_eq!(ids(&sem), ["worker-0", "worker-1", "worker-2"]);
    let slots: Vec<u32> = permits.iter().map(|p| p.slot()).collect();
    assert_eq!(slots, [0, 1, 2]);
    drop(permits);
    assert_eq!(sem.count().unwrap(), 0);
    assert_eq!(sem.available().unwrap(), 3);
}

#[test]
fn seed_query_operations_report_holders_count_and_available() {
    // The seed's query example: Holders() lists IDs, Count() 2, Available() 1 of capacity 3.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("q.json"), 3).unwrap();
    let _a = sem.try_acquire("holder-1").unwrap();
    let _b = sem.try_acquire(&"holder-2".to_string()).unwrap();
    assert_eq!(ids(&sem), ["holder-1", "holder-2"]);
    assert_eq!(sem.count().unwrap(), 2);
    assert_eq!(sem.available().unwrap(), 1);
    assert_eq!(sem.capacity().unwrap(), 3);
}

#[test]
fn seed_remove_is_idempotent_and_returns_what_it_removed() {
    // Remove of stale holders: unknown IDs are no error; each removed ID is reported once.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("r.json"), 3).unwrap();
    for id in ["stale-holder-1", "stale-holder-2", "live"] {
        sem.try_acquire(id).unwrap().keep().unwrap();
    }
    let removed = sem
        .remove([
            "stale-holder-2",
            "nobody",
            "stale-holder-1",
            "stale-holder-2",
        ])
        .unwrap();
    assert_eq!(removed, ["stale-holder-2", "stale-holder-1"]);
    assert_eq!(ids(&sem), ["live"]);
    let before = std::fs::read(sem.path()).unwrap();
    assert!(
        sem.remove(["stale-holder-1", "stale-holder-2"])
            .unwrap()
            .is_empty()
    );
    assert!(sem.remove(Vec::<String>::new()).unwrap().is_empty());
    assert_eq!(
        std::fs::read(sem.path()).unwrap(),
        before,
        "a no-op remove writes nothing"
    );
}

#[test]
fn release_of_unknown_id_is_not_held() {
    // The seed's ErrNotHeld: releasing an ID that holds nothing is an error naming it.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("n.json"), 1).unwrap();
    match sem.release("ghost") {
        Err(Error::NotHeld { path, id }) => {
            assert_eq!(path, sem.path());
            assert_eq!(id, "ghost");
        }
        other => panic!("expected NotHeld, got {other:?}"),
    }
}

#[test]
fn acquiring_a_held_id_is_already_held() {
    // The seed's ErrAlreadyHeld: one ID holds at most one slot, even with capacity to spare.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("a.json"), 3).unwrap();
    let _p = sem.try_acquire("dup").unwrap();
    match sem.try_acquire("dup") {
        Err(Error::AlreadyHeld { path, id }) => {
            assert_eq!(path, sem.path());
            assert_eq!(id, "dup");
        }
        other => panic!("expected AlreadyHeld, got {other:?}"),
    }
    assert_eq!(sem.count().unwrap(), 1);
}

#[test]
fn open_with_another_capacity_is_a_mismatch_naming_both_numbers() {
    // The file is the source of truth; the message tells how to resolve the conflict.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    Semaphore::open(&path, 3).unwrap();
    let err = Semaphore::open(&path, 1).unwrap_err();
    let msg = err.to_string();
    match err {
        Error::CapacityMismatch {
            path: p,
            requested,
            on_file,
        } => {
            assert_eq!(p, path);
            assert_eq!((requested, on_file), (1, 3));
        }
        other => panic!("expected CapacityMismatch, got {other:?}"),
    }
    assert!(msg.contains("capacity 3"), "{msg}");
    assert!(msg.contains("the 1 asked for"), "{msg}");
    assert!(msg.contains("set_capacity"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn open_with_capacity_zero_means_one() {
    // As in the seed, a capacity below 1 in open means 1, also when the file already exists.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.json");
    let sem = Semaphore::open(&path, 0).unwrap();
    assert_eq!(sem.capacity().unwrap(), 1);
    assert_eq!(Semaphore::open(&path, 0).unwrap().capacity().unwrap(), 1);
    assert_eq!(Semaphore::open(&path, 1).unwrap().capacity().unwrap(), 1);
}

#[test]
fn open_creates_missing_parent_directories_and_the_lock_file() {
    // open creates the semaphore and its directory; PATH.lock sits beside it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b").join("s.json");
    let sem = Semaphore::open(&path, 2).unwrap();
    assert_eq!(sem.path(), path);
    assert!(path.is_file());
    assert!(dir.path().join("a/b/s.json.lock").is_file());
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(doc["capacity"], 2);
    assert_eq!(doc["holders"], serde_json::json!([]));
}

#[test]
fn open_above_max_capacity_is_invalid_capacity() {
    // Absurd capacities are refused before anything is created.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.json");
    let err = Semaphore::open(&path, filesem::MAX_CAPACITY + 1).unwrap_err();
    assert!(
        matches!(err, Error::InvalidCapacity { capacity, max, .. }
            if capacity == u64::from(filesem::MAX_CAPACITY) + 1 && max == filesem::MAX_CAPACITY),
        "{err:?}"
    );
    assert!(!path.exists());
    assert!(Semaphore::open(&path, filesem::MAX_CAPACITY).is_ok());
}

#[test]
fn set_capacity_changes_the_file_and_zero_is_an_error() {
    // set_capacity(0) is refused (unlike open); lowering evicts nobody; raising frees slots.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    let sem = Semaphore::open(&path, 2).unwrap();
    let _a = sem.try_acquire("a").unwrap();
    let _b = sem.try_acquire("b").unwrap();
    assert!(matches!(
        sem.set_capacity(0),
        Err(Error::InvalidCapacity { capacity: 0, .. })
    ));
    assert_eq!(sem.capacity().unwrap(), 2);
    sem.set_capacity(1).unwrap();
    assert_eq!(sem.capacity().unwrap(), 1);
    assert_eq!(
        sem.count().unwrap(),
        2,
        "lowering the capacity evicts nobody"
    );
    assert_eq!(sem.available().unwrap(), 0);
    assert!(matches!(
        sem.try_acquire("c"),
        Err(Error::NoCapacity { .. })
    ));
    // Another handle adopts the new capacity from the file.
    assert_eq!(
        Semaphore::open_existing(&path).unwrap().capacity().unwrap(),
        1
    );
    assert!(matches!(
        Semaphore::open(&path, 2),
        Err(Error::CapacityMismatch { .. })
    ));
    sem.set_capacity(4).unwrap();
    assert_eq!(sem.available().unwrap(), 2);
    let c = sem.try_acquire("c").unwrap();
    assert_eq!(c.slot(), 2);
}

#[test]
fn open_existing_adopts_capacity_and_creates_nothing() {
    // open_existing never creates a file or directory; a missing semaphore is NotFound.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("sub").join("nope.json");
    match Semaphore::open_existing(&missing) {
        Err(Error::NotFound { path }) => assert_eq!(path, missing),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(common::snapshot(dir.path()).is_empty(), "nothing created");
    let path = dir.path().join("s.json");
    Semaphore::open(&path, 5).unwrap();
    assert_eq!(
        Semaphore::open_existing(&path).unwrap().capacity().unwrap(),
        5
    );
}

#[test]
fn operations_on_a_deleted_semaphore_say_it_was_removed_and_create_nothing() {
    // Queries, release and remove never create a semaphore; they fail closed, saying that
    // the semaphore the handle opened was removed (not that there never was one), for
    // handles opened either way.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.json");
    let sem = Semaphore::open(&path, 1).unwrap();
    let existing = Semaphore::open_existing(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let before = common::snapshot(dir.path());
    for sem in [&sem, &existing] {
        let removed = |r: Result<(), Error>| match r {
            Err(Error::Removed { path: p }) => assert_eq!(p, path),
            other => panic!("expected Removed, got {other:?}"),
        };
        removed(sem.count().map(drop));
        removed(sem.available().map(drop));
        removed(sem.holders().map(drop));
        removed(sem.capacity().map(drop));
        removed(sem.release("x"));
        removed(sem.remove(["x"]).map(drop));
        removed(sem.set_capacity(2));
        removed(sem.try_acquire("x").map(drop));
    }
    assert_eq!(common::snapshot(dir.path()), before);
    let err = sem.count().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "semaphore `{}` was removed while in use: its state file is gone",
            path.display()
        )
    );
    // A path where there never was a semaphore is still NotFound.
    assert!(matches!(
        Semaphore::open_existing(&path),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn metadata_given_at_acquire_shows_in_holders() {
    // User metadata is stored with the entry and returned by holders().
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("md.json"), 2).unwrap();
    let opts = AcquireOptions::new()
        .metadata("job", "train-42")
        .metadata("user", "aki");
    let permit = sem.try_acquire_with("worker-1", &opts).unwrap();
    let _plain = sem.try_acquire("worker-2").unwrap();
    let holders = sem.holders().unwrap();
    let expected: BTreeMap<String, String> = [("job", "train-42"), ("user", "aki")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(holders[0].metadata, expected);
    assert!(holders[1].metadata.is_empty());
    let h = &holders[0];
    assert_eq!(h.id, "worker-1");
    assert_eq!(h.token, Some(permit.token()));
    assert_eq!(h.slot, Some(permit.slot()));
    assert_eq!(h.acquired_at, permit.acquired_at());
    assert_ne!(
        h.mode,
        HoldMode::Detached,
        "a permit's hold is not detached until kept"
    );
    assert!(
        !h.liveness.is_stale(),
        "a live holder is never shown as stale"
    );
}

#[test]
fn oversized_or_empty_key_metadata_is_invalid_metadata() {
    // Metadata is bounded (MAX_METADATA_BYTES) and keyed; a refused acquire changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("md.json"), 2).unwrap();
    let before = common::snapshot(dir.path());
    let big = AcquireOptions::new().metadata("k", "v".repeat(filesem::MAX_METADATA_BYTES));
    assert!(matches!(
        sem.try_acquire_with("w", &big),
        Err(Error::InvalidMetadata { .. })
    ));
    let empty_key = AcquireOptions::new().metadata("", "v");
    assert!(matches!(
        sem.try_acquire_with("w", &empty_key),
        Err(Error::InvalidMetadata { .. })
    ));
    assert_eq!(common::snapshot(dir.path()), before);
    let fits = AcquireOptions::new().metadata("k", "v".repeat(filesem::MAX_METADATA_BYTES - 1));
    assert!(sem.try_acquire_with("w", &fits).is_ok());
}

#[test]
fn tokens_strictly_increase_across_release_reacquire_and_handles() {
    // The fencing token never repeats or goes back, whoever acquires through whichever handle.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    let first = Semaphore::open(&path, 2).unwrap();
    let second = Semaphore::open(&path, 2).unwrap();
    let mut tokens = Vec::new();
    for round in 0..5 {
        let p = first.try_acquire("same-id").unwrap();
        tokens.push(p.token());
        p.release().unwrap();
        let q = second.try_acquire("same-id").unwrap();
        tokens.push(q.token());
        let r = first.try_acquire(&format!("other-{round}")).unwrap();
        tokens.push(r.token());
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    // A handle opened later continues the same counter.
    let third = Semaphore::open_existing(&path).unwrap();
    let _ = third.remove(["same-id", "other-4"]).unwrap();
    let last = third.try_acquire("late").unwrap();
    assert!(last.token() > *tokens.last().unwrap());
}

#[test]
fn slot_is_the_lowest_free_index() {
    // Slots are indices in 0..capacity; a freed index is handed out before higher ones.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("s.json"), 3).unwrap();
    let a = sem.try_acquire("a").unwrap();
    let b = sem.try_acquire("b").unwrap();
    let c = sem.try_acquire("c").unwrap();
    assert_eq!((a.slot(), b.slot(), c.slot()), (0, 1, 2));
    drop(b);
    let d = sem.try_acquire("d").unwrap();
    assert_eq!(d.slot(), 1);
    drop(a);
    let e = sem.try_acquire("e").unwrap();
    assert_eq!(e.slot(), 0);
    let slots: Vec<Option<u32>> = sem.holders().unwrap().iter().map(|h| h.slot).collect();
    let mut sorted = slots.clone();
    sorted.sort();
    assert_eq!(sorted, [Some(0), Some(1), Some(2)]);
    drop((c, d, e));
}

#[test]
fn stale_permit_never_releases_a_newcomer_with_the_same_id() {
    // A permit acts only on its own entry (by token): after remove and re-grant it is Lost.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("s.json"), 1).unwrap();
    let old = sem.try_acquire("job").unwrap();
    let old_token = old.token();
    assert_eq!(sem.remove(["job"]).unwrap(), ["job"]);
    let newcomer = sem.try_acquire("job").unwrap();
    assert!(newcomer.token() > old_token);
    match old.release() {
        Err(Error::Lost { path, id, token }) => {
            assert_eq!(path, sem.path());
            assert_eq!(id, "job");
            assert_eq!(token, old_token);
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    let holders = sem.holders().unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].token, Some(newcomer.token()));

    // Dropping a stale permit leaves the newcomer alone too.
    let stale = sem.try_acquire("other-cap").err();
    assert!(matches!(stale, Some(Error::NoCapacity { .. })));
    sem.remove(["job"]).unwrap();
    let third = sem.try_acquire("job").unwrap();
    drop(newcomer);
    assert_eq!(sem.holders().unwrap()[0].token, Some(third.token()));
}

#[test]
fn stale_permit_keep_is_lost_and_gives_the_permit_back() {
    // keep() on a removed entry fails with Lost; the permit comes back, nothing is written.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("s.json"), 1).unwrap();
    let permit = sem.try_acquire("k").unwrap();
    let token = permit.token();
    sem.remove(["k"]).unwrap();
    let newcomer = sem.try_acquire("k").unwrap();
    let err = permit.keep().unwrap_err();
    assert!(matches!(err.error, Error::Lost { token: t, .. } if t == token));
    assert_eq!(err.permit.token(), token);
    assert!(err.to_string().contains("failed to keep the hold"), "{err}");
    drop(err);
    assert_eq!(sem.holders().unwrap()[0].token, Some(newcomer.token()));
    assert_ne!(sem.holders().unwrap()[0].mode, HoldMode::Detached);
}

#[test]
fn kept_hold_outlives_the_permit_and_is_released_by_id() {
    // keep() leaves the entry on file as detached; release(id) ends it.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("s.json"), 1).unwrap();
    let permit = sem.try_acquire("session-123").unwrap();
    let token = permit.token();
    permit.keep().unwrap();
    let holders = sem.holders().unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].id, "session-123");
    assert_eq!(holders[0].token, Some(token));
    assert_eq!(holders[0].mode, HoldMode::Detached);
    assert!(!holders[0].liveness.is_stale());
    assert!(matches!(
        sem.try_acquire("x"),
        Err(Error::NoCapacity { .. })
    ));
    sem.release("session-123").unwrap();
    assert_eq!(sem.count().unwrap(), 0);
    assert!(matches!(
        sem.release("session-123"),
        Err(Error::NotHeld { .. })
    ));
}

#[test]
fn dropping_a_permit_releases_it_and_let_underscore_releases_at_once() {
    // Drop releases; `let _ = ...` drops immediately (documented pitfall).
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("s.json"), 1).unwrap();
    {
        let _permit = sem.try_acquire("scoped").unwrap();
        assert_eq!(sem.count().unwrap(), 1);
    }
    assert_eq!(sem.count().unwrap(), 0);
    let _ = sem.try_acquire("gone-at-once").unwrap();
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn permit_accessors_and_debug_show_id_and_token() {
    // A permit tells its ID, token, slot, time, path and semaphore; Debug names id and token.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("d.json"), 2).unwrap();
    let before = chrono::Utc::now();
    let permit = sem.try_acquire("debug-me").unwrap();
    assert_eq!(permit.id(), "debug-me");
    assert_eq!(permit.slot(), 0);
    assert!(permit.acquired_at() >= before);
    assert_eq!(permit.path(), sem.path());
    assert_eq!(permit.semaphore().path(), sem.path());
    let debug = format!("{permit:?}");
    assert!(debug.contains("debug-me"), "{debug}");
    assert!(
        debug.contains(&format!("token: {}", permit.token())),
        "{debug}"
    );
    assert!(format!("{sem:?}").contains("d.json"));
}

#[test]
fn lock_held_elsewhere_times_out_with_lock_timeout() {
    // Every wait for PATH.lock has a deadline and fails distinctly, no earlier than the timeout.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.json");
    let sem = OpenOptions::new()
        .lock_timeout(Duration::from_millis(100))
        .open(&path, 1)
        .unwrap();
    let lock_file = std::fs::File::open(dir.path().join("l.json.lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let start = std::time::Instant::now();
    let err = sem.try_acquire("w").unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(100));
    match &err {
        Error::LockTimeout {
            path: p,
            lock_path,
            waited,
            holder,
        } => {
            assert_eq!(p, &path);
            assert_eq!(lock_path, &dir.path().join("l.json.lock"));
            assert!(*waited >= Duration::from_millis(100));
            // The test process itself holds the lock: whatever the kernel tells is us.
            assert!(
                holder.is_none_or(|pid| pid == std::process::id()),
                "{holder:?}"
            );
        }
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    assert!(err.is_contention());
    assert_eq!(err.path(), path);
    // Queries read without the lock and still answer.
    assert_eq!(sem.count().unwrap(), 0);
    drop(held);
    assert!(sem.try_acquire("w").is_ok());
}

#[test]
fn error_helpers_name_the_path_and_classify_contention() {
    // Error::path() names the state file; only contention variants say "try again later".
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("e.json"), 1).unwrap();
    let _p = sem.try_acquire("a").unwrap();
    let full = sem.try_acquire("b").unwrap_err();
    assert!(full.is_contention());
    assert_eq!(full.path(), sem.path());
    assert!(full.to_string().contains("1 of 1"), "{full}");
    let held = sem.try_acquire("a").unwrap_err();
    assert!(!held.is_contention());
    let not_held = sem.release("zz").unwrap_err();
    assert!(!not_held.is_contention());
    assert!(not_held.to_string().contains("e.json"), "{not_held}");
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(full);
    assert!(boxed.to_string().contains("no available capacity"));
}

#[test]
fn lock_file_is_never_deleted() {
    // Deleting PATH.lock would let two processes hold "the" lock; it stays through everything.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.json");
    let lock = dir.path().join("k.json.lock");
    let sem = Semaphore::open(&path, 1).unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&lock).unwrap());
    sem.try_acquire("a").unwrap().release().unwrap();
    sem.try_acquire("b").unwrap().keep().unwrap();
    sem.remove(["b"]).unwrap();
    sem.set_capacity(2).unwrap();
    let after = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&lock).unwrap());
    assert_eq!(ino, after);
}

#[test]
fn refused_acquire_writes_nothing() {
    // NoCapacity and AlreadyHeld leave the state file as it was (no rewrite).
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("w.json"), 1).unwrap();
    let _p = sem.try_acquire("a").unwrap();
    let before = common::snapshot(dir.path());
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(sem.path()).unwrap());
    assert!(sem.try_acquire("b").is_err());
    assert!(sem.try_acquire("a").is_err());
    assert_eq!(common::snapshot(dir.path()), before);
    let after = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(sem.path()).unwrap());
    assert_eq!(ino, after, "the file was not replaced");
}

#[test]
fn state_file_mode_is_the_option_then_kept_across_rewrites() {
    // New files get OpenOptions::mode (default 0644, as Go); an existing file keeps its mode.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode_of = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let default = Semaphore::open(dir.path().join("d.json"), 1).unwrap();
    assert_eq!(mode_of(default.path()), 0o644);
    let shared = OpenOptions::new()
        .mode(0o664)
        .open(dir.path().join("g.json"), 1)
        .unwrap();
    assert_eq!(mode_of(shared.path()), 0o664);
    std::fs::set_permissions(default.path(), std::fs::Permissions::from_mode(0o640)).unwrap();
    default.try_acquire("a").unwrap().release().unwrap();
    assert_eq!(mode_of(default.path()), 0o640);
}

#[test]
#[allow(unsafe_code)] // Reviewed: fork in a test to prove a forked child's Drop is harmless.
fn permit_dropped_in_a_forked_child_does_not_release_the_parent_hold() {
    // The hold belongs to the process that acquired; a forked child dropping its copy of the
    // permit must not release it.
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("f.json"), 1).unwrap();
    let permit = sem.try_acquire("parent").unwrap();
    let token = permit.token();
    // SAFETY: the child only drops the permit (which returns at once on a pid mismatch,
    // without locking or I/O) and then calls _exit, running no other destructors.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(permit);
            // SAFETY: _exit is async-signal-safe and skips atexit handlers and destructors.
            unsafe { libc::_exit(0) };
        }
        ForkResult::Parent { child } => {
            let deadline = common::deadline(10);
            let status = loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)).unwrap() {
                    WaitStatus::StillAlive if std::time::Instant::now() < deadline => {
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
            let holders = sem.holders().unwrap();
            assert_eq!(
                holders.len(),
                1,
                "the parent's hold survived the child's drop"
            );
            assert_eq!(holders[0].token, Some(token));
            permit.release().unwrap();
            assert_eq!(sem.count().unwrap(), 0);
        }
    }
}

#[test]
fn a_release_that_cannot_write_leaves_a_free_witness_so_the_entry_is_reaped() {
    // A release whose write fails (here: the state lock is busy past the lock timeout) must
    // not leave the entry looking alive: its witness stays on disk, unlocked, so the next
    // look judges the entry dead and reaps its slot while this process still runs.
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let sem = filesem::OpenOptions::new()
        .lock_timeout(Duration::from_millis(100))
        .open(&path, 1)
        .unwrap();
    let permit = sem.try_acquire("job").unwrap();
    let witness = dir
        .path()
        .join(format!("s.json.witness/{}", permit.token()));
    // flock is per open file description: a second open of the lock file excludes us.
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(dir.path().join("s.json.lock"))
        .unwrap();
    let busy = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let err = permit.release().unwrap_err();
    assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
    drop(busy);
    assert!(witness.exists(), "the witness file stays as evidence");
    let holders = sem.holders().unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(
        holders[0].liveness.name(),
        "dead",
        "{}",
        holders[0].liveness
    );
    let reaped = sem.reap().unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].id, "job");
    assert_eq!(sem.available().unwrap(), 1);
    assert!(!witness.exists(), "the reaper removed the witness file");
}
