//! The [`AsyncSemaphore`] handle.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::hub::Hub;
use super::runner::Runner;
use super::{AsyncPermit, acquire};
use crate::error::Result;
use crate::holder::{Holder, HolderInfo};
use crate::options::{AcquireOptions, OpenOptions};
use crate::semaphore::{Reaped, Recovered, Semaphore};

/// A handle on one semaphore for tokio tasks: the operations of [`Semaphore`] as `async`
/// methods, whose waiting costs no thread and whose file work never runs on a runtime
/// worker thread.
///
/// # How it runs
///
/// Each handle (and its clones) has two threads of its own: a *step thread* that runs the
/// locked steps (acquire, release, renew, ...) one at a time in the order they were asked
/// for, and a *look thread* for lock-free reads (queries, and the snapshots its waiters
/// share). A step of a handle waits for the ones before it, as the blocking API's steps of
/// one handle take turns for the lock file; open another handle for independent work. The
/// threads end once the handle, its clones and its permits are gone and their last jobs ran;
/// they do not belong to a runtime, so a permit dropped in a task is released even if the
/// runtime shuts down right after (but not if the process exits first: then, as for a
/// killed process, the kernel unlocks its witness and the next user reaps the entry).
///
/// Queries ([`holders`](AsyncSemaphore::holders), [`waiters`](AsyncSemaphore::waiters),
/// [`count`](AsyncSemaphore::count), [`available`](AsyncSemaphore::available),
/// [`capacity`](AsyncSemaphore::capacity)) take no lock and run after the handle's steps
/// asked for before them, so they see what those did: after `drop(permit)` or a dropped
/// acquire future, a query of the same handle no longer shows the entry, as with the
/// blocking API. Only while one of those steps has been running for more than 20 ms
/// (waiting for the lock file held by a slow or stopped process, typically; or on a machine
/// too busy to run it) does a query read at once on the look thread instead of waiting for
/// it; it then shows the semaphore as it is, the entry of a release or leave still under way
/// included.
///
/// Handing a step to the step thread and its result back costs a sleep and a wake-up of
/// each side, tens of microseconds on a virtual machine, as much as a step on tmpfs. Where
/// the machine runs threads in parallel, a task awaiting a step that usually takes at most
/// 100 µs polls for its result instead (it wakes itself, so the runtime runs its other tasks
/// in between; it backs off while polls find nothing), and the step thread looks for its
/// next step for 100 µs before it sleeps. Quick steps then take 1.1-1.3 times as long as
/// for a blocking caller, at about twice its CPU time; an idle handle's threads sleep.
///
/// Waiting for a slot costs no thread: the handle has one watcher for all its waiting tasks
/// on a runtime (on Linux an inotify descriptor driven by the runtime's reactor through
/// [`AsyncFd`](tokio::io::unix::AsyncFd); on a Redis semaphore an async pub/sub connection
/// read by a task on the runtime, see [`open_redis`](AsyncSemaphore::open_redis)), which
/// reads the document once per change on the look thread and publishes it to them; a
/// thousand tasks waiting on one handle use the two threads of the handle and the runtime's
/// own. The safety-net timers are `tokio::time`.
///
/// It needs a tokio runtime with I/O and time enabled (`enable_all`), `current_thread` or
/// `multi_thread`; on a runtime without them, a call that waits panics, as tokio's own
/// timers and I/O types do, with tokio's message. A handle may be used from several runtimes at once: each runtime with
/// waiting tasks has its own watcher, so that the waiters of one runtime never depend on
/// another being driven (a `current_thread` runtime between two `block_on`s runs no task).
///
/// Blocking and async users can share one semaphore at once: they run the same steps on
/// the same files ([`from_blocking`](AsyncSemaphore::from_blocking),
/// [`blocking`](AsyncSemaphore::blocking)).
///
/// # Cancel safety
///
/// Every method may be dropped before it completes (by [`tokio::time::timeout`](https://docs.rs/tokio/1/tokio/time/fn.timeout.html),
/// `tokio::select!`, or an aborted task). A step it already started runs to its end on the
/// step thread, and what it would have returned is dropped there: an acquire's queue entry
/// leaves the queue, and a slot it got (also one handed over just as it was dropped) is
/// released and handed on, never leaked. So dropping an acquire future leaves the semaphore
/// as if it had never been called, except that its fencing token or ticket number is used
/// up. The effect of a dropped `release`, `remove`, `set_capacity` or `reap` may or may not
/// have happened.
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("gpu.json");
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// use filesem::AsyncSemaphore;
/// let sem = AsyncSemaphore::open(&path, 2).await?;
/// let permit = sem.acquire("worker-1").await?;
/// assert_eq!(sem.count().await?, 1);
/// permit.release().await?;
/// assert_eq!(sem.available().await?, 2);
/// # Ok::<(), filesem::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct AsyncSemaphore {
    pub(crate) inner: Arc<Shared>,
}

