//! The watcher one async handle shares among all its waiting tasks: one notifier (the file
//! store's inotify descriptor driven by the runtime's reactor through [`AsyncFd`]; the Redis
//! store's async pub/sub connection, read by a task on the runtime:
//! [`crate::store::redis::notices`]), one snapshot of the document per change, read on the
//! handle's look thread, and published to every waiting task through a [`watch`] channel.
//!
//! On Redis the watcher is prompt only while the channel is subscribed: it looks again at
//! every notice and after every (re)subscription, and while the connection is down it
//! polls at the fast pace. The connection is the watcher's: it closes when the watcher ends.
//!
//! One notifier per handle rather than per task: the kernel allows 128 inotify instances
//! per user by default, and a thousand tasks waiting on one semaphore must not need a
//! thousand. One snapshot per change rather than one per task: the waiters of a handle look
//! at the same document, and each judges it for itself (its own entry found by its ticket;
//! what concerns the whole queue, such as stale entries, judged once here on the look
//! thread, where probing witness files may block).
//!
//! The watcher is a task on the runtime of its waiters: one per runtime that has waiting
//! tasks of the handle (a watcher on another runtime would serve them only while that
//! runtime is driven: a `current_thread` runtime between two `block_on`s runs no task). It
//! runs while some task of its runtime waits and ends when the last one stops watching, or
//! with its runtime. Its safety-net timer is the blocking sleeper's backoff: 100 ms doubling
//! to 1 s with prompt notices, 5 ms doubling to 250 ms without (polling), back to the start
//! whenever the document changed; a waiter can also ask for a look at once ([`Watch::poke`]).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::runtime::{self, Handle};
use tokio::sync::{Notify, watch};

use super::runner::{Lane, Runner};
use crate::core::doc::Document;
use crate::core::queue::{Mine, WAITER_EXPIRY, next_expiry_any, queue_needs_step};
use crate::semaphore::Semaphore;
use crate::sleeper::{POLL_FIRST, POLL_MAX, PROMPT_FIRST, PROMPT_MAX};
use crate::store::{Step, Waker, jitter};

/// One snapshot of the document, as every waiter of the handle sees it.
pub(crate) struct Look {
    pub doc: Document,
    /// The store's clock when it was read.
    pub now: DateTime<Utc>,
    /// When the read was started (this machine's monotonic clock): a waiter trusts only a
    /// look started after its own last step.
    pub sent: Instant,
    /// Whether a locked step would change something for any queued waiter
    /// ([`queue_needs_step`]), judged on the look thread.
    pub queue_step: bool,
    /// Where each ticket is: a waiter finds its entry without scanning the document.
    tickets: HashMap<u64, Place>,
}

/// Where a ticket's first entry is in a [`Look`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Holder(usize),
    Waiter(usize),
}

impl Look {
    /// Where `mine` is, found by ticket and ID as [`crate::core::queue`] finds it: `None`
    /// when it is not on file; `Some(None)` when its ticket's entry has another ID (then
    /// only a scan of the document tells).
    pub fn place(&self, mine: &Mine) -> Option<Option<Place>> {
        let place = *self.tickets.get(&mine.ticket)?;
        let entry = match place {
            Place::Holder(i) => &self.doc.holders[i],
            Place::Waiter(i) => &self.doc.waiters[i],
        };
        Some((entry.id == mine.id).then_some(place))
    }
}

/// What the watcher publishes: the latest look, or the instant a read failed (each waiter
/// then reads for itself, to get the error to return).
pub(crate) type Published = Option<Arc<std::result::Result<Look, Instant>>>;

/// The watchers of one handle, shared by its clones: one per runtime with waiting tasks.
#[derive(Default)]
pub(crate) struct Hub {
    live: Lives,
    /// The queue entries of the handle's waiting tasks, by call, with their requests'
    /// waiter expiry: the watcher refreshes them in one step every third of the shortest
    /// expiry (a thousand file waiters refreshing each for itself would write the state file
    /// 500 times a second).
    waiting: Waiting,
}

/// The queue entries of a handle's waiting tasks, by call, each with its waiter expiry.
type Waiting = Arc<Mutex<HashMap<u64, (Mine, Duration)>>>;

/// A waiting task's queue entry, listed for the watcher's refresh while this lives.
pub(crate) struct Listed {
    waiting: Waiting,
    call: u64,
    expiry: Duration,
}

impl Listed {
    /// Lists the entry again after a step (it changes when the call queued again).
    pub fn update(&self, mine: &Mine) {
        lock(&self.waiting).insert(self.call, (mine.clone(), self.expiry));
    }
}

