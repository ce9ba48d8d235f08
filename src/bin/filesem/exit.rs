//! Exit codes and error reports.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | no slot could be had (`-n`, or `-w` ran out, or the state lock stayed busy until then, or the ID already holds one; `-E` changes it), or `release` of an ID that holds none |
//! | 2 | usage: bad arguments (clap's own errors), a capacity that does not match the file, an invalid ID |
//! | 125 | filesem itself failed: I/O, corrupt state, no semaphore at the path, lock timeout, an untrusted file, a semaphore or directory removed while in use, a durable change in a directory that cannot be fsynced, a state file of a newer format, an exhausted token counter |
//! | 126 | `run`: the command was found but could not be run |
//! | 127 | `run`: the command was not found |
//! | other | `run`: the command's own exit code, or 128 + the signal that killed it |
//!
//! 125, 126 and 127 are those of coreutils `timeout`, `env` and `nice`, so a shell user can tell
//! filesem's failures from the command's.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::process::ExitCode;

use std::path::Path;

use filesem::UntrustedKind;

use crate::duration::human;
use crate::escape::{escape, escape_path, shell_quote, terminal_safe};
use crate::hint::{self, Invocation};
use crate::store;
use crate::trust;

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
    ///
    /// A cause whose text the message already holds is left out, so it is printed once: the
    /// library's [`Io`](filesem::Error::Io) message ends with its OS error, which is also its
    /// source.
    pub fn report(&self) -> String {
        let mut out = match self.error.downcast_ref::<Escaped>() {
            Some(escaped) => format!("filesem: {escaped}"),
            None => escape(&format!("filesem: {}", self.error)),
        };
        out.push_str(&escape(&new_causes(&*self.error)));
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
            lock_path,
            waited,
            holder,
            ..
        } => format!(
            "timed out after {} waiting for the lock file `{}`{}",
            human(*waited),
            path(lock_path),
            held_by(*holder)
        ),
        E::LockBusy {
            lock_path,
            waited,
            holder,
            ..
        } => format!(
            "no slot: the state lock `{}` was busy for {}{}",
            path(lock_path),
            human(*waited),
            held_by(*holder)
        ),
        // The library's message names `OpenOptions::durable(false)`, which the command line
        // does not offer: the way out is read permission (the hint).
        E::CannotSyncDirectory {
            path: p, directory, ..
        } => format!(
            "cannot make a durable change to semaphore `{}`: this user may search its \
             directory `{}` but not read it, and a durable change needs an fsync of the \
             directory; nothing was changed",
            escape_path(p),
            escape_path(directory)
        ),
        // The library's message names `OpenOptions::trust_owner`, which a shell user reaches
        // through `--trust-owner` (the hint's command). The owner is named here when the
        // problem does not name it already.
        E::Untrusted {
            path: p,
            object,
            kind,
            problem,
            owner,
        } => {
            let mut text = format!(
                "refusing to use `{}` of semaphore `{}`: {}",
                escape_path(object),
                escape_path(p),
                escape(problem)
            );
            if let (UntrustedKind::WrongType, Some(uid)) = (kind, owner) {
                text.push_str(&format!(" (owned by {})", escape(&trust::describe(*uid))));
            }
            text
        }
        _ => return None,
    };
    Some(Escaped(text))
}

/// ` (held by pid 4242)` when the lock's holder is known.
fn held_by(holder: Option<u32>) -> String {
    holder.map_or_else(String::new, |pid| format!(" (held by pid {pid})"))
}

/// The way to the process that kept the state lock (a working process holds it only for an
/// instant): `ps` on its pid when the kernel named it, else `fuser` or `lsof` on the lock
/// file.
fn lock_holder_hint(holder: Option<u32>) -> String {
    match holder {
        Some(pid) => format!(
            "pid {pid} is stopped or hung inside its critical section; see what it is doing \
             with `ps -o pid,stat,etime,args -p {pid}`"
        ),
        None => "a process is stopped or hung inside its critical section; find it with \
                 `fuser` or `lsof` on the lock file"
            .to_string(),
    }
}

/// `: cause: cause` for each cause in the source chain of `error` whose text is not already
/// in the message (the error's `Display`) or an earlier cause.
fn new_causes(error: &(dyn StdError + 'static)) -> String {
    let mut seen = error.to_string();
    let mut causes = String::new();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !seen.contains(&text) {
            let _ = write!(causes, ": {text}");
            seen.push_str(&text);
        }
        source = cause.source();
    }
    causes
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
        message.push_str(&new_causes(error));
        Fail::new(Exit::Failure, message)
    }
}

