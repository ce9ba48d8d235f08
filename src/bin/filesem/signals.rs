//! Signals while `filesem` waits for a slot and while its command runs.
//!
//! [`Signals::start`] blocks the signals filesem cares about in the calling thread before any
//! other thread exists (so every later thread, the library's included, inherits the mask) and
//! reads them from a descriptor the main thread polls: a signalfd on Linux; elsewhere a pipe
//! fed by a thread in `sigwait`. Nothing is ever *ignored*: an ignored disposition would be
//! inherited by the command across `exec`, while `run` starts the command with an empty mask.
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
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
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
    /// The signal: one of [`FORWARDED`], or SIGCHLD.
    pub signal: Signal,
    /// `true` if the kernel sent it on behalf of the terminal: the command got it too.
    pub from_terminal: bool,
}

/// The blocked signals, read one by one with [`Signals::next`].
pub struct Signals {
    source: Source,
}

impl Signals {
    /// Blocks [`FORWARDED`] and SIGCHLD in the calling thread and opens the descriptor they
    /// are read from. Call it first thing, before any other thread is started.
    ///
    /// # Errors
    ///
    /// The OS error of `pthread_sigmask`, `signalfd` (or the pipe and thread elsewhere).
    pub fn start() -> io::Result<Signals> {
        let mut mask = SigSet::empty();
        for signal in FORWARDED {
            mask.add(signal);
        }
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(io::Error::from)?;
        Ok(Signals {
            source: Source::open(&mask)?,
        })
    }

    /// The next signal, waiting at most `timeout` (`None`: as long as it takes); `Ok(None)`
    /// when the time ran out.
    ///
    /// # Errors
    ///
    /// The OS error of `poll` or `read` on the descriptor.
    pub fn next(&self, timeout: Option<Duration>) -> io::Result<Option<Received>> {
        self.wait(timeout, None)
    }

    /// The next signal, or `Ok(None)` as soon as `stop` is readable or closed at the other
    /// end (a pipe whose writer is dropped).
    ///
    /// # Errors
    ///
    /// As [`next`](Signals::next).
    pub fn next_unless(&self, stop: BorrowedFd<'_>) -> io::Result<Option<Received>> {
        self.wait(None, Some(stop))
    }

    fn wait(
        &self,
        timeout: Option<Duration>,
        stop: Option<BorrowedFd<'_>>,
    ) -> io::Result<Option<Received>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if let Some(received) = self.source.read()? {
                return Ok(Some(received));
            }
            let wait = match deadline {
                None => PollTimeout::NONE,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    // Round up, so that a wait never ends before its deadline.
                    let ms = left.as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = vec![PollFd::new(self.source.fd(), PollFlags::POLLIN)];
            if let Some(stop) = stop {
                fds.push(PollFd::new(stop, PollFlags::POLLIN));
            }
            match poll(&mut fds, wait) {
                Ok(_) => {
                    let stopped = fds
                        .get(1)
                        .and_then(PollFd::revents)
                        .is_some_and(|r| !r.is_empty());
                    if stopped {
                        return Ok(None);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
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
struct Source(nix::sys::signalfd::SignalFd);

#[cfg(any(target_os = "linux", target_os = "android"))]
impl Source {
    fn open(mask: &SigSet) -> io::Result<Source> {
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let flags = SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC;
        Ok(Source(SignalFd::with_flags(mask, flags)?))
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// A pending signal, if there is one; never waits.
    fn read(&self) -> io::Result<Option<Received>> {
        loop {
            match self.0.read_signal() {
                Ok(Some(info)) => {
                    let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                        continue;
                    };
                    return Ok(Some(Received {
                        signal,
                        from_terminal: info.ssi_code == libc::SI_KERNEL,
                    }));
                }
                Ok(None) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Without signalfd: a thread takes the blocked signals with `sigwait` and writes each
/// signal's number, one byte, to a pipe that the main thread polls.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
struct Source(std::fs::File);

#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl Source {
    fn open(mask: &SigSet) -> io::Result<Source> {
        use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
        use std::io::Write;
        let (read, write) = nix::unistd::pipe()?;
        for fd in [&read, &write] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        }
        fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let mut write = std::fs::File::from(write);
        let mask = *mask;
        std::thread::Builder::new()
            .name("filesem-signals".into())
            .spawn(move || {
                loop {
                    match mask.wait() {
                        Ok(signal) => {
                            if write.write_all(&[signal as i32 as u8]).is_err() {
                                break;
                            }
                        }
                        Err(Errno::EINTR) => continue,
                        Err(_) => break,
                    }
                }
            })?;
        Ok(Source(std::fs::File::from(read)))
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    fn read(&self) -> io::Result<Option<Received>> {
        use std::io::Read;
        let mut byte = [0u8];
        loop {
            match (&self.0).read(&mut byte) {
                Ok(1) => {
                    let Ok(signal) = Signal::try_from(i32::from(byte[0])) else {
                        continue;
                    };
                    return Ok(Some(Received {
                        signal,
                        from_terminal: matches!(signal, Signal::SIGINT | Signal::SIGQUIT),
                    }));
                }
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
