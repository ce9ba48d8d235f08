//! The engine against a real `redis-server` (a private one per test, see
//! `tests/common/redis_server.rs`; without `redis-server` installed, each test prints
//! SKIPPED, and fails under `CI=true`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::{Commands, Connection};
use chrono::{DateTime, Utc};

use super::engine::{Decision, Engine, EngineOptions, ReplicaAck, StepError, Stepped};
use super::failure::{FailureKind, Phase, RedisFailure};
use super::location::Location;
use super::subscriber::{Doorbell, Subscriber};

#[path = "../../../tests/common/redis_server.rs"]
pub(crate) mod redis_server;
use redis_server::RedisServer;

/// The key every test uses (each test has its own server).
const KEY: &str = "sem";

fn engine_with(server: &RedisServer, options: EngineOptions) -> Engine {
    Engine::new(Location::parse(&server.url(KEY)).unwrap(), options).unwrap()
}

fn engine(server: &RedisServer) -> Engine {
    engine_with(server, EngineOptions::default())
}

/// Short timeouts, for tests that stop or kill the server.
fn impatient() -> EngineOptions {
    EngineOptions {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        replicas: None,
    }
}

/// A plain connection of the `redis` crate, to look at and meddle with the key behind the
/// engine's back.
fn raw(server: &RedisServer) -> Connection {
    let client = ::redis::Client::open(server.server_url()).unwrap();
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    con
}

fn server_time(con: &mut Connection) -> DateTime<Utc> {
    let (seconds, micros): (i64, u32) = ::redis::cmd("TIME").query(con).unwrap();
    DateTime::from_timestamp(seconds, micros * 1_000).unwrap()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// The counter document `{"count":N}`; a missing key counts 0.
fn count_of(bytes: Option<&[u8]>) -> u64 {
    bytes.map_or(0, |b| {
        serde_json::from_slice::<serde_json::Value>(b).unwrap()["count"]
            .as_u64()
            .unwrap()
    })
}

/// Adds one to the counter document in one step.
fn increment(engine: &Engine) -> Stepped<u64> {
    let stepped = engine.step(soon(), |current, _| {
        let next = count_of(current) + 1;
        Decision::<u64, ()>::Write(format!("{{\"count\":{next}}}").into_bytes(), next)
    });
    match stepped {
        Ok(s) => s,
        Err(StepError::Failed(f)) => panic!("increment failed: {f}"),
        Err(e) => panic!("increment failed: {e:?}"),
    }
}

fn failure<R: std::fmt::Debug, T: std::fmt::Debug>(
    result: Result<R, StepError<T, ()>>,
) -> RedisFailure {
    match result {
        Err(StepError::Failed(f)) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Whether `bell` rings within `within`.
fn rings(bell: &Doorbell, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if bell.take() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fds = [nix::poll::PollFd::new(
            bell.fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
    }
}

/// A subscriber of `engine` and a doorbell of it, once the channel is subscribed (the
/// subscription's own ring consumed).
fn subscribed(engine: &Engine) -> (Subscriber, Doorbell) {
    let subscriber = engine.subscribe().unwrap();
    let bell = subscriber.doorbell().unwrap();
    assert!(
        rings(&bell, Duration::from_secs(30)),
        "never subscribed: {:?}",
        subscriber.failure()
    );
    assert!(subscriber.is_subscribed());
    (subscriber, bell)
}

/// A step that changes nothing and returns the server's clock.
fn look(engine: &Engine) -> Result<DateTime<Utc>, StepError<DateTime<Utc>, ()>> {
    engine
        .step(soon(), |_, now| Decision::NoChange(now))
        .map(|s| s.value)
}

#[test]
fn steps_from_four_threads_lose_no_update() {
    // 4 threads x 200 increments through one shared engine: every one lands (no lost update).
    let Some(server) = RedisServer::start() else {
        return;
    };
    let engine = Arc::new(engine(&server));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                (0..200)
                    .map(|_| increment(&engine).attempts - 1)
                    .sum::<u32>()
            })
        })
        .collect();
    let retries: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let value: Vec<u8> = raw(&server).get(KEY).unwrap();
    assert_eq!(count_of(Some(&value)), 800);
    let stats = engine.stats();
    assert_eq!((stats.steps, stats.commits), (800, 800));
    assert_eq!(stats.retries, u64::from(retries));
    eprintln!(
        "4 threads x 200 steps: {retries} retries ({:.3} per commit), {} connections",
        f64::from(retries) / 800.0,
        stats.connects
    );
}