impl From<filesem::Error> for Fail {
    /// The failure for `error`, with hints made from this process's command line.
    fn from(error: filesem::Error) -> Fail {
        Fail::from_error(error, &Invocation::current())
    }
}

impl Fail {
    /// The failure for `error`: its exit code, its wording and a hint whose command works
    /// for that case, made from `invocation` where the way out is the user's own command
    /// changed.
    pub fn from_error(error: filesem::Error, invocation: &Invocation) -> Fail {
        use filesem::Error as E;
        let exit = match &error {
            E::NoCapacity { .. }
            | E::Timeout { .. }
            | E::LockBusy { .. }
            | E::AlreadyHeld { .. } => Exit::NoSlot,
            E::NotHeld { .. } => Exit::NotHeld,
            E::CapacityMismatch { .. }
            | E::InvalidCapacity { .. }
            | E::InvalidId { .. }
            | E::InvalidMetadata { .. }
            | E::InvalidLease { .. } => Exit::Usage,
            #[cfg(feature = "redis")]
            E::InvalidLocation { .. } => Exit::Usage,
            // Contention, as a busy state lock.
            #[cfg(feature = "redis")]
            E::Contended { .. } => Exit::NoSlot,
            _ => Exit::Failure,
        };
        // Each hint's command is the first text between backquotes, and works for that case
        // when pasted. `recover` is named only for a corrupt file, which it can set aside: a
        // FIFO, socket or device at the path is `Untrusted` and stays where it is, and an
        // exhausted token counter cannot be lowered by anything.
        let hint = match &error {
            E::Corrupt { path, .. } if store::is_url(&path.to_string_lossy()) => Some(format!(
                "stop every holder, then start afresh with `filesem recover {} -c CAPACITY`{}; \
                 it keeps the bad value aside as KEY.corrupt-TIME",
                store::command_arg(path),
                store::password_note(path)
            )),
            E::Corrupt { path, .. } => Some(format!(
                "stop every holder, then start afresh with `filesem recover {} -c CAPACITY` \
                 (the bad file is kept aside)",
                shell_quote(path)
            )),
            E::LockTimeout { holder, .. } | E::LockBusy { holder, .. } => {
                Some(lock_holder_hint(*holder))
            }
            E::Untrusted {
                object,
                kind,
                owner,
                ..
            } => Some(untrusted_hint(object, *kind, *owner, invocation)),
            E::DirectoryGone { path } | E::Removed { path } if invocation.creates() => {
                invocation.again().map(|again| {
                    format!(
                        "`{again}` opens {} anew and creates a semaphore there if there is \
                         none; the holds of the removed semaphore went with it",
                        shell_quote(path)
                    )
                })
            }
            E::TokensExhausted { path } => Some(exhausted_hint(path, invocation)),
            // `run` without --id nested in another `run` takes the outer hold's ID from the
            // environment: the user typed no ID, so say where this one came from.
            E::InvalidId { id, .. }
                if !invocation.gives_id()
                    && std::env::var_os("FILESEM_ID").is_some_and(|v| v == id.as_str()) =>
            {
                Some(
                    "the ID came from the environment variable FILESEM_ID, which an enclosing \
                     `filesem run` on this semaphore sets (or which was inherited); give --id"
                        .to_string(),
                )
            }
            E::CannotSyncDirectory { directory, .. } => Some(read_permission_hint(directory)),
            E::UnsupportedVersion {
                path, supported, ..
            } => Some(format!(
                "`filesem status {}` still shows it; changing it needs a filesem that writes \
                 its format (this one writes version {supported})",
                shell_quote(path)
            )),
            _ => redis_hint(&error),
        };
        let error: Box<dyn StdError + Send + Sync> = match wording(&error) {
            Some(escaped) => Box::new(escaped),
            None => Box::new(error),
        };
        Fail { exit, error, hint }
    }
}

