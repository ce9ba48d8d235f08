//! Builders for settings: [`OpenOptions`] per semaphore handle, [`AcquireOptions`] per acquire.
//! Later features add fields here, not new methods on [`Semaphore`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::cancel::CancelToken;
use crate::core::queue::{Request, WaitStatus};
use crate::error::{Error, Result};
use crate::semaphore::Semaphore;

/// The mode of a newly created state file when [`OpenOptions::mode`] is not set: the Go
/// package's 0644.
pub(crate) const DEFAULT_MODE: u32 = 0o644;

/// The default for [`OpenOptions::lock_timeout`]: 10 seconds.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// The shortest lease an acquire accepts: 1 second. Shorter ones are refused with
/// [`Error::InvalidLease`].
///
/// A lease is kept by renewing it ([`Permit::keep_alive`](crate::Permit::keep_alive) renews at a
/// third of its length), and every renewal rewrites and `fsync`s the state file under the lock
/// that every other user of the semaphore needs too. A zero or millisecond lease turned that into
/// a flood: `filesem run --lease 0` rewrote the file about 750 times a second and made every other
/// process's operations on the semaphore about 20 times slower. With 1 s, renewals come at most
/// about three times a second per hold. A hold is also only reaped [`LEASE_GRACE`](crate::LEASE_GRACE)
/// (2 s) after its lease ends, so a shorter lease would not free a slot much sooner.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// Refuses a lease shorter than [`MIN_LEASE`] for the semaphore at `path`.
pub(crate) fn check_lease(path: &Path, lease: Option<Duration>) -> Result<()> {
    match lease {
        Some(lease) if lease < MIN_LEASE => Err(Error::InvalidLease {
            path: path.to_path_buf(),
            lease,
            min: MIN_LEASE,
        }),
        _ => Ok(()),
    }
}

/// The default for [`OpenOptions::connect_timeout`] (Redis semaphores): 2 seconds.
#[cfg(feature = "redis")]
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The default for [`OpenOptions::response_timeout`] (Redis semaphores): 2 seconds.
#[cfg(feature = "redis")]
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The lease of a hold (or waiter's grant) on a Redis semaphore when neither
/// [`AcquireOptions::lease`] nor [`OpenOptions::default_lease`] gives one: 30 seconds.
#[cfg(feature = "redis")]
pub const DEFAULT_REDIS_LEASE: Duration = Duration::from_secs(30);

/// The longest Redis timeout used: a day. Longer ones (up to [`Duration::MAX`]) are taken
/// as this, so that no wait on the server is without end.
#[cfg(feature = "redis")]
pub(crate) const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(86_400);

/// The most metadata an acquire may attach, in bytes of keys plus values.
pub const MAX_METADATA_BYTES: usize = 4096;

/// Settings for opening a [`Semaphore`].
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// use std::time::Duration;
/// let sem = filesem::OpenOptions::new()
///     .durable(false) // a throwaway semaphore on tmpfs
///     .lock_timeout(Duration::from_secs(2))
///     .open(dir.path().join("gpu.json"), 4)?;
/// assert_eq!(sem.capacity()?, 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub(crate) durable: bool,
    pub(crate) mode: u32,
    pub(crate) lock_timeout: Duration,
    pub(crate) auto_reap: bool,
    pub(crate) default_lease: Option<Duration>,
    pub(crate) create_new: bool,
    pub(crate) trusted_owners: Vec<u32>,
    #[cfg(feature = "redis")]
    pub(crate) connect_timeout: Duration,
    #[cfg(feature = "redis")]
    pub(crate) response_timeout: Duration,
    #[cfg(feature = "redis")]
    pub(crate) replicas: Option<(u32, Duration)>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions::new()
    }
}

