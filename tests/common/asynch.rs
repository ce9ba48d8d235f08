//! Helpers of the async API's tests (feature `tokio`): the two runtimes, the operations and
//! the cancellation storm both stores are put through, and async and blocking processes
//! sharing one semaphore of either store. Each test binary uses some of them.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use filesem::{AcquireOptions, AsyncPermit, AsyncSemaphore, Error, OpenOptions, Semaphore};

use crate::common::witness::Witness;

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

// ------------------------------------------------- async and blocking processes together

/// Where the semaphore of [`async_and_blocking_processes`] is: a state file or a Redis key.
/// The children get it as their `SEM` argument (the path, or the `redis://` URL).
#[derive(Clone, Debug)]
pub enum Store {
    File(PathBuf),
    #[cfg(feature = "redis")]
    Redis(String),
}

impl Store {
    /// The store a child was given as `SEM`: a `redis://` URL, else a file path.
    fn from_arg() -> Store {
        let sem = crate::common::arg("SEM");
        #[cfg(feature = "redis")]
        if sem.starts_with("redis://") {
            return Store::Redis(sem);
        }
        Store::File(PathBuf::from(sem))
    }

    fn to_arg(&self) -> String {
        match self {
            Store::File(path) => path.display().to_string(),
            #[cfg(feature = "redis")]
            Store::Redis(url) => url.clone(),
        }
    }

    /// What a release reaches: "file" or "key".
    fn what(&self) -> &'static str {
        match self {
            Store::File(_) => "file",
            #[cfg(feature = "redis")]
            Store::Redis(_) => "key",
        }
    }

    async fn open(&self, options: &OpenOptions, capacity: u32) -> AsyncSemaphore {
        match self {
            Store::File(path) => AsyncSemaphore::open_with(options, path, capacity).await,
            #[cfg(feature = "redis")]
            Store::Redis(url) => AsyncSemaphore::open_redis_with(options, url, capacity).await,
        }
        .unwrap()
    }

    fn open_blocking(&self, options: &OpenOptions, capacity: u32) -> Semaphore {
        match self {
            Store::File(path) => options.open(path, capacity),
            #[cfg(feature = "redis")]
            Store::Redis(url) => options.open_redis(url, capacity),
        }
        .unwrap()
    }

    fn open_existing(&self) -> Semaphore {
        match self {
            Store::File(path) => OpenOptions::new().open_existing(path),
            #[cfg(feature = "redis")]
            Store::Redis(url) => Semaphore::open_redis_existing(url),
        }
        .unwrap()
    }
}

/// Tasks (or threads) per worker process of [`async_and_blocking_processes`].
const PER_PROCESS: usize = 6;

/// The slots the worker processes of [`async_and_blocking_processes`] share.
const CAPACITY: u32 = 3;

