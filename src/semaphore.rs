//! The [`Semaphore`] handle and its operations.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::core::doc::{self as state, Document, Entry, MAX_CAPACITY, Owner};
use crate::core::queue::{Request, holder_entry};
use crate::core::rules::{self, Ctx, Record, Refusal};
use crate::core::verdict::{Judge, Liveness, verdict};
use crate::error::{Error, Result};
use crate::holder::{HoldMode, Holder, HolderInfo, OwnerInfo};
use crate::options::{AcquireOptions, OpenOptions};
use crate::permit::{Permit, Seen};
use crate::store::file::{FileStore, Settings};
use crate::store::{Committed, LockWait, NewHold, Step, Store, busy_since};

/// A cheap, cloneable handle on one semaphore file (or, with the `redis` feature, one key of a
/// Redis server: see the crate docs, "Redis"); every operation goes through it.
///
/// `Semaphore` is `Send + Sync`: threads may share one handle (or clone it). Each operation is
/// one short critical section under `PATH.lock` (on Redis, one compare-and-swap); no lock is
/// held between operations, and none while waiting for a slot.
#[derive(Clone)]
pub struct Semaphore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub store: Store,
    pub reap: bool,
    pub default_lease: Option<Duration>,
    /// Keeps the handle's auto traits as they have always been: `Send + Sync`, but not
    /// `UnwindSafe`/`RefUnwindSafe` (the handle once held its judge as a trait object). A
    /// store may come to hold state that is not unwind-safe, and promising it now would make
    /// that a breaking change.
    pub not_unwind_safe: PhantomData<dyn Any + Send + Sync>,
}

/// An entry removed by reaping, with the evidence that it was stale. Returned by
/// [`Semaphore::reap`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reaped {
    /// The holder ID.
    pub id: String,
    /// Its fencing token, if it had one (a waiter has none: it gets one when granted).
    pub token: Option<u64>,
    /// Its slot, if it had one.
    pub slot: Option<u32>,
    /// Why it was stale: [`Liveness::Dead`] or [`Liveness::Expired`] with evidence such as
    /// "pid 4242 no longer exists".
    pub liveness: Liveness,
    /// `true` if it was a queued waiter rather than a holder.
    pub waiter: bool,
}

impl From<rules::Removed> for Reaped {
    fn from(r: rules::Removed) -> Reaped {
        Reaped {
            token: if r.was_waiter { None } else { r.entry.token },
            id: r.entry.id,
            slot: r.entry.slot,
            liveness: r.verdict,
            waiter: r.was_waiter,
        }
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Semaphore");
        out.field("path", &self.path());
        self.inner.store.describe(&mut out);
        out.finish()
    }
}

/// What [`Semaphore::recover`] (or `recover_redis`) did.
#[derive(Debug)]
#[non_exhaustive]
pub struct Recovered {
    /// The semaphore, now with a valid state file.
    pub semaphore: Semaphore,
    /// Where the corrupt state file was moved (`PATH.corrupt-<UTC time>`; for a Redis
    /// semaphore the location of `KEY.corrupt-<server time>`, shown like its path); `None`
    /// when the file was valid (nothing was changed) or absent (a new semaphore was created).
    pub moved_to: Option<PathBuf>,
}