impl OpenOptions {
    /// The defaults: durable writes, mode 0644 for new files, a 10 s lock timeout, automatic
    /// reaping on, no lease (a Redis semaphore imposes `DEFAULT_REDIS_LEASE`, 30 s); for
    /// Redis, 2 s connect and response timeouts and no replica acknowledgement.
    ///
    /// Every [`Duration`] these options take may be as large as [`Duration::MAX`]: a duration
    /// too large for the clock or the calendar means "no limit" (a lock wait without deadline,
    /// a lease that ends 9999-12-31T23:59:59Z), never a panic or an overflow.
    pub fn new() -> OpenOptions {
        OpenOptions {
            durable: true,
            mode: DEFAULT_MODE,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            auto_reap: true,
            default_lease: None,
            create_new: false,
            trusted_owners: Vec::new(),
            #[cfg(feature = "redis")]
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            #[cfg(feature = "redis")]
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            #[cfg(feature = "redis")]
            replicas: None,
        }
    }

    /// Whether [`open`](OpenOptions::open) must create the semaphore (default `false`): with
    /// `true` it fails with [`Error::AlreadyExists`](crate::Error::AlreadyExists) if the state
    /// file exists, as [`std::fs::OpenOptions::create_new`]. The check and the creation are one
    /// step under the lock, so of several processes racing to create a semaphore exactly one
    /// succeeds. This tells a caller whether it made a new semaphore (the `filesem` tool says
    /// so, since a mistyped path would otherwise silently make a second one). Ignored by
    /// [`open_existing`](OpenOptions::open_existing), which never creates.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("gpu.json");
    /// let mut options = filesem::OpenOptions::new();
    /// options.create_new(true);
    /// let sem = options.open(&path, 4)?;
    /// assert_eq!(sem.capacity()?, 4);
    /// assert!(matches!(options.open(&path, 4), Err(filesem::Error::AlreadyExists { .. })));
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn create_new(&mut self, create_new: bool) -> &mut Self {
        self.create_new = create_new;
        self
    }

    /// Whether acquires remove provably stale entries in their way (default `true`): when the
    /// semaphore is full, or when the ID asked for is held by a dead entry. With `false`, a
    /// dead holder keeps its slot until [`Semaphore::reap`](crate::Semaphore::reap),
    /// [`Semaphore::remove`](crate::Semaphore::remove) or `release` ends it, as in the Go
    /// package; [`Semaphore::available`](crate::Semaphore::available) then counts it as held.
    pub fn auto_reap(&mut self, auto_reap: bool) -> &mut Self {
        self.auto_reap = auto_reap;
        self
    }

    /// A lease for every acquire through this handle that does not set its own
    /// ([`AcquireOptions::lease`]). Default: none; on a Redis semaphore, where every hold
    /// has a lease, `DEFAULT_REDIS_LEASE` (30 s). See [`AcquireOptions::lease`].
    ///
    /// A lease shorter than [`MIN_LEASE`] (1 s) makes [`open`](OpenOptions::open),
    /// [`open_existing`](OpenOptions::open_existing) and [`recover`](OpenOptions::recover)
    /// fail with [`Error::InvalidLease`] before anything is created or written.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// use std::time::Duration;
    /// let mut options = filesem::OpenOptions::new();
    /// options.default_lease(Some(Duration::from_millis(500)));
    /// let err = options.open(dir.path().join("s.json"), 1).unwrap_err();
    /// assert!(matches!(err, filesem::Error::InvalidLease { .. }));
    /// assert!(!dir.path().join("s.json").exists());
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn default_lease(&mut self, lease: Option<Duration>) -> &mut Self {
        self.default_lease = lease;
        self
    }

    /// Whether every write is flushed to disk before the operation returns (default `true`):
    /// `fsync` of the new state file before the `rename` and of the directory after it. Turn
    /// it off only for throwaway semaphores (tmpfs, tests): without it, a power loss may lose
    /// the last writes (never truncate the file: the rename stays atomic).
    ///
    /// The directory's `fsync` needs read permission on it: in a directory this user may
    /// search but not read, durable changes fail before they change anything
    /// ([`Error::CannotSyncDirectory`]), and `durable(false)` is the way to use it. The
    /// rename commits the change: if the directory's `fsync` fails after it, the operation
    /// still succeeds (every process already sees the change, so an error would contradict
    /// the file), with a `tracing` warning that the change may not survive a power loss.
    ///
    /// Ignored by Redis semaphores: how the server keeps its data (`appendonly`,
    /// `appendfsync`) is the server's setting.
    pub fn durable(&mut self, durable: bool) -> &mut Self {
        self.durable = durable;
        self
    }