/// Two processes of 6 async tasks and two of 6 blocking threads share 3 slots of `store`,
/// each task or thread taking a slot `cycles` times; some async acquires are cancelled by
/// short timeouts on the way. Checks that the independent witness (its own counter file and
/// one marker file per slot, `examples/common/witness.rs`) never sees more than 3 inside,
/// that every grant is counted, that no token is used twice, and that the store ends empty.
///
/// The children are this test binary's ignored test `child_process` in the roles `async`
/// and `blocking`, which must call [`async_worker`] and [`blocking_worker`]. `test` names the
/// test for its seed.
pub fn async_and_blocking_processes(test: &str, store: &Store, cycles: usize) {
    use crate::common::{self, ChildSpec, Group};

    let seed = common::seed(test);
    let dir = common::tmpfs_dir();
    let witness = Witness::create(dir.path().join("witness"), CAPACITY).unwrap();
    let mut group = Group::new();
    for (i, role) in ["async", "blocking", "async", "blocking"]
        .iter()
        .enumerate()
    {
        group.spawn(
            ChildSpec::new(format!("{role}-{i}"), "child_process", role)
                .arg("SEM", store.to_arg())
                .arg("WITNESS", witness.dir().display())
                .arg("CYCLES", cycles)
                .arg("NAME", format!("{role}-{i}"))
                .seed(common::derive_seed(seed, i as u64)),
        );
    }
    group.expect_all("ready", common::deadline(60));
    group.send_all("go");
    let finished = group.finish(common::deadline(240));

    let (mut grants, mut cancelled, mut tokens) = (0u64, 0u64, Vec::new());
    for f in &finished {
        let errors = f.lines_of("error");
        assert!(errors.is_empty(), "{}: {errors:?}", f.name);
        let violations = f.lines_of("violation");
        assert!(violations.is_empty(), "{}: {violations:?}", f.name);
        assert!(f.status.success(), "{} exited with {}", f.name, f.status);
        let done = f.lines_of("done");
        assert_eq!(done.len(), 1, "{}: {:?}", f.name, f.lines);
        let n: Vec<u64> = done[0].split(' ').map(|w| w.parse().unwrap()).collect();
        assert_eq!(
            n[0],
            (PER_PROCESS * cycles) as u64,
            "{} completes every cycle",
            f.name
        );
        grants += n[0];
        cancelled += n[1];
        tokens.extend(
            f.lines_of("tokens")[0]
                .split(' ')
                .filter(|w| !w.is_empty())
                .map(|w| w.parse::<u64>().unwrap()),
        );
    }
    let report = witness.report().unwrap();
    println!(
        "seed={seed}: {grants} grants, {cancelled} cancelled async acquires, max inside {}, \
         violations {}",
        report.max_inside,
        report.violations.len()
    );
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(report.max_inside <= CAPACITY);
    assert_eq!(report.inside, 0);
    assert_eq!(report.grants, grants, "the witness saw every grant");
    let distinct: HashSet<u64> = tokens.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        tokens.len(),
        "fencing tokens are never reused"
    );
    let sem = store.open_existing();
    assert_eq!(
        sem.count().unwrap(),
        0,
        "every release reached the {}",
        store.what()
    );
    assert!(
        sem.waiters().unwrap().is_empty(),
        "no queue entry left behind"
    );
}

/// One hold: the witness's enter and leave around a short random pause. Returns the
/// witness's complaints.
fn hold(witness: &Witness, slot: u32, id: &str, token: u64, pause: Duration) -> Vec<String> {
    let mut complaints = witness.enter(slot, id, token).unwrap().violations;
    std::thread::sleep(pause);
    complaints.extend(witness.leave(slot, id, token).unwrap().1);
    complaints
}