pub(crate) struct Shared {
    pub sem: Semaphore,
    pub runner: Runner,
    pub hub: Hub,
}

/// What [`AsyncSemaphore::recover`] did: as [`Recovered`](crate::Recovered).
#[derive(Debug)]
#[non_exhaustive]
pub struct AsyncRecovered {
    /// The semaphore, now with a valid state file.
    pub semaphore: AsyncSemaphore,
    /// Where the corrupt state file was moved (for a Redis semaphore the location of
    /// `KEY.corrupt-<server time>`, shown like its path); `None` when it was valid or absent.
    pub moved_to: Option<PathBuf>,
}

impl fmt::Debug for AsyncSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSemaphore")
            .field("semaphore", &self.inner.sem)
            .finish()
    }
}

impl AsyncSemaphore {
    /// A handle running `open` on its own step thread.
    pub(super) async fn opened(
        path: &Path,
        open: impl FnOnce() -> Result<Semaphore> + Send + 'static,
    ) -> Result<AsyncSemaphore> {
        let runner = Runner::start(path)?;
        let sem = runner.steps.run(path, open).await?;
        Ok(AsyncSemaphore::with(sem, runner))
    }

    /// Runs a blocking `recover` on the step thread of a new handle, and makes the handle of
    /// what it recovered.
    pub(super) async fn recovered(
        path: &Path,
        recover: impl FnOnce() -> Result<Recovered> + Send + 'static,
    ) -> Result<AsyncRecovered> {
        let runner = Runner::start(path)?;
        let recovered = runner.steps.run(path, recover).await?;
        Ok(AsyncRecovered {
            semaphore: AsyncSemaphore::with(recovered.semaphore, runner),
            moved_to: recovered.moved_to,
        })
    }

    pub(super) fn with(sem: Semaphore, runner: Runner) -> AsyncSemaphore {
        AsyncSemaphore {
            inner: Arc::new(Shared {
                sem,
                runner,
                hub: Hub::default(),
            }),
        }
    }

    /// [`Semaphore::open`], async: opens the semaphore at `path`, creating it with
    /// `capacity` slots if it does not exist.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::open`]; [`Error::Io`](crate::Error::Io) also if the system refuses the
    /// handle's threads.
    pub async fn open(path: impl AsRef<Path>, capacity: u32) -> Result<AsyncSemaphore> {
        AsyncSemaphore::open_with(&OpenOptions::new(), path, capacity).await
    }

    /// [`OpenOptions::open`], async: [`open`](AsyncSemaphore::open) with these settings.
    ///
    /// # Errors
    ///
    /// As [`OpenOptions::open`]; [`Error::Io`](crate::Error::Io) also if the system refuses
    /// the handle's threads.
    pub async fn open_with(
        options: &OpenOptions,
        path: impl AsRef<Path>,
        capacity: u32,
    ) -> Result<AsyncSemaphore> {
        let (options, path) = (options.clone(), path.as_ref().to_path_buf());
        let at = path.clone();
        AsyncSemaphore::opened(&at, move || options.open(&path, capacity)).await
    }

    /// [`Semaphore::open_existing`], async: opens an existing semaphore and adopts its
    /// capacity. Creates nothing.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::open_existing`]; [`Error::Io`](crate::Error::Io) also if the system
    /// refuses the handle's threads.
    pub async fn open_existing(path: impl AsRef<Path>) -> Result<AsyncSemaphore> {
        AsyncSemaphore::open_existing_with(&OpenOptions::new(), path).await
    }

