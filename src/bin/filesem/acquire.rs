//! Taking a slot for `run` and `acquire`: waiting (or not), the "waiting for a slot" note,
//! and the `acquire` subcommand's detached hold.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use filesem::{AcquireOptions, Error, Permit, Semaphore};
use nix::sys::signal::Signal;

use crate::escape::escape;
use crate::exit::{Exit, Fail};
use crate::signals::{self, Signals};
use crate::{AcquireArgs, SlotArgs, open};

/// How long to wait for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// `-n`: one attempt.
    Nonblock,
    /// `-w DURATION`.
    AtMost(Duration),
    /// The default: until a slot is free.
    Forever,
}

/// One acquire as the command line asked for it.
pub struct Request<'a> {
    /// The holder ID.
    pub id: &'a str,
    /// Metadata and the like.
    pub options: AcquireOptions,
    /// How long to wait.
    pub wait: Wait,
    /// `-q`: no waiting note.
    pub quiet: bool,
    /// `--verbose`: report slot, token and time waited.
    pub verbose: bool,
}

impl<'a> Request<'a> {
    /// The request described by the shared options, for holder `id`.
    pub fn new(args: &SlotArgs, id: &'a str) -> Request<'a> {
        let wait = match (args.nonblock, args.timeout) {
            (true, _) => Wait::Nonblock,
            (false, Some(d)) => Wait::AtMost(d),
            (false, None) => Wait::Forever,
        };
        let mut options = AcquireOptions::new();
        if let Some(lease) = args.lease {
            options = options.lease(lease);
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
        }
    }
}

/// Takes a slot of `sem` as `request` says. A signal from `signals` that arrives while waiting
/// ends the process by that signal (see [`signals::die_by`]).
///
/// The wait is a retry loop with backoff (5 ms doubling to 200 ms, with jitter) around
/// [`Semaphore::try_acquire_with`]. TEMPORARY: it stands in for the library's waiting API
/// (queue, hand-off, wake-up on change), which replaces it as soon as that lands; until then
/// waiters are not served in arrival order.
///
/// # Errors
///
/// [`Exit::NoSlot`] when no slot could be had in time (or the ID already holds one), and the
/// library's other errors.
pub fn acquire(sem: &Semaphore, request: &Request<'_>, signals: &Signals) -> Result<Permit, Fail> {
    let start = Instant::now();
    let deadline = match request.wait {
        Wait::Nonblock => Some(start),
        Wait::AtMost(d) => start.checked_add(d),
        Wait::Forever => None,
    };
    let mut backoff = Duration::from_millis(5);
    let mut told = request.quiet || !std::io::stderr().is_terminal();
    loop {
        match sem.try_acquire_with(request.id, &request.options) {
            Ok(permit) => {
                if request.verbose {
                    eprintln!(
                        "filesem: acquired slot {} of {} as {} (token {}) after {:.3}s",
                        permit.slot(),
                        escape(&sem.path().display().to_string()),
                        escape(request.id),
                        permit.token(),
                        start.elapsed().as_secs_f64()
                    );
                }
                return Ok(permit);
            }
            Err(Error::NoCapacity { .. }) if request.wait != Wait::Nonblock => {
                let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if remaining == Some(Duration::ZERO) {
                    return Err(Error::Timeout {
                        path: sem.path().to_path_buf(),
                        waited: start.elapsed(),
                    }
                    .into());
                }
                if !told {
                    told = true;
                    eprintln!("{}", waiting_note(sem));
                }
                let jitter =
                    Duration::from_micros(fastrand::u64(0..=backoff.as_micros() as u64 / 2));
                let sleep = (backoff + jitter).min(remaining.unwrap_or(Duration::MAX));
                if let Some(received) = signals.next(Some(sleep)).map_err(signal_failure)? {
                    if received.signal != Signal::SIGCHLD {
                        signals::die_by(received.signal);
                    }
                }
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// "filesem: waiting for a slot on X: 3/3 held by a, b, c", from one look at the holders.
fn waiting_note(sem: &Semaphore) -> String {
    const SHOWN: usize = 5;
    let path = escape(&sem.path().display().to_string());
    let (Ok(capacity), Ok(holders)) = (sem.capacity(), sem.holders()) else {
        return format!("filesem: waiting for a slot on {path}");
    };
    let mut ids: Vec<String> = holders.iter().take(SHOWN).map(|h| escape(&h.id)).collect();
    if holders.len() > SHOWN {
        ids.push(format!("{} more", holders.len() - SHOWN));
    }
    format!(
        "filesem: waiting for a slot on {path}: {}/{capacity} held by {}",
        holders.len(),
        ids.join(", ")
    )
}

/// `filesem acquire`: a detached hold that outlives this process, until `filesem release`.
///
/// # Errors
///
/// As [`acquire`], and the library's errors from opening and keeping the hold.
pub fn detached(args: AcquireArgs) -> Result<Exit, Fail> {
    let signals = Signals::start().map_err(signal_failure)?;
    let sem = open::open(&args.slot.semfile, args.slot.capacity, args.slot.quiet)?;
    let mut request = Request::new(&args.slot, &args.id);
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