/// The environment variable that makes the test binary a child of the process test, and
/// tells it the semaphore's URL.
const CHILD_URL: &str = "FILESEM_TEST_REDIS_URL";

#[test]
#[ignore = "a child-process role, started by steps_from_four_processes_lose_no_update"]
fn child_process() {
    // Not a test of its own: the body of the processes the test above starts.
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let engine = Engine::new(Location::parse(&url).unwrap(), EngineOptions::default()).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@ ready").unwrap();
    out.flush().unwrap();
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).unwrap();
    for _ in 0..200 {
        increment(&engine);
    }
    let stats = engine.stats();
    writeln!(out, "@@ done {} {}", stats.commits, stats.retries).unwrap();
    out.flush().unwrap();
}

/// Child processes, killed and reaped on drop (a failed test leaves none behind).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn steps_from_four_processes_lose_no_update() {
    // 4 processes x 200 increments, each with its own engine: every one lands.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (tx, rx) = mpsc::channel();
    let mut children = Children(Vec::new());
    for n in 0..4 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["store::redis::tests::child_process", "--exact", "--ignored"])
            .args(["--nocapture", "--test-threads=1", "-q"])
            .env(CHILD_URL, server.url(KEY))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(said) = line.strip_prefix("@@ ") {
                    let _ = tx.send((n, said.to_string()));
                }
            }
        });
        children.0.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let hear = |word: &str| -> Vec<String> {
        let mut lines = Vec::new();
        while lines.len() < 4 {
            let left = deadline.saturating_duration_since(Instant::now());
            let (_, line) = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("deadline passed waiting for {word:?}"));
            if line.starts_with(word) {
                lines.push(line);
            }
        }
        lines
    };
    hear("ready");
    for child in &mut children.0 {
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let (mut commits, mut retries) = (0u64, 0u64);
    for line in hear("done") {
        let numbers: Vec<u64> = line
            .split(' ')
            .skip(1)
            .map(|n| n.parse().unwrap())
            .collect();
        commits += numbers[0];
        retries += numbers[1];
    }
    for child in &mut children.0 {
        assert!(child.wait().unwrap().success());
    }
    let value: Vec<u8> = raw(&server).get(KEY).unwrap();
    assert_eq!(count_of(Some(&value)), 800);
    assert_eq!(commits, 800);
    eprintln!(
        "4 processes x 200 steps: {retries} retries ({:.3} per commit)",
        retries as f64 / 800.0
    );
}

#[test]
fn the_rule_gets_the_servers_clock() {
    // The time a rule sees is the server's `TIME` at the read, to the microsecond.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let engine = engine(&server);
    let mut con = raw(&server);
    let before = server_time(&mut con);
    let seen = Mutex::new(None);
    let stepped = engine
        .step(soon(), |_, now| {
            *seen.lock().unwrap() = Some(now);
            Decision::<(), ()>::NoChange(())
        })
        .unwrap();
    let after = server_time(&mut con);
    let seen = seen.lock().unwrap().unwrap();
    assert!(
        before <= seen && seen <= after,
        "{before} <= {seen} <= {after}"
    );
    assert_eq!(stepped.server_now, seen);
    let snapshot = engine.snapshot().unwrap();
    assert!(after <= snapshot.server_now && snapshot.server_now <= server_time(&mut con));
}

#[test]
fn a_key_of_another_type_is_reported_and_left_unchanged() {
    // WRONGTYPE is its own failure, naming the type; the rule is not called, the list stays.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = raw(&server);
    let _: () = con.rpush(KEY, &["a", "b"]).unwrap();
    let engine = engine(&server);
    let called = Mutex::new(false);
    let f = failure(engine.step(soon(), |_, _| {
        *called.lock().unwrap() = true;
        Decision::Write(b"{}".to_vec(), ())
    }));
    assert_eq!(
        f.kind,
        FailureKind::WrongType {
            found: Some("list".into())
        }
    );
    let at = format!("`redis://127.0.0.1:{}/0/{KEY}`", server.port());
    assert!(f.to_string().contains(&at), "{f}");
    assert!(!*called.lock().unwrap());
    let items: Vec<String> = con.lrange(KEY, 0, -1).unwrap();
    assert_eq!(items, ["a", "b"]);
    let f = engine.snapshot().unwrap_err();
    assert!(matches!(f.kind, FailureKind::WrongType { .. }), "{f}");
}