    /// The permission bits of a newly created state file (default `0o644`, as the Go
    /// package), from which the modes of every other file filesem creates are derived. Each
    /// file gets exactly its mode, whatever the process umask:
    ///
    /// | file | mode | from 0o644 | from 0o664 |
    /// | --- | --- | --- | --- |
    /// | state file `PATH` (and its temp files) | `mode`, without set-id and sticky bits | 0644 | 0664 |
    /// | lock file `PATH.lock`, witness files `PATH.witness/N` | read and write for each class (user, group, other) that may write the state, nothing for the others | 0600 | 0660 |
    /// | witness directory `PATH.witness` | the witness files' bits, plus search for each class that may read the state, plus set-group-ID if its parent has it | 0711 | 0771 (02771 in a setgid directory) |
    ///
    /// So users who may only read the state can query it (queries take no lock) but cannot
    /// open the lock file or a witness file, and so cannot stall writers or keep a dead
    /// holder "alive" by flocking them.
    ///
    /// An existing state file keeps its own mode (without set-id and sticky bits) and, when
    /// we run as root, its owner and group across rewrites; the lock file and witness files
    /// created later derive from that mode. A lock file that grants more than its derived
    /// mode and that this user owns (those of older versions and of the Go package are
    /// 0644) is tightened to it by every operation that takes the lock (queries take none);
    /// permissions are never added to an existing file, and files of other users are never
    /// changed.
    ///
    /// To share a semaphore between the users of a group, use `0o664` in a directory owned
    /// by that group with mode 2775 (group-writable, set-group-ID, not sticky); see "Trust
    /// model" in the crate docs.
    ///
    /// Ignored by Redis semaphores (there are no files).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode & 0o7777;
        self
    }

    /// Trusts files owned by `uid` in world-writable or sticky directories (repeatable).
    ///
    /// In a directory such as `/tmp` (mode 1777), anyone can plant a file or directory where a
    /// semaphore's files go. There filesem uses only files owned by the caller (effective
    /// uid), by root, or by the directory's owner, and refuses others with
    /// [`Error::Untrusted`](crate::Error::Untrusted) before changing anything; this adds
    /// `uid` to those owners, for a semaphore shared on purpose with that user. In a directory
    /// that is neither world-writable nor sticky every owner is trusted anyway: whoever can
    /// write there can replace any file. See "Trust model" in the crate docs.
    ///
    /// Ignored by Redis semaphores (there are no files; the server's ACLs decide who may
    /// change the key).
    ///
    /// ```
    /// let mut options = filesem::OpenOptions::new();
    /// options.trust_owner(1001).trust_owner(1002);
    /// ```
    pub fn trust_owner(&mut self, uid: u32) -> &mut Self {
        if !self.trusted_owners.contains(&uid) {
            self.trusted_owners.push(uid);
        }
        self
    }

    /// The longest time one locked step waits for the lock file `PATH.lock` (default 10 s),
    /// in operations that have no deadline of their own. Every operation holds that lock only
    /// for one read-modify-write, so a long wait means a process is stopped or hung inside
    /// one; the operation then fails with [`Error::LockTimeout`](crate::Error::LockTimeout)
    /// (naming that process where the kernel tells). [`Duration::ZERO`] makes one attempt; a
    /// duration too large for the clock (such as [`Duration::MAX`]) waits without limit.
    ///
    /// The wait counts from the start of each step, and includes waiting behind other threads
    /// sharing the handle. It applies to every operation except an acquire given a
    /// [`timeout`](AcquireOptions::timeout): such a call has told how long it may take, so its
    /// lock waits end at its deadline instead (sooner or later than the lock timeout) with
    /// [`Error::LockBusy`](crate::Error::LockBusy). Acquires without a timeout use the lock
    /// timeout for each of their lock waits, and so do release, `remove`, `reap`,
    /// `set_capacity`, `renew`, the keep-alive and the other operations.
    ///
    /// On a Redis semaphore there is no lock: a change is a compare-and-swap that is tried
    /// again when another writer changed the key first. This is how long such a change keeps
    /// trying, in operations without a deadline of their own, before it fails with
    /// `Error::Contended` (an acquire given a timeout tries until its deadline). Each attempt
    /// is bounded by the Redis connect and response timeouts
    /// (`OpenOptions::connect_timeout`, `response_timeout`), so a call may end up to those
    /// later.
    pub fn lock_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.lock_timeout = timeout;
        self
    }

    /// How long opening a connection to a Redis server (TCP connect, `AUTH`, `SELECT`) may
    /// take (default [`DEFAULT_CONNECT_TIMEOUT`], 2 s); then the operation fails with
    /// [`Error::RedisTimeout`](crate::Error::RedisTimeout). Durations above a day are taken
    /// as a day, and below a millisecond as a millisecond. The name lookup of the host is not
    /// bounded by it (use an address, or a resolver that answers). Ignored by file
    /// semaphores.
    #[cfg(feature = "redis")]
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a Redis server may take to answer one command (default
    /// [`DEFAULT_RESPONSE_TIMEOUT`], 2 s); then the operation fails with
    /// [`Error::RedisTimeout`](crate::Error::RedisTimeout) instead of hanging on a stopped,
    /// overloaded or partitioned server. Every operation sends a few commands (a step: one
    /// read, one compare-and-swap, more after a lost race), each bounded by this. Durations
    /// above a day are taken as a day, and below a millisecond as a millisecond. Ignored by
    /// file semaphores.
    #[cfg(feature = "redis")]
    pub fn response_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.response_timeout = timeout;
        self
    }

    /// After each change to a Redis semaphore, waits (Redis `WAIT`) until `replicas` replicas
    /// have it, at most `timeout` (at least 1 ms). Default: off (`replicas` = 0 turns it
    /// off).
    ///
    /// Redis replicates asynchronously: a change the primary has answered can be lost if the
    /// primary fails before a replica has it, and a replica promoted then runs with the older
    /// state: a slot granted twice, a fencing token handed out twice. With this setting, an
    /// acquire whose grant fewer replicas acknowledged releases it again (best effort) and
    /// fails with [`Error::NotReplicated`](crate::Error::NotReplicated); every other operation
    /// reports that error too, though its change stays on the primary. It narrows the
    /// window, it does not close it: this is not a consensus protocol, and a failover can
    /// still lose a change that fewer replicas had. Ignored by file semaphores.
    #[cfg(feature = "redis")]
    pub fn replica_ack(&mut self, replicas: u32, timeout: Duration) -> &mut Self {
        self.replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Opens (creating if absent) the semaphore at `path` with these settings. See
    /// [`Semaphore::open`].
    ///
    /// # Errors
    ///
    /// As [`Semaphore::open`]; [`Error::AlreadyExists`](crate::Error::AlreadyExists) with
    /// [`create_new`](OpenOptions::create_new); [`Error::InvalidLease`] for a
    /// [`default_lease`](OpenOptions::default_lease) under [`MIN_LEASE`].
    pub fn open(&self, path: impl AsRef<Path>, capacity: u32) -> Result<Semaphore> {
        Semaphore::open_with(path.as_ref(), Some(capacity), self)
    }

    /// Opens an existing semaphore with these settings. See [`Semaphore::open_existing`].
    ///
    /// # Errors
    ///
    /// As [`Semaphore::open_existing`]; [`Error::InvalidLease`] for a
    /// [`default_lease`](OpenOptions::default_lease) under [`MIN_LEASE`].
    pub fn open_existing(&self, path: impl AsRef<Path>) -> Result<Semaphore> {
        Semaphore::open_with(path.as_ref(), None, self)
    }
}