impl Semaphore {
    /// Opens the semaphore at `path`, creating it (and its parent directory) with `capacity`
    /// slots if it does not exist.
    ///
    /// As in the Go package, a `capacity` of 0 means 1. `path` is the JSON state file; the lock file
    /// is `PATH.lock` beside it. After opening, the file is the source of truth: every
    /// operation uses the capacity it reads then. Opening also removes temp files left by a
    /// writer that was killed mid-write.
    ///
    /// A new semaphore counts its fencing tokens from 1, unless an earlier semaphore at this
    /// path left its lock file (which is never deleted) or witness directory: then its
    /// counter starts at the clock in microseconds since 1970 and above every witness file's
    /// number, so that its tokens stay above those the earlier one handed out.
    ///
    /// # Errors
    ///
    /// - [`Error::CapacityMismatch`] if the file records another capacity (use
    ///   [`open_existing`](Semaphore::open_existing) to adopt it, or
    ///   [`set_capacity`](Semaphore::set_capacity) to change it);
    /// - [`Error::InvalidCapacity`] for a capacity above [`MAX_CAPACITY`];
    /// - [`Error::Corrupt`] if the state file does not parse (see [`recover`](Semaphore::recover));
    /// - [`Error::Symlink`] if `path` is a symbolic link;
    /// - [`Error::Untrusted`] if the state file, lock file or witness directory is of the
    ///   wrong type (a FIFO, a socket, a symlink, ...) or has an owner that is not trusted in
    ///   a world-writable or sticky directory (see [`OpenOptions::trust_owner`]);
    /// - [`Error::IsLockFile`] if `path` is another semaphore's lock file;
    /// - [`Error::LockTimeout`], [`Error::Io`] for the lock and the file system.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sem = filesem::Semaphore::open(dir.path().join("db-writers.json"), 3)?;
    /// assert_eq!(sem.capacity()?, 3);
    /// assert_eq!(sem.available()?, 3);
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>, capacity: u32) -> Result<Semaphore> {
        OpenOptions::new().open(path, capacity)
    }

    /// Opens an existing semaphore and adopts the capacity stored in it. Creates nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is no state file (or no directory); [`Error::Corrupt`],
    /// [`Error::Symlink`], [`Error::Untrusted`], [`Error::IsLockFile`], [`Error::Io`] as for
    /// [`open`](Semaphore::open).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("gpu.json");
    /// filesem::Semaphore::open(&path, 4)?;
    /// let sem = filesem::Semaphore::open_existing(&path)?;
    /// assert_eq!(sem.capacity()?, 4);
    /// assert!(matches!(
    ///     filesem::Semaphore::open_existing(dir.path().join("nope.json")),
    ///     Err(filesem::Error::NotFound { .. })
    /// ));
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Semaphore> {
        OpenOptions::new().open_existing(path)
    }

    pub(crate) fn open_with(
        path: &Path,
        capacity: Option<u32>,
        options: &OpenOptions,
    ) -> Result<Semaphore> {
        crate::options::check_lease(path, options.default_lease)?;
        if let Some(capacity) = capacity {
            check_capacity(path, u64::from(capacity.max(1)))?;
        }
        let store = FileStore::open(path, &file_settings(options), capacity.is_some())?;
        Semaphore::opened(Store::File(store), capacity, options)
    }

    /// A handle on the semaphore in `store`, created with `capacity` slots if absent, or
    /// (without a capacity) checked to exist: the part of opening that is the same for
    /// every store.
    pub(crate) fn opened(
        store: Store,
        capacity: Option<u32>,
        options: &OpenOptions,
    ) -> Result<Semaphore> {
        let sem = Semaphore::with_store(store, options);
        let store = &sem.inner.store;
        let path = store.path();
        match capacity {
            None => {
                store.snapshot()?;
            }
            Some(capacity) => {
                let requested = capacity.max(1);
                store.step(Some(requested), |doc, cx| {
                    // After an unanswered commit, an empty semaphore of the capacity asked for
                    // may be the one this call created.
                    let ours = cx.settling()
                        && doc.capacity() == requested
                        && doc.holders.is_empty()
                        && doc.waiters.is_empty();
                    if options.create_new && !cx.created && !ours {
                        return Err(Error::AlreadyExists {
                            path: path.to_path_buf(),
                        });
                    }
                    if doc.capacity() != requested {
                        return Err(Error::CapacityMismatch {
                            path: path.to_path_buf(),
                            requested,
                            on_file: doc.capacity(),
                        });
                    }
                    // Opening cleans up after killed processes.
                    Ok(Step::unchanged(()).tidy())
                })?;
            }
        }
        Ok(sem)
    }

    /// A handle on the semaphore in `store`, with the handle's settings of `options`.
    pub(crate) fn with_store(store: Store, options: &OpenOptions) -> Semaphore {
        Semaphore {
            inner: Arc::new(Inner {
                store,
                reap: options.auto_reap,
                default_lease: options.default_lease,
                not_unwind_safe: PhantomData,
            }),
        }
    }

    /// The state file's path, as given to `open` (used in messages).
    ///
    /// The handle is bound to the directory this path named when it was opened: see
    /// [`resolved_path`](Semaphore::resolved_path). For a Redis semaphore: its URL with the
    /// password replaced by `***` and port and database written out
    /// (`redis://:***@host:6379/0/gpus`).
    pub fn path(&self) -> &Path {
        self.inner.store.path()
    }

    /// The absolute path of the state file when the semaphore was opened: the canonical path
    /// of its directory then, plus the file name.
    ///
    /// The handle, its clones, permits and waits act on the directory it opened, whatever
    /// [`path`](Semaphore::path) names later: a change of the working directory, a renamed
    /// directory or a repointed symlink in the path does not move them (if the directory is
    /// renamed, this path is out of date; the handle follows the directory). Give this path to
    /// another process (the `filesem` tool exports it as `FILESEM_PATH`) to name the same
    /// semaphore. For a Redis semaphore it is the same as [`path`](Semaphore::path) (a
    /// process that opens it needs the password besides).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sem = filesem::Semaphore::open(dir.path().join("s.json"), 1)?;
    /// assert!(sem.resolved_path().is_absolute());
    /// assert!(sem.resolved_path().ends_with("s.json"));
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn resolved_path(&self) -> &Path {
        self.inner.store.resolved_path()
    }

    /// The capacity recorded in the state file now, in holders.
    ///
    /// # Errors
    ///
    /// [`Error::Removed`], [`Error::Corrupt`], [`Error::Io`] when the file cannot be read:
    /// never a guessed number; [`Error::Untrusted`] for a state file of the wrong type or
    /// owner; [`Error::DirectoryGone`] once the directory was removed.
    pub fn capacity(&self) -> Result<u32> {
        Ok(self.inner.store.snapshot()?.doc.capacity())
    }

    /// Changes the capacity to `capacity` holders. Lowering it below the number of holders
    /// evicts nobody: new acquires are refused until enough holders have left. Raising it
    /// hands the new slots to queued waiters first.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCapacity`] for 0 or more than [`MAX_CAPACITY`] (unlike `open`, 0 is not
    /// rounded up here); [`Error::Removed`], [`Error::Corrupt`], [`Error::LockTimeout`],
    /// [`Error::Io`], [`Error::Untrusted`], [`Error::DirectoryGone`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sem = filesem::Semaphore::open(dir.path().join("s.json"), 1)?;
    /// sem.set_capacity(3)?;
    /// assert_eq!(sem.capacity()?, 3);
    /// assert!(sem.set_capacity(0).is_err());
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn set_capacity(&self, capacity: u32) -> Result<()> {
        check_capacity(self.path(), u64::from(capacity))?;
        self.inner.store.step(None, |doc, cx| {
            if doc.capacity() == capacity {
                return Ok(Step::unchanged(()));
            }
            doc.capacity = i64::from(capacity);
            rules::hand_off(doc, cx.now);
            Ok(Step::changed(()))
        })
    }

    /// Takes a slot for `holder` if one is free now; never waits for one (the Go package's
    /// `Acquire`). A slot is not free while waiters are queued: they are owed the next ones
    /// (see [`acquire`](Semaphore::acquire)).
    ///
    /// The returned [`Permit`] releases the slot when dropped. Bind it to a name: `let _ =
    /// sem.try_acquire(..)?` drops (and releases) it at once; use `let _permit`.
    ///
    /// # Errors
    ///
    /// - [`Error::NoCapacity`] when every slot is held (or owed to a queued waiter);
    /// - [`Error::AlreadyHeld`] when `holder`'s ID holds a slot or is queued;
    /// - [`Error::InvalidId`] for an empty ID, one over [`MAX_ID_LEN`](crate::MAX_ID_LEN)
    ///   bytes, or one with control characters;
    /// - [`Error::TokensExhausted`] when every fencing token was handed out;
    /// - [`Error::Removed`], [`Error::Corrupt`], [`Error::LockTimeout`], [`Error::Io`], and
    ///   [`Error::Untrusted`], [`Error::DirectoryGone`] as for every operation (see the crate
    ///   docs).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sem = filesem::Semaphore::open(dir.path().join("gpu.json"), 1)?;
    /// let permit = sem.try_acquire("job-1")?;
    /// assert!(matches!(sem.try_acquire("job-2"), Err(filesem::Error::NoCapacity { .. })));
    /// assert!(matches!(sem.try_acquire("job-1"), Err(filesem::Error::AlreadyHeld { .. })));
    /// permit.release()?;
    /// assert_eq!(sem.available()?, 1);
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn try_acquire<H: Holder + ?Sized>(&self, holder: &H) -> Result<Permit> {
        self.try_acquire_with(holder, &AcquireOptions::new())
    }

    /// [`try_acquire`](Semaphore::try_acquire) with per-acquire settings: metadata, lease,
    /// detached, and a [`timeout`](AcquireOptions::timeout) for the lock.
    ///
    /// It never waits for a slot. With a timeout, that bounds its wait for the lock file
    /// instead of the [lock timeout](crate::OpenOptions::lock_timeout): if another process
    /// holds the lock until then (one stopped inside its critical section), the call fails
    /// with [`Error::LockBusy`] at that deadline (plus a few milliseconds at most), where
    /// without a timeout it waits up to the lock timeout and fails with
    /// [`Error::LockTimeout`]. A timeout of [`Duration::ZERO`] tries the lock for a few
    /// milliseconds. The other waiting settings (priority, cancel token, `on_wait`) are
    /// ignored.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Semaphore::try_acquire); [`Error::LockBusy`] with a timeout (in
    /// place of [`Error::LockTimeout`]); [`Error::InvalidMetadata`], [`Error::InvalidLease`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// use std::time::Duration;
    /// use filesem::{AcquireOptions, Error, Semaphore};
    /// let sem = Semaphore::open(dir.path().join("backup.json"), 1)?;
    /// // As `filesem run -n`: no wait for a slot, at most a second for the lock.
    /// let opts = AcquireOptions::new().timeout(Duration::from_secs(1));
    /// let _permit = sem.try_acquire_with("backup-1", &opts)?;
    /// assert!(matches!(
    ///     sem.try_acquire_with("backup-2", &opts),
    ///     Err(Error::NoCapacity { .. })
    /// ));
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn try_acquire_with<H: Holder + ?Sized>(
        &self,
        holder: &H,
        options: &AcquireOptions,
    ) -> Result<Permit> {
        self.try_acquire_since(holder.id(), options, Instant::now())
    }

    /// [`try_acquire_with`](Semaphore::try_acquire_with) for a call that started at `call`
    /// (the async API's, which may start its step later): the timeout counts from then.
    pub(crate) fn try_acquire_since(
        &self,
        id: &str,
        options: &AcquireOptions,
        call: Instant,
    ) -> Result<Permit> {
        let wait = LockWait::for_call(call, options.timeout);
        self.check_request(id, options)?;
        let path = self.path();
        let req = self.request(options, id, false);
        // The grants earlier runs of the step wrote (see `Attempt`).
        let mut tried: Vec<Attempt> = Vec::new();
        let granted = self.inner.store.step_committed(wait, None, |doc, cx| {
            let now = cx.now;
            if cx.settling()
                && let Some(entry) = tried.iter().find_map(|t| t.find(doc))
            {
                // Its commit got no answer, and it landed: that grant is ours.
                let record = Record::of(entry, entry.token.unwrap_or_default());
                return Ok(Step::unchanged(Ok((record, entry.acquired_at, None))));
            }
            let ctx = self.ctx(now, cx.judge());
            let mut changed = false;
            let mut removed = Vec::new();
            let admitted = rules::admit(doc, id, &ctx, &mut changed, &mut removed);
            if let Err(refusal) = admitted {
                return Ok(
                    Step::new(Err(refusal_error(path, id, refusal)), changed).reaped(removed)
                );
            }
            let NewHold { stamp, witness } = cx.new_hold(doc, req.detached)?;
            let token = stamp.number;
            let entry = holder_entry(&req, now, stamp);
            tried.push(Attempt::of(&entry, token));
            let record = rules::grant(doc, entry, token, now);
            Ok(Step::changed(Ok((record, now, witness))).reaped(removed))
        });
        let Committed {
            value: granted,
            unreplicated,
        } = granted.map_err(|e| busy_since(e, call))?;
        let (record, acquired_at, witness) = granted?;
        let slot = record.slot.unwrap_or(0);
        tracing::debug!(path = %path.display(), id, token = record.token, slot, "acquired");
        let seen = Seen {
            sent: call,
            now: acquired_at,
        };
        let permit = Permit::new(
            self.clone(),
            id.to_string(),
            slot,
            acquired_at,
            req.lease,
            record,
            witness,
            seen,
        );
        match unreplicated {
            Some(error) => Err(undo_unreplicated(permit, error)),
            None => permit.started(),
        }
    }

    /// Takes a slot for `holder`, waiting as long as it takes.
    ///
    /// Waiters are served first come, first served (see [`acquire_with`](Semaphore::acquire_with)
    /// for priorities, timeouts and cancellation): if no slot is free, this call joins the
    /// queue in the state file, and whoever frees a slot hands it to the head of the queue in
    /// the same write. The call holds no lock while it waits and wakes as soon as the state
    /// file changes (inotify on Linux; polling elsewhere).
    ///
    /// # Errors
    ///
    /// - [`Error::AlreadyHeld`] when `holder`'s ID holds a slot or is queued;
    /// - [`Error::InvalidId`], [`Error::TokensExhausted`] as for
    ///   [`try_acquire`](Semaphore::try_acquire);
    /// - [`Error::Removed`], [`Error::Corrupt`], [`Error::LockTimeout`], [`Error::Io`],
    ///   [`Error::Untrusted`], [`Error::DirectoryGone`]; the queue entry is then removed if the
    ///   file can still be written, and otherwise its witness is unlocked, so that the next
    ///   process that looks judges it dead (or it expires on its own within seconds).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sem = filesem::Semaphore::open(dir.path().join("gpu.json"), 1)?;
    /// let first = sem.try_acquire("job-1")?;
    /// let waiter = std::thread::spawn({
    ///     let sem = sem.clone();
    ///     move || sem.acquire("job-2").map(|p| p.id().to_string())
    /// });
    /// while sem.waiters()?.is_empty() {
    ///     std::thread::sleep(std::time::Duration::from_millis(1));
    /// }
    /// first.release()?; // hands the slot to job-2
    /// assert_eq!(waiter.join().unwrap()?, "job-2");
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn acquire<H: Holder + ?Sized>(&self, holder: &H) -> Result<Permit> {
        self.acquire_with(holder, &AcquireOptions::new())
    }

    /// Takes a slot for `holder`, taking at most `timeout` in all; then fails with
    /// [`Error::Timeout`] and leaves the queue.
    ///
    /// `timeout` bounds the whole call, its waits for the lock file included: it returns by
    /// the deadline plus a few milliseconds whoever holds the lock, with
    /// [`Error::LockBusy`] if another process held the lock until then (see
    /// [`AcquireOptions::timeout`] for the details). [`Duration::ZERO`] makes one attempt and
    /// leaves nothing queued; a duration too large for the clock ([`Duration::MAX`]) waits
    /// without limit (and each lock wait at most the
    /// [lock timeout](crate::OpenOptions::lock_timeout)). The time is measured on the
    /// monotonic clock and is not restarted by signals. If the slot is handed over while the
    /// call is timing out, the permit is returned rather than thrown away.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when no slot came in time; [`Error::LockBusy`] when the lock file
    /// was busy until the deadline; otherwise as [`acquire`](Semaphore::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// use std::time::Duration;
    /// let sem = filesem::Semaphore::open(dir.path().join("gpu.json"), 1)?;
    /// let _held = sem.try_acquire("job-1")?;
    /// let err = sem.acquire_timeout("job-2", Duration::from_millis(20)).unwrap_err();
    /// assert!(matches!(err, filesem::Error::Timeout { .. }));
    /// assert!(sem.waiters()?.is_empty());
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn acquire_timeout<H: Holder + ?Sized>(
        &self,
        holder: &H,
        timeout: Duration,
    ) -> Result<Permit> {
        self.acquire_with(holder, &AcquireOptions::new().timeout(timeout))
    }

    /// Takes a slot for `holder`, waiting as `options` say: [`timeout`](AcquireOptions::timeout)
    /// (default: none), queue [`priority`](AcquireOptions::priority) (default 0),
    /// [`cancel_token`](AcquireOptions::cancel_token), an [`on_wait`](AcquireOptions::on_wait)
    /// callback, and metadata.
    ///
    /// The first step is the same as [`try_acquire_with`](Semaphore::try_acquire_with); if it
    /// finds no free slot, the call joins the queue (behind every waiter of equal or higher
    /// priority) and waits without holding any lock until a release, a reap or
    /// [`set_capacity`](Semaphore::set_capacity) hands it a slot, with the next fencing token:
    /// tokens increase in the order slots are granted, also when a waiter of higher priority
    /// is served before one that queued earlier. A waiter whose
    /// queue entry vanished (removed by [`remove`](Semaphore::remove), or dropped by a write of
    /// the Go package) joins the queue again, at the back.
    ///
    /// With a [`timeout`](AcquireOptions::timeout), the call takes at most that long in all,
    /// its waits for the lock file included; without one, each wait for the lock file ends
    /// after the [lock timeout](crate::OpenOptions::lock_timeout).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] after the timeout, [`Error::LockBusy`] when the lock file was busy
    /// until then; [`Error::Cancelled`] after a cancel; otherwise as
    /// [`acquire`](Semaphore::acquire), and [`Error::InvalidMetadata`],
    /// [`Error::InvalidLease`]. On every error the call holds no slot and has left the queue
    /// (or, when the lock file could not be had, left its entry to be judged dead and
    /// reaped).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// use std::time::Duration;
    /// use filesem::{AcquireOptions, Semaphore};
    /// let sem = Semaphore::open(dir.path().join("gpu.json"), 1)?;
    /// let opts = AcquireOptions::new()
    ///     .priority(10)
    ///     .timeout(Duration::from_secs(30))
    ///     .metadata("job", "urgent-fix");
    /// let permit = sem.acquire_with("job-7", &opts)?;
    /// assert_eq!(sem.holders()?[0].metadata["job"], "urgent-fix");
    /// # drop(permit);
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn acquire_with<H: Holder + ?Sized>(
        &self,
        holder: &H,
        options: &AcquireOptions,
    ) -> Result<Permit> {
        let id = holder.id();
        self.check_request(id, options)?;
        crate::wait::acquire(self, id, options)
    }

    /// Removes every provably stale holder and waiter now (dead owner, expired lease), hands
    /// their slots to queued waiters, and returns what it removed with the evidence. Entries
    /// that cannot be judged (see [`Liveness::Unknown`]) stay. Also removes witness files that
    /// no entry refers to and temp files of killed writers (regular files with filesem's
    /// names, of trusted owners only).
    ///
    /// Acquires already reap when they would otherwise fail (unless
    /// [`OpenOptions::auto_reap`] is off); call this to free slots eagerly or from a cleanup
    /// job.
    ///
    /// # Errors
    ///
    /// [`Error::Removed`], [`Error::Corrupt`], [`Error::LockTimeout`], [`Error::Io`],
    /// [`Error::Untrusted`] (a state, lock or witness file of the wrong type or owner, left
    /// as it is), [`Error::DirectoryGone`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// use std::time::Duration;
    /// let sem = filesem::Semaphore::open(dir.path().join("s.json"), 2)?;
    /// let opts = filesem::AcquireOptions::new().detached(true).lease(filesem::MIN_LEASE);
    /// sem.try_acquire_with("short-lived", &opts)?;
    /// // Nothing renews it: 1 s later it has expired, and after the 2 s grace it is stale.
    /// std::thread::sleep(filesem::MIN_LEASE + filesem::LEASE_GRACE + Duration::from_millis(100));
    /// let reaped = sem.reap()?;
    /// assert_eq!(reaped[0].id, "short-lived");
    /// assert!(reaped[0].liveness.evidence().contains("lease expired"));
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn reap(&self) -> Result<Vec<Reaped>> {
        // What the previous run reaped: after an unanswered commit, what it removed and is
        // gone now counts as reaped by this call.
        let mut earlier: Vec<Reaped> = Vec::new();
        self.inner.store.step(None, |doc, cx| {
            let ctx = Ctx {
                reap: true,
                ..self.ctx(cx.now, cx.judge())
            };
            let removed = rules::reap(doc, &ctx);
            let granted = rules::hand_off(doc, ctx.now);
            let mut reaped: Vec<Reaped> = removed.iter().cloned().map(Reaped::from).collect();
            if cx.settling() {
                let gone = |r: &Reaped| {
                    !doc.holders
                        .iter()
                        .chain(&doc.waiters)
                        .any(|e| e.id == r.id && (r.waiter || e.token == r.token))
                };
                let before: Vec<Reaped> = earlier.iter().filter(|r| gone(r)).cloned().collect();
                for r in before.into_iter().rev() {
                    if !reaped.contains(&r) {
                        reaped.insert(0, r);
                    }
                }
            }
            earlier.clone_from(&reaped);
            // Reaping cleans up after killed processes too.
            Ok(Step::new(reaped, granted > 0).reaped(removed).tidy())
        })
    }

    pub(crate) fn check_request(&self, id: &str, options: &AcquireOptions) -> Result<()> {
        state::validate_id(id).map_err(|reason| Error::InvalidId {
            path: self.path().to_path_buf(),
            id: id.to_string(),
            reason,
        })?;
        crate::options::check_lease(self.path(), self.lease_for(options))?;
        options
            .check_metadata()
            .map_err(|reason| Error::InvalidMetadata {
                path: self.path().to_path_buf(),
                reason,
            })
    }

    /// Releases the slot held by `id`, whoever holds it (the Go package's `Release`). A
    /// [`Permit`] releases itself; this is for holds that outlived their permit
    /// ([`Permit::keep`]) or were taken by another program.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if `id` holds no slot; [`Error::Removed`], [`Error::Corrupt`],
    /// [`Error::LockTimeout`], [`Error::Io`], [`Error::Untrusted`],
    /// [`Error::DirectoryGone`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sem = filesem::Semaphore::open(dir.path().join("ws.json"), 1)?;
    /// sem.try_acquire("session-123")?.keep().map_err(|e| e.error)?;
    /// assert_eq!(sem.count()?, 1);
    /// sem.release("session-123")?;
    /// assert!(matches!(sem.release("session-123"), Err(filesem::Error::NotHeld { .. })));
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn release(&self, id: &str) -> Result<()> {
        let mut released = false;
        self.inner.store.step(None, |doc, cx| {
            match doc.holders.iter().position(|e| e.id == id) {
                Some(i) => {
                    doc.holders.remove(i);
                    rules::hand_off(doc, cx.now);
                    released = true;
                    Ok(Step::changed(Ok(())))
                }
                // An earlier run released it, and its commit got no answer: it landed.
                None if released && cx.settling() => Ok(Step::unchanged(Ok(()))),
                None => Ok(Step::unchanged(Err(Error::NotHeld {
                    path: self.path().to_path_buf(),
                    id: id.to_string(),
                }))),
            }
        })?
    }

    /// Removes the holders (and queued waiters) with these IDs, for cleanup after crashes
    /// (the Go package's `Remove`). Idempotent: unknown IDs are not an error. Returns the IDs that
    /// were on file and are now gone, each once, in the order given.
    ///
    /// # Errors
    ///
    /// [`Error::Removed`], [`Error::Corrupt`], [`Error::LockTimeout`], [`Error::Io`],
    /// [`Error::Untrusted`] (a state, lock or witness file of the wrong type or owner, left
    /// as it is), [`Error::DirectoryGone`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sem = filesem::Semaphore::open(dir.path().join("ws.json"), 2)?;
    /// sem.try_acquire("stale-1")?.keep().map_err(|e| e.error)?;
    /// assert_eq!(sem.remove(["stale-1", "stale-2"])?, vec!["stale-1".to_string()]);
    /// assert!(sem.remove(["stale-1"])?.is_empty());
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn remove<I, S>(&self, ids: I) -> Result<Vec<String>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ids: Vec<S> = ids.into_iter().collect();
        let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
        // What the previous run removed: after an unanswered commit, an ID it removed that
        // is gone now counts as removed by this call.
        let mut earlier: Vec<String> = Vec::new();
        self.inner.store.step(None, |doc, cx| {
            let mut removed = rules::remove_ids(doc, &ids, cx.now);
            let changed = !removed.is_empty();
            if cx.settling() {
                let more: Vec<String> = earlier
                    .iter()
                    .filter(|id| !removed.contains(id))
                    .cloned()
                    .collect();
                removed.extend(more);
                removed.sort_by_key(|r| ids.iter().position(|id| id == r));
            }
            earlier.clone_from(&removed);
            Ok(Step::new(removed, changed))
        })
    }

    /// The current holders, in the order they appear in the state file, each with a liveness
    /// verdict. Reads without the lock and changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Removed`], [`Error::Corrupt`], [`Error::Io`]: never an empty list made up
    /// from a file that could not be read; [`Error::Untrusted`] for a state file of the wrong
    /// type or owner; [`Error::DirectoryGone`] once the directory was removed.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sem = filesem::Semaphore::open(dir.path().join("s.json"), 3)?;
    /// let _a = sem.try_acquire("holder-1")?;
    /// let _b = sem.try_acquire("holder-2")?;
    /// let ids: Vec<String> = sem.holders()?.into_iter().map(|h| h.id).collect();
    /// assert_eq!(ids, ["holder-1", "holder-2"]);
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn holders(&self) -> Result<Vec<HolderInfo>> {
        let snapshot = self.inner.store.snapshot()?;
        let now = snapshot.now;
        Ok(snapshot
            .doc
            .holders
            .iter()
            .map(|e| self.info(e, now))
            .collect())
    }

    /// The queued waiters, in the order they will be served (priority, then arrival), each
    /// with a liveness verdict. `acquired_at` is when it joined the queue; `token` is `None`
    /// (a waiter gets its fencing token when it is granted a slot). Reads without the lock
    /// and changes nothing.
    ///
    /// # Errors
    ///
    /// As [`holders`](Semaphore::holders).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sem = filesem::Semaphore::open(dir.path().join("s.json"), 1)?;
    /// assert!(sem.waiters()?.is_empty());
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn waiters(&self) -> Result<Vec<HolderInfo>> {
        let snapshot = self.inner.store.snapshot()?;
        let now = snapshot.now;
        Ok(snapshot
            .doc
            .waiters
            .iter()
            .map(|e| HolderInfo {
                token: None,
                ..self.info(e, now)
            })
            .collect())
    }

    /// The time by the clock that judges this semaphore's leases: this machine's clock for a
    /// state file, the Redis server's (`TIME`) for a Redis key. Ages and the time left of
    /// leases computed against it agree with the verdicts of [`holders`](Semaphore::holders)
    /// however far this machine's clock is from the server's. Reads the state (on Redis one
    /// round trip) and changes nothing.
    ///
    /// # Errors
    ///
    /// As [`holders`](Semaphore::holders).
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sem = filesem::Semaphore::open(dir.path().join("s.json"), 1)?;
    /// let permit = sem.try_acquire("a")?;
    /// let age = sem.now()? - sem.holders()?[0].acquired_at;
    /// assert!(age >= chrono::Duration::zero());
    /// # drop(permit);
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn now(&self) -> Result<DateTime<Utc>> {
        Ok(self.inner.store.snapshot()?.now)
    }

    /// The number of holders on file (including stale ones not yet reaped).
    ///
    /// # Errors
    ///
    /// As [`holders`](Semaphore::holders).
    pub fn count(&self) -> Result<usize> {
        Ok(self.inner.store.snapshot()?.doc.holders.len())
    }

    /// How many slots a [`try_acquire`](Semaphore::try_acquire) could get now: free slots
    /// (counting provably stale holders as free, since an acquire would reap them) minus
    /// queued waiters, who are served first. 0 when over capacity.
    ///
    /// # Errors
    ///
    /// As [`holders`](Semaphore::holders).
    pub fn available(&self) -> Result<usize> {
        let snapshot = self.inner.store.snapshot()?;
        let ctx = self.ctx(snapshot.now, self.inner.store.judge());
        Ok(rules::available(&snapshot.doc, &ctx))
    }

    /// Recovers from a corrupt state file: keeps its bytes as `PATH.corrupt-<UTC time>` and
    /// replaces it by an empty semaphore with `capacity` slots and a fencing-token counter
    /// above any token the old file can have handed out.
    ///
    /// **Stop all holders first**: their holds are forgotten, so a process that still holds
    /// a slot is no longer counted. This is never done automatically. If the state file is
    /// valid, nothing changes (`moved_to` is `None`); if it is absent, a new semaphore is
    /// created.
    ///
    /// The new token counter is the larger of (the highest `token`, `ticket` or `next_token`
    /// number found in the corrupt bytes + 1) and the current time in microseconds since
    /// 1970, so it stays above tokens that a truncated file lost.
    ///
    /// `path` is never missing, so the next `open` can never create a new semaphore in its
    /// place whose tokens start again at 1: the corrupt file is first linked to its aside
    /// name (copied where the file system refuses a hard link), then the new state replaces
    /// it by the same atomic write as every change (temp file, `fsync`, `rename`). A recovery
    /// that fails (a full disk) leaves every file as it was; one that is killed leaves `path`
    /// corrupt or recovered, and the corrupt bytes at `path` or the aside name.
    ///
    /// Only a regular file is set aside: a FIFO, socket or device at `path` is refused with
    /// [`Error::Untrusted`] and left where it is, as is a file whose owner is not trusted in a
    /// world-writable or sticky directory (see [`OpenOptions::trust_owner`]). Every mode
    /// recovery sets derives from the old file's read and write bits without world-write,
    /// plus read and write for the owner (0666 and 6777 give 0664, 0775 gives 0664): the new
    /// state file's, the lock file's if recovery creates it, and the tightening of a lock
    /// file of this user that grants more. A valid file whose fencing tokens are exhausted
    /// ([`Error::TokensExhausted`]) is left as it is: tokens must only grow, so only a new
    /// semaphore path helps.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCapacity`], [`Error::Symlink`], [`Error::Untrusted`],
    /// [`Error::IsLockFile`], [`Error::LockTimeout`], [`Error::CannotSyncDirectory`],
    /// [`Error::Io`] (a full disk, for one): nothing is changed then.
    ///
    /// # Examples
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("s.json");
    /// std::fs::write(&path, "{\"capacity\": 2, \"hold")?;
    /// assert!(matches!(filesem::Semaphore::open(&path, 2), Err(filesem::Error::Corrupt { .. })));
    /// let recovered = filesem::Semaphore::recover(&path, 2)?;
    /// assert!(recovered.moved_to.is_some());
    /// assert_eq!(recovered.semaphore.available()?, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recover(path: impl AsRef<Path>, capacity: u32) -> Result<Recovered> {
        OpenOptions::new().recover(path, capacity)
    }

    /// What the rules need to judge and reap at `now` (the store's clock) with `judge` (the
    /// store's), as this handle reaps.
    pub(crate) fn ctx<'a>(&self, now: DateTime<Utc>, judge: &'a dyn Judge) -> Ctx<'a> {
        Ctx {
            now,
            judge,
            reap: self.inner.reap,
        }
    }

    /// The lease of an acquire with `options`: its own, else the handle's default, else the
    /// one its store imposes.
    pub(crate) fn lease_for(&self, options: &AcquireOptions) -> Option<Duration> {
        options
            .lease
            .or(self.inner.default_lease)
            .or_else(|| self.inner.store.imposed_lease())
    }

    /// What an acquire of `id` with `options` asks of the queue steps: its hold's lease
    /// ([`Semaphore::lease_for`]), and the waiter expiry the store gives it.
    pub(crate) fn request<'a>(
        &self,
        options: &'a AcquireOptions,
        id: &'a str,
        may_wait: bool,
    ) -> Request<'a> {
        let lease = self.lease_for(options);
        let mut req = options.request(id, lease, may_wait);
        req.waiter_expiry = self.inner.store.waiter_expiry(lease);
        req
    }

    pub(crate) fn info(&self, e: &Entry, now: DateTime<Utc>) -> HolderInfo {
        let mode = if e.detached {
            HoldMode::Detached
        } else if e.owner.is_some() {
            HoldMode::ProcessBound
        } else {
            HoldMode::Unowned
        };
        HolderInfo {
            id: e.id.clone(),
            acquired_at: e.acquired_at,
            token: e.token,
            slot: e.slot,
            mode,
            owner: e.owner.as_ref().map(|o| OwnerInfo {
                host: o.host.clone(),
                pid: o.pid,
            }),
            expires_at: e.expires_at,
            metadata: e.metadata.clone(),
            priority: e.priority.unwrap_or(0),
            liveness: verdict(e, now, self.inner.store.judge()),
        }
    }
}