    /// [`OpenOptions::open_existing`], async.
    ///
    /// # Errors
    ///
    /// As [`OpenOptions::open_existing`]; [`Error::Io`](crate::Error::Io) also if the system
    /// refuses the handle's threads.
    pub async fn open_existing_with(
        options: &OpenOptions,
        path: impl AsRef<Path>,
    ) -> Result<AsyncSemaphore> {
        let (options, path) = (options.clone(), path.as_ref().to_path_buf());
        let at = path.clone();
        AsyncSemaphore::opened(&at, move || options.open_existing(&path)).await
    }

    /// [`Semaphore::recover`], async: sets a corrupt state file aside and replaces it by an
    /// empty semaphore of `capacity` slots. **Stop all holders first** (see there).
    ///
    /// # Errors
    ///
    /// As [`Semaphore::recover`]; [`Error::Io`](crate::Error::Io) also if the system refuses
    /// the handle's threads.
    pub async fn recover(path: impl AsRef<Path>, capacity: u32) -> Result<AsyncRecovered> {
        let path = path.as_ref().to_path_buf();
        let at = path.clone();
        AsyncSemaphore::recovered(&at, move || Semaphore::recover(&path, capacity)).await
    }

    /// An async handle on the semaphore of the blocking handle `sem` (the same semaphore,
    /// and the same in-process turn-taking for the lock file as `sem` and its clones), with
    /// threads of its own.
    ///
    /// # Errors
    ///
    /// [`Error::Io`](crate::Error::Io) if the system refuses the handle's threads.
    pub fn from_blocking(sem: Semaphore) -> Result<AsyncSemaphore> {
        let runner = Runner::start(sem.path())?;
        Ok(AsyncSemaphore::with(sem, runner))
    }

    /// The blocking handle underneath, for code that runs on its own threads (or in
    /// `spawn_blocking`).
    pub fn blocking(&self) -> &Semaphore {
        &self.inner.sem
    }

    /// The state file's path, as given to `open` (see [`Semaphore::path`]).
    pub fn path(&self) -> &Path {
        self.inner.sem.path()
    }

    /// The absolute path of the state file when the semaphore was opened (see
    /// [`Semaphore::resolved_path`]).
    pub fn resolved_path(&self) -> &Path {
        self.inner.sem.resolved_path()
    }