/// Settings for one acquire: metadata for every acquire, and how to wait for
/// [`Semaphore::acquire_with`].
///
/// [`Semaphore::try_acquire_with`] never waits for a slot: it uses the metadata, and its
/// [`timeout`](AcquireOptions::timeout) bounds its wait for the lock file; it ignores the
/// other waiting settings ([`priority`](AcquireOptions::priority),
/// [`cancel_token`](AcquireOptions::cancel_token), [`on_wait`](AcquireOptions::on_wait)).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let sem = filesem::Semaphore::open(dir.path().join("gpu.json"), 2)?;
/// let opts = filesem::AcquireOptions::new().metadata("job", "train-42");
/// let permit = sem.try_acquire_with("worker-1", &opts)?;
/// let holders = sem.holders()?;
/// assert_eq!(holders[0].metadata["job"], "train-42");
/// # drop(permit);
/// # Ok::<(), filesem::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct AcquireOptions {
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) priority: i32,
    pub(crate) cancel: Option<CancelToken>,
    pub(crate) on_wait: Option<Arc<OnWait>>,
    pub(crate) detached: bool,
    pub(crate) lease: Option<Duration>,
}

/// The callback type of [`AcquireOptions::on_wait`].
type OnWait = dyn Fn(&WaitStatus) + Send + Sync;