/// The way past an error about a Redis server: each names a command that checks what went
/// wrong, or the option that changes it. The URL in a command is shown without its password
/// ([`store::command_arg`]).
#[cfg(feature = "redis")]
fn redis_hint(error: &filesem::Error) -> Option<String> {
    use filesem::Error as E;
    let ping = |path: &Path| {
        let (host, port) = store::host_port(&path.to_string_lossy())
            .unwrap_or_else(|| ("HOST".to_string(), "PORT".to_string()));
        format!(
            "redis-cli -h {} -p {}",
            shell_quote(host),
            shell_quote(port)
        )
    };
    let status = |path: &Path| {
        format!(
            "`filesem status {}` shows what the server has{}",
            store::command_arg(path),
            store::password_note(path)
        )
    };
    let unknown = |path: &Path, outcome_unknown: bool| match outcome_unknown {
        true => format!("; the change may have been made: {}", status(path)),
        false => String::new(),
    };
    Some(match error {
        E::InvalidLocation { .. } => "a Redis semaphore is \
            redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]/KEY, e.g. \
            `filesem status redis://127.0.0.1:6379/0/jobs`; a state file whose path starts with \
            redis:// is written ./redis://..."
            .to_string(),
        E::RedisUnreachable { path, .. } => format!(
            "is a Redis server listening there? `{} ping` answers PONG when it is",
            ping(path)
        ),
        E::RedisTimeout {
            path,
            during,
            outcome_unknown,
            ..
        } => format!(
            "the server is stopped, overloaded or out of reach: `{} ping` checks it, and \
             {} gives a slow server longer{}",
            ping(path),
            match during.contains("connect") {
                true => "--connect-timeout",
                false => "--response-timeout",
            },
            unknown(path, *outcome_unknown)
        ),
        E::RedisDisconnected {
            path,
            outcome_unknown,
            ..
        } => format!(
            "the server closed the connection or restarted: `{} ping` checks it{}",
            ping(path),
            unknown(path, *outcome_unknown)
        ),
        E::RedisAuth { path, .. } => format!(
            "check the user and the password given in the environment variable REDISCLI_AUTH \
             (or in the URL, redis://:PASSWORD@HOST/...); `{} --askpass ping` checks them",
            ping(path)
        ),
        E::NotReplicated { path, .. } => format!(
            "`{} info replication` shows the replicas connected to it; ask for fewer with \
             --replica-ack or wait longer with --replica-timeout",
            ping(path)
        ),
        E::Contended { path, .. } => format!(
            "other clients changed the key at every attempt; try again later: {}",
            status(path)
        ),
        E::Redis { path, message, .. } if message.contains("READONLY") => format!(
            "this server is a read-only replica: use the primary's URL (`{} info replication` \
             names it)",
            ping(path)
        ),
        E::Redis { path, .. } => format!("`{} info` shows the server's state", ping(path)),
        _ => return None,
    })
}

/// No Redis errors without the feature.
#[cfg(not(feature = "redis"))]
fn redis_hint(_: &filesem::Error) -> Option<String> {
    None
}

/// The way past an [`Untrusted`](filesem::Error::Untrusted) `object`: for an owner that is
/// not trusted, the same command with `--trust-owner` (if that user shares the semaphore on
/// purpose); for an object of the wrong type, which no option makes usable, a look at it
/// (`ls -ld`) before removing it or choosing another path.
fn untrusted_hint(
    object: &Path,
    kind: UntrustedKind,
    owner: Option<u32>,
    invocation: &Invocation,
) -> String {
    let trusting = match (kind, owner) {
        (UntrustedKind::Owner, Some(uid)) => invocation.trusting(uid).map(|c| (uid, c)),
        _ => None,
    };
    match trusting {
        Some((uid, command)) => format!(
            "if {} shares this semaphore with you on purpose, trust their files: \
             `{command}`; if not, they may have planted it: remove it, or use a semaphore in \
             a directory that is not world-writable",
            trust::describe(uid)
        ),
        None => format!(
            "`ls -ld -- {}` shows what is there; filesem uses only the regular files and the \
             directory it creates, so remove it if nothing else uses it, or use another \
             semaphore path",
            shell_quote(object)
        ),
    }
}

/// The way past a directory this user may search but not read, which a durable change must
/// `fsync`: read permission for the class of users this process is in (`u`, `g` or `o` of
/// the directory, looked up here; `o` if it cannot be).
fn read_permission_hint(directory: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let class = match std::fs::metadata(directory) {
        Ok(meta) if meta.uid() == nix::unistd::geteuid().as_raw() => "u",
        Ok(meta) if in_group(meta.gid()) => "g",
        _ => "o",
    };
    format!(
        "`chmod {class}+r {}` (as the directory's owner or root) lets this user read it",
        shell_quote(directory)
    )
}