impl OpenOptions {
    /// [`Semaphore::recover`] with these settings.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::recover`]; [`Error::InvalidLease`] for a
    /// [`default_lease`](OpenOptions::default_lease) under [`MIN_LEASE`](crate::MIN_LEASE).
    pub fn recover(&self, path: impl AsRef<Path>, capacity: u32) -> Result<Recovered> {
        let path = path.as_ref();
        crate::options::check_lease(path, self.default_lease)?;
        check_capacity(path, u64::from(capacity))?;
        let Some(store) = FileStore::open_for_recovery(path, &file_settings(self))? else {
            let semaphore = self.open(path, capacity)?;
            return Ok(Recovered {
                semaphore,
                moved_to: None,
            });
        };
        let moved_to = store.recover(capacity)?;
        let semaphore = Semaphore::with_store(Store::File(store), self);
        semaphore.inner.store.snapshot()?;
        Ok(Recovered {
            semaphore,
            moved_to,
        })
    }
}

/// The file store's settings among `options`.
fn file_settings(options: &OpenOptions) -> Settings<'_> {
    Settings {
        durable: options.durable,
        mode: options.mode,
        lock_timeout: options.lock_timeout,
        trusted_owners: &options.trusted_owners,
    }
}

pub(crate) fn check_capacity(path: &Path, capacity: u64) -> Result<()> {
    if capacity == 0 || capacity > u64::from(MAX_CAPACITY) {
        return Err(Error::InvalidCapacity {
            path: path.to_path_buf(),
            capacity,
            max: MAX_CAPACITY,
        });
    }
    Ok(())
}

