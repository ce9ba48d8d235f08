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
//! A step's cost beyond its own work is its hand-over to the thread and back. On this
//! project's 2-vCPU VM a futex sleep and wake-up of each side costs tens of microseconds, as
//! much as a step on tmpfs, so where threads run in parallel a task polls for a quick step's
//! reply rather than sleeping ([`Reply`], [`Pace`]) and a lane's thread looks for its next
//! job for a while before it sleeps ([`next`]); both are bounded in time, and an idle lane
//! sleeps.
//!
//! A value a job returns to a future that was dropped meanwhile (a cancelled acquire's
//! permit or queue entry) is dropped on the thread, never on the runtime: see [`OffThread`].
//! The threads end once the handle, its clones and its permits are gone and every job sent
//! has run.

use std::future::Future;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::task::{Context, Poll};
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
    /// How long the lane's jobs take, and whether waiting for their replies by polling pays.
    pace: Arc<Pace>,
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
        let pace = Arc::new(Pace::default());
        let (now_running, timed) = (Arc::clone(&running), Arc::clone(&pace));
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Some(job) = next(&queue) {
                    let started = Instant::now();
                    now_running.store(stamp(started), Ordering::SeqCst);
                    // A job's own panic is caught by `run` and resumed in its caller; a
                    // drop that panics (none should) must not end the thread of the others.
                    if catch_unwind(AssertUnwindSafe(job)).is_err() {
                        tracing::warn!("a job of an async handle's thread panicked");
                    }
                    now_running.store(0, Ordering::SeqCst);
                    timed.ran(started.elapsed());
                }
            })?;
        Ok(Lane {
            jobs,
            running,
            pace,
        })
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
        let (tx, rx) = oneshot::channel::<OffThread<std::thread::Result<Result<T>>>>();
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
        let mut reply = Reply::new(rx, &self.pace);
        if let Some(mut at) = start_by {
            loop {
                tokio::select! {
                    biased;
                    out = &mut reply => return unpack(path, out).map(Some),
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
        unpack(path, reply.await).map(Some)
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

/// Whether this machine runs more than one thread at a time: only then can a thread gain by
/// polling for another's work rather than sleeping until woken (on one CPU the other thread
/// runs only once the poller stops).
fn parallel() -> bool {
    static PARALLEL: OnceLock<bool> = OnceLock::new();
    *PARALLEL.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// How long a lane's thread looks for its next job before it sleeps, on a machine that runs
/// threads in parallel: a task's next step usually follows its last one within
/// microseconds (an acquire's release, the permit of a grant), and finding it without a
/// futex sleep and wake-up saves both threads a context switch, which costs tens of
/// microseconds on a virtual machine. The thread yields its CPU between looks, so others
/// run meanwhile; once this has passed without a job it sleeps, so an idle handle costs no
/// CPU.
const LOOK_FOR_NEXT: Duration = Duration::from_micros(100);

/// How many times a lane's thread yields, looking for its next job, before it sleeps, on a
/// machine with one CPU (where the task that sends it runs only while this thread yields).
const YIELDS_BEFORE_SLEEP: usize = 30;

/// The next job of a lane: taken at once if queued, after some looking if it comes soon,
/// else waited for; `None` once every sender is gone and the queue is empty.
fn next(queue: &mpsc::Receiver<Job>) -> Option<Job> {
    let look = || match queue.try_recv() {
        Ok(job) => Some(Some(job)),
        Err(mpsc::TryRecvError::Disconnected) => Some(None),
        Err(mpsc::TryRecvError::Empty) => None,
    };
    if parallel() {
        let until = Instant::now() + LOOK_FOR_NEXT;
        loop {
            // A few cheap looks between the clock reads and the yields.
            for _ in 0..16 {
                if let Some(found) = look() {
                    return found;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= until {
                break;
            }
            std::thread::yield_now();
        }
    } else {
        for _ in 0..YIELDS_BEFORE_SLEEP {
            if let Some(found) = look() {
                return found;
            }
            std::thread::yield_now();
        }
    }
    queue.recv().ok()
}

/// The longest a task polls for a job's reply before it waits to be woken: a step on tmpfs
/// takes 20-40 µs; steps that take longer (fsyncs on a disk, a Redis round trip, a lock
/// held by another process) are waited for by sleeping, where a wake-up's cost is small
/// beside the step's.
const MAX_POLL: Duration = Duration::from_micros(100);

/// The most replies a lane's tasks wait for by sleeping, after polls that found nothing,
/// before they poll again.
const MAX_SKIP: u32 = 1024;

/// What a lane knows about its jobs' pace, for the tasks that wait for their replies
/// ([`Reply`]): the typical job's run time, and whether recent polls found their reply.
#[derive(Debug, Default)]
struct Pace {
    /// A moving average of the jobs' run times, in nanoseconds (0 before the first job).
    run_ns: AtomicU64,
    /// How many of the next replies to wait for without polling.
    skip: AtomicU32,
    /// What `skip` is set to after the next poll that finds nothing: doubled after each
    /// such poll, up to [`MAX_SKIP`], and 0 again after a poll that finds its reply.
    backoff: AtomicU32,
}

impl Pace {
    /// Counts a job that ran for `took` into the average (weight 1/8).
    fn ran(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.run_ns.load(Ordering::Relaxed);
        let new = match old {
            0 => took,
            _ => old - old / 8 + took / 8,
        };
        self.run_ns.store(new.max(1), Ordering::Relaxed);
    }

    /// How long to poll for the reply of a job sent now; `None`: do not poll, sleep until
    /// woken. Twice the typical run time, so that a job that runs on another CPU at once is
    /// caught; nothing if jobs take longer than [`MAX_POLL`], on one CPU, or while recent
    /// polls found nothing (the job's thread was not running: it shares this thread's CPU,
    /// or queued jobs are ahead).
    fn poll_for(&self) -> Option<Duration> {
        if !parallel() {
            return None;
        }
        let run = Duration::from_nanos(self.run_ns.load(Ordering::Relaxed));
        if run.is_zero() || run > MAX_POLL {
            return None;
        }
        let skip = self.skip.load(Ordering::Relaxed);
        if skip > 0 {
            self.skip.store(skip - 1, Ordering::Relaxed);
            return None;
        }
        Some((run * 2 + Duration::from_micros(10)).min(MAX_POLL))
    }

    /// After a poll: whether it found its reply.
    fn polled(&self, found: bool) {
        if found {
            self.backoff.store(0, Ordering::Relaxed);
        } else {
            let backoff = (self.backoff.load(Ordering::Relaxed) * 2).clamp(1, MAX_SKIP);
            self.backoff.store(backoff, Ordering::Relaxed);
            self.skip.store(backoff, Ordering::Relaxed);
        }
    }
}

/// The reply of a job, awaited: for a job expected to be quick ([`Pace::poll_for`]) by
/// polling the channel first, yielding to the runtime between polls (`yield_now`, so the
/// runtime runs its other tasks in between and the task never blocks its thread), then by sleeping
/// until the job's thread wakes it. Polling saves the sleep and the wake-up of the runtime's
/// thread (a futex or eventfd write and a context switch per step) at the cost of the CPU
/// the polls take.
struct Reply<T> {
    rx: oneshot::Receiver<T>,
    pace: Arc<Pace>,
    /// Until when to poll; `None` once sleeping.
    poll_until: Option<Instant>,
}

impl<T> Reply<T> {
    fn new(rx: oneshot::Receiver<T>, pace: &Arc<Pace>) -> Reply<T> {
        Reply {
            rx,
            poll_until: pace.poll_for().map(|d| Instant::now() + d),
            pace: Arc::clone(pace),
        }
    }
}

impl<T> Future for Reply<T> {
    type Output = std::result::Result<T, oneshot::error::RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(until) = self.poll_until {
            match self.rx.try_recv() {
                Ok(value) => {
                    self.pace.polled(true);
                    return Poll::Ready(Ok(value));
                }
                Err(oneshot::error::TryRecvError::Empty) if Instant::now() < until => {
                    // Polled again once the runtime has run its other ready tasks (and
                    // looked at its I/O): on a worker of a multi-threaded runtime a
                    // `yield_now` defers the wake-up, where `wake_by_ref` would schedule
                    // the task at once and wake an idle worker to share the work, a futex
                    // wake-up per poll. Outside a runtime's worker it is `wake_by_ref`.
                    let _ = pin!(tokio::task::yield_now()).poll(cx);
                    return Poll::Pending;
                }
                Err(oneshot::error::TryRecvError::Empty) => self.pace.polled(false),
                // The sender is gone: the poll below says so.
                Err(oneshot::error::TryRecvError::Closed) => {}
            }
            self.poll_until = None;
        }
        Pin::new(&mut self.rx).poll(cx)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_backs_off_doubling_after_polls_that_find_nothing_and_resumes_after_one_that_finds() {
        // Each poll that found nothing doubles the replies waited for by sleeping (up to
        // MAX_SKIP); one that found its reply starts the doubling over.
        if !parallel() {
            println!("SKIPPED: one CPU here, where replies are never polled for");
            return;
        }
        let pace = Pace::default();
        assert_eq!(pace.poll_for(), None, "no job has run yet");
        pace.ran(Duration::from_micros(30));
        assert_eq!(pace.poll_for(), Some(Duration::from_micros(70)));
        let mut slept = Vec::new();
        for _ in 0..12 {
            pace.polled(false);
            let mut n = 0;
            while pace.poll_for().is_none() {
                n += 1;
            }
            slept.push(n);
        }
        assert_eq!(slept, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1024]);
        pace.polled(true);
        pace.polled(false);
        assert_eq!(pace.poll_for(), None);
        assert_eq!(pace.poll_for(), Some(Duration::from_micros(70)));
    }

    #[test]
    fn replies_of_jobs_longer_than_the_polling_limit_are_waited_for_by_sleeping() {
        // A lane whose jobs take longer than MAX_POLL on average (fsyncs on a disk) never
        // polls; once its jobs are quick again on average, it polls for twice their time.
        let pace = Pace::default();
        pace.ran(Duration::from_millis(1));
        assert_eq!(pace.poll_for(), None);
        for _ in 0..40 {
            pace.ran(Duration::from_micros(30));
        }
        let run = Duration::from_nanos(pace.run_ns.load(Ordering::Relaxed));
        assert!(
            run > Duration::from_micros(30) && run < Duration::from_micros(40),
            "{run:?}"
        );
        match parallel() {
            true => assert_eq!(pace.poll_for(), Some(run * 2 + Duration::from_micros(10))),
            false => assert_eq!(pace.poll_for(), None),
        }
    }
}
