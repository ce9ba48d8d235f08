//! Taking a slot for `run` and `acquire`: waiting in the library's queue (or not), the
//! "waiting for a slot" note, signals during the wait, and the `acquire` subcommand.

use std::io::IsTerminal;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use filesem::{AcquireOptions, CancelToken, Permit, Semaphore, WaitStatus};
use nix::sys::signal::Signal;

use crate::escape::{escape, escape_path};
use crate::exit::{Exit, Fail};
use crate::signals::{self, Signals};
use crate::{AcquireArgs, SlotArgs, open};

/// How long `-n` waits for the state lock (never for a slot): long enough for any ordinary
/// critical section of another process, short enough that a process stopped inside one
/// cannot hold up a cron job for the lock timeout.
pub const NONBLOCK_LOCK_WAIT: Duration = Duration::from_secs(1);

/// How long to wait for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// `-n`: one attempt, waiting at most [`NONBLOCK_LOCK_WAIT`] for the state lock.
    Nonblock,
    /// `-w DURATION`: the whole acquire, state-lock waits included.
    AtMost(Duration),
    /// The default: until a slot is free.
    Forever,
}

impl Wait {
    /// The wait the options of `run` or `acquire` ask for.
    pub fn of(args: &SlotArgs) -> Wait {
        match (args.nonblock, args.timeout) {
            (true, _) => Wait::Nonblock,
            (false, Some(d)) => Wait::AtMost(d),
            (false, None) => Wait::Forever,
        }
    }

    /// How long the whole command may take to get its slot, counted from `start`, creating
    /// the semaphore included: [`NONBLOCK_LOCK_WAIT`] for `-n`, the duration of `-w`; `None`
    /// without a limit (also a `-w` past what the clock can count).
    pub fn limit(self, start: Instant) -> Option<Duration> {
        let limit = match self {
            Wait::Nonblock => NONBLOCK_LOCK_WAIT,
            Wait::AtMost(d) => d,
            Wait::Forever => return None,
        };
        start.checked_add(limit).map(|_| limit)
    }
}

/// One acquire as the command line asked for it.
pub struct Request<'a> {
    /// The holder ID.
    pub id: &'a str,
    /// Metadata, lease, priority, detached.
    pub options: AcquireOptions,
    /// How long to wait.
    pub wait: Wait,
    /// `-q`: no waiting note.
    pub quiet: bool,
    /// `--verbose`: report slot, token and time waited.
    pub verbose: bool,
    /// When the command started: `-n` and `-w` count from here, so that the time spent
    /// creating the semaphore is part of theirs.
    pub start: Instant,
}

