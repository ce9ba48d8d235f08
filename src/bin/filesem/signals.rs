//! Signals while `filesem` waits for a slot and while its command runs.
//!
//! [`start`] blocks the signals filesem cares about in the calling thread before any other
//! thread exists (so every later thread, the library's included, inherits the mask) and reads
//! them in a thread of its own, which turns them into [`Event`]s on a channel. Nothing is ever
//! *ignored*: an ignored disposition would be inherited by the command across `exec`, while
//! the blocked mask is reset by `std::process::Command` in the child.
//!
//! What happens to a signal then is decided by the caller:
//! - while waiting for a slot, any of them ends `filesem` as if unhandled ([`die_by`]);
//! - while the command runs, `run` forwards it to the command once, unless the terminal sent
//!   it: a terminal's Ctrl-C (SIGINT), Ctrl-\ (SIGQUIT) and hang-up (SIGHUP) go to the whole
//!   foreground process group, which the command shares with `filesem`, so the command has
//!   its own copy already. Linux tells the two apart by `si_code` (`SI_KERNEL` for the
//!   terminal); other systems have no portable way, so there SIGINT and SIGQUIT count as the
//!   terminal's (the `time`/`xargs` rule) and the others are forwarded.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

/// The signals `run` forwards to its command (and that end a wait for a slot).
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// A signal, and whether the terminal sent it (to the whole foreground process group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The signal.
    pub signal: Signal,
    /// `true` if the kernel sent it on behalf of the terminal: the command got it too.
    pub from_terminal: bool,
}

/// Something the main thread must react to.
#[derive(Debug)]
pub enum Event {
    /// A signal arrived (one of [`FORWARDED`], or SIGCHLD).
    Signal(Received),
    /// The hold was lost while the command ran: the report to print.
    Lost(String),
}

/// The receiving end of the events; [`Events::sender`] lets other threads add theirs.
pub struct Events {
    rx: Receiver<Event>,
    tx: Sender<Event>,
}

impl Events {
    /// The next event, waiting at most `timeout`; `None` when the time ran out (or the
    /// signal thread is gone, which only a failing `read` on the signalfd causes).
    pub fn next_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The next event, waiting as long as it takes.
    pub fn next(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// A sender for events from other threads (the lease keep-alive).
    pub fn sender(&self) -> Sender<Event> {
        self.tx.clone()
    }
}

/// Blocks [`FORWARDED`] and SIGCHLD in the calling thread and starts the thread that reads
/// them. Call it first thing, before any other thread is started.
///
/// # Errors
///
/// The OS error of `pthread_sigmask`, `signalfd` or the thread spawn.
pub fn start() -> io::Result<Events> {
    let mut mask = SigSet::empty();
    for signal in FORWARDED {
        mask.add(signal);
    }
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(io::Error::from)?;
    let (tx, rx) = mpsc::channel();
    let reader = reader(&mask)?;
    let sender = tx.clone();
    std::thread::Builder::new()
        .name("filesem-signals".into())
        .spawn(move || {
            for received in reader {
                if sender.send(Event::Signal(received)).is_err() {
                    break;
                }
            }
        })?;
    Ok(Events { rx, tx })
}

/// Ends the process by `signal`, as if `filesem` had not handled it (so a calling shell
/// sees "killed by SIGINT" and stops its loop); exits with 128 + signal if that fails.
pub fn die_by(signal: Signal) -> ! {
    let mut set = SigSet::empty();
    set.add(signal);
    let _ = set.thread_unblock();
    let _ = nix::sys::signal::raise(signal);
    std::process::exit(128 + signal as i32)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn reader(mask: &SigSet) -> io::Result<impl Iterator<Item = Received> + Send + 'static> {
    use nix::sys::signalfd::SignalFd;

    let fd = SignalFd::new(mask).map_err(io::Error::from)?;
    Ok(std::iter::from_fn(move || {
        loop {
            match fd.read_signal() {
                Ok(Some(info)) => {
                    let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                        continue;
                    };
                    return Some(Received {
                        signal,
                        from_terminal: info.ssi_code == libc::SI_KERNEL,
                    });
                }
                Ok(None) | Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return None,
            }
        }
    }))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn reader(mask: &SigSet) -> io::Result<impl Iterator<Item = Received> + Send + 'static> {
    let mask = *mask;
    Ok(std::iter::from_fn(move || {
        loop {
            match mask.wait() {
                Ok(signal) => {
                    return Some(Received {
                        signal,
                        from_terminal: matches!(signal, Signal::SIGINT | Signal::SIGQUIT),
                    });
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return None,
            }
        }
    }))
}