    /// Runs a locked step `f` on the blocking handle, on the step thread.
    async fn step<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Semaphore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let sem = self.inner.sem.clone();
        self.inner
            .runner
            .steps
            .run(self.path(), move || f(&sem))
            .await
    }

    /// Runs a lock-free query `f` on the blocking handle after the steps of the handle sent
    /// before it (so that it sees what they did, the release of a permit dropped before it
    /// included, as a blocking query after a blocking drop does), on the step thread; or, if
    /// one of those steps has waited [`STUCK`](super::runner::STUCK) or longer for the lock, at once on the look
    /// thread, which never waits for a lock.
    async fn query<T: Send + 'static>(
        &self,
        f: impl Fn(&Semaphore) -> Result<T> + Clone + Send + 'static,
    ) -> Result<T> {
        let (sem, after_steps) = (self.inner.sem.clone(), f.clone());
        let runner = &self.inner.runner;
        let in_turn = runner
            .steps
            .run_by(self.path(), Some(Instant::now()), move || after_steps(&sem))
            .await?;
        match in_turn {
            Some(value) => Ok(value),
            None => self.look(f).await,
        }
    }

    /// Runs a lock-free read `f` on the blocking handle, on the look thread, at once.
    async fn look<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Semaphore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let sem = self.inner.sem.clone();
        self.inner
            .runner
            .looks
            .run(self.path(), move || f(&sem))
            .await
    }

    /// [`Semaphore::capacity`], async: the capacity on file now, in holders.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::capacity`].
    pub async fn capacity(&self) -> Result<u32> {
        self.query(Semaphore::capacity).await
    }

    /// [`Semaphore::set_capacity`], async: changes the capacity to `capacity` holders.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::set_capacity`].
    pub async fn set_capacity(&self, capacity: u32) -> Result<()> {
        self.step(move |sem| sem.set_capacity(capacity)).await
    }

    /// [`Semaphore::try_acquire`], async: takes a slot for `holder` if one is free now;
    /// never waits for one.
    ///
    /// Bind the permit to a name: `let _ = sem.try_acquire(..).await?` drops (and releases)
    /// it at once.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::try_acquire`].
    pub async fn try_acquire<H: Holder + ?Sized>(&self, holder: &H) -> Result<AsyncPermit> {
        self.try_acquire_with(holder, &AcquireOptions::new()).await
    }

    /// [`Semaphore::try_acquire_with`], async. A timeout bounds the whole call, as there:
    /// its wait for the lock file, and also its wait for the handle's earlier steps, which
    /// run one at a time (see [`acquire_with`](AsyncSemaphore::acquire_with), "Deadlines").
    /// If the call's step has not started by the deadline while the step ahead of it has run
    /// for 20 ms or more (one waiting for the lock a stopped process holds, typically), the
    /// call gives its step up and fails as the blocking call does when the lock stays busy
    /// until its deadline: [`Error::LockBusy`](crate::Error::LockBusy), naming the lock's
    /// holder, within a few tens of milliseconds of the deadline. The given-up step never
    /// runs.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a step already started runs to its end on the step thread, and a permit
    /// it got for a dropped future is released there.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::try_acquire_with`]: with a timeout,
    /// [`Error::LockBusy`](crate::Error::LockBusy) when the lock, or the handle's turn for
    /// it, was not had by the deadline. On a Redis semaphore a step given up that way is
    /// [`Error::Timeout`](crate::Error::Timeout) instead (its steps take no lock).
    pub async fn try_acquire_with<H: Holder + ?Sized>(
        &self,
        holder: &H,
        options: &AcquireOptions,
    ) -> Result<AsyncPermit> {
        let start = Instant::now();
        let deadline = options.timeout.and_then(|d| start.checked_add(d));
        let (id, options) = (holder.id().to_string(), options.clone());
        let sem = self.inner.sem.clone();
        let stepped = self
            .inner
            .runner
            .steps
            .run_by(self.path(), deadline, move || {
                sem.try_acquire_since(&id, &options, start)
            })
            .await?;
        match stepped {
            Some(permit) => Ok(AsyncPermit::new(permit, self.clone())),
            // Given up behind a held-up step: name the lock's holder (a read of
            // `/proc/locks`, on the look thread, which never waits for the lock).
            None => Err(self
                .look(move |sem| Ok(sem.inner.store.busy(start)))
                .await?),
        }
    }

    /// [`Semaphore::acquire`], async: waits in the queue until a slot is handed to
    /// `holder`, without limit.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves the queue, and a slot handed over meanwhile
    /// is released and handed on (see [`AsyncSemaphore`], "Cancel safety"). Use
    /// [`acquire_timeout`](AsyncSemaphore::acquire_timeout) or
    /// [`tokio::time::timeout`](https://docs.rs/tokio/1/tokio/time/fn.timeout.html) to bound the wait.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::acquire`].
    pub async fn acquire<H: Holder + ?Sized>(&self, holder: &H) -> Result<AsyncPermit> {
        self.acquire_with(holder, &AcquireOptions::new()).await
    }

    /// [`Semaphore::acquire_timeout`], async: waits at most `timeout` for a slot. The
    /// timeout bounds the whole call, its waits for the lock and for the handle's other
    /// steps included (see [`acquire_with`](AsyncSemaphore::acquire_with), "Deadlines").
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](AsyncSemaphore::acquire).
    ///
    /// # Errors
    ///
    /// As [`Semaphore::acquire_timeout`]: [`Error::Timeout`](crate::Error::Timeout) when
    /// none was handed over in time, or when a step of the call could not start by the
    /// deadline behind another step of the handle;
    /// [`Error::LockBusy`](crate::Error::LockBusy) when a step of the call waited for the
    /// lock until the deadline.
    pub async fn acquire_timeout<H: Holder + ?Sized>(
        &self,
        holder: &H,
        timeout: Duration,
    ) -> Result<AsyncPermit> {
        let options = AcquireOptions::new().timeout(timeout);
        self.acquire_with(holder, &options).await
    }

    /// [`Semaphore::acquire_with`], async: waits as `options` say (timeout, priority,
    /// lease, metadata, detached, cancel token). A cancel token is checked every 50 ms while
    /// the task waits; dropping the future cancels at once. The `on_wait` callback is
    /// called on the handle's step thread.
    ///
    /// # Deadlines
    ///
    /// A timeout ([`AcquireOptions::timeout`]) bounds the whole call, as for
    /// [`Semaphore::acquire_with`]: each locked step of the call waits for the lock at most
    /// until the deadline ([`Error::LockBusy`](crate::Error::LockBusy) then), and at the
    /// deadline the call ends within a few milliseconds. The handle's steps run one at a
    /// time on its step thread, so a step of the call may be queued behind another step of
    /// the handle (a task's `release` or `set_capacity`, or an acquire without a timeout)
    /// that waits for the lock a stopped process holds, up to the lock timeout. Such a step
    /// of the call is given up if it has not started by the deadline while the step ahead
    /// of it has run for 20 ms or more (checked every 20 ms): the call then returns
    /// [`Error::Timeout`](crate::Error::Timeout) at once, within a few tens of milliseconds
    /// of its deadline. The given-up step never runs; when its turn comes, its queue entry
    /// is dropped on the step thread as a dropped future's is (it leaves the queue, releasing
    /// a slot handed to it meanwhile; if the lock is still busy then, its witness is unlocked
    /// so that the entry is judged dead and reaped). A slot can therefore be handed to the
    /// entry after the call returned, but it is released again, never leaked.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](AsyncSemaphore::acquire).
    ///
    /// # Errors
    ///
    /// As [`Semaphore::acquire_with`]; [`Error::Timeout`](crate::Error::Timeout) also when a
    /// step of the call could not start by the deadline (see "Deadlines").
    pub async fn acquire_with<H: Holder + ?Sized>(
        &self,
        holder: &H,
        options: &AcquireOptions,
    ) -> Result<AsyncPermit> {
        acquire::acquire(self, holder.id().to_string(), options.clone()).await
    }

    /// [`Semaphore::reap`], async: removes every provably stale holder and waiter now.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::reap`].
    pub async fn reap(&self) -> Result<Vec<Reaped>> {
        self.step(Semaphore::reap).await
    }

    /// [`Semaphore::release`], async: releases the slot held by `id`, whoever holds it.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::release`].
    pub async fn release(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.step(move |sem| sem.release(&id)).await
    }

    /// [`Semaphore::remove`], async: removes the holders and waiters with these IDs and
    /// returns those that were on file.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::remove`].
    pub async fn remove<I, S>(&self, ids: I) -> Result<Vec<String>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ids: Vec<String> = ids.into_iter().map(|s| s.as_ref().to_string()).collect();
        self.step(move |sem| sem.remove(&ids)).await
    }

    /// [`Semaphore::holders`], async: the current holders, each with a liveness verdict.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::holders`].
    pub async fn holders(&self) -> Result<Vec<HolderInfo>> {
        self.query(Semaphore::holders).await
    }

    /// [`Semaphore::waiters`], async: the queued waiters in the order they will be served.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::waiters`].
    pub async fn waiters(&self) -> Result<Vec<HolderInfo>> {
        self.query(Semaphore::waiters).await
    }

    /// [`Semaphore::count`], async: the number of holders on file.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::count`].
    pub async fn count(&self) -> Result<usize> {
        self.query(Semaphore::count).await
    }

    /// [`Semaphore::available`], async: how many slots a `try_acquire` could get now.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::available`].
    pub async fn available(&self) -> Result<usize> {
        self.query(Semaphore::available).await
    }
}

impl From<AsyncSemaphore> for Semaphore {
    /// The blocking handle underneath (see [`AsyncSemaphore::blocking`]).
    fn from(sem: AsyncSemaphore) -> Semaphore {
        sem.inner.sem.clone()
    }
}