impl fmt::Debug for AcquireOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquireOptions")
            .field("metadata", &self.metadata)
            .field("detached", &self.detached)
            .field("lease", &self.lease)
            .field("timeout", &self.timeout)
            .field("priority", &self.priority)
            .field("cancel", &self.cancel)
            .field("on_wait", &self.on_wait.as_ref().map(|_| "Fn(&WaitStatus)"))
            .finish()
    }
}

impl AcquireOptions {
    /// The defaults: a process-bound hold, no lease (unless the handle has a
    /// [default lease](OpenOptions::default_lease)), no metadata; when waiting: no time
    /// limit, priority 0, no cancel token, no callback.
    pub fn new() -> AcquireOptions {
        AcquireOptions::default()
    }

    /// Takes a *detached* hold (default `false`): it outlives this process and its
    /// [`Permit`](crate::Permit) is not released on drop, like [`Permit::keep`](crate::Permit::keep).
    /// It ends by [`Semaphore::release`](crate::Semaphore::release),
    /// [`Semaphore::remove`](crate::Semaphore::remove) or its lease expiring. A process-bound
    /// hold (the default) is released on drop and reaped once its process is provably dead.
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }

    /// Gives the hold a lease of `lease`: the entry records `expires_at = now + lease` and is
    /// stale once that instant (plus a 2 s grace for clock skew,
    /// [`LEASE_GRACE`](crate::LEASE_GRACE)) has passed, whoever wrote it and wherever it runs.
    /// [`Permit::renew`](crate::Permit::renew) extends it;
    /// [`Permit::keep_alive`](crate::Permit::keep_alive) renews in the background. Leases are
    /// the only way a hold from another machine, or a detached one, ends by itself.
    ///
    /// The file records the length in whole milliseconds (`lease_ms`). A lease shorter than
    /// [`MIN_LEASE`] (1 s) is refused by the acquire with [`Error::InvalidLease`], before
    /// anything is written. A lease too long for the calendar (up to [`Duration::MAX`]) ends
    /// 9999-12-31T23:59:59Z, the last instant RFC 3339 writes with four digits: in practice,
    /// never.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Attaches a key-value pair, shown by [`Semaphore::holders`] (for example a job name or
    /// a user). Keys and values together may take at most [`MAX_METADATA_BYTES`] bytes;
    /// more is refused by the acquire with [`Error::InvalidMetadata`](crate::Error::InvalidMetadata).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The longest time the whole acquire may take, measured on the monotonic clock from the
    /// call: waiting for a slot and every wait for the lock file `PATH.lock` (and for other
    /// threads sharing the handle). Default: no limit.
    ///
    /// The call returns by this deadline plus a few milliseconds, whoever holds the lock:
    ///
    /// - [`Error::Timeout`](crate::Error::Timeout) when no slot came in time. The call left
    ///   the queue, or, if the lock was busy at that moment (a process stopped inside its
    ///   critical section), it unlocked its queue entry's witness so that the entry is judged
    ///   dead and removed by the next process that looks (a slot handed to it meanwhile is
    ///   reaped and handed on, never leaked). A slot handed over just before the deadline is
    ///   returned as the permit.
    /// - [`Error::LockBusy`](crate::Error::LockBusy) when the deadline passed while another
    ///   process held the lock file: each lock wait of the call ends at the deadline, not at
    ///   the [lock timeout](crate::OpenOptions::lock_timeout), whether that comes sooner or
    ///   later (with a 30 s timeout and the lock busy for 12 s, the call waits the 12 s).
    ///
    /// On Redis there is no lock file; the deadline bounds the compare-and-swap retries of
    /// the call's steps instead, except for leaving the queue at the deadline: that step
    /// retries lost races for up to the lock timeout, because an entry left behind there has
    /// no witness to mark it dead and would keep its place (or a slot handed to it) until its
    /// lease ends. Under heavy contention the call can then return later past its deadline:
    /// a few milliseconds typically, at most the lock timeout (a 1 s limit left entries
    /// behind in a test of 80 threads timing out on one key of a loaded machine).
    ///
    /// [`Semaphore::try_acquire_with`] never waits for a slot; there the timeout bounds only
    /// its wait for the lock file.
    ///
    /// [`Duration::ZERO`] makes exactly one attempt and leaves no queue entry behind (like
    /// [`Semaphore::try_acquire`], but failing with `Timeout`); a busy lock is tried for a few
    /// milliseconds, then reported with `LockBusy`. A duration too large to add to the
    /// current [`Instant`](std::time::Instant) (such as [`Duration::MAX`]) means no limit:
    /// each lock wait then ends at the lock timeout, as without a timeout. Signals arriving
    /// during the wait neither fail it nor restart the time.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The queue priority of a waiting acquire (default 0): a waiter is served before every
    /// waiter of lower priority, and after those of equal priority that queued earlier
    /// (first come, first served). Negative values queue behind the default. Priority only
    /// orders the queue: it never takes a slot from a holder.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Lets another thread cancel the wait: after [`CancelToken::cancel`] the acquire
    /// leaves the queue and fails with [`Error::Cancelled`](crate::Error::Cancelled).
    pub fn cancel_token(mut self, token: &CancelToken) -> Self {
        self.cancel = Some(token.clone());
        self
    }

    /// Calls `callback` once, when the acquire first has to wait (it is then on file in the
    /// queue), with who holds the slots and how many waiters are ahead; for example to print
    /// "waiting for a slot on gpu.json: 3/3 held by a, b, c; 2 ahead in the queue". It runs on
    /// the acquiring thread with no lock held; it is not called when a slot is free at once.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let sem = filesem::Semaphore::open(dir.path().join("gpu.json"), 1)?;
    /// let opts = filesem::AcquireOptions::new()
    ///     .timeout(std::time::Duration::from_millis(10))
    ///     .on_wait(|status| {
    ///         eprintln!(
    ///             "waiting for a slot on {}: {}/{} held by {}; {} ahead in the queue",
    ///             status.path.display(),
    ///             status.holders.len(),
    ///             status.capacity,
    ///             status.holders.join(", "),
    ///             status.ahead,
    ///         )
    ///     });
    /// let _held = sem.try_acquire("a")?;
    /// assert!(sem.acquire_with("b", &opts).is_err());
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn on_wait(mut self, callback: impl Fn(&WaitStatus) + Send + Sync + 'static) -> Self {
        self.on_wait = Some(Arc::new(callback));
        self
    }

    /// What an acquire of `id` with these options asks of the queue steps, with the hold's
    /// `lease` (its own or the handle's default) and whether it `may_wait`; the waiter
    /// expiry is the file store's until the caller sets its store's
    /// (`Semaphore::request`).
    pub(crate) fn request<'a>(
        &'a self,
        id: &'a str,
        lease: Option<Duration>,
        may_wait: bool,
    ) -> Request<'a> {
        Request {
            id,
            metadata: &self.metadata,
            detached: self.detached,
            priority: self.priority,
            lease,
            may_wait,
            waiter_expiry: crate::core::queue::WAITER_EXPIRY,
        }
    }

    pub(crate) fn check_metadata(&self) -> std::result::Result<(), &'static str> {
        let size: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_METADATA_BYTES {
            return Err("metadata is larger than 4096 bytes");
        }
        if self.metadata.keys().any(|k| k.is_empty()) {
            return Err("a metadata key is empty");
        }
        Ok(())
    }
}
