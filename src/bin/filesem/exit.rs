//! Exit codes and error reports.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | no slot could be had (`-n`, or `-w` ran out, or the ID already holds one; `-E` changes it), or `release` of an ID that holds none |
//! | 2 | usage: bad arguments (clap's own errors), a capacity that does not match the file, an invalid ID |
//! | 125 | filesem itself failed: I/O, corrupt state, no semaphore at the path, lock timeout |
//! | 126 | `run`: the command was found but could not be run |
//! | 127 | `run`: the command was not found |
//! | other | `run`: the command's own exit code, or 128 + the signal that killed it |
//!
//! 125, 126 and 127 are those of coreutils `timeout`, `env` and `nice`, so a shell user can tell
//! filesem's failures from the command's.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::process::ExitCode;

use crate::duration::human;
use crate::escape::{escape, shell_quote, terminal_safe};

/// How `filesem` ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0.
    Success,
    /// 1, or the `-E` code: no slot could be had.
    NoSlot,
    /// 1: `release` named an ID that holds no slot.
    NotHeld,
    /// 2: the arguments do not fit (clap exits 2 by itself for its own errors).
    Usage,
    /// 125: filesem's own failure.
    Failure,
    /// 126: the command could not be run.
    CannotRun,
    /// 127: the command was not found.
    CommandNotFound,
    /// The command's exit status: its code, or 128 + signal.
    Command(u8),
}

impl Exit {
    /// The process exit code; `conflict` is the `-E` code used for [`Exit::NoSlot`].
    pub fn code(self, conflict: u8) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::NoSlot => conflict,
            Exit::NotHeld => 1,
            Exit::Usage => 2,
            Exit::Failure => 125,
            Exit::CannotRun => 126,
            Exit::CommandNotFound => 127,
            Exit::Command(code) => code,
        }
    }

    /// The exit code as a [`ExitCode`].
    pub fn exit_code(self, conflict: u8) -> ExitCode {
        ExitCode::from(self.code(conflict))
    }
}

/// The default for `-E`.
pub const NO_SLOT: u8 = 1;

/// An error that ends `filesem`: printed once to stderr, then the process exits with `exit`.
#[derive(Debug)]
pub struct Fail {
    /// The exit code class.
    pub exit: Exit,
    /// The error, printed with its cause chain.
    pub error: Box<dyn StdError + Send + Sync>,
    /// A line on what to do about it, if there is one.
    pub hint: Option<String>,
}

impl Fail {
    /// A failure with a message of our own.
    pub fn new(exit: Exit, message: impl Into<String>) -> Fail {
        Fail {
            exit,
            error: message.into().into(),
            hint: None,
        }
    }

    /// Adds a hint line.
    pub fn hint(mut self, hint: impl Into<String>) -> Fail {
        self.hint = Some(hint.into());
        self
    }

    /// Whether this is contention rather than a failure (so `-q` silences it).
    pub fn is_no_slot(&self) -> bool {
        self.exit == Exit::NoSlot
    }

    /// The report: `filesem: <error>: <cause>: <cause>`, then an optional `hint:` line; control
    /// characters escaped so that an ID or a path cannot play tricks on the terminal (once: a
    /// [`Escaped`] message is shown as it is). Backslashes in the hint are kept: its commands
    /// quote their arguments with [`shell_quote`] and must work when pasted.
    pub fn report(&self) -> String {
        let mut out = match self.error.downcast_ref::<Escaped>() {
            Some(escaped) => format!("filesem: {escaped}"),
            None => escape(&format!("filesem: {}", self.error)),
        };
        let mut causes = String::new();
        let mut source = self.error.source();
        while let Some(cause) = source {
            let _ = write!(causes, ": {cause}");
            source = cause.source();
        }
        out.push_str(&escape(&causes));
        if let Some(hint) = &self.hint {
            out.push_str("\nfilesem: hint: ");
            out.push_str(&terminal_safe(hint));
        }
        out
    }
}

/// A message already made safe for a terminal (its parts escaped one by one, or quoted with
/// `{:?}`), which [`Fail::report`] must not escape a second time.
#[derive(Debug)]
pub struct Escaped(pub String);

impl std::fmt::Display for Escaped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Escaped {}

/// The CLI's own wording of a library error, where it differs from the error's `Display`:
/// durations for people (`302 ms`, not `302.211649ms`), and an invalid ID quoted once (the
/// library quotes it with `{:?}`, which escaping the whole line would escape again).
fn wording(error: &filesem::Error) -> Option<Escaped> {
    use filesem::Error as E;
    let path = |p: &std::path::Path| escape(&p.display().to_string());
    let text = match error {
        E::InvalidId {
            path: p,
            id,
            reason,
        } => {
            // `{:?}` escapes control, bidi-override and quote characters and backslashes.
            format!(
                "invalid holder ID {id:?} for semaphore `{}`: {reason}",
                path(p)
            )
        }
        E::Timeout { path: p, waited } => format!(
            "timed out after {} waiting for a slot of semaphore `{}`",
            human(*waited),
            path(p)
        ),
        E::LockTimeout {
            lock_path, waited, ..
        } => format!(
            "timed out after {} waiting for the lock file `{}`",
            human(*waited),
            path(lock_path)
        ),
        _ => return None,
    };
    Some(Escaped(text))
}

impl Fail {
    /// A failure for a library error known only by reference (from a callback).
    pub fn from_ref(error: &filesem::Error) -> Fail {
        if let Some(escaped) = wording(error) {
            return Fail {
                exit: Exit::Failure,
                error: Box::new(escaped),
                hint: None,
            };
        }
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let _ = write!(message, ": {cause}");
            source = cause.source();
        }
        Fail::new(Exit::Failure, message)
    }
}