#[test]
fn garbage_bytes_reach_the_rule_as_they_are() {
    // The engine passes the stored bytes through untouched; judging them is the rule's job.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let garbage: &[u8] = b"\xff\x00{\"capacity\": tru\xc3";
    let mut con = raw(&server);
    let _: () = con.set(KEY, garbage).unwrap();
    let engine = engine(&server);
    let stepped = engine
        .step(soon(), |current, _| {
            Decision::<Option<Vec<u8>>, ()>::NoChange(current.map(<[u8]>::to_vec))
        })
        .unwrap();
    assert_eq!(stepped.value.as_deref(), Some(garbage));
    assert!(!stepped.written);
    let aborted = engine.step(soon(), |_, _| Decision::<(), &str>::Abort("corrupt"));
    assert!(matches!(aborted, Err(StepError::Aborted("corrupt"))));
    let stored: Vec<u8> = con.get(KEY).unwrap();
    assert_eq!(stored, garbage);
}

#[test]
fn a_missing_key_reads_as_none_and_is_created_by_a_write() {
    // No key is `None` to the rule, and a write creates it.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let engine = engine(&server);
    assert_eq!(engine.snapshot().unwrap().value, None);
    assert_eq!(increment(&engine).value, 1);
    assert_eq!(
        engine.snapshot().unwrap().value.as_deref(),
        Some(&b"{\"count\":1}"[..])
    );
}

#[test]
fn a_lost_race_writes_nothing_and_the_step_starts_again_from_the_read() {
    // A change between the read and the commit makes the commit fail; the rule runs again
    // on the new value, so the other writer's change is kept.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let engine = engine(&server);
    increment(&engine);
    let mut intruder = raw(&server);
    let seen = Mutex::new(Vec::new());
    let stepped = engine
        .step(soon(), |current, _| {
            let count = count_of(current);
            let mut seen = seen.lock().unwrap();
            if seen.is_empty() {
                let _: () = intruder.set(KEY, "{\"count\":10}").unwrap();
            }
            seen.push(count);
            Decision::<(), ()>::Write(format!("{{\"count\":{}}}", count + 1).into_bytes(), ())
        })
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), [1, 10]);
    assert_eq!((stepped.attempts, stepped.written), (2, true));
    let stored: Vec<u8> = intruder.get(KEY).unwrap();
    assert_eq!(count_of(Some(&stored)), 11);
    assert_eq!(engine.stats().retries, 1);
}

#[test]
fn a_missing_key_is_created_only_if_still_missing() {
    // "Missing" is a state the compare-and-swap checks too: a key created meanwhile wins.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let engine = engine(&server);
    let mut intruder = raw(&server);
    let seen = Mutex::new(Vec::new());
    engine
        .step(soon(), |current, _| {
            let mut seen = seen.lock().unwrap();
            if seen.is_empty() {
                let _: () = intruder.set(KEY, "").unwrap();
            }
            seen.push(current.map(<[u8]>::to_vec));
            Decision::<(), ()>::Write(b"mine".to_vec(), ())
        })
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), [None, Some(Vec::new())]);
    let stored: Vec<u8> = intruder.get(KEY).unwrap();
    assert_eq!(stored, b"mine");
}

#[test]
fn a_step_that_always_loses_gives_up_at_the_deadline() {
    // Retries are bounded by the caller's deadline; giving up writes nothing.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let engine = engine(&server);
    let mut intruder = raw(&server);
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_millis(100);
    let f = failure(engine.step(deadline, |_, _| {
        n += 1;
        let _: () = intruder.set(KEY, n).unwrap();
        Decision::<(), ()>::Write(b"mine".to_vec(), ())
    }));
    let FailureKind::Contended { attempts } = f.kind else {
        panic!("expected Contended, got {f}");
    };
    assert_eq!(attempts, n);
    assert!(attempts >= 2, "{attempts}");
    let stored: u32 = intruder.get(KEY).unwrap();
    assert_eq!(stored, n);
    assert_eq!(engine.stats().commits, 0);
}

#[test]
fn writing_the_bytes_already_stored_is_no_change() {
    // The same bytes are not written again, and announce nothing.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let engine = engine(&server);
    increment(&engine);
    let stepped = engine
        .step(soon(), |current, _| {
            Decision::<(), ()>::Write(current.unwrap().to_vec(), ())
        })
        .unwrap();
    assert!(!stepped.written);
    assert_eq!(engine.stats().commits, 1);
}