/// How often the listed entries are refreshed: a third of the shortest waiter expiry (as
/// [`Request::refresh_every`](crate::core::queue::Request::refresh_every)); a third of the
/// file store's when none is listed.
fn refresh_every(waiting: &Waiting) -> Duration {
    lock(waiting)
        .values()
        .map(|(_, expiry)| *expiry)
        .min()
        .unwrap_or(WAITER_EXPIRY)
        / 3
}

impl Drop for Listed {
    fn drop(&mut self) {
        lock(&self.waiting).remove(&self.call);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running watchers, by runtime.
type Lives = Arc<Mutex<HashMap<runtime::Id, Live>>>;

/// A running watcher.
struct Live {
    /// Which watcher this is (a watcher that ends clears only its own entry).
    generation: u64,
    looks: Arc<watch::Sender<Published>>,
    poke: Arc<Notify>,
}

/// A waiting task's view of the watcher of its runtime.
pub(crate) struct Watch {
    pub looks: watch::Receiver<Published>,
    poke: Arc<Notify>,
}

impl Watch {
    /// Asks the watcher for a new look at once.
    pub fn poke(&self) {
        self.poke.notify_one();
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

impl Hub {
    /// Lists a waiting task's queue entry for the watcher's refresh, until the returned
    /// guard is dropped.
    pub fn list(&self, mine: &Mine, expiry: Duration) -> Listed {
        let call = GENERATION.fetch_add(1, Ordering::Relaxed);
        let listed = Listed {
            waiting: Arc::clone(&self.waiting),
            call,
            expiry,
        };
        listed.update(mine);
        listed
    }

    /// Watches the semaphore for a waiting task, starting a watcher on the current runtime
    /// if none runs there. Subscribe before the step that may queue: no change after it is
    /// missed.
    ///
    /// # Panics
    ///
    /// If the runtime has no timers or no I/O driver, as tokio's own timers and I/O types
    /// do, with tokio's message: here, in the waiting task, rather than in the watcher,
    /// whose waiters would start one failing watcher after another.
    pub fn subscribe(&self, sem: &Semaphore, runner: &Runner) -> Watch {
        let runtime = Handle::current().id();
        let live = lock(&self.live);
        if let Some(l) = live.get(&runtime) {
            return Watch {
                looks: l.looks.subscribe(),
                poke: Arc::clone(&l.poke),
            };
        }
        drop(live);
        needs_timers_and_io();
        let mut live = lock(&self.live);
        if let Some(l) = live.get(&runtime) {
            // Another task of the runtime started one meanwhile.
            return Watch {
                looks: l.looks.subscribe(),
                poke: Arc::clone(&l.poke),
            };
        }
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let poke = Arc::new(Notify::new());
        live.insert(
            runtime,
            Live {
                generation,
                looks: Arc::clone(&tx),
                poke: Arc::clone(&poke),
            },
        );
        let ended = Ended {
            live: Arc::clone(&self.live),
            runtime,
            generation,
        };
        tokio::spawn(watcher(
            ended,
            tx,
            Arc::clone(&poke),
            sem.clone(),
            runner.clone(),
            Arc::clone(&self.waiting),
        ));
        Watch { looks: rx, poke }
    }
}

/// Panics, with tokio's message, unless the current runtime has timers and an I/O driver,
/// which a watcher needs (its safety-net timer; the inotify descriptor's registration, or
/// a Redis pub/sub connection). Costs a socket, registered and closed: once per watcher.
fn needs_timers_and_io() {
    drop(tokio::time::sleep(Duration::ZERO));
    match std::os::unix::net::UnixDatagram::unbound() {
        Ok(socket) => {
            // Registering it with the reactor panics without an I/O driver. A failure to
            // register otherwise (out of memory) concerns only this socket: the watcher
            // polls when its own registration fails.
            let registered = socket
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixDatagram::from_std(socket));
            if let Err(e) = registered {
                tracing::debug!(%e, "the reactor refused a socket while checking its I/O driver");
            }
        }
        // Without a socket to try, the watcher's own registration tells.
        Err(e) => tracing::debug!(%e, "no socket to check the runtime's I/O driver with"),
    }
}

/// Clears the watcher's entry when its task ends, however it ends (the last waiter left,
/// or its runtime shut down and dropped it): the next waiter starts a new one.
struct Ended {
    live: Lives,
    /// The runtime of the watcher (the ID of a runtime that ended may be reused by another).
    runtime: runtime::Id,
    generation: u64,
}

impl Ended {
    /// Clears the watcher's entry, unless a newer watcher's took its place.
    fn clear(&self, live: &mut HashMap<runtime::Id, Live>) {
        if live
            .get(&self.runtime)
            .is_some_and(|l| l.generation == self.generation)
        {
            live.remove(&self.runtime);
        }
    }

    /// Clears the entry if no task watches any more; `false` if one subscribed meanwhile.
    fn if_unwatched(&self, tx: &watch::Sender<Published>) -> bool {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if tx.receiver_count() > 0 {
            return false;
        }
        self.clear(&mut live);
        true
    }
}

impl Drop for Ended {
    fn drop(&mut self) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        self.clear(&mut live);
    }
}

/// A duplicate of the notifier's descriptor, registered with the runtime's reactor: it is
/// open for as long as the registration (the waker may close its own descriptor when its
/// watches break), and shares the notifier's event queue, which the waker drains.
fn register(waker: &Waker) -> Option<AsyncFd<OwnedFd>> {
    let fd = waker.fd()?.try_clone_to_owned().ok()?;
    // Deprecated as unsound for an `AsRawFd` that may close or change its descriptor while
    // registered; an `OwnedFd` owned by the `AsyncFd` does neither.
    #[allow(deprecated)]
    let registered = AsyncFd::with_interest(fd, Interest::READABLE);
    registered
        .map_err(|e| tracing::debug!(%e, "the reactor refused the notifier; polling"))
        .ok()
}

/// The watcher task: look, publish, wait for a notice, a poke or the timer; until no task
/// watches.
async fn watcher(
    ended: Ended,
    tx: Arc<watch::Sender<Published>>,
    poke: Arc<Notify>,
    sem: Semaphore,
    runner: Runner,
    waiting: Waiting,
) {
    let lane = &runner.looks;
    let path = sem.path().to_path_buf();
    // A Redis semaphore's notices come on a pub/sub connection of the watcher's own, read by
    // a task on this runtime; the file store's through its waker's descriptor.
    let mut notices = redis_notices(&sem);
    // Making the file store's notifier opens and watches directories: on the look thread.
    let store = sem.clone();
    let mut waker: Option<Waker> = match notices {
        Some(_) => None,
        None => lane
            .run(&path, move || Ok(store.inner.store.waker(None)))
            .await
            .ok(),
    };
    let mut fd: Option<AsyncFd<OwnedFd>> = waker.as_ref().and_then(register);
    let mut prompt = fd.is_some() && waker.as_ref().is_some_and(Waker::prompt);
    let bounds = |prompt: bool| match prompt {
        true => (PROMPT_FIRST, PROMPT_MAX),
        false => (POLL_FIRST, POLL_MAX),
    };
    let mut backoff = bounds(prompt).0;
    let mut last: Option<Arc<std::result::Result<Look, Instant>>> = None;
    let refreshing = Arc::new(AtomicBool::new(false));
    let mut refreshed = Instant::now();
    loop {
        let look = Arc::new(look(&sem, lane).await);
        let same = match (last.as_deref(), &*look) {
            (Some(Ok(before)), Ok(now)) => before.doc == now.doc,
            _ => false,
        };
        if !same {
            backoff = bounds(prompt).0;
        }
        // Look again when an entry's expiry passes: it is stale then.
        let expiry = match &*look {
            Ok(l) => next_expiry_any(&l.doc, l.now)
                .and_then(|e| Instant::now().checked_add(e + Duration::from_millis(5))),
            Err(_) => None,
        };
        last = Some(Arc::clone(&look));
        tx.send_replace(Some(look));
        let mut wait = jitter(backoff);
        backoff = (backoff * 2).min(bounds(prompt).1);
        if let Some(at) = expiry {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        let timer = tokio::time::sleep(wait);
        tokio::pin!(timer);
        let ended_now = loop {
            tokio::select! {
                () = tx.closed() => {
                    if ended.if_unwatched(&tx) {
                        break true;
                    }
                }
                () = poke.notified() => break false,
                () = &mut timer => break false,
                () = tokio::time::sleep_until((refreshed + refresh_every(&waiting)).into()) => {
                    refresh_all(&sem, &runner, &waiting, &refreshing);
                    refreshed = Instant::now();
                }
                // Not prompt until the channel is subscribed; a subscription, a notice or a
                // lost connection: look again (at the polling pace while unsubscribed).
                status = redis_notice(notices.as_mut()) => {
                    match status {
                        Some(subscribed) => prompt = subscribed,
                        None => {
                            notices = None;
                            prompt = false;
                        }
                    }
                    if !prompt {
                        backoff = bounds(prompt).0;
                    }
                    break false;
                }
                ready = readable(fd.as_ref()) => {
                    let Some(waker) = waker.as_mut() else { continue };
                    match ready {
                        Ok(mut guard) => guard.clear_ready(),
                        Err(e) => {
                            tracing::debug!(%e, "the reactor failed on the notifier; polling");
                            drop_on(lane, fd.take());
                            prompt = false;
                            break false;
                        }
                    }
                    let woke = waker.take();
                    if woke.lost {
                        drop_on(lane, fd.take());
                        prompt = false;
                        backoff = bounds(prompt).0;
                    }
                    if woke.changed {
                        break false;
                    }
                }
            }
        };
        if ended_now {
            break;
        }
    }
    // Closing an inotify descriptor can take the kernel milliseconds: not on the runtime.
    drop_on(lane, fd.take());
    drop_on(lane, waker.take());
}

/// Drops `value` on `lane`'s thread.
fn drop_on<T: Send + 'static>(lane: &Lane, value: Option<T>) {
    if let Some(value) = value {
        lane.send(move || drop(value));
    }
}

/// Refreshes the expiry of every listed queue entry in one step on the step thread, unless
/// the last such step is still to run. A failure is logged: the waiters see what became
/// of their entries in the next looks (one reaped meanwhile queues again).
fn refresh_all(sem: &Semaphore, runner: &Runner, waiting: &Waiting, refreshing: &Arc<AtomicBool>) {
    if lock(waiting).is_empty() || refreshing.swap(true, Ordering::SeqCst) {
        return;
    }
    let (sem, waiting, refreshing) = (sem.clone(), Arc::clone(waiting), Arc::clone(refreshing));
    runner.steps.send(move || {
        let mines: Vec<(Mine, Duration)> = lock(&waiting).values().cloned().collect();
        let refreshed = sem.inner.store.step(None, |doc, cx| {
            let n = crate::core::queue::refresh_all(doc, &mines, cx.now);
            Ok(Step::new(n, n > 0))
        });
        refreshing.store(false, Ordering::SeqCst);
        match refreshed {
            Ok(n) => tracing::trace!(path = %sem.path().display(), n, "refreshed the waiters' expiry"),
            Err(e) => tracing::warn!(path = %sem.path().display(), error = %e, "failed to refresh the waiters' expiry"),
        }
    });
}

/// The change notices of a Redis semaphore's watcher.
#[cfg(feature = "redis")]
type RedisNotices = crate::store::redis::notices::Notices;

/// No Redis semaphore in a build without the feature.
#[cfg(not(feature = "redis"))]
enum RedisNotices {}

/// A Redis semaphore's notices, listened for on this runtime from now on; `None` for a
/// file semaphore.
fn redis_notices(sem: &Semaphore) -> Option<RedisNotices> {
    match &sem.inner.store {
        crate::store::Store::File(_) => None,
        #[cfg(feature = "redis")]
        crate::store::Store::Redis(store) => Some(store.notices()),
    }
}

/// Waits until the Redis notices change: whether the channel is subscribed then, or `None`
/// if they ended (with their runtime); never, without notices.
async fn redis_notice(notices: Option<&mut RedisNotices>) -> Option<bool> {
    match notices {
        #[cfg(feature = "redis")]
        Some(notices) => notices.changed().await.map(|s| s.subscribed),
        #[cfg(not(feature = "redis"))]
        Some(notices) => match *notices {},
        None => std::future::pending().await,
    }
}

/// Waits until the notifier is readable; never, without one.
async fn readable(
    fd: Option<&AsyncFd<OwnedFd>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

/// One snapshot on the look thread, judged for the queue there; the failure's instant if
/// the read failed.
async fn look(sem: &Semaphore, lane: &Lane) -> std::result::Result<Look, Instant> {
    let sem = sem.clone();
    let path = sem.path().to_path_buf();
    let sent = Instant::now();
    lane.run(&path, move || {
        let sent = Instant::now();
        let snapshot = sem.inner.store.snapshot()?;
        let ctx = sem.ctx(snapshot.now, sem.inner.store.judge());
        let queue_step = queue_needs_step(&snapshot.doc, &ctx);
        let mut tickets = HashMap::new();
        let doc = snapshot.doc;
        for (i, e) in doc.holders.iter().enumerate() {
            if let Some(t) = e.ticket {
                tickets.entry(t).or_insert(Place::Holder(i));
            }
        }
        for (i, e) in doc.waiters.iter().enumerate() {
            if let Some(t) = e.ticket {
                tickets.entry(t).or_insert(Place::Waiter(i));
            }
        }
        Ok(Look {
            doc,
            now: snapshot.now,
            sent,
            queue_step,
            tickets,
        })
    })
    .await
    .map_err(|_| sent)
}