impl From<filesem::Error> for Fail {
    fn from(error: filesem::Error) -> Fail {
        use filesem::Error as E;
        let exit = match &error {
            E::NoCapacity { .. } | E::Timeout { .. } | E::AlreadyHeld { .. } => Exit::NoSlot,
            E::NotHeld { .. } => Exit::NotHeld,
            E::CapacityMismatch { .. }
            | E::InvalidCapacity { .. }
            | E::InvalidId { .. }
            | E::InvalidMetadata { .. }
            | E::InvalidLease { .. } => Exit::Usage,
            _ => Exit::Failure,
        };
        let hint = match &error {
            E::Corrupt { path, reason } if recover_can_fix(path, reason) => Some(format!(
                "stop every holder, then start afresh with `filesem recover {} -c CAPACITY` \
                 (the bad file is kept aside)",
                shell_quote(path)
            )),
            E::LockTimeout { .. } => Some(
                "a process is stopped or hung inside its critical section; find it with \
                 `fuser` or `lsof` on the lock file"
                    .to_string(),
            ),
            _ => None,
        };
        let error: Box<dyn StdError + Send + Sync> = match wording(&error) {
            Some(escaped) => Box::new(escaped),
            None => Box::new(error),
        };
        Fail { exit, error, hint }
    }
}

/// Whether `filesem recover` is the way out of a [`filesem::Error::Corrupt`] at `path`: not
/// for a FIFO, socket or device at the path (recover moves aside only a regular file), nor for
/// an exhausted fencing-token counter (tokens only grow, so only a new semaphore file helps,
/// as the error says). Until the library reports those two with variants of their own, they
/// are told apart here by the file's type and the error's reason.
fn recover_can_fix(path: &std::path::Path, reason: &str) -> bool {
    let regular = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
    regular && !reason.contains("fencing-token counter is exhausted")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_documented_table() {
        // Shell scripts depend on these numbers; they are part of the interface.
        assert_eq!(Exit::Success.code(NO_SLOT), 0);
        assert_eq!(Exit::NoSlot.code(NO_SLOT), 1);
        assert_eq!(Exit::NoSlot.code(75), 75);
        assert_eq!(Exit::NotHeld.code(75), 1);
        assert_eq!(Exit::Usage.code(NO_SLOT), 2);
        assert_eq!(Exit::Failure.code(NO_SLOT), 125);
        assert_eq!(Exit::CannotRun.code(NO_SLOT), 126);
        assert_eq!(Exit::CommandNotFound.code(NO_SLOT), 127);
        assert_eq!(Exit::Command(143).code(NO_SLOT), 143);
    }

    #[test]
    fn an_invalid_id_is_escaped_once_and_durations_read_as_people_write_them() {
        // `bad\tid` shows as "bad\tid" (not "bad\\tid"), still with no raw control character;
        // a timeout says `302 ms`, not `302.211649ms`.
        let fail = Fail::from(filesem::Error::InvalidId {
            path: "/x/s\u{1b}.json".into(),
            id: "bad\tid\u{1b}[2J".into(),
            reason: "the ID contains a control character",
        });
        assert_eq!(fail.exit, Exit::Usage);
        assert_eq!(
            fail.report(),
            "filesem: invalid holder ID \"bad\\tid\\u{1b}[2J\" for semaphore `/x/s\\u{1b}.json`: \
             the ID contains a control character"
        );
        let fail = Fail::from(filesem::Error::Timeout {
            path: "/x/s.json".into(),
            waited: std::time::Duration::from_nanos(302_211_649),
        });
        assert_eq!(fail.exit, Exit::NoSlot);
        assert_eq!(
            fail.report(),
            "filesem: timed out after 302 ms waiting for a slot of semaphore `/x/s.json`"
        );
    }

    #[test]
    fn report_has_the_cause_chain_on_one_line() {
        // Errors print once, with the path and every cause.
        let error = filesem::Error::NotFound {
            path: "/x/s.json".into(),
        };
        let fail = Fail::from(error);
        assert_eq!(fail.exit, Exit::Failure);
        assert_eq!(fail.report(), "filesem: no semaphore at `/x/s.json`");

        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("failed to open `/x/s.json.lock`")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let fail = Fail {
            exit: Exit::Failure,
            error: Box::new(Outer(std::io::Error::from_raw_os_error(13))),
            hint: Some("check\u{1b}[31m".into()),
        };
        assert_eq!(
            fail.report(),
            "filesem: failed to open `/x/s.json.lock`: Permission denied (os error 13)\n\
             filesem: hint: check\\u{1b}[31m"
        );
    }

    #[test]
    fn the_recover_hint_quotes_the_path_and_is_given_only_where_recover_helps() {
        // A hint must name a command that works: pasted as shown, on a file recover can fix.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("my sem's.json");
        std::fs::write(&path, "{").unwrap();
        let corrupt = |reason: &str| filesem::Error::Corrupt {
            path: path.clone(),
            reason: reason.into(),
        };
        let fail = Fail::from(corrupt("expected value at line 1 column 2"));
        assert_eq!(fail.exit, Exit::Failure);
        let expected = format!(
            "stop every holder, then start afresh with `filesem recover {} -c CAPACITY` (the \
             bad file is kept aside)",
            shell_quote(&path)
        );
        assert_eq!(fail.hint.as_deref(), Some(expected.as_str()));
        assert!(expected.contains("'\\''"), "quoted: {expected}");
        let exhausted = Fail::from(corrupt(
            "the fencing-token counter is exhausted (2^53 - 1 tokens were handed out); tokens \
             only grow, so use a new semaphore file",
        ));
        assert_eq!(exhausted.hint, None);
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let fifo = Fail::from(corrupt("it is a FIFO, not a regular file"));
        assert_eq!(fifo.hint, None);
    }
}
