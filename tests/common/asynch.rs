//! Helpers of the async API's tests (feature `tokio`): the two runtimes, and the
//! cancellation storm both stores are put through. Each test binary uses some of them.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use filesem::AsyncSemaphore;

/// A `current_thread` runtime with I/O and timers.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A `multi_thread` runtime with 2 workers, I/O and timers.
pub fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 200 tasks acquire on `sem`, each dropped at a random moment (the call's own timeout,
/// `tokio::time::timeout`, `select!`, an abort) or waiting to the end, with patience below
/// `max_patience`; seeded by `seed`. Waits (at most `deadline`) until the handle shows no
/// holder and no waiter, and returns how many were granted (at least 3: some were served).
pub async fn cancellation_storm(
    sem: &AsyncSemaphore,
    seed: u64,
    max_patience: Duration,
    deadline: Duration,
) -> usize {
    let granted = Arc::new(AtomicUsize::new(0));
    let max_patience = u64::try_from(max_patience.as_micros()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let mut rng = fastrand::Rng::with_seed(crate::common::derive_seed(seed, i));
        let (sem, granted) = (sem.clone(), granted.clone());
        let id = format!("w-{i}");
        let hold = Duration::from_micros(rng.u64(0..3000));
        let patience = Duration::from_micros(rng.u64(100..max_patience));
        let kind = rng.u8(0..4);
        tasks.push(tokio::spawn(async move {
            let got = match kind {
                // The call's own timeout.
                0 => sem.acquire_timeout(&id, patience).await.ok(),
                // tokio's timeout drops the future.
                1 => tokio::time::timeout(patience, sem.acquire(&id))
                    .await
                    .ok()
                    .and_then(Result::ok),
                // select! drops the losing branch.
                2 => tokio::select! {
                    p = sem.acquire(&id) => p.ok(),
                    () = tokio::time::sleep(patience) => None,
                },
                // Waits to the end.
                _ => sem.acquire(&id).await.ok(),
            };
            if let Some(permit) = got {
                granted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                drop(permit);
            }
        }));
        if rng.u8(0..8) == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Abort some tasks outright, wherever they are.
    let mut rng = fastrand::Rng::with_seed(seed);
    for task in &tasks {
        if rng.u8(0..10) == 0 {
            task.abort();
        }
    }
    for task in tasks {
        let _ = tokio::time::timeout(deadline, task).await.unwrap();
    }
    // The drops hand their releases and leaves to the step thread: wait for it.
    let start = Instant::now();
    while sem.count().await.unwrap() != 0 || !sem.waiters().await.unwrap().is_empty() {
        assert!(start.elapsed() < deadline, "entries left behind");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let granted = granted.load(Ordering::SeqCst);
    eprintln!("granted {granted} of 200");
    assert!(granted >= 3, "some were served");
    granted
}