/// The async worker of [`async_and_blocking_processes`], opening the store with `options`:
/// `PER_PROCESS` tasks on a multi-threaded runtime, each acquiring `CYCLES` times (a third
/// of the tries first with a short timeout that may cancel it).
pub fn async_worker(options: &OpenOptions) {
    use crate::common::{self, arg, say};

    let (store, name) = (Store::from_arg(), arg("NAME"));
    let cycles: usize = arg("CYCLES").parse().unwrap();
    let seed = common::seed(&name);
    let witness = Arc::new(Witness::create(arg("WITNESS"), CAPACITY).unwrap());
    say("ready");
    common::wait_for_parent();
    let results = multi_thread().block_on(async {
        let sem = store.open(options, CAPACITY).await;
        let tasks: Vec<_> = (0..PER_PROCESS)
            .map(|t| {
                let (sem, witness) = (sem.clone(), Arc::clone(&witness));
                let id = format!("{name}-task-{t}");
                let mut rng = fastrand::Rng::with_seed(common::derive_seed(seed, t as u64));
                tokio::spawn(async move {
                    let (mut tokens, mut cancelled, mut complaints) =
                        (Vec::new(), 0u64, Vec::new());
                    for _ in 0..cycles {
                        if rng.u8(0..3) == 0 {
                            let patience = Duration::from_micros(rng.u64(100..5000));
                            match tokio::time::timeout(patience, sem.acquire(&id)).await {
                                Ok(permit) => {
                                    // Served in time after all: give it back, then take the
                                    // cycle's slot below as usual.
                                    drop(permit.map_err(|e| format!("error acquire: {e}"))?);
                                }
                                Err(_) => cancelled += 1,
                            }
                        }
                        let permit = sem
                            .acquire(&id)
                            .await
                            .map_err(|e| format!("error acquire: {e}"))?;
                        let (slot, token) = (permit.slot(), permit.token());
                        tokens.push(token);
                        let pause = Duration::from_micros(rng.u64(0..2000));
                        let w = Arc::clone(&witness);
                        let id2 = id.clone();
                        complaints.extend(
                            tokio::task::spawn_blocking(move || hold(&w, slot, &id2, token, pause))
                                .await
                                .unwrap(),
                        );
                        if rng.bool() {
                            permit
                                .release()
                                .await
                                .map_err(|e| format!("error release: {e}"))?;
                        } else {
                            drop(permit);
                        }
                    }
                    Ok::<_, String>((tokens, cancelled, complaints))
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        // Dropped permits release on the handle's thread: wait for them before reporting.
        let start = Instant::now();
        while sem
            .holders()
            .await
            .unwrap()
            .iter()
            .any(|h| h.id.starts_with(&name))
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the dropped permits' releases"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        results
    });
    report(results);
}

/// The blocking worker of [`async_and_blocking_processes`], opening the store with
/// `options`: `PER_PROCESS` threads, each acquiring `CYCLES` times.
pub fn blocking_worker(options: &OpenOptions) {
    use crate::common::{self, arg, say};

    let (store, name) = (Store::from_arg(), arg("NAME"));
    let cycles: usize = arg("CYCLES").parse().unwrap();
    let seed = common::seed(&name);
    let witness = Arc::new(Witness::create(arg("WITNESS"), CAPACITY).unwrap());
    say("ready");
    common::wait_for_parent();
    let sem = store.open_blocking(options, CAPACITY);
    let threads: Vec<_> = (0..PER_PROCESS)
        .map(|t| {
            let (sem, witness) = (sem.clone(), Arc::clone(&witness));
            let id = format!("{name}-thread-{t}");
            let mut rng = fastrand::Rng::with_seed(common::derive_seed(seed, t as u64));
            std::thread::spawn(move || {
                let (mut tokens, mut complaints) = (Vec::new(), Vec::new());
                for _ in 0..cycles {
                    let permit = sem
                        .acquire(id.as_str())
                        .map_err(|e| format!("error acquire: {e}"))?;
                    tokens.push(permit.token());
                    let pause = Duration::from_micros(rng.u64(0..2000));
                    complaints.extend(hold(&witness, permit.slot(), &id, permit.token(), pause));
                    permit
                        .release()
                        .map_err(|e| format!("error release: {e}"))?;
                }
                Ok::<_, String>((tokens, 0, complaints))
            })
        })
        .collect();
    report(threads.into_iter().map(|t| t.join().unwrap()).collect());
}

/// What one task or thread of a worker did: its tokens, its cancelled acquires, the
/// witness's complaints; or the error that stopped it.
type Outcome = Result<(Vec<u64>, u64, Vec<String>), String>;

/// Says what the tasks or threads of a worker did: errors, violations, then `done GRANTS
/// CANCELLED` and `tokens ...`.
fn report(results: Vec<Outcome>) {
    use crate::common::say;

    let (mut tokens, mut cancelled) = (Vec::new(), 0);
    for r in results {
        match r {
            Ok((t, c, complaints)) => {
                tokens.extend(t);
                cancelled += c;
                for v in complaints {
                    say(format!("violation {v}"));
                }
            }
            Err(e) => say(e),
        }
    }
    say(format!("done {} {cancelled}", tokens.len()));
    let list: Vec<String> = tokens.iter().map(u64::to_string).collect();
    say(format!("tokens {}", list.join(" ")));
}

// ------------------------------------------------------- the operations of both stores

/// How long any single expected event of the shared operations may take before the test
/// fails. Generous: the machine is shared.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Waits (without blocking the runtime) until `n` waiters are queued on `sem`.
pub async fn queued(sem: &AsyncSemaphore, n: usize) {
    let start = Instant::now();
    while sem.waiters().await.unwrap().len() != n {
        assert!(start.elapsed() < DEADLINE, "never {n} waiters");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The IDs of `list`, in its order.
pub fn ids(list: Vec<filesem::HolderInfo>) -> Vec<String> {
    list.into_iter().map(|h| h.id).collect()
}

/// The first part of every operation of the async API on `sem`, a new semaphore of
/// capacity 1, checked by value with what both stores answer: `try_acquire`, its refusals,
/// the queries. Returns the permit of `a` (the only holder) for the store's own checks of it;
/// [`every_operation_after_the_first_hold`] goes on from there.
pub async fn every_operation_up_to_the_first_hold(sem: &AsyncSemaphore) -> AsyncPermit {
    assert_eq!(sem.capacity().await.unwrap(), 1);
    assert_eq!(sem.available().await.unwrap(), 1);
    let a = sem.try_acquire("a").await.unwrap();
    assert_eq!((a.id(), a.slot()), ("a", 0));
    assert!(matches!(
        sem.try_acquire("b").await,
        Err(Error::NoCapacity { .. })
    ));
    assert!(matches!(
        sem.try_acquire("a").await,
        Err(Error::AlreadyHeld { .. })
    ));
    assert!(matches!(
        sem.try_acquire("").await,
        Err(Error::InvalidId { .. })
    ));
    assert_eq!(sem.count().await.unwrap(), 1);
    assert_eq!(sem.available().await.unwrap(), 0);
    let holders = sem.holders().await.unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].id, "a");
    assert_eq!(holders[0].token, Some(a.token()));
    assert_eq!(holders[0].slot, Some(0));
    assert!(a.is_held().await.unwrap());
    a
}

/// The rest of every operation both stores answer alike, on `sem` with `a` its only
/// holder (from [`every_operation_up_to_the_first_hold`]): `acquire_timeout`, the hand-off
/// to a waiter, `set_capacity` (to 2) and priorities, leases, `keep`, release by ID,
/// `remove`, `reap`, conversions to and from the blocking API. A lease of 30 s renewed now
/// must end later than 30 s minus `renew_slack` from now. Leaves `sem` empty, of capacity 2.
pub async fn every_operation_after_the_first_hold(
    sem: &AsyncSemaphore,
    a: AsyncPermit,
    renew_slack: Duration,
) {
    // acquire_timeout runs out; acquire waits for the hand-off.
    let err = sem
        .acquire_timeout("b", Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    // The timed-out call's leave ran before the next step of the handle.
    let again = sem.try_acquire("b").await.unwrap_err();
    assert!(matches!(again, Error::NoCapacity { .. }), "{again:?}");
    assert!(sem.waiters().await.unwrap().is_empty());
    let waiter = {
        let sem = sem.clone();
        tokio::spawn(async move { sem.acquire("b").await })
    };
    queued(sem, 1).await;
    assert_eq!(ids(sem.waiters().await.unwrap()), ["b"]);
    let token_a = a.token();
    a.release().await.unwrap();
    let b = tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((b.id(), b.slot()), ("b", 0));
    assert!(b.token() > token_a, "a later grant has a larger token");
    assert_eq!(ids(sem.holders().await.unwrap()), ["b"]);

    // set_capacity hands the new slot to a waiter; priorities order the queue.
    let low = {
        let sem = sem.clone();
        tokio::spawn(async move { sem.acquire("low").await })
    };
    queued(sem, 1).await;
    let high = {
        let sem = sem.clone();
        let opts = AcquireOptions::new().priority(5);
        tokio::spawn(async move { sem.acquire_with("high", &opts).await })
    };
    queued(sem, 2).await;
    assert_eq!(ids(sem.waiters().await.unwrap()), ["high", "low"]);
    sem.set_capacity(2).await.unwrap();
    assert_eq!(sem.capacity().await.unwrap(), 2);
    let high = tokio::time::timeout(DEADLINE, high)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((high.id(), high.slot()), ("high", 1));
    drop(b);
    let low = tokio::time::timeout(DEADLINE, low)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((low.id(), low.slot()), ("low", 0));
    assert!(low.token() > high.token());
    high.release().await.unwrap();
    low.release().await.unwrap();
    assert_eq!(sem.count().await.unwrap(), 0);

    // Leases: renew, keep-alive, is_lost.
    let opts = AcquireOptions::new().lease(Duration::from_secs(30));
    let mut leased = sem.try_acquire_with("leased", &opts).await.unwrap();
    assert_eq!(leased.lease(), Some(Duration::from_secs(30)));
    let until = leased.renew().await.unwrap().expect("has a lease");
    let least = chrono::Duration::from_std(Duration::from_secs(30) - renew_slack).unwrap();
    assert!(until > chrono::Utc::now() + least, "{until}");
    leased.keep_alive().await.unwrap();
    assert!(!leased.is_lost());
    leased.stop_keep_alive().await.unwrap();

    // keep, release by ID, remove, reap.
    leased.keep().await.unwrap();
    assert_eq!(
        sem.holders().await.unwrap()[0].mode,
        filesem::HoldMode::Detached
    );
    sem.release("leased").await.unwrap();
    assert!(matches!(
        sem.release("leased").await,
        Err(Error::NotHeld { .. })
    ));
    sem.try_acquire("gone").await.unwrap().keep().await.unwrap();
    assert_eq!(sem.remove(["gone", "never"]).await.unwrap(), ["gone"]);
    let short = AcquireOptions::new()
        .detached(true)
        .lease(filesem::MIN_LEASE);
    drop(sem.try_acquire_with("short", &short).await.unwrap());
    tokio::time::sleep(filesem::MIN_LEASE + filesem::LEASE_GRACE + Duration::from_millis(300))
        .await;
    let reaped = sem.reap().await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].id, "short");
    assert_eq!(sem.count().await.unwrap(), 0);

    // Conversions to and from the blocking API share the semaphore; a blocking call runs
    // off the runtime.
    let blocking: Semaphore = sem.blocking().clone();
    let p = tokio::task::spawn_blocking({
        let blocking = blocking.clone();
        move || blocking.try_acquire("blocking")
    })
    .await
    .unwrap()
    .unwrap();
    let p = AsyncPermit::from_blocking(p).unwrap();
    assert_eq!(sem.count().await.unwrap(), 1);
    assert_eq!(ids(sem.holders().await.unwrap()), ["blocking"]);
    let p = p.into_blocking().await.unwrap();
    assert_eq!(p.id(), "blocking");
    let again = AsyncSemaphore::from_blocking(blocking).unwrap();
    assert_eq!(again.count().await.unwrap(), 1);
    tokio::task::spawn_blocking(move || p.release())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sem.count().await.unwrap(), 0);
}

/// With the only slot of `sem` (capacity 1) held, a wait on `idle` starts the handle's
/// watcher there, and `idle` is then left alive but no longer driven (a `current_thread`
/// runtime between two `block_on`s); a task waiting on another runtime must still be
/// served when the holder leaves.
pub fn served_while_the_first_watchers_runtime_is_idle(
    idle: tokio::runtime::Runtime,
    sem: &AsyncSemaphore,
) {
    let holder = sem.blocking().try_acquire("holder").unwrap();
    let timed_out = idle.block_on(sem.acquire_timeout("first", Duration::from_millis(50)));
    assert!(
        matches!(timed_out, Err(Error::Timeout { .. })),
        "{timed_out:?}"
    );
    let served = current_thread().block_on(async {
        let waiter = tokio::spawn({
            let sem = sem.clone();
            async move { sem.acquire("second").await }
        });
        // Queued behind the holder, then the holder leaves.
        queued(sem, 1).await;
        drop(holder);
        tokio::time::timeout(DEADLINE, waiter).await
    });
    let permit = served
        .expect("the waiter was never served")
        .unwrap()
        .unwrap();
    assert_eq!(permit.id(), "second");
    drop(idle);
}
