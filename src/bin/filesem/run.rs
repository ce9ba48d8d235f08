//! `filesem run`: take a slot, run a command, release the slot when it ends.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use filesem::{Error, Permit};
use nix::errno::Errno;
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawnp};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::acquire::{self, Request};
use crate::escape::escape;
use crate::exit::{Exit, Fail};
use crate::signals::Signals;
use crate::store::{self, Target};
use crate::{RunArgs, open};

/// Runs `filesem run`.
///
/// # Errors
///
/// As [`acquire::acquire`]; [`Exit::CommandNotFound`] / [`Exit::CannotRun`] when the command
/// cannot be started; [`Exit::Failure`] for signal setup or waiting failures.
pub fn run(args: RunArgs) -> Result<Exit, Fail> {
    let start = Instant::now();
    // First, before any thread exists: every thread must inherit the blocked mask.
    let signals = Arc::new(Signals::start().map_err(acquire::signal_failure)?);
    let slot = &args.slot;
    let sem = open::open(slot, start)?;
    // As resolved when the semaphore was opened: a command that changes directory, or a
    // symlinked directory repointed later, cannot make it name another semaphore. A Redis
    // URL without its password (see `store.rs`).
    let target = Target::of(&slot.semfile);
    let resolved = target.exported(&sem);
    let nested = nested_id(&resolved, target.is_redis());
    let id = match (&args.id, &nested) {
        (Some(id), _) => id.clone(),
        (None, Some(outer)) => outer.clone(),
        (None, None) => default_id(),
    };
    let request = Request::new(slot, &id, start);
    // An invalid ID from FILESEM_ID gets its hint where every error gets one (`exit.rs`).
    let mut permit = acquire::acquire(&sem, &request, &signals).map_err(|fail| {
        let already_held = matches!(
            fail.error.downcast_ref::<Error>(),
            Some(Error::AlreadyHeld { .. })
        );
        if already_held && args.id.is_none() && nested.is_some() {
            fail.hint(
                "this `filesem run` runs inside the command of that hold (its FILESEM_ID), and \
                 waiting there could mean waiting for its own parent, so it fails instead; \
                 give --id to compete for a second slot",
            )
        } else {
            fail
        }
    })?;
    // Renew a lease, and watch for a lost hold where that changes what happens; otherwise a
    // lost hold is reported when the release at the end finds it gone (and no thread is
    // started for a short command). Started before the command, so that a failure to start
    // it runs nothing; the release at the end stops it.
    let lost = Arc::new(Mutex::new(None));
    let watching = permit.lease().is_some() || args.kill_on_lost;
    if watching {
        let lost = Arc::clone(&lost);
        permit.keep_alive_with(move |error| {
            if let Ok(mut lost) = lost.lock() {
                *lost = Some(Fail::from_ref(error).report());
            }
        })?;
    }
    let inherited = inherit_hold(&permit, args.close)?;
    let environment = [
        ("FILESEM_PATH", resolved.into_os_string()),
        ("FILESEM_ID", permit.id().into()),
        ("FILESEM_TOKEN", permit.token().to_string().into()),
        ("FILESEM_SLOT", permit.slot().to_string().into()),
    ];
    let child = spawn(&args.command, &environment)?;
    // The command has its copy of the witness now; ours closes here.
    drop(inherited);
    let watch = watching.then_some(&*lost);
    let ended = supervise(child, &signals, watch, args.kill_on_lost)?;
    let permit_id = permit.id().to_string();
    let lease = permit.lease();
    // Bounded by the lock timeout, as every step without a deadline of its own (the -n and
    // -w deadlines were for getting the slot): a failed release only delays the slot's
    // return, see below.
    match permit.release() {
        Ok(()) => {}
        // Already reported while the command ran.
        Err(Error::Lost { .. } | Error::Removed { .. } | Error::DirectoryGone { .. })
            if ended.lost => {}
        // The state file or the directory was removed while the command ran, and the hold
        // with it: there is nothing left to release, and running the command again is no fix
        // for this run.
        Err(error @ (Error::DirectoryGone { .. } | Error::Removed { .. })) => {
            let fail = Fail {
                hint: None,
                ..Fail::from(error)
            };
            err!("{}", fail.report());
        }
        Err(error @ Error::Lost { .. }) => err!("{}", Fail::from(error).report()),
        Err(error) => {
            err!("{}", Fail::from(error).report());
            match lease {
                // A Redis hold has no witness: only its lease ends it.
                Some(lease) if target.is_redis() => err!(
                    "filesem: note: the hold of {} may still be on the server; it ends when its \
                     lease ({}) runs out, and the next acquire or `filesem reap` removes it then",
                    escape(permit_id.as_str()),
                    crate::duration::human(lease)
                ),
                // The library unlocked the witness (keeping its file) when the write failed.
                _ => err!(
                    "filesem: note: the hold of {} may still be on file; it ends once no \
                     process holds its witness (the command and what it started), and the next \
                     acquire or `filesem reap` removes it",
                    escape(permit_id.as_str())
                ),
            }
        }
    }
    Ok(Exit::Command(ended.code))
}

/// The descriptor that the command inherits so that the hold lives exactly as long as the
/// command, even if `filesem run` is killed with SIGKILL (as `flock(1)` passes its lock
/// descriptor on): a non-`CLOEXEC` duplicate of the permit's liveness witness
/// ([`Permit::inherit_witness`]). `None` with `-o` (`close`): the hold then ends with
/// `filesem run`, even if the command lives on.
///
/// This is the one place where the command inherits anything of ours; the caller closes the
/// descriptor right after spawning.
fn inherit_hold(permit: &Permit, close: bool) -> Result<Option<OwnedFd>, Fail> {
    if close {
        return Ok(None);
    }
    Ok(permit.inherit_witness()?)
}