#[test]
fn idle_connections_are_reused() {
    // One thread's steps share one connection: no connect per step.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let engine = engine(&server);
    for _ in 0..50 {
        increment(&engine);
    }
    assert_eq!(engine.stats().connects, 1);
}

#[test]
fn a_stopped_server_times_out_and_the_engine_recovers_after_sigcont() {
    // A SIGSTOPped server is a typed timeout after the response timeout, never a hang; the
    // next step after SIGCONT works on a new connection.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let engine = engine_with(&server, impatient());
    increment(&engine);
    server.pause();
    let started = Instant::now();
    let f = failure(look(&engine));
    let waited = started.elapsed();
    assert_eq!(
        f.kind,
        FailureKind::Timeout {
            during: Phase::Read,
            after: Duration::from_millis(500)
        }
    );
    assert!(!f.outcome_unknown());
    // Generous: this checks "bounded", not speed.
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // A new connection to the stopped server times out too (connect succeeds in the
    // kernel's backlog; the handshake gets no answer).
    let f = failure(look(&engine));
    assert!(matches!(f.kind, FailureKind::Timeout { .. }), "{f}");
    server.resume();
    look(&engine).unwrap();
    assert_eq!(increment(&engine).value, 2);
}

#[test]
fn a_commit_without_answer_reports_an_unknown_outcome() {
    // A timeout while the compare-and-swap is in flight says the change may have been made;
    // the state is then one or the other, never something else.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let engine = engine_with(&server, impatient());
    increment(&engine);
    let paused = Mutex::new(false);
    let f = failure(engine.step(soon(), |current, _| {
        let mut paused = paused.lock().unwrap();
        if !*paused {
            *paused = true;
            server.pause();
        }
        Decision::Write(
            format!("{{\"count\":{}}}", count_of(current) + 1).into_bytes(),
            (),
        )
    }));
    assert_eq!(
        f.kind,
        FailureKind::Timeout {
            during: Phase::Commit,
            after: Duration::from_millis(500)
        }
    );
    assert!(f.outcome_unknown());
    assert!(
        f.to_string()
            .ends_with("the change may or may not have been made"),
        "{f}"
    );
    server.resume();
    let after = engine.snapshot().unwrap().value;
    assert!(matches!(count_of(after.as_deref()), 1 | 2), "{after:?}");
}

#[test]
fn a_killed_server_is_unreachable_and_the_engine_recovers_after_a_restart() {
    // Connection refused is Unreachable (after dropping the dead idle connection); the first
    // step after the restart works.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let engine = engine_with(&server, impatient());
    increment(&engine);
    server.kill();
    let f = failure(look(&engine));
    assert_eq!(f.kind, FailureKind::Unreachable, "{f}");
    assert_eq!(
        f.to_string(),
        format!(
            "cannot connect to Redis for semaphore `redis://127.0.0.1:{}/0/sem`",
            server.port()
        )
    );
    server.restart();
    // The server kept nothing (no persistence): the counter starts again.
    assert_eq!(increment(&engine).value, 1);
}

#[test]
fn an_idle_connection_closed_by_a_restart_is_replaced_without_an_error() {
    // A server restarted between two steps costs a reconnect, not a failed step.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let engine = engine_with(&server, impatient());
    increment(&engine);
    server.restart();
    assert_eq!(increment(&engine).value, 1);
    assert_eq!(engine.stats().connects, 2);
}