/// A grant an earlier run of a step wrote, to recognise it when that run's commit got no
/// answer ([`StepContext::settling`](crate::store::StepContext::settling)): by its token, ID,
/// owner and grant time (the store's clock at that run's read). Another process's entry
/// never matches (its owner differs), nor one of this process written in another run.
///
/// A step keeps the attempts of all its runs, and a settling run looks for each: the
/// unanswered commit may still land after a later run read the key unchanged (it was
/// buffered on a stopped server), and only a later commit of the step fences it off. Runs
/// whose commit definitely failed (a lost race) are never found, so looking for them is
/// harmless.
pub(crate) struct Attempt {
    token: u64,
    id: String,
    owner: Option<Owner>,
    acquired_at: DateTime<Utc>,
}

impl Attempt {
    /// The attempt that writes `entry` with `token` (before [`rules::grant`] takes it).
    pub(crate) fn of(entry: &Entry, token: u64) -> Attempt {
        Attempt {
            token,
            id: entry.id.clone(),
            owner: entry.owner.clone(),
            acquired_at: entry.acquired_at,
        }
    }

    /// Its holder entry in `doc`, if it is there.
    pub(crate) fn find<'d>(&self, doc: &'d Document) -> Option<&'d Entry> {
        doc.holders.iter().find(|e| {
            e.token == Some(self.token)
                && e.id == self.id
                && e.owner == self.owner
                && e.acquired_at == self.acquired_at
        })
    }
}

