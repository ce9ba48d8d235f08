//! What queries show about queued waiters.

use std::time::{Duration, Instant};

use filesem::{AcquireOptions, CancelToken, Semaphore};

#[test]
fn waiters_show_their_priority_in_the_order_they_are_served() {
    // `HolderInfo::priority` explains the queue order that `filesem status` prints.
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::open(dir.path().join("s.json"), 1).unwrap();
    let _busy = sem.try_acquire("holder").unwrap();
    let token = CancelToken::new();
    let mut waiting = Vec::new();
    for (id, priority) in [("low", -1), ("high", 5)] {
        let (theirs, token) = (sem.clone(), token.clone());
        waiting.push(std::thread::spawn(move || {
            let opts = AcquireOptions::new()
                .priority(priority)
                .cancel_token(&token);
            theirs.acquire_with(id, &opts)
        }));
        let start = Instant::now();
        while !sem.waiters().unwrap().iter().any(|w| w.id == id) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{id} never queued"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let queue: Vec<(String, i32)> = sem
        .waiters()
        .unwrap()
        .into_iter()
        .map(|w| (w.id, w.priority))
        .collect();
    assert_eq!(queue, [("high".to_string(), 5), ("low".to_string(), -1)]);
    assert_eq!(sem.holders().unwrap()[0].priority, 0, "no priority given");
    token.cancel();
    for w in waiting {
        assert!(matches!(
            w.join().unwrap(),
            Err(filesem::Error::Cancelled { .. })
        ));
    }
}
