//! The async handle on a Redis semaphore: `AsyncSemaphore::from_blocking` of a handle from
//! `Semaphore::open_redis`, with a private `redis-server` (SKIPPED without one, unless
//! `CI=true`).

#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use filesem::{AsyncSemaphore, Error, Semaphore};
use redis_server::RedisServer;

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn an_async_handle_on_a_redis_semaphore_waits_hands_over_and_cancels() {
    // Through the async handle a Redis semaphore grants, refuses, hands a released slot to
    // an awaiting task (woken by the handle's subscription), and a dropped acquire leaves
    // the queue; blocking and async users share it.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("gpus");
    let blocking = Semaphore::open_redis(&url, 1).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sem = AsyncSemaphore::from_blocking(blocking.clone()).unwrap();
        let a = sem.try_acquire("a").await.unwrap();
        assert!(a.lease().is_some(), "a Redis hold has a lease");
        assert!(matches!(
            sem.try_acquire("b").await,
            Err(Error::NoCapacity { .. })
        ));
        assert_eq!(sem.count().await.unwrap(), 1);

        // A dropped acquire leaves the queue.
        let dropped = tokio::time::timeout(Duration::from_millis(50), sem.acquire("c")).await;
        assert!(dropped.is_err());
        // Gone before the handle's next step (queries run beside the steps: see the docs).
        let again = sem.try_acquire("c").await.unwrap_err();
        assert!(matches!(again, Error::NoCapacity { .. }), "{again:?}");
        let start = Instant::now();
        while !sem.waiters().await.unwrap().is_empty() {
            assert!(
                start.elapsed() < DEADLINE,
                "the dropped acquire stayed queued"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        // A task awaiting acquire gets the slot the release hands over.
        let waiter = {
            let sem = sem.clone();
            tokio::spawn(async move { sem.acquire("b").await })
        };
        let start = Instant::now();
        while sem.waiters().await.unwrap().len() != 1 {
            assert!(start.elapsed() < DEADLINE, "never queued");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let token_a = a.token();
        a.release().await.unwrap();
        let b = tokio::time::timeout(DEADLINE, waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(b.id(), "b");
        assert!(b.token() > token_a);
        assert!(b.is_held().await.unwrap());
        b.renew().await.unwrap().expect("a lease to extend");
        b.release().await.unwrap();
        assert_eq!(sem.count().await.unwrap(), 0);
    });
    assert_eq!(blocking.count().unwrap(), 0);
}