/// Whether this process is in group `gid` (its effective group or a supplementary one).
fn in_group(gid: u32) -> bool {
    nix::unistd::getegid().as_raw() == gid
        || nix::unistd::getgroups().is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
}

/// The way past an exhausted token counter at `path`: the same command on a new semaphore
/// beside it, with the capacity on file (read here; left out if it cannot be read).
fn exhausted_hint(path: &Path, invocation: &Invocation) -> String {
    let capacity = filesem::Semaphore::open_existing(path)
        .and_then(|sem| sem.capacity())
        .ok();
    let elsewhere = hint::new_path(path).and_then(|new| invocation.at(path, &new, capacity));
    let why = "tokens only grow, so recovering this file cannot help";
    match elsewhere {
        Some(command) => format!(
            "move to a new semaphore path, e.g. `{command}`, and every other program that \
             uses this one with it ({why})"
        ),
        None => format!(
            "move this and every other program that uses this semaphore to a new semaphore \
             path ({why})"
        ),
    }
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
    fn a_busy_state_lock_is_no_slot_and_a_lock_timeout_a_failure_both_naming_the_holder() {
        // A deadline that ran out on a busy lock is contention (exit 1 or -E, silenced by -q);
        // the lock timeout stays filesem's failure. Both name the pid where the kernel told,
        // and the hint looks at that process.
        let lock_path = std::path::PathBuf::from("/x/s.json.lock");
        let busy = |holder| filesem::Error::LockBusy {
            path: "/x/s.json".into(),
            lock_path: lock_path.clone(),
            waited: std::time::Duration::from_millis(1_004),
            holder,
        };
        let fail = Fail::from(busy(Some(4242)));
        assert_eq!(fail.exit, Exit::NoSlot);
        assert!(fail.is_no_slot());
        assert_eq!(
            fail.report(),
            "filesem: no slot: the state lock `/x/s.json.lock` was busy for 1.0 s (held by pid \
             4242)\nfilesem: hint: pid 4242 is stopped or hung inside its critical section; see \
             what it is doing with `ps -o pid,stat,etime,args -p 4242`"
        );
        let fail = Fail::from(busy(None));
        assert_eq!(
            fail.report(),
            "filesem: no slot: the state lock `/x/s.json.lock` was busy for 1.0 s\nfilesem: \
             hint: a process is stopped or hung inside its critical section; find it with \
             `fuser` or `lsof` on the lock file"
        );
        let fail = Fail::from(filesem::Error::LockTimeout {
            path: "/x/s.json".into(),
            lock_path,
            waited: std::time::Duration::from_secs(10),
            holder: Some(4242),
        });
        assert_eq!(fail.exit, Exit::Failure);
        assert!(!fail.is_no_slot());
        let report = fail.report();
        assert_eq!(
            report.lines().next().unwrap(),
            "filesem: timed out after 10 s waiting for the lock file `/x/s.json.lock` (held by \
             pid 4242)"
        );
        assert!(
            report.ends_with("`ps -o pid,stat,etime,args -p 4242`"),
            "{report}"
        );
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_contention_is_no_slot_a_bad_url_usage_and_a_server_failure_125_with_a_hint() {
        // Scripts tell "busy, try later" (1 or -E) from "fix the arguments" (2) and
        // "filesem failed" (125), on Redis as on files; each failure's hint names a command,
        // never with the password.
        let path = std::path::PathBuf::from("redis://:***@cache:6390/0/jobs");
        let contended = Fail::from(filesem::Error::Contended {
            path: path.clone(),
            attempts: 40,
            waited: std::time::Duration::from_secs(10),
        });
        assert_eq!(contended.exit, Exit::NoSlot);
        assert!(
            contended
                .hint
                .as_deref()
                .unwrap()
                .contains("`filesem status redis://cache:6390/0/jobs`"),
            "{contended:?}"
        );
        let invalid = Fail::from(filesem::Error::InvalidLocation {
            path: "redis://".into(),
            reason: "the host is missing".into(),
        });
        assert_eq!(invalid.exit, Exit::Usage);
        let timeout = Fail::from(filesem::Error::RedisTimeout {
            path: path.clone(),
            during: "committing a change",
            timeout: std::time::Duration::from_secs(2),
            outcome_unknown: true,
        });
        assert_eq!(timeout.exit, Exit::Failure);
        let hint = timeout.hint.unwrap();
        assert!(hint.contains("`redis-cli -h cache -p 6390 ping`"), "{hint}");
        assert!(hint.contains("--response-timeout"), "{hint}");
        assert!(hint.contains("may have been made"), "{hint}");
        assert!(hint.contains("REDISCLI_AUTH"), "{hint}");
        let replicas = Fail::from(filesem::Error::NotReplicated {
            path,
            wanted: 2,
            acked: 0,
            timeout: std::time::Duration::from_secs(1),
        });
        assert_eq!(replicas.exit, Exit::Failure);
        assert!(
            replicas.hint.unwrap().contains("info replication"),
            "names the check"
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
    fn an_os_cause_already_in_the_message_is_printed_once() {
        // The library's I/O message ends with its OS error, which is also its source: shown
        // once. A cause the message does not hold is still shown.
        let io = || filesem::Error::Io {
            path: "/x/s.json".into(),
            file: "/x/s.json.lock".into(),
            action: "open lock file",
            source: std::io::Error::from_raw_os_error(13),
        };
        let expected = "filesem: failed to open lock file `/x/s.json.lock` of semaphore \
                        `/x/s.json`: Permission denied (os error 13)";
        assert_eq!(Fail::from(io()).report(), expected);
        assert_eq!(Fail::from_ref(&io()).report(), expected);

        #[derive(Debug)]
        struct Chain(&'static str, Option<std::io::Error>);
        impl std::fmt::Display for Chain {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl StdError for Chain {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                self.1.as_ref().map(|e| e as &(dyn StdError + 'static))
            }
        }
        let fail = |text| Fail {
            exit: Exit::Failure,
            error: Box::new(Chain(text, Some(std::io::Error::from_raw_os_error(2)))),
            hint: None,
        };
        assert_eq!(
            fail("failed to read `/x`").report(),
            "filesem: failed to read `/x`: No such file or directory (os error 2)"
        );
        assert_eq!(
            fail("failed to read `/x`: No such file or directory (os error 2)").report(),
            "filesem: failed to read `/x`: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn the_recover_hint_quotes_the_path_and_is_given_for_every_corrupt_file() {
        // A hint must name a command that works: pasted as shown. The library reports a
        // corrupt file only for a regular file that recover can set aside; a FIFO or an
        // exhausted counter have variants of their own, whose hints never name recover.
        let path = std::path::PathBuf::from("/x/my sem's.json");
        let fail = Fail::from(filesem::Error::Corrupt {
            path: path.clone(),
            reason: "expected value at line 1 column 2".into(),
        });
        assert_eq!(fail.exit, Exit::Failure);
        let expected = format!(
            "stop every holder, then start afresh with `filesem recover {} -c CAPACITY` (the \
             bad file is kept aside)",
            shell_quote(&path)
        );
        assert_eq!(fail.hint.as_deref(), Some(expected.as_str()));
        assert!(expected.contains("'\\''"), "quoted: {expected}");
        let invocation = Invocation::new(["run", "/x/s.json", "true"]);
        let others = [
            filesem::Error::TokensExhausted {
                path: "/x/s.json".into(),
            },
            filesem::Error::Untrusted {
                path: "/x/s.json".into(),
                object: "/x/s.json".into(),
                kind: UntrustedKind::WrongType,
                problem: "it is a FIFO, not a regular file".into(),
                owner: Some(0),
            },
        ];
        for error in others {
            let fail = Fail::from_error(error, &invocation);
            let hint = fail.hint.expect("a hint");
            assert!(!hint.contains("filesem recover"), "{hint}");
        }
    }

    /// The text between the first two backquotes of `hint`: its command.
    fn command_of(hint: &str) -> &str {
        hint.split('`').nth(1).expect("a command in backquotes")
    }

    #[test]
    fn an_untrusted_owner_is_named_with_the_command_that_trusts_it() {
        // Exit 125; the message names the object and the problem; the hint is the user's
        // own command with --trust-owner, the CLI's way to `OpenOptions::trust_owner`.
        let error = filesem::Error::Untrusted {
            path: "/tmp/s.json".into(),
            object: "/tmp/s.json.lock".into(),
            kind: UntrustedKind::Owner,
            problem: "it is owned by uid 61399, who is not trusted in `/tmp`: in a \
                      world-writable or sticky directory only the caller, root and the \
                      directory's owner are trusted"
                .into(),
            owner: Some(61399),
        };
        let invocation = Invocation::new(["run", "-n", "/tmp/s.json", "make"]);
        let fail = Fail::from_error(error, &invocation);
        assert_eq!(fail.exit, Exit::Failure);
        let report = fail.report();
        let first = report.lines().next().unwrap();
        assert_eq!(
            first,
            "filesem: refusing to use `/tmp/s.json.lock` of semaphore `/tmp/s.json`: it is \
             owned by uid 61399, who is not trusted in `/tmp`: in a world-writable or sticky \
             directory only the caller, root and the directory's owner are trusted"
        );
        let hint = fail.hint.as_deref().unwrap();
        assert_eq!(
            command_of(hint),
            "filesem run --trust-owner 61399 -n /tmp/s.json make"
        );
        assert!(
            hint.starts_with("if uid 61399 shares this semaphore"),
            "{hint}"
        );
    }

    #[test]
    fn an_object_of_the_wrong_type_is_shown_with_its_owner_and_never_trusted() {
        // Trusting cannot make a symlink usable: the hint shows what is there instead.
        let error = filesem::Error::Untrusted {
            path: "/tmp/s.json".into(),
            object: "/tmp/s.json.witness".into(),
            kind: UntrustedKind::WrongType,
            problem: "it is a symbolic link, not a directory".into(),
            owner: Some(0),
        };
        let fail = Fail::from_error(error, &Invocation::new(["reap", "/tmp/s.json"]));
        assert_eq!(fail.exit, Exit::Failure);
        let report = fail.report();
        assert_eq!(
            report.lines().next().unwrap(),
            "filesem: refusing to use `/tmp/s.json.witness` of semaphore `/tmp/s.json`: it is \
             a symbolic link, not a directory (owned by uid 0 (root))"
        );
        let hint = fail.hint.as_deref().unwrap();
        assert_eq!(command_of(hint), "ls -ld -- /tmp/s.json.witness");
        assert!(!hint.contains("--trust-owner"), "{hint}");
    }

    #[test]
    fn a_removed_directory_hints_at_running_again_only_where_that_creates_the_semaphore() {
        // run and acquire open the path anew and create what is missing; release and the
        // others would find nothing, so they get no command.
        let gone = || filesem::Error::DirectoryGone {
            path: "/d/s.json".into(),
        };
        let acquire = Invocation::new(["acquire", "/d/s.json", "--id", "b"]);
        let fail = Fail::from_error(gone(), &acquire);
        assert_eq!(fail.exit, Exit::Failure);
        assert!(
            fail.report()
                .starts_with("filesem: the directory of semaphore `/d/s.json` was removed"),
            "{}",
            fail.report()
        );
        assert_eq!(
            command_of(fail.hint.as_deref().unwrap()),
            "filesem acquire /d/s.json --id b"
        );
        let release = Invocation::new(["release", "/d/s.json", "b"]);
        assert_eq!(Fail::from_error(gone(), &release).hint, None);
    }

    #[test]
    fn an_exhausted_counter_hints_at_the_same_command_on_a_new_path() {
        // Tokens only grow: the way out is another semaphore (with the capacity of the old
        // one, read from the file), never recover.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let doc = format!(
            r#"{{"capacity": 3, "next_token": {}, "holders": []}}"#,
            filesem::MAX_TOKEN + 1
        );
        std::fs::write(&path, doc).unwrap();
        let invocation = Invocation::new([
            std::ffi::OsStr::new("run"),
            path.as_os_str(),
            std::ffi::OsStr::new("true"),
        ]);
        let fail = Fail::from_error(
            filesem::Error::TokensExhausted { path: path.clone() },
            &invocation,
        );
        assert_eq!(fail.exit, Exit::Failure);
        let hint = fail.hint.as_deref().unwrap();
        let new = dir.path().join("s-2.json");
        assert_eq!(
            command_of(hint),
            format!("filesem run -c 3 {} true", shell_quote(&new))
        );
        assert!(hint.contains("recovering this file cannot help"), "{hint}");
        assert!(!hint.contains("filesem recover"), "{hint}");
    }
}
