//! Unknown outcomes, settled: a commit that gets no answer (the server is stopped while the
//! compare-and-swap is on its way) is followed by another look, and the operation ends as
//! if the answer had come. Inside the crate, to stop the server at that exact moment (the
//! store's `before_commit` hook); against a real `redis-server` (SKIPPED without one).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::Commands;

use crate::store::Store;
use crate::{AcquireOptions, OpenOptions, Semaphore};

use crate::store::redis::tests::redis_server::RedisServer;

/// Short network timeouts, and a lock timeout long enough to outlast the pause.
fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.connect_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(300))
        .lock_timeout(Duration::from_secs(30));
    o
}

/// Makes the next commit of `sem` go to a stopped server: SIGSTOP right before it is sent,
/// SIGCONT from another thread `after` later.
fn stop_at_next_commit(sem: &Semaphore, server: &Arc<Mutex<RedisServer>>, after: Duration) {
    let Store::Redis(store) = &sem.inner.store else {
        panic!("not a Redis semaphore")
    };
    let server = Arc::clone(server);
    *store.before_commit.lock().unwrap() = Some(Box::new(move || {
        server.lock().unwrap().pause();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            server.lock().unwrap().resume();
        });
    }));
}

/// The IDs and tokens of the holders on the server, read behind the semaphore's back.
fn holders_on_server(server: &Arc<Mutex<RedisServer>>, key: &str) -> Vec<(String, u64)> {
    let url = server.lock().unwrap().server_url();
    let mut con = ::redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let bytes: Vec<u8> = con.get(key).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    doc["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["token"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn an_acquire_whose_commit_got_no_answer_holds_exactly_the_entry_on_file() {
    // Whether the unanswered script ran or not, the permit and the server agree on one
    // entry with one token: never a hold reported that was not written, never an entry
    // left that nobody holds.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("s");
    let server = Arc::new(Mutex::new(server));
    let sem = options().open_redis(&url, 2).unwrap();
    let mut permits = Vec::new();
    for (id, try_acquire) in [("direct", true), ("waiting", false)] {
        stop_at_next_commit(&sem, &server, Duration::from_millis(1500));
        let permit = if try_acquire {
            sem.try_acquire(id).unwrap()
        } else {
            sem.acquire_with(id, &AcquireOptions::new()).unwrap()
        };
        // Commits answered: one more if the settling run wrote the grant again, none if it
        // found the unanswered script's grant.
        eprintln!("{id}: {:?}", sem.redis_stats().unwrap());
        let on_server = holders_on_server(&server, "s");
        assert!(
            on_server.contains(&(id.to_string(), permit.token())),
            "{on_server:?}"
        );
        assert_eq!(
            on_server.iter().filter(|(i, _)| i == id).count(),
            1,
            "{on_server:?}"
        );
        assert!(permit.is_held().unwrap());
        permits.push(permit);
    }
    assert_eq!(sem.count().unwrap(), 2, "{:?}", sem.holders().unwrap());
}

#[test]
fn releases_and_removals_whose_commit_got_no_answer_are_done() {
    // The entry is gone afterwards, and the call says it did it: not Lost, not NotHeld,
    // the removed ID listed.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("s");
    let server = Arc::new(Mutex::new(server));
    let sem = options().open_redis(&url, 3).unwrap();
    let permit = sem.try_acquire("a").unwrap();
    sem.try_acquire("b").unwrap().keep().unwrap();
    sem.try_acquire("c").unwrap().keep().unwrap();
    let pause = Duration::from_millis(1500);
    stop_at_next_commit(&sem, &server, pause);
    permit.release().unwrap();
    stop_at_next_commit(&sem, &server, pause);
    sem.release("b").unwrap();
    stop_at_next_commit(&sem, &server, pause);
    assert_eq!(sem.remove(["zz", "c"]).unwrap(), ["c"]);
    assert!(holders_on_server(&server, "s").is_empty());
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn an_unknown_outcome_that_cannot_be_settled_says_so() {
    // The server stays stopped past the lock timeout: the error says the change may or may
    // not have been made, and comes within the timeouts.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("s");
    let server = Arc::new(Mutex::new(server));
    let mut o = options();
    o.lock_timeout(Duration::from_secs(1));
    let sem = o.open_redis(&url, 1).unwrap();
    stop_at_next_commit(&sem, &server, Duration::from_secs(4));
    let started = std::time::Instant::now();
    let err = sem.set_capacity(2).unwrap_err();
    assert!(
        matches!(
            err,
            crate::Error::RedisTimeout {
                outcome_unknown: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .ends_with("the change may or may not have been made"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // Once the server is back the capacity is one or the other, nothing else.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let capacity = loop {
        match sem.capacity() {
            Ok(c) => break c,
            Err(_) if std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(matches!(capacity, 1 | 2), "{capacity}");
}
