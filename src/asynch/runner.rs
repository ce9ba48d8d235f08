//! The threads of an async handle: every blocking call of the async API runs on one of them,
//! never on a runtime worker thread.
//!
//! Two threads per handle, each running its jobs one at a time, in the order they were
//! sent: the **step thread** for locked steps (acquire, release, renew, ...), which may wait
//! for `PATH.lock`, and the **look thread** for lock-free reads (the snapshots the waiters
//! of the handle share, and queries while a step waits for the lock), which never wait for a
//! lock, so that a hand-off is seen while steps queue behind a slow lock. Queries otherwise
//! run on the step thread, after the steps asked for before them.
//!
//! Why dedicated threads rather than tokio's blocking pool: the handle's steps take turns
//! anyway (the file store's in-process gate lets one step of a handle in at a time), so more
//! threads would only wait on the gate: a thousand waiters refreshing their entries would
//! park a thousand `spawn_blocking` threads behind it. One thread per lane bounds the thread
//! count, keeps a handle's steps in order, and outlives the runtime, so that a permit
//! dropped in a task is still released after the runtime shut down.
//!
//! A value a job returns to a future that was dropped meanwhile (a cancelled acquire's
//! permit or queue entry) is dropped on the thread, never on the runtime: see [`OffThread`].
//! The threads end once the handle, its clones and its permits are gone and every job sent
//! has run.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// One thread and the queue of jobs it runs in order.
#[derive(Clone, Debug)]
pub(crate) struct Lane {
    jobs: mpsc::Sender<Job>,
    /// When the job running now started ([`stamp`]); 0 while the thread is between jobs.
    running: Arc<AtomicU64>,
}

/// How long the job running on a lane must have run for a deadline-bound job queued behind
/// it to be given up ([`Lane::run_by`]): longer than a step takes when nothing holds it up
/// (a read and a write of the state file), shorter than "a few milliseconds past the
/// deadline" by much more than the blocking API is late.
pub(crate) const STUCK: Duration = Duration::from_millis(20);

/// The job states of [`Lane::run_by`].
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const GIVEN_UP: u8 = 2;

/// `at` as nanoseconds after the first stamp of the process, plus one (never 0, which means
/// "between jobs").
fn stamp(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

impl Lane {
    /// Starts the thread `name`; its queue closes once every clone of the lane is gone.
    fn start(name: &str) -> io::Result<Lane> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let running = Arc::new(AtomicU64::new(0));
        let now_running = Arc::clone(&running);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Some(job) = next(&queue) {
                    now_running.store(stamp(Instant::now()), Ordering::SeqCst);
                    // A job's own panic is caught by `run` and resumed in its caller; a
                    // drop that panics (none should) must not end the thread of the others.
                    if catch_unwind(AssertUnwindSafe(job)).is_err() {
                        tracing::warn!("a job of an async handle's thread panicked");
                    }
                    now_running.store(0, Ordering::SeqCst);
                }
            })?;
        Ok(Lane { jobs, running })
    }

    /// Whether the job running now has run for [`STUCK`] or longer (waiting for a lock
    /// another process holds, typically).
    fn stuck(&self) -> bool {
        let since = self.running.load(Ordering::SeqCst);
        since != 0 && stamp(Instant::now()).saturating_sub(since) >= STUCK.as_nanos() as u64
    }

    /// Runs `job` on the thread after the jobs sent before it, without waiting for it.
    /// `false` if the thread is gone (it never ends while a lane is alive: it catches the
    /// panics of its jobs).
    pub fn send(&self, job: impl FnOnce() + Send + 'static) -> bool {
        self.jobs.send(Box::new(job)).is_ok()
    }

    /// Runs `f` on the thread and waits for its value without blocking the runtime. A panic
    /// in `f` is resumed in the caller. If the future is dropped first, `f` still runs (it was
    /// sent at the first poll) and its value is dropped on the thread.
    ///
    /// # Errors
    ///
    /// What `f` returns; [`Error::Io`] naming `path` if the thread is gone.
    pub async fn run<T: Send + 'static>(
        &self,
        path: &Path,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match self.run_by(path, None, f).await? {
            Some(value) => Ok(value),
            // Only a job given a time to start by is given up.
            None => Err(gone(path)),
        }
    }

    /// [`run`](Lane::run), but `f` is given up if it has not started by `start_by` while
    /// the job running then has been running for [`STUCK`] (checked again every `STUCK`
    /// until `f` starts): `None` then, at once. A job given up never runs: `f` is dropped on
    /// the thread when its turn comes, and with it what it holds (a queue entry leaves the
    /// queue there, as if its future had been dropped). Once `f` has started, this waits for
    /// it: the steps of a call with a deadline bound their own lock waits by it.
    ///
    /// # Errors
    ///
    /// What `f` returns; [`Error::Io`] naming `path` if the thread is gone.
    pub async fn run_by<T: Send + 'static>(
        &self,
        path: &Path,
        start_by: Option<Instant>,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<Option<T>> {
        let (tx, mut rx) = oneshot::channel::<OffThread<std::thread::Result<Result<T>>>>();
        let back = self.clone();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job_state = Arc::clone(&state);
        let sent = self.send(move || {
            if job_state
                .compare_exchange(QUEUED, STARTED, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                // Given up by its caller: dropped here, with what it holds, unrun.
                drop(f);
                return;
            }
            let out = catch_unwind(AssertUnwindSafe(f));
            // A receiver dropped meanwhile hands the value back: dropped here and now, before
            // the jobs sent after this one (an acquire of the same ID right after a cancelled
            // one must find its queue entry gone).
            if let Err(mut unsent) = tx.send(OffThread::new(out, back)) {
                drop(unsent.take());
            }
        });
        if !sent {
            return Err(gone(path));
        }
        if let Some(mut at) = start_by {
            loop {
                tokio::select! {
                    biased;
                    out = &mut rx => return unpack(path, out).map(Some),
                    () = tokio::time::sleep_until(at.into()) => {}
                }
                if self.stuck()
                    && state
                        .compare_exchange(QUEUED, GIVEN_UP, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    return Ok(None);
                }
                if state.load(Ordering::SeqCst) != QUEUED {
                    break;
                }
                at = Instant::now() + STUCK;
            }
        }
        unpack(path, rx.await).map(Some)
    }
}