/// The ID of the hold whose command we run in, if it is on this same semaphore (`resolved`
/// is ours, from [`filesem::Semaphore::resolved_path`], or our Redis URL without its password when `redis`): a `run` nested in another `run` (FILESEM_PATH and
/// FILESEM_ID set by the outer one).
fn nested_id(resolved: &Path, redis: bool) -> Option<String> {
    let outer_path = std::env::var_os("FILESEM_PATH")?;
    let outer_id = std::env::var("FILESEM_ID").ok()?;
    if redis {
        // Both in the exported form: the location as the library shows it, without password.
        let outer = store::exported(&outer_path.to_string_lossy());
        return (Path::new(&outer) == resolved).then_some(outer_id);
    }
    let same = match (
        std::fs::canonicalize(Path::new(&outer_path)),
        std::fs::canonicalize(resolved),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    same.then_some(outer_id)
}

/// `run-<hostname>-<pid>`: unique among live processes of one machine, and says where to look.
fn default_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("run-{host}-{}", std::process::id())
}

/// Starts the command with `posix_spawnp` (searching `PATH`), our environment plus `extra`,
/// an empty signal mask (ours blocks the forwarded signals; `std::process::Command` would
/// pass that mask on) and SIGPIPE at its default (Rust ignores it in `filesem`). Signals the
/// caller of `filesem` ignored stay ignored, as they would for the command run directly.
fn spawn(argv: &[OsString], extra: &[(&str, OsString)]) -> Result<Pid, Fail> {
    let program = &argv[0];
    let cannot = |exit: Exit, cause: &dyn std::fmt::Display| Fail {
        exit,
        error: format!(
            "cannot run `{}`: {cause}",
            escape(&program.to_string_lossy())
        )
        .into(),
        hint: None,
    };
    let c_string = |bytes: Vec<u8>| {
        CString::new(bytes).map_err(|_| cannot(Exit::CannotRun, &"an argument contains a NUL byte"))
    };
    let pair =
        |key: &OsStr, value: &OsStr| c_string([key.as_bytes(), b"=", value.as_bytes()].concat());
    let args = argv
        .iter()
        .map(|a| c_string(a.as_bytes().to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut environment = Vec::new();
    for (key, value) in std::env::vars_os() {
        if !extra.iter().any(|(k, _)| key == *k) {
            environment.push(pair(&key, &value)?);
        }
    }
    for (key, value) in extra {
        environment.push(pair(OsStr::new(key), value)?);
    }
    let setup = |e: Errno| Fail::new(Exit::Failure, format!("failed to prepare the command: {e}"));
    let mut attributes = PosixSpawnAttr::init().map_err(setup)?;
    attributes.set_sigmask(&SigSet::empty()).map_err(setup)?;
    let mut to_default = SigSet::empty();
    to_default.add(Signal::SIGPIPE);
    attributes.set_sigdefault(&to_default).map_err(setup)?;
    attributes
        .set_flags(PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF)
        .map_err(setup)?;
    let actions = PosixSpawnFileActions::init().map_err(setup)?;
    posix_spawnp(&args[0], &actions, &attributes, &args, &environment).map_err(|errno| {
        let exit = if errno == Errno::ENOENT {
            Exit::CommandNotFound
        } else {
            Exit::CannotRun
        };
        cannot(exit, &io::Error::from(errno))
    })
}

/// How the command ended.
struct Ended {
    /// Its exit code, or 128 + the signal that killed it (as shells report it).
    code: u8,
    /// Whether the hold was found lost (and reported) while it ran.
    lost: bool,
}

/// Waits for the command to end, forwarding the signals sent to `filesem run` (but not those
/// the terminal sent to the whole process group, which the command got already), and warning
/// if the keep-alive reports the hold lost in `watch` (with `kill_on_lost`, also sending the
/// command SIGTERM).
fn supervise(
    child: Pid,
    signals: &Signals,
    watch: Option<&Mutex<Option<String>>>,
    kill_on_lost: bool,
) -> Result<Ended, Fail> {
    // How often to look at `watch`: a lost hold is noticed at lease / 3 anyway.
    const WATCH_EVERY: Duration = Duration::from_millis(100);
    let mut lost = false;
    loop {
        // SIGCHLD may have come before the child existed; check first. Only this loop reaps
        // the child, so until it does, `child` cannot be reused by another process.
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                return Ok(Ended {
                    code: code as u8,
                    lost,
                });
            }
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Ok(Ended {
                    code: 128 + signal as u8,
                    lost,
                });
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(Fail::new(
                    Exit::Failure,
                    format!("failed to wait for the command: {}", io::Error::from(e)),
                ));
            }
        }
        let timeout = (watch.is_some() && !lost).then_some(WATCH_EVERY);
        if let Some(received) = signals.next(timeout).map_err(acquire::signal_failure)?
            && received.signal != Signal::SIGCHLD
            && !received.from_terminal
        {
            let _ = kill(child, received.signal);
        }
        if let Some(report) = watch.and_then(|w| w.lock().ok()?.take()) {
            lost = true;
            err!("{report}");
            if kill_on_lost {
                err!("filesem: sending SIGTERM to the command (--kill-on-lost)");
                let _ = kill(child, Signal::SIGTERM);
            } else {
                err!("filesem: the command goes on without a slot (--kill-on-lost stops it)");
            }
        }
    }
}