impl<'a> Request<'a> {
    /// The request described by the shared options, for holder `id`, of a command that
    /// started at `start`.
    pub fn new(args: &SlotArgs, id: &'a str, start: Instant) -> Request<'a> {
        let wait = Wait::of(args);
        let mut options = AcquireOptions::new();
        if let Some(lease) = args.lease {
            options = options.lease(lease);
        }
        if let Some(priority) = args.priority {
            options = options.priority(priority);
        }
        for (key, value) in &args.meta {
            options = options.metadata(key, value);
        }
        Request {
            id,
            options,
            wait,
            quiet: args.quiet,
            verbose: args.verbose,
            start,
        }
    }

    /// What is left of `limit` since the command started (zero once it has passed: the
    /// library still makes its one short attempt).
    fn left_of(&self, limit: Duration) -> Duration {
        limit.saturating_sub(self.start.elapsed())
    }
}

/// Takes a slot of `sem` as `request` says, waiting in the semaphore's queue (first come,
/// first served within a priority) unless `-n`. A signal that arrives while waiting makes
/// the acquire leave the queue and then ends the process by that signal
/// ([`signals::die_by`]). With `-n` or `-w` the call ends by its deadline whoever holds the
/// state lock (`-n`: [`NONBLOCK_LOCK_WAIT`]), counted from the start of the command
/// ([`Request::start`]).
///
/// # Errors
///
/// [`Exit::NoSlot`] when no slot could be had in time (or the ID already holds one, or the
/// state lock stayed busy until the deadline), and the library's other errors.
pub fn acquire(
    sem: &Semaphore,
    request: &Request<'_>,
    signals: &Arc<Signals>,
) -> Result<Permit, Fail> {
    let start = Instant::now();
    let permit = match request.wait {
        Wait::Nonblock => {
            let timeout = request.left_of(NONBLOCK_LOCK_WAIT);
            let options = request.options.clone().timeout(timeout);
            sem.try_acquire_with(request.id, &options)?
        }
        Wait::AtMost(_) | Wait::Forever => wait(sem, request, signals)?,
    };
    if request.verbose {
        err!(
            "filesem: acquired slot {} of {} as {} (token {}) after {:.3}s",
            permit.slot(),
            escape_path(sem.path()),
            escape(request.id),
            permit.token(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(permit)
}

/// The waiting acquire. Signals are watched only once it has to wait (the library's
/// `on_wait` starts the watcher), so a free slot costs no thread.
fn wait(sem: &Semaphore, request: &Request<'_>, signals: &Arc<Signals>) -> Result<Permit, Fail> {
    let cancel = CancelToken::new();
    let watcher = Arc::new(Watcher::default());
    let announce = !request.quiet && std::io::stderr().is_terminal();
    let mut options = request.options.clone().cancel_token(&cancel).on_wait({
        let (watcher, signals, cancel) =
            (Arc::clone(&watcher), Arc::clone(signals), cancel.clone());
        move |status| {
            if announce {
                err!("{}", waiting_note(status));
            }
            watcher.start(Arc::clone(&signals), cancel.clone());
        }
    });
    if let Wait::AtMost(timeout) = request.wait {
        options = options.timeout(request.left_of(timeout));
    }
    let result = sem.acquire_with(request.id, &options);
    if let Some(signal) = watcher.stop() {
        // The wait was cancelled for this signal (a permit granted in the meantime is
        // released here): end as the signal says.
        drop(result);
        signals::die_by(signal);
    }
    Ok(result?)
}

/// "filesem: waiting for a slot on X: 3/3 held by a, b, c; 2 ahead in the queue".
fn waiting_note(status: &WaitStatus) -> String {
    const SHOWN: usize = 5;
    let mut ids: Vec<String> = status
        .holders
        .iter()
        .take(SHOWN)
        .map(|id| escape(id))
        .collect();
    if status.holders.len() > SHOWN {
        ids.push(format!("{} more", status.holders.len() - SHOWN));
    }
    let mut note = format!(
        "filesem: waiting for a slot on {}: {}/{} held by {}",
        escape_path(&status.path),
        status.holders.len(),
        status.capacity,
        ids.join(", ")
    );
    if status.ahead > 0 {
        note.push_str(&format!("; {} ahead in the queue", status.ahead));
    }
    note
}

/// A thread that waits for a signal while the main thread waits for a slot, and cancels
/// that wait when one comes.
#[derive(Default)]
struct Watcher {
    /// The thread (returning the signal it caught, if any) and the pipe end that stops it.
    running: Mutex<Option<(JoinHandle<Option<Signal>>, OwnedFd)>>,
}

impl Watcher {
    /// Starts the thread. Without a pipe or a thread (the system refused), signals stay
    /// pending until the wait ends, then reach the command: the wait still works.
    fn start(&self, signals: Arc<Signals>, cancel: CancelToken) {
        let Ok((stop_read, stop_write)) = cloexec_pipe() else {
            return;
        };
        let thread = std::thread::Builder::new()
            .name("filesem-wait-signals".into())
            .spawn(move || {
                loop {
                    match signals.next_unless(stop_read.as_fd()) {
                        Ok(Some(received)) if received.signal == Signal::SIGCHLD => continue,
                        Ok(Some(received)) => {
                            cancel.cancel();
                            return Some(received.signal);
                        }
                        Ok(None) | Err(_) => return None,
                    }
                }
            });
        if let (Ok(thread), Ok(mut running)) = (thread, self.running.lock()) {
            *running = Some((thread, stop_write));
        }
    }

    /// Stops the thread; the signal it caught, if any.
    fn stop(&self) -> Option<Signal> {
        let (thread, stop_write) = self.running.lock().ok()?.take()?;
        drop(stop_write);
        thread.join().ok().flatten()
    }
}

fn cloexec_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let (read, write) = nix::unistd::pipe()?;
    for fd in [&read, &write] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    Ok((read, write))
}

/// `filesem acquire`: a detached hold that outlives this process, until `filesem release`.
///
/// # Errors
///
/// As [`acquire`], and the library's errors from opening the semaphore.
pub fn detached(args: AcquireArgs) -> Result<Exit, Fail> {
    let start = Instant::now();
    let signals = Arc::new(Signals::start().map_err(signal_failure)?);
    let sem = open::open(&args.slot, start)?;
    let mut request = Request::new(&args.slot, &args.id, start);
    request.options = request.options.detached(true);
    let permit = acquire(&sem, &request, &signals)?;
    // A detached permit leaves its entry on file when dropped.
    drop(permit);
    Ok(Exit::Success)
}

/// A failure of signal handling itself (setting the mask, reading the signalfd).
pub fn signal_failure(error: std::io::Error) -> Fail {
    Fail::new(Exit::Failure, format!("failed to handle signals: {error}"))
}