/// The error of a job whose lane's thread is gone.
fn gone(path: &Path) -> Error {
    Error::io(
        path,
        path,
        "run a step on the async handle's thread for",
        io::Error::other("the thread has ended"),
    )
}

/// What a job sent back: its value, or its panic resumed.
fn unpack<T: Send + 'static>(
    path: &Path,
    out: std::result::Result<OffThread<std::thread::Result<Result<T>>>, oneshot::error::RecvError>,
) -> Result<T> {
    match out {
        Ok(mut out) => match out.take() {
            Some(Ok(result)) => result,
            Some(Err(panic)) => resume_unwind(panic),
            None => Err(gone(path)),
        },
        Err(_) => Err(gone(path)),
    }
}

/// How many times a lane's thread yields, looking for its next job, before it sleeps: a
/// task's next step usually follows its last one within microseconds (an acquire's release,
/// the permit of a grant), and finding it without a futex sleep and wake-up saves both
/// threads a context switch. About 10-50 µs; yielding lets others run meanwhile.
const YIELDS_BEFORE_SLEEP: usize = 30;

/// The next job of a lane: taken at once if queued, after a few yields if it comes soon,
/// else waited for; `None` once every sender is gone and the queue is empty.
fn next(queue: &mpsc::Receiver<Job>) -> Option<Job> {
    for _ in 0..YIELDS_BEFORE_SLEEP {
        match queue.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    queue.recv().ok()
}

/// A value that must not be dropped on a runtime thread (a permit, whose drop releases its
/// slot in a locked step; a queue entry, whose drop leaves the queue): dropping this sends
/// the value to its lane's thread to be dropped there.
pub(crate) struct OffThread<T: Send + 'static> {
    value: Option<T>,
    lane: Lane,
}

impl<T: Send + 'static> OffThread<T> {
    pub fn new(value: T, lane: Lane) -> OffThread<T> {
        OffThread {
            value: Some(value),
            lane,
        }
    }

    /// The value, for the caller to keep; `None` after the first call.
    pub fn take(&mut self) -> Option<T> {
        self.value.take()
    }

    /// The value, if it has not been taken.
    pub fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }
}

impl<T: Send + 'static> Drop for OffThread<T> {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            // If the thread is gone the job comes back with the value and drops it here:
            // nothing else can drop it.
            self.lane.send(move || drop(value));
        }
    }
}

/// The two threads of one async handle.
#[derive(Clone, Debug)]
pub(crate) struct Runner {
    /// Locked steps, in order.
    pub steps: Lane,
    /// Lock-free reads.
    pub looks: Lane,
}

impl Runner {
    /// Starts both threads.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming `path` if the system refuses a thread.
    pub fn start(path: &Path) -> Result<Runner> {
        let start =
            |name| Lane::start(name).map_err(|e| Error::io(path, path, "start a thread for", e));
        Ok(Runner {
            steps: start("filesem-steps")?,
            looks: start("filesem-looks")?,
        })
    }
}