#[test]
fn credentials_are_checked_and_never_shown() {
    // A wrong or missing password is an authentication failure, and no message shows it.
    let Some(server) = RedisServer::start_with_password("s3cret") else {
        return;
    };
    let port = server.port();
    let at = |credentials: &str| format!("redis://{credentials}127.0.0.1:{port}/0/{KEY}");
    let wrong = Engine::new(Location::parse(&at(":hunter2@")).unwrap(), impatient()).unwrap();
    let f = failure(look(&wrong));
    assert!(matches!(f.kind, FailureKind::Auth { .. }), "{f}");
    let message = format!("{f} {f:?}");
    assert!(message.contains(&at(":***@")), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    let none = Engine::new(Location::parse(&at("")).unwrap(), impatient()).unwrap();
    let f = failure(look(&none));
    assert!(
        matches!(&f.kind, FailureKind::Auth { detail } if detail.contains("NOAUTH")),
        "{f}"
    );
    let right = engine_with(&server, impatient());
    assert_eq!(increment(&right).value, 1);
    assert!(!format!("{right:?}").contains("s3cret"));
}

#[test]
fn a_committed_step_wakes_a_subscriber() {
    // Another client's committed change ends a wait at once (the latency is printed).
    let Some(server) = RedisServer::start() else {
        return;
    };
    let waiter = engine(&server);
    let (_subscriber, bell) = subscribed(&waiter);
    let writer = engine(&server);
    let committed = Instant::now();
    increment(&writer);
    assert!(rings(&bell, Duration::from_secs(10)));
    let latency = committed.elapsed();
    eprintln!("notice latency (commit started -> waiter woken): {latency:?}");
    // A notice that came before the wait is not missed: the doorbell keeps it.
    increment(&writer);
    std::thread::sleep(Duration::from_millis(50));
    assert!(rings(&bell, Duration::from_secs(10)));
    // Every doorbell rings, not only one.
    let other = _subscriber.doorbell().unwrap();
    increment(&writer);
    assert!(rings(&bell, Duration::from_secs(10)));
    assert!(rings(&other, Duration::from_secs(10)));
}

#[test]
fn steps_that_write_nothing_wake_no_subscriber() {
    // No change, a lost race and a write of the same bytes announce nothing.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let writer = engine(&server);
    increment(&writer);
    let (_subscriber, bell) = subscribed(&writer);
    look(&writer).unwrap();
    let mut intruder = raw(&server);
    let mut first = true;
    writer
        .step(soon(), |current, _| {
            if std::mem::take(&mut first) {
                let _: () = intruder.set(KEY, "{\"count\":5}").unwrap();
                return Decision::<(), ()>::Write(b"lost".to_vec(), ());
            }
            Decision::Write(current.unwrap().to_vec(), ())
        })
        .unwrap();
    assert!(!rings(&bell, Duration::from_millis(300)));
    assert_eq!(writer.stats().retries, 1);
}

#[test]
fn a_subscriber_outlives_a_server_restart() {
    // While the server is down nothing rings; once it is back the subscriber subscribes
    // again and rings every doorbell (notices may have been missed), then works as before.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let engine = engine_with(&server, impatient());
    let (subscriber, bell) = subscribed(&engine);
    server.kill();
    assert!(!rings(&bell, Duration::from_millis(200)));
    server.restart();
    assert!(rings(&bell, Duration::from_secs(30)));
    assert_eq!(subscriber.subscriptions(), 2);
    increment(&engine);
    assert!(rings(&bell, Duration::from_secs(10)));
}

#[test]
fn a_subscriber_of_a_dead_server_says_why_and_subscribes_once_it_is_back() {
    // Starting never waits for the server: the failure is recorded, nothing rings, and the
    // subscription comes (ringing) when the server does.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let engine = engine_with(&server, impatient());
    server.kill();
    let subscriber = engine.subscribe().unwrap();
    let bell = subscriber.doorbell().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while subscriber.failure().is_none() {
        assert!(Instant::now() < deadline, "no failure recorded");
        std::thread::sleep(Duration::from_millis(5));
    }
    let failure = subscriber.failure().unwrap();
    assert!(failure.starts_with("cannot connect to Redis"), "{failure}");
    assert!(!subscriber.is_subscribed());
    assert!(!bell.take());
    server.restart();
    assert!(rings(&bell, Duration::from_secs(30)));
    assert!(subscriber.is_subscribed());
    assert_eq!(subscriber.failure(), None);
}

#[test]
fn too_few_replicas_is_a_typed_error_after_the_commit() {
    // WAIT for 1 replica on a server with none: NotReplicated, with the committed step's
    // result, and the change is on the server.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let engine = engine_with(
        &server,
        EngineOptions {
            replicas: Some(ReplicaAck {
                replicas: 1,
                timeout: Duration::from_millis(100),
            }),
            ..EngineOptions::default()
        },
    );
    let result = engine.step(soon(), |_, _| Decision::<u8, ()>::Write(b"x".to_vec(), 7));
    let Err(StepError::Unreplicated {
        stepped,
        failure: f,
    }) = result
    else {
        panic!("expected Unreplicated, got {result:?}");
    };
    assert_eq!((stepped.value, stepped.written), (7, true));
    assert_eq!(
        f.kind,
        FailureKind::NotReplicated {
            wanted: 1,
            acked: 0,
            timeout: Duration::from_millis(100)
        }
    );
    let stored: Vec<u8> = raw(&server).get(KEY).unwrap();
    assert_eq!(stored, b"x");
}

