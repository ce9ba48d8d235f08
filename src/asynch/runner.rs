//! The threads of an async handle: every blocking call of the async API runs on one of them,
//! never on a runtime worker thread.
//!
//! Two threads per handle, each running its jobs one at a time, in the order they were
//! sent: the **step thread** for locked steps (acquire, release, renew, ...), which may wait
//! for `PATH.lock`, and the **look thread** for lock-free reads (queries, and the snapshots
//! the waiters of the handle share), which never wait for a lock, so that a hand-off is seen
//! while steps queue behind a slow lock.
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
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// One thread and the queue of jobs it runs in order.
#[derive(Clone, Debug)]
pub(crate) struct Lane {
    jobs: mpsc::Sender<Job>,
}

impl Lane {
    /// Starts the thread `name`; its queue closes once every clone of the lane is gone.
    fn start(name: &str) -> io::Result<Lane> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Some(job) = next(&queue) {
                    // A job's own panic is caught by `run` and resumed in its caller; a
                    // drop that panics (none should) must not end the thread of the others.
                    if catch_unwind(AssertUnwindSafe(job)).is_err() {
                        tracing::warn!("a job of an async handle's thread panicked");
                    }
                }
            })?;
        Ok(Lane { jobs })
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
        let (tx, rx) = oneshot::channel::<OffThread<std::thread::Result<Result<T>>>>();
        let back = self.clone();
        let sent = self.send(move || {
            let out = catch_unwind(AssertUnwindSafe(f));
            // A receiver dropped meanwhile hands the value back: dropped here and now, before
            // the jobs sent after this one (an acquire of the same ID right after a cancelled
            // one must find its queue entry gone).
            if let Err(mut unsent) = tx.send(OffThread::new(out, back)) {
                drop(unsent.take());
            }
        });
        let gone = || {
            Error::io(
                path,
                path,
                "run a step on the async handle's thread for",
                io::Error::other("the thread has ended"),
            )
        };
        if !sent {
            return Err(gone());
        }
        match rx.await {
            Ok(mut out) => match out.take() {
                Some(Ok(result)) => result,
                Some(Err(panic)) => resume_unwind(panic),
                None => Err(gone()),
            },
            Err(_) => Err(gone()),
        }
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
