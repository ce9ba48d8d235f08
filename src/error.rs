//! The one error type of this crate.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `filesem`.
///
/// Contention has variants of its own ([`NoCapacity`](Error::NoCapacity),
/// [`AlreadyHeld`](Error::AlreadyHeld), [`Timeout`](Error::Timeout),
/// [`LockBusy`](Error::LockBusy), [`LockTimeout`](Error::LockTimeout)), so callers match on them instead of guessing from an
/// [`io::ErrorKind`]. Every variant names the semaphore's state file (`path`), or for a
/// Redis semaphore its URL without the password; I/O variants also name the file they were
/// working on and carry the OS error as their [`source`](std::error::Error::source). The
/// variants about Redis exist with the `redis` feature.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Every slot is taken (the Go package's `ErrNoCapacity`); returned by
    /// [`Semaphore::try_acquire`](crate::Semaphore::try_acquire), which never waits.
    #[error("semaphore `{path}` has no available capacity ({held} of {capacity} slots held)")]
    NoCapacity {
        /// The state file.
        path: PathBuf,
        /// The capacity read from the file, in holders.
        capacity: u32,
        /// The number of holders on file when the attempt was refused.
        held: usize,
    },

    /// The holder ID already holds a slot, or is already queued for one (the Go package's
    /// `ErrAlreadyHeld`).
    #[error("holder `{id}` already holds semaphore `{path}`")]
    AlreadyHeld {
        /// The state file.
        path: PathBuf,
        /// The holder ID, as given.
        id: String,
    },

    /// The holder ID holds no slot (the Go package's `ErrNotHeld`).
    #[error("holder `{id}` does not hold semaphore `{path}`")]
    NotHeld {
        /// The state file.
        path: PathBuf,
        /// The holder ID, as given.
        id: String,
    },

    /// The file records a different capacity than the one passed to
    /// [`Semaphore::open`](crate::Semaphore::open).
    #[error(
        "semaphore `{path}` has capacity {on_file}, not the {requested} asked for \
         (open it with capacity {on_file}, use `Semaphore::open_existing`, \
         or change it with `Semaphore::set_capacity`)"
    )]
    CapacityMismatch {
        /// The state file.
        path: PathBuf,
        /// The capacity passed to `open`, in holders.
        requested: u32,
        /// The capacity recorded in the file, in holders.
        on_file: u32,
    },

    /// A capacity outside `1..=`[`MAX_CAPACITY`](crate::MAX_CAPACITY) was asked for.
    #[error("invalid capacity {capacity} for semaphore `{path}`: must be 1 to {max}")]
    InvalidCapacity {
        /// The state file.
        path: PathBuf,
        /// The capacity asked for.
        capacity: u64,
        /// The largest capacity allowed ([`MAX_CAPACITY`](crate::MAX_CAPACITY)).
        max: u32,
    },

    /// A holder ID given to an acquire is empty, too long or contains control characters.
    #[error("invalid holder ID {id:?} for semaphore `{path}`: {reason}")]
    InvalidId {
        /// The state file.
        path: PathBuf,
        /// The rejected ID.
        id: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The metadata given to an acquire is too large or has an empty key.
    #[error("invalid metadata for semaphore `{path}`: {reason}")]
    InvalidMetadata {
        /// The state file.
        path: PathBuf,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A lease shorter than [`MIN_LEASE`](crate::MIN_LEASE) was asked for, by
    /// [`AcquireOptions::lease`](crate::AcquireOptions::lease) or
    /// [`OpenOptions::default_lease`](crate::OpenOptions::default_lease). Renewing such a lease
    /// would rewrite the state file many times a second and slow every user of the
    /// semaphore. Nothing was changed.
    #[error(
        "invalid lease of {} for semaphore `{path}`: a lease must be at least {}",
        exact(*.lease),
        exact(*.min)
    )]
    InvalidLease {
        /// The state file.
        path: PathBuf,
        /// The lease asked for.
        lease: Duration,
        /// The shortest lease allowed ([`MIN_LEASE`](crate::MIN_LEASE)).
        min: Duration,
    },

    /// A [`Permit`](crate::Permit)'s entry is no longer on file: it was reaped, removed by
    /// [`Semaphore::remove`](crate::Semaphore::remove) or released by ID, or the file was
    /// recovered. The slot may already belong to someone else; nothing was changed.
    #[error("the hold of `{id}` (token {token}) on semaphore `{path}` was lost")]
    Lost {
        /// The state file.
        path: PathBuf,
        /// The permit's holder ID.
        id: String,
        /// The permit's fencing token.
        token: u64,
    },

    /// A [`Permit`](crate::Permit) was used to release or keep its hold from a forked child
    /// process: the hold belongs to the process that acquired it (`pid`), which may still be
    /// using the resource. Nothing was changed.
    #[error(
        "the hold of `{id}` (token {token}) on semaphore `{path}` belongs to process {pid}, not to this forked child"
    )]
    NotOwner {
        /// The state file.
        path: PathBuf,
        /// The permit's holder ID.
        id: String,
        /// The permit's fencing token.
        token: u64,
        /// The process that acquired the permit.
        pid: u32,
    },

    /// The state file exists but is not a valid semaphore document. Nothing was changed;
    /// see [`Semaphore::recover`](crate::Semaphore::recover).
    #[error("semaphore state at `{path}` is corrupt: {reason}")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The path is the lock file of another semaphore (`X.lock` beside an existing state file
    /// `X`). Using it as a state file, above all recovering it, would break `X`'s exclusion;
    /// nothing was changed.
    #[error(
        "`{path}` is the lock file of semaphore `{semaphore}`; use the state file `{semaphore}` instead"
    )]
    IsLockFile {
        /// The path given.
        path: PathBuf,
        /// The semaphore whose lock file it is.
        semaphore: PathBuf,
    },

    /// There is no semaphore at this path (and the operation does not create one).
    #[error("no semaphore at `{path}`")]
    NotFound {
        /// The state file that does not exist.
        path: PathBuf,
    },

    /// The semaphore exists already, and [`OpenOptions::create_new`](crate::OpenOptions::create_new)
    /// asked for a new one. Nothing was changed.
    #[error("semaphore `{path}` already exists")]
    AlreadyExists {
        /// The state file.
        path: PathBuf,
    },

    /// The state file is a symbolic link; `filesem` refuses to replace a link with a file, and
    /// a lock on the link's name would not exclude programs that follow it.
    #[error("semaphore path `{path}` is a symbolic link; open its target instead")]
    Symlink {
        /// The state file.
        path: PathBuf,
    },

    /// The lock file stayed locked by another process for longer than the lock timeout
    /// ([`OpenOptions::lock_timeout`](crate::OpenOptions::lock_timeout)). A process stopped
    /// (or hung) inside its short critical section is the usual cause: an anomaly, not
    /// ordinary contention.
    ///
    /// Only operations without a deadline of their own fail with this: an acquire given a
    /// [`timeout`](crate::AcquireOptions::timeout) waits for the lock until its deadline and
    /// then fails with [`LockBusy`](Error::LockBusy) instead.
    #[error(
        "timed out after {} waiting for the lock file `{lock_path}`{}",
        seconds(*.waited),
        held_by(*.holder)
    )]
    LockTimeout {
        /// The state file.
        path: PathBuf,
        /// The lock file (`PATH.lock`).
        lock_path: PathBuf,
        /// How long the call waited for the lock.
        waited: Duration,
        /// The process holding the lock when the wait ended, where the kernel tells (Linux:
        /// `/proc/locks`, which lists only processes in the pid namespace of `/proc`); its
        /// pid as that `/proc` shows it. `None` when it cannot be told.
        holder: Option<u32>,
    },

    /// The deadline of an acquire given a [`timeout`](crate::AcquireOptions::timeout)
    /// passed while it was waiting for the lock file `PATH.lock`: another process held the
    /// lock all that time. Nothing was changed and no slot is held.
    ///
    /// This is contention, like [`Timeout`](Error::Timeout): the caller said how long the
    /// call may take, and the lock was busy until then. A lock held for long means a process
    /// is stopped or hung inside its critical section (each operation holds the lock only for
    /// one read-modify-write); `holder` names it where the kernel tells. Operations without a
    /// deadline fail with [`LockTimeout`](Error::LockTimeout) after the lock timeout instead.
    #[error(
        "no slot of semaphore `{path}`: the state lock `{lock_path}` was busy for {}{}",
        seconds(*.waited),
        held_by(*.holder)
    )]
    LockBusy {
        /// The state file.
        path: PathBuf,
        /// The lock file (`PATH.lock`).
        lock_path: PathBuf,
        /// How long the call waited for the lock before its deadline passed (the last wait:
        /// an acquire that was queued waited for a slot before).
        waited: Duration,
        /// The process holding the lock when the wait ended, as for
        /// [`LockTimeout`](Error::LockTimeout).
        holder: Option<u32>,
    },

    /// No slot became free within the time given to an acquire that waits
    /// ([`Semaphore::acquire_timeout`](crate::Semaphore::acquire_timeout), or
    /// [`AcquireOptions::timeout`](crate::AcquireOptions::timeout)). No slot is held, and the
    /// call's queue entry is gone or on its way out: a blocking call removed it before it
    /// returned (or, if the lock file was busy at that moment, gave up the entry's witness,
    /// so that the entry is judged dead and removed by the next process that looks). An
    /// async call may return while a step of its handle ahead of its own is held up (see
    /// `AsyncSemaphore::acquire_with`, "Deadlines"); its entry is then removed on the
    /// handle's step thread when that step ends, as a dropped acquire future's is, and a
    /// slot handed to the entry until then is released and handed on. On a Redis semaphore
    /// an async `try_acquire_with` whose step could not start by its deadline fails with
    /// this too (it never queued). Distinct from
    /// [`LockTimeout`](Error::LockTimeout) and [`LockBusy`](Error::LockBusy), which are
    /// about the lock file.
    #[error("timed out after {} waiting for a slot of semaphore `{path}`", seconds(*.waited))]
    Timeout {
        /// The state file.
        path: PathBuf,
        /// How long the call waited.
        waited: Duration,
    },

    /// A waiting acquire was cancelled through its
    /// [`CancelToken`](crate::CancelToken). The call left the queue; no slot is held.
    #[error("waiting for a slot of semaphore `{path}` was cancelled")]
    Cancelled {
        /// The state file.
        path: PathBuf,
    },

    /// The directory that holds the semaphore was removed after the semaphore was opened.
    ///
    /// A handle stays bound to the directory it opened (as an open file stays bound to its
    /// inode): renaming the directory or repointing a symlink in the path does not move it,
    /// and once that directory is removed every operation fails with this error. Nothing is
    /// created anywhere, neither in the removed directory nor at the old path. Open the
    /// semaphore again (at its new place) to go on.
    #[error(
        "the directory of semaphore `{path}` was removed after the semaphore was opened; \
         open it again where it now is"
    )]
    DirectoryGone {
        /// The state file, as given to `open`.
        path: PathBuf,
    },

    /// The semaphore's state file was removed after this handle had found it there: its
    /// holds and its queue went with it. A waiting acquire that finds its semaphore removed
    /// ends with this (and holds no slot); a [`Permit`](crate::Permit) reports its hold lost.
    ///
    /// Nothing is created: operations on a handle never create a semaphore, so none appears
    /// in place of a removed one behind the back of the processes that used it. Open the
    /// semaphore again ([`Semaphore::open`](crate::Semaphore::open)) to start a new one. If
    /// the directory was removed too, the error is [`DirectoryGone`](Error::DirectoryGone).
    #[error("semaphore `{path}` was removed while in use: its state file is gone")]
    Removed {
        /// The state file, as given to `open`.
        path: PathBuf,
    },

    /// A [durable](crate::OpenOptions::durable) change needs an `fsync` of the semaphore's
    /// directory, and this user may search that directory but not read it, so it cannot be
    /// opened for that (Linux opens such a directory with `O_PATH`, through which queries
    /// work but `fsync` does not). The change was refused before anything was changed.
    ///
    /// Give the user read permission on the directory, or open the semaphore with
    /// [`OpenOptions::durable(false)`](crate::OpenOptions::durable) if it need not survive
    /// a power loss.
    #[error(
        "cannot make a durable change to semaphore `{path}`: this user may search its \
         directory `{directory}` but not read it, and a durable change needs an fsync of the \
         directory; give read permission on the directory, or open the semaphore with \
         `OpenOptions::durable(false)` (nothing was changed)"
    )]
    CannotSyncDirectory {
        /// The state file.
        path: PathBuf,
        /// The semaphore's directory.
        directory: PathBuf,
    },

    /// The state file is in a newer format (its `version` field) than this crate writes. A
    /// newer format may give fields meanings this version does not know, so this crate
    /// refuses to change such a file: every operation that may write (acquires, releases,
    /// `remove`, `reap`, `set_capacity`, opening with a capacity, a permit's renewal) fails
    /// with this before anything is changed. Queries still read it (they change nothing),
    /// showing the fields this version knows. A newer filesem can change it.
    #[error(
        "semaphore `{path}` is in format version {version}, newer than version {supported} \
         that this filesem writes: it can be queried, but only a newer filesem may change it"
    )]
    UnsupportedVersion {
        /// The state file.
        path: PathBuf,
        /// The `version` on file.
        version: u32,
        /// The newest format version this crate reads and writes.
        supported: u32,
    },

    /// One of the semaphore's files or directories (`object`) is not what filesem creates:
    /// a symbolic link, FIFO, socket or device where a file or directory belongs, a file
    /// where the witness directory belongs, or an object whose owner is not trusted in a
    /// world-writable or sticky directory (see "Trust model" in the crate docs). It was
    /// refused before anything was changed.
    ///
    /// A symbolic link at the state path itself is [`Symlink`](Error::Symlink).
    ///
    /// [`kind`](UntrustedKind) tells the two cases apart: an object of the wrong type can
    /// only be removed (or another semaphore path used), while an object of an untrusted
    /// owner is used once that owner is trusted with
    /// [`OpenOptions::trust_owner`](crate::OpenOptions::trust_owner), which the message then
    /// names.
    #[error(
        "refusing to use `{object}` of semaphore `{path}`: {problem}{}",
        remedy(*.kind, *.owner)
    )]
    Untrusted {
        /// The state file.
        path: PathBuf,
        /// The object refused: `PATH`, `PATH.lock`, a temp file, `PATH.witness` or a file in it.
        object: PathBuf,
        /// Why: the wrong type, or an untrusted owner.
        kind: UntrustedKind,
        /// What is wrong with it, e.g. "it is a symbolic link, not a directory", or "it is
        /// owned by uid 1001, who is not trusted in `/tmp`: ...".
        problem: String,
        /// The object's owner (uid), if it could be looked up.
        owner: Option<u32>,
    },

    /// Every fencing token was handed out: the counter in the state file reached
    /// [`MAX_TOKEN`](crate::MAX_TOKEN) + 1. Tokens only ever grow, so neither this file nor
    /// [`Semaphore::recover`](crate::Semaphore::recover) can grant again; nothing was changed.
    #[error(
        "the fencing-token counter of semaphore `{path}` is exhausted (2^53 - 1 tokens were \
         handed out); tokens must only grow, so recovering this file cannot help: use a new \
         semaphore path"
    )]
    TokensExhausted {
        /// The state file.
        path: PathBuf,
    },

    /// A Redis location given to [`Semaphore::open_redis`](crate::Semaphore::open_redis) (or
    /// another Redis operation) is not `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]/KEY`.
    /// Nothing was contacted.
    #[cfg(feature = "redis")]
    #[error("invalid Redis location `{path}`: {reason}")]
    InvalidLocation {
        /// The input, with anything that may be a password replaced by `***`.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// No connection to the Redis server could be opened within the
    /// [connect timeout](crate::OpenOptions::connect_timeout): refused, no route, unknown
    /// host. Nothing was changed.
    #[cfg(feature = "redis")]
    #[error("cannot connect to Redis for semaphore `{path}`")]
    RedisUnreachable {
        /// The semaphore's location (password redacted).
        path: PathBuf,
        /// The Redis client's error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The Redis server did not answer within the
    /// [response timeout](crate::OpenOptions::response_timeout) (or, while connecting, the
    /// [connect timeout](crate::OpenOptions::connect_timeout)): a stopped, overloaded or
    /// partitioned server.
    ///
    /// With `outcome_unknown`, a change was in flight and may or may not have been made, and
    /// filesem could not find out before the operation's deadline (it reads the state again
    /// to settle such outcomes while it may); an acquire's entry may then be on the server,
    /// held by nobody, until its lease runs out.
    #[cfg(feature = "redis")]
    #[error(
        "Redis did not answer within {} while {during} (semaphore `{path}`){}",
        seconds(*.timeout),
        unknown(*.outcome_unknown)
    )]
    RedisTimeout {
        /// The semaphore's location (password redacted).
        path: PathBuf,
        /// What filesem was doing, e.g. "committing a change".
        during: &'static str,
        /// The timeout that ran out.
        timeout: Duration,
        /// Whether a change may or may not have been made.
        outcome_unknown: bool,
    },

    /// An open connection to the Redis server broke (reset, closed by the server) in the
    /// middle of a command. `outcome_unknown` as for [`RedisTimeout`](Error::RedisTimeout).
    #[cfg(feature = "redis")]
    #[error(
        "the connection to Redis broke while {during} (semaphore `{path}`){}",
        unknown(*.outcome_unknown)
    )]
    RedisDisconnected {
        /// The semaphore's location (password redacted).
        path: PathBuf,
        /// What filesem was doing.
        during: &'static str,
        /// Whether a change may or may not have been made.
        outcome_unknown: bool,
        /// The Redis client's error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The Redis server refused the credentials of the location (wrong password, unknown
    /// user), asked for credentials that were not given (`NOAUTH`), or does not let this user
    /// run a command filesem needs (`NOPERM`). Nothing was changed.
    #[cfg(feature = "redis")]
    #[error("Redis refused the credentials for semaphore `{path}`: {detail}")]
    RedisAuth {
        /// The semaphore's location (password redacted).
        path: PathBuf,
        /// The server's or the client's words (never the password).
        detail: String,
    },

    /// Every attempt of a change to a Redis semaphore lost its compare-and-swap to another
    /// writer until the deadline (the [lock timeout](crate::OpenOptions::lock_timeout), or
    /// the deadline of an acquire given a [timeout](crate::AcquireOptions::timeout)). This is
    /// contention, the Redis store's [`LockBusy`](Error::LockBusy); nothing was changed.
    #[cfg(feature = "redis")]
    #[error(
        "semaphore `{path}` was changed by others during each of {attempts} attempts in {}; \
         nothing was changed",
        seconds(*.waited)
    )]
    Contended {
        /// The semaphore's location (password redacted).
        path: PathBuf,
        /// Attempts made, each a read followed by a lost compare-and-swap.
        attempts: u32,
        /// How long the change was tried.
        waited: Duration,
    },

    /// A change was committed on the Redis primary, but fewer replicas than
    /// [asked for](crate::OpenOptions::replica_ack) acknowledged it in time: it may be lost
    /// if the primary fails before a replica has it. An acquire that gets this has released
    /// its grant again (best effort) and holds nothing; other operations' changes stay on the
    /// primary.
    #[cfg(feature = "redis")]
    #[error(
        "the change to semaphore `{path}` is on the Redis primary, but only {acked} of \
         {wanted} replicas acknowledged it within {}: it may be lost if the primary fails",
        seconds(*.timeout)
    )]
    NotReplicated {
        /// The semaphore's location (password redacted).
        path: PathBuf,
        /// Replicas asked for.
        wanted: u32,
        /// Replicas that acknowledged the change.
        acked: u32,
        /// How long the server waited for them.
        timeout: Duration,
    },

    /// The Redis server answered with an error that has no variant of its own (`READONLY`
    /// on a replica, `LOADING`, out of memory, a script error), an answer of the wrong shape,
    /// or a local resource failed. Nothing was changed unless `message` says otherwise.
    #[cfg(feature = "redis")]
    #[error("Redis failed while {during} (semaphore `{path}`): {message}")]
    Redis {
        /// The semaphore's location (password redacted).
        path: PathBuf,
        /// What filesem was doing.
        during: &'static str,
        /// The server's or the client's words.
        message: String,
        /// The Redis client's error, if there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// A [`Permit`](crate::Permit) of a Redis semaphore went a whole lease without a
    /// successful renewal (measured on this machine's monotonic clock from the moment the
    /// last successful renewal was sent): its entry may be reaped at any moment and its slot
    /// granted to someone else, so the permit counts it as lost and never renews it again.
    /// Releasing the permit still removes the entry if it is there.
    #[cfg(feature = "redis")]
    #[error(
        "the lease of `{id}` (token {token}) on semaphore `{path}` ran out before it could be \
         renewed ({} without a successful renewal); the hold is lost",
        exact(*.lease)
    )]
    LeaseExpired {
        /// The semaphore's location (password redacted).
        path: PathBuf,
        /// The permit's holder ID.
        id: String,
        /// The permit's fencing token.
        token: u64,
        /// The lease length.
        lease: Duration,
    },

    /// An I/O operation on one of the semaphore's files failed. The message ends with the
    /// OS error, which is also the [`source`](std::error::Error::source); it names the
    /// semaphore too unless `file` is the state file itself.
    #[error("failed to {action} `{file}`{}: {source}", of_semaphore(file, path))]
    Io {
        /// The state file.
        path: PathBuf,
        /// The file the operation was working on (state, lock, temp file or directory).
        file: PathBuf,
        /// What was being done, e.g. "read semaphore state at".
        action: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why an object was refused with [`Error::Untrusted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UntrustedKind {
    /// It is not what filesem creates under that name: a symbolic link, FIFO, socket or
    /// device where a file or directory belongs, a directory where a file belongs, or a file
    /// where the witness directory belongs. Trusting its owner would not help; only removing
    /// it (or using another semaphore path) does.
    WrongType,
    /// It is of the right type, but its owner is not trusted in its world-writable or sticky
    /// directory (see "Trust model" in the crate docs). Trusting that owner with
    /// [`OpenOptions::trust_owner`](crate::OpenOptions::trust_owner) lets filesem use it.
    Owner,
}

/// What the message of an [`Error::Untrusted`] adds after the problem: the opt-in for an
/// untrusted owner, nothing for the wrong type.
fn remedy(kind: UntrustedKind, owner: Option<u32>) -> String {
    match (kind, owner) {
        (UntrustedKind::Owner, Some(uid)) => {
            format!(" (remove it, or trust this owner with `OpenOptions::trust_owner({uid})`)")
        }
        _ => String::new(),
    }
}

/// ` of semaphore `PATH`` after a file that is not the state file `path`; nothing after the
/// state file, which names the semaphore already.
fn of_semaphore(file: &std::path::Path, path: &std::path::Path) -> String {
    if file == path {
        String::new()
    } else {
        format!(" of semaphore `{}`", path.display())
    }
}

/// ` (held by pid 4242)` when the lock's holder is known, else nothing.
fn held_by(holder: Option<u32>) -> String {
    holder.map_or_else(String::new, |pid| format!(" (held by pid {pid})"))
}

/// `; the change may or may not have been made` when it may or may not have been.
#[cfg(feature = "redis")]
fn unknown(outcome_unknown: bool) -> &'static str {
    if outcome_unknown {
        "; the change may or may not have been made"
    } else {
        ""
    }
}

/// A wait for messages: `302 ms` below a second, else `1.5 s`.
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// A duration as given, in the largest unit that shows it exactly: `0 s`, `1 ns`, `250 µs`,
/// `999 ms`, `1 s`.
fn exact(d: Duration) -> String {
    let nanos = d.as_nanos();
    match nanos {
        0 => "0 s".to_string(),
        n if n % 1_000_000_000 == 0 => format!("{} s", n / 1_000_000_000),
        n if n % 1_000_000 == 0 => format!("{} ms", n / 1_000_000),
        n if n % 1_000 == 0 => format!("{} µs", n / 1_000),
        n => format!("{n} ns"),
    }
}

impl Error {
    pub(crate) fn io(
        path: &std::path::Path,
        file: &std::path::Path,
        action: &'static str,
        source: io::Error,
    ) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            file: file.to_path_buf(),
            action,
            source,
        }
    }

    /// The semaphore state file this error is about; for a Redis semaphore its location,
    /// `redis://[USER:***@]HOST:PORT/DB/KEY`, never with the password.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Error::NoCapacity { path, .. }
            | Error::AlreadyHeld { path, .. }
            | Error::NotHeld { path, .. }
            | Error::CapacityMismatch { path, .. }
            | Error::InvalidCapacity { path, .. }
            | Error::InvalidId { path, .. }
            | Error::InvalidMetadata { path, .. }
            | Error::InvalidLease { path, .. }
            | Error::Lost { path, .. }
            | Error::NotOwner { path, .. }
            | Error::Corrupt { path, .. }
            | Error::NotFound { path }
            | Error::IsLockFile { path, .. }
            | Error::AlreadyExists { path }
            | Error::Symlink { path }
            | Error::Cancelled { path }
            | Error::LockTimeout { path, .. }
            | Error::LockBusy { path, .. }
            | Error::Timeout { path, .. }
            | Error::DirectoryGone { path }
            | Error::Removed { path }
            | Error::CannotSyncDirectory { path, .. }
            | Error::UnsupportedVersion { path, .. }
            | Error::Untrusted { path, .. }
            | Error::TokensExhausted { path }
            | Error::Io { path, .. } => path,
            #[cfg(feature = "redis")]
            Error::InvalidLocation { path, .. }
            | Error::RedisUnreachable { path, .. }
            | Error::RedisTimeout { path, .. }
            | Error::RedisDisconnected { path, .. }
            | Error::RedisAuth { path, .. }
            | Error::Contended { path, .. }
            | Error::NotReplicated { path, .. }
            | Error::Redis { path, .. }
            | Error::LeaseExpired { path, .. } => path,
        }
    }

    /// `true` for contention: [`NoCapacity`](Error::NoCapacity),
    /// [`Timeout`](Error::Timeout), [`LockBusy`](Error::LockBusy) and
    /// [`LockTimeout`](Error::LockTimeout) (and, for Redis semaphores, `Contended`). Trying
    /// again later may succeed; the other variants need a change first.
    pub fn is_contention(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Error::Contended { .. } = self {
            return true;
        }
        matches!(
            self,
            Error::NoCapacity { .. }
                | Error::Timeout { .. }
                | Error::LockBusy { .. }
                | Error::LockTimeout { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn error_is_send_sync_static() {
        // Errors must cross threads and be boxed as `dyn Error + Send + Sync`.
        assert_send_sync_static::<Error>();
    }

    #[test]
    fn timeouts_read_in_milliseconds_or_seconds() {
        // Messages show waits as people read them, not as Rust's Debug form.
        let e = Error::Timeout {
            path: "/s.json".into(),
            waited: Duration::from_micros(302_211),
        };
        assert_eq!(
            e.to_string(),
            "timed out after 302 ms waiting for a slot of semaphore `/s.json`"
        );
        assert_eq!(seconds(Duration::from_millis(1_501)), "1.5 s");
    }

    #[test]
    fn lock_errors_name_the_lock_file_and_the_holder_where_known() {
        // A busy lock at a deadline reads as "no slot", a lock timeout as a timeout; both say
        // which process held the lock when the kernel told, and nothing when it did not.
        let busy = Error::LockBusy {
            path: "/s.json".into(),
            lock_path: "/s.json.lock".into(),
            waited: Duration::from_millis(1_020),
            holder: Some(4242),
        };
        assert_eq!(
            busy.to_string(),
            "no slot of semaphore `/s.json`: the state lock `/s.json.lock` was busy for 1.0 s \
             (held by pid 4242)"
        );
        assert!(busy.is_contention());
        assert_eq!(busy.path(), std::path::Path::new("/s.json"));
        let timeout = Error::LockTimeout {
            path: "/s.json".into(),
            lock_path: "/s.json.lock".into(),
            waited: Duration::from_secs(10),
            holder: None,
        };
        assert_eq!(
            timeout.to_string(),
            "timed out after 10.0 s waiting for the lock file `/s.json.lock`"
        );
    }

    #[test]
    fn an_invalid_lease_names_both_durations_exactly() {
        // The message shows what was asked and the floor, without rounding 1 ns down to 0.
        let e = Error::InvalidLease {
            path: "/s.json".into(),
            lease: Duration::from_millis(999),
            min: Duration::from_secs(1),
        };
        assert_eq!(
            e.to_string(),
            "invalid lease of 999 ms for semaphore `/s.json`: a lease must be at least 1 s"
        );
        assert_eq!(exact(Duration::ZERO), "0 s");
        assert_eq!(exact(Duration::from_nanos(1)), "1 ns");
        assert_eq!(exact(Duration::from_micros(250)), "250 µs");
        assert_eq!(exact(Duration::from_millis(1500)), "1500 ms");
        assert_eq!(exact(Duration::MAX), "18446744073709551615999999999 ns");
    }

    #[test]
    fn only_an_untrusted_owner_is_told_about_trust_owner() {
        // Trusting the owner is the way in only when the owner is the problem; for an object
        // of the wrong type the message must not suggest it.
        let owner = Error::Untrusted {
            path: "/tmp/s.json".into(),
            object: "/tmp/s.json.lock".into(),
            kind: UntrustedKind::Owner,
            problem: "it is owned by uid 1001, who is not trusted in `/tmp`".into(),
            owner: Some(1001),
        };
        assert_eq!(
            owner.to_string(),
            "refusing to use `/tmp/s.json.lock` of semaphore `/tmp/s.json`: it is owned by \
             uid 1001, who is not trusted in `/tmp` (remove it, or trust this owner with \
             `OpenOptions::trust_owner(1001)`)"
        );
        let wrong_type = Error::Untrusted {
            path: "/tmp/s.json".into(),
            object: "/tmp/s.json.witness".into(),
            kind: UntrustedKind::WrongType,
            problem: "it is a symbolic link, not a directory".into(),
            owner: Some(1001),
        };
        assert_eq!(
            wrong_type.to_string(),
            "refusing to use `/tmp/s.json.witness` of semaphore `/tmp/s.json`: it is a \
             symbolic link, not a directory"
        );
    }

    #[test]
    fn io_error_names_path_and_cause() {
        // The message names our layer, the file and the OS cause, which stays reachable as
        // the source too.
        let e = Error::io(
            std::path::Path::new("/x/s.json"),
            std::path::Path::new("/x/s.json.lock"),
            "open lock file",
            io::Error::from_raw_os_error(13),
        );
        assert_eq!(
            e.to_string(),
            "failed to open lock file `/x/s.json.lock` of semaphore `/x/s.json`: \
             Permission denied (os error 13)"
        );
        let source = std::error::Error::source(&e).expect("source");
        assert!(source.to_string().contains("ermission denied"), "{source}");
        assert_eq!(e.path(), std::path::Path::new("/x/s.json"));
        // The state file is the semaphore: named once.
        let state = Error::io(
            std::path::Path::new("/x/s.json"),
            std::path::Path::new("/x/s.json"),
            "read semaphore state at",
            io::Error::from_raw_os_error(13),
        );
        assert_eq!(
            state.to_string(),
            "failed to read semaphore state at `/x/s.json`: Permission denied (os error 13)"
        );
    }
}