#[test]
fn a_corrupt_key_is_moved_aside_only_if_unchanged() {
    // Recovery renames the key (of any type) and writes a fresh value in one step, unless
    // it changed since it was inspected; waiters are told.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = raw(&server);
    let _: () = con.rpush(KEY, &["a"]).unwrap();
    let engine = engine(&server);
    let seen = engine.inspect(1024).unwrap();
    assert_eq!((seen.kind.as_str(), seen.prefix.len()), ("list", 0));
    let _: () = con.rpush(KEY, &["b"]).unwrap();
    assert_eq!(engine.rename_aside(&seen, Some(b"fresh")).unwrap(), None);
    let items: Vec<String> = con.lrange(KEY, 0, -1).unwrap();
    assert_eq!(items, ["a", "b"]);

    let seen = engine.inspect(1024).unwrap();
    let (_subscriber, bell) = subscribed(&engine);
    let aside = engine.rename_aside(&seen, Some(b"fresh")).unwrap().unwrap();
    let stamp = seen.server_now.format("%Y%m%dT%H%M%S%.6fZ").to_string();
    assert_eq!(aside, format!("{KEY}.corrupt-{stamp}"));
    let items: Vec<String> = con.lrange(&aside, 0, -1).unwrap();
    assert_eq!(items, ["a", "b"]);
    let fresh: Vec<u8> = con.get(KEY).unwrap();
    assert_eq!(fresh, b"fresh");
    assert!(rings(&bell, Duration::from_secs(10)));

    // A string key: its first bytes come with the inspection (for a token floor).
    let seen = engine.inspect(3).unwrap();
    assert_eq!(
        (seen.kind.as_str(), seen.prefix.as_slice()),
        ("string", &b"fre"[..])
    );
    let _: () = con
        .set(
            format!(
                "{KEY}.corrupt-{}",
                seen.server_now.format("%Y%m%dT%H%M%S%.6fZ")
            ),
            1,
        )
        .unwrap();
    let f = engine.rename_aside(&seen, None).unwrap_err();
    assert!(matches!(f.kind, FailureKind::AsideTaken { .. }), "{f}");
    let fresh: Vec<u8> = con.get(KEY).unwrap();
    assert_eq!(fresh, b"fresh");
}

#[test]
fn a_key_is_deleted_only_if_unchanged() {
    // Delete compares like recovery: a change since the inspection keeps the key.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let engine = engine(&server);
    increment(&engine);
    let seen = engine.inspect(1).unwrap();
    increment(&engine);
    assert!(!engine.delete(&seen).unwrap());
    assert_eq!(count_of(engine.snapshot().unwrap().value.as_deref()), 2);
    let seen = engine.inspect(1).unwrap();
    assert!(engine.delete(&seen).unwrap());
    assert_eq!(engine.snapshot().unwrap().value, None);
    let seen = engine.inspect(1).unwrap();
    assert_eq!(
        (seen.kind.as_str(), seen.fingerprint.as_str()),
        ("none", "")
    );
}

#[test]
fn a_durable_restart_keeps_every_committed_step() {
    // With appendonly yes + appendfsync always a restart keeps the state; without, it does not.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let engine = engine_with(&server, impatient());
    increment(&engine);
    server.restart_durable();
    assert_eq!(engine.snapshot().unwrap().value, None);
    increment(&engine);
    increment(&engine);
    server.restart();
    assert_eq!(count_of(engine.snapshot().unwrap().value.as_deref()), 2);
    assert!(
        server.dir().join("appendonlydir").exists() || server.dir().join("appendonly.aof").exists()
    );
}

#[test]
fn engine_and_subscriber_can_be_shared_by_threads() {
    // A semaphore handle shares them between threads: both must be Send + Sync.
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Engine>();
    assert_send_sync::<super::subscriber::Subscriber>();
}

#[test]
fn dropping_a_subscriber_closes_its_subscription() {
    // The listening thread ends with its subscriber: no connection is left subscribed.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let engine = engine_with(&server, impatient());
    let mut con = raw(&server);
    let subscribers = |con: &mut Connection| -> i64 {
        let (_, n): (String, i64) = ::redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(engine.channel())
            .query(con)
            .unwrap();
        n
    };
    let (subscriber, _bell) = subscribed(&engine);
    assert_eq!(subscribers(&mut con), 1);
    drop(subscriber);
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribers(&mut con) != 0 {
        assert!(
            Instant::now() < deadline,
            "the subscription outlived its subscriber"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
