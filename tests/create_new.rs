//! `OpenOptions::create_new`: exactly one opener creates the semaphore.

use std::sync::{Arc, Barrier};

#[test]
fn of_racing_create_new_opens_exactly_one_creates() {
    // The check and the creation are one step under the lock: the `filesem` tool relies on
    // this to say "created a new semaphore" exactly once.
    const OPENERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raced.json");
    let barrier = Arc::new(Barrier::new(OPENERS));
    let outcomes: Vec<_> = (0..OPENERS)
        .map(|_| {
            let (path, barrier) = (path.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                filesem::OpenOptions::new().create_new(true).open(&path, 3)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let created = outcomes.iter().filter(|o| o.is_ok()).count();
    let existed = outcomes
        .iter()
        .filter(|o| matches!(o, Err(filesem::Error::AlreadyExists { .. })))
        .count();
    assert_eq!((created, existed), (1, OPENERS - 1), "{outcomes:?}");
    assert_eq!(
        filesem::Semaphore::open_existing(&path)
            .unwrap()
            .capacity()
            .unwrap(),
        3
    );
}

#[test]
fn create_new_changes_nothing_in_an_existing_semaphore() {
    // A refused create_new leaves the file byte for byte as it was, whatever capacity it asked.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let sem = filesem::Semaphore::open(&path, 2).unwrap();
    let _permit = sem.try_acquire("holder").unwrap();
    let before = std::fs::read(&path).unwrap();
    let again = filesem::OpenOptions::new().create_new(true).open(&path, 5);
    assert!(
        matches!(again, Err(filesem::Error::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}