/// Ends a grant whose write fewer replicas acknowledged than asked for (it may be lost in a
/// failover, and its token granted again): releases it, best effort, and returns `error`.
pub(crate) fn undo_unreplicated(permit: Permit, error: Error) -> Error {
    let (id, token) = (permit.id().to_string(), permit.token());
    if let Err(e) = permit.release() {
        tracing::warn!(path = %error.path().display(), id, token, error = %e, "failed to release a grant the replicas did not confirm");
    }
    error
}

pub(crate) fn refusal_error(path: &Path, id: &str, refusal: Refusal) -> Error {
    match refusal {
        Refusal::AlreadyHeld => Error::AlreadyHeld {
            path: path.to_path_buf(),
            id: id.to_string(),
        },
        Refusal::NoCapacity { capacity, held } => Error::NoCapacity {
            path: path.to_path_buf(),
            capacity,
            held,
        },
        Refusal::TokensExhausted => Error::TokensExhausted {
            path: path.to_path_buf(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn semaphore_is_send_and_sync() {
        // Threads share one handle.
        assert_send_sync::<Semaphore>();
    }

    /// The file store of a semaphore handle.
    #[allow(irrefutable_let_patterns)] // Store has more variants with other features.
    fn file_store(sem: &Semaphore) -> &crate::store::file::FileStore {
        let crate::store::Store::File(store) = &sem.inner.store else {
            panic!("not a file store");
        };
        store
    }

    #[test]
    #[allow(unsafe_code)] // Reviewed: fork in a test; the child makes two calls, then _exit.
    fn a_child_forked_while_the_handles_caches_are_locked_acquires_without_them() {
        // A child forked while another thread of its parent was inside one of the handle's
        // caches inherits it locked, with nobody to unlock it: its operations must go without
        // the cache, never wait for it.
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        use nix::unistd::{ForkResult, fork};
        let dir = tempfile::tempdir().unwrap();
        let sem = crate::OpenOptions::new()
            .durable(false)
            .open(dir.path().join("s.json"), 2)
            .unwrap();
        // Fills the caches: the lock file, the document, the witness directory, a spare.
        sem.try_acquire("warm").unwrap().release().unwrap();
        let held = file_store(&sem).lock_caches();
        // SAFETY: the child makes two library calls, which must end by themselves, then _exit.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = match sem.try_acquire("child").map(Permit::release) {
                    Ok(Ok(())) => 0,
                    _ => 1,
                };
                // SAFETY: _exit skips destructors and atexit handlers.
                unsafe { libc::_exit(code) };
            }
            ForkResult::Parent { child } => {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                let status = loop {
                    match waitpid(child, Some(WaitPidFlag::WNOHANG)).unwrap() {
                        WaitStatus::StillAlive if std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        WaitStatus::StillAlive => {
                            let _ =
                                nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                            let _ = waitpid(child, None);
                            panic!("the forked child hung on a cache its parent held");
                        }
                        status => break status,
                    }
                };
                drop(held);
                assert_eq!(
                    status,
                    WaitStatus::Exited(child, 0),
                    "the child's acquire and release"
                );
            }
        }
        assert!(
            sem.holders().unwrap().is_empty(),
            "the child released its slot"
        );
    }

    #[test]
    fn the_document_kept_from_a_write_is_what_the_file_holds() {
        // A step that finds PATH unchanged uses the document its handle wrote last instead
        // of reading it: that document must be exactly what parsing the file gives, after
        // every kind of write (grants, a queue and its hand-off, kept holds, leases,
        // metadata, a capacity change, unknown fields another writer added).
        use crate::core::doc::Document;
        use crate::{AcquireOptions, OpenOptions};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let sem = OpenOptions::new().durable(false).open(&path, 2).unwrap();
        let store = file_store(&sem);
        let check = |what: &str| {
            let kept = store.kept_document();
            let on_file = Document::parse(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(kept.as_ref(), Some(&on_file), "after {what}");
        };
        check("open");
        let a = sem
            .try_acquire_with(
                "a",
                &AcquireOptions::new()
                    .metadata("job", "x \"quoted\"")
                    .lease(Duration::from_secs(600)),
            )
            .unwrap();
        check("a grant with metadata and a lease");
        let b = sem.try_acquire("b").unwrap();
        check("a second grant");
        let waiter = {
            let sem = sem.clone();
            std::thread::spawn(move || {
                sem.acquire_with("c", &AcquireOptions::new().priority(3))
                    .and_then(|p| p.keep().map_err(|e| e.error))
            })
        };
        let start = Instant::now();
        while sem.waiters().unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(60), "never queued");
            std::thread::sleep(Duration::from_millis(1));
        }
        check("a waiter joined");
        // The waiter's thread takes steps of its own on this handle from here on.
        b.release().unwrap();
        waiter.join().unwrap().unwrap();
        assert_eq!(sem.holders().unwrap()[1].id, "c", "handed over");
        check("a hand-off and a kept hold");
        a.renew().unwrap();
        check("a renewal");
        sem.set_capacity(5).unwrap();
        check("a capacity change");
        // Another writer replaces the file, adding fields this crate does not know.
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v["x_top"] = serde_json::json!({"keep": [1.10, -0]});
        v["holders"][0]["x_entry"] = serde_json::json!("kept");
        let temp = dir.path().join("other-writer.tmp");
        std::fs::write(&temp, serde_json::to_vec(&v).unwrap()).unwrap();
        std::fs::rename(&temp, &path).unwrap();
        sem.remove(["c"]).unwrap();
        check("a write after another writer's");
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(
            written.contains("x_entry") && written.contains("x_top"),
            "{written}"
        );
        drop(a);
        check("the last release");
    }
}
