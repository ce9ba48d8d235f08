//! The file store: one locked step ("lock, read, apply a rule, write if changed, unlock") and
//! a lock-free snapshot for queries, all relative to the semaphore's bound directory
//! ([`Files`]).
//!
//! Queries need no lock: every writer (ours and the Go package) replaces the state file by
//! `rename`, so a reader always sees one complete version. No query opens the lock file.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, fstat};

use crate::core::doc::Document;
use crate::core::rules::Removed;
use crate::core::tokens::resume_token_counter;
use crate::error::{Error, Result};
use atomic::FileMeta;
use dir::{Files, Want, access_mode, mode, witness_dir_mode};
use gate::Gate;
use lock::LockGuard;
use witness::{Created, WitnessDir};

pub(crate) mod atomic;
pub(crate) mod dir;
pub(crate) mod flocks;
mod gate;
pub(crate) mod identity;
pub(crate) mod judge;
pub(crate) mod lock;
#[cfg(target_os = "linux")]
pub(crate) mod notify;
pub(crate) mod witness;

/// The mode of a newly created state file when [`crate::OpenOptions::mode`] is not set: the
/// Go package's 0644.
pub(crate) const DEFAULT_MODE: u32 = 0o644;

/// Where and how one semaphore is stored.
#[derive(Debug)]
pub(crate) struct Store {
    /// The bound directory and the names in it; shared with the liveness judge.
    pub files: Arc<Files>,
    pub durable: bool,
    pub create_mode: u32,
    pub lock_timeout: Duration,
    /// Serializes threads of this process sharing the handle, so they wait here (without
    /// polling) rather than on the lock file. Held only for one step; waiting for it counts
    /// against the step's lock wait ([`LockWait`]).
    gate: Gate,
    /// What the step in progress knows about its files (set while the gate is held).
    step: Mutex<Option<StepFiles>>,
    /// The witness directory as last opened, with its status: an acquire checks by one
    /// `fstatat` that the name still refers to it, instead of opening it again.
    witness_dir: Mutex<Option<(Arc<OwnedFd>, FileStat)>>,
}

/// What one locked step knows about the semaphore's files, for the file operations its rule
/// makes (witness creation, cleanup).
#[derive(Clone, Copy, Debug)]
struct StepFiles {
    /// The directory's status at the start of the step: who is trusted in it.
    dir: FileStat,
    /// The state file's mode (or the create mode for a new one): lock and witness modes
    /// derive from it.
    state_mode: u32,
    /// Whether this step created the witness directory (removed again if the step fails).
    witness_dir_created: bool,
}

/// How long a locked step may wait for the lock: for the in-process gate and `PATH.lock`
/// together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockWait {
    /// At most the handle's lock timeout, then [`Error::LockTimeout`]: for operations without
    /// a deadline of their own, where a long wait is an anomaly (a process stopped inside its
    /// critical section) that must not hang anyone forever.
    Timeout,
    /// Until the deadline of the call (an acquire given a timeout), whether that is sooner
    /// or later than the lock timeout, then [`Error::LockBusy`]. A step that starts at or
    /// after the deadline still tries for [`LAST_LOCK_WAIT`].
    Until(Instant),
}

impl LockWait {
    /// The wait of a call that started at `start` with `timeout` (`None`, or a duration too
    /// large for the clock: no deadline of its own, so the lock timeout).
    pub fn for_call(start: Instant, timeout: Option<Duration>) -> LockWait {
        match timeout.and_then(|t| start.checked_add(t)) {
            Some(deadline) => LockWait::Until(deadline),
            None => LockWait::Timeout,
        }
    }
}

/// `error`, with the wait of an [`Error::LockBusy`] counted from `start`: for the first step
/// of a call, so that the error tells how long the call waited (a step starts a moment after
/// its call, and `-n`'s 1 s should not read `999 ms`).
pub(crate) fn busy_since(error: Error, start: Instant) -> Error {
    match error {
        Error::LockBusy {
            path,
            lock_path,
            holder,
            ..
        } => Error::LockBusy {
            path,
            lock_path,
            waited: start.elapsed(),
            holder,
        },
        other => other,
    }
}

/// How long a step with a deadline ([`LockWait::Until`]) tries for the lock at least, even
/// when the deadline has passed: a zero timeout still gets its one attempt past an ordinary
/// critical section of another process (a read, a write and two `fsync`s), and a call that
/// ends at its deadline still tries to leave the queue. Short enough that such a call
/// returns within a few milliseconds of its deadline whoever holds the lock.
pub(crate) const LAST_LOCK_WAIT: Duration = Duration::from_millis(5);

/// What a rule reports back to [`Store::transact`].
pub(crate) struct Step<R> {
    pub value: R,
    /// Whether the document changed and must be written.
    pub changed: bool,
    /// Entries the rule reaped: once the write has committed their removal, their witness
    /// files are deleted and they are logged (not before: a reader of the old file would
    /// find the witness missing).
    pub reaped: Vec<Removed>,
}

impl<R> Step<R> {
    pub fn unchanged(value: R) -> Step<R> {
        Step {
            value,
            changed: false,
            reaped: Vec::new(),
        }
    }
    pub fn changed(value: R) -> Step<R> {
        Step {
            value,
            changed: true,
            reaped: Vec::new(),
        }
    }
    pub fn new(value: R, changed: bool) -> Step<R> {
        Step {
            value,
            changed,
            reaped: Vec::new(),
        }
    }
    /// Records what the rule reaped (and so changed).
    pub fn reaped(mut self, reaped: Vec<Removed>) -> Step<R> {
        self.changed |= !reaped.is_empty();
        self.reaped = reaped;
        self
    }
}

impl Store {
    pub fn new(
        files: Arc<Files>,
        durable: bool,
        create_mode: u32,
        lock_timeout: Duration,
    ) -> Store {
        Store {
            files,
            durable,
            create_mode,
            lock_timeout,
            gate: Gate::default(),
            step: Mutex::new(None),
            witness_dir: Mutex::new(None),
        }
    }

    /// The state file, as given to `open`.
    pub fn path(&self) -> &Path {
        &self.files.path
    }

    /// One locked read-modify-write. With `create = Some(capacity)` a missing state file is
    /// created (an empty semaphore of that capacity) and written even if the rule changes
    /// nothing; with `None` a missing file is [`Error::NotFound`] and nothing is created.
    /// `rule` gets the document and whether it was just created. Waits for the lock at most
    /// the lock timeout.
    pub fn transact<R>(
        &self,
        create: Option<u32>,
        rule: impl FnOnce(&mut Document, bool) -> Result<Step<R>>,
    ) -> Result<R> {
        self.transact_with(LockWait::Timeout, create, rule)
    }

    /// [`transact`](Store::transact), waiting for the lock as `wait` says.
    pub fn transact_with<R>(
        &self,
        wait: LockWait,
        create: Option<u32>,
        rule: impl FnOnce(&mut Document, bool) -> Result<Step<R>>,
    ) -> Result<R> {
        self.locked(create.is_some(), wait, |guard, dir| {
            let (mut doc, meta, created) = match self.read()? {
                Some((mut doc, meta)) => {
                    resume_token_counter(&mut doc, chrono::Utc::now());
                    (doc, meta, false)
                }
                None => match create {
                    Some(capacity) => {
                        let meta = FileMeta {
                            mode: self.create_mode,
                            owner: None,
                        };
                        (Document::new(capacity), meta, true)
                    }
                    None => return Err(self.not_found()),
                },
            };
            self.set_state_mode(meta.mode);
            let step = rule(&mut doc, created)?;
            if step.changed || created {
                if doc.version.is_none() {
                    doc.version = Some(crate::core::doc::FORMAT_VERSION);
                }
                atomic::write_atomic(&self.files, &doc.to_bytes(), meta, self.durable, dir)?;
            }
            if create.is_some() {
                // Only when the open succeeds: a failed operation changes nothing.
                guard.tighten(&self.files, access_mode(meta.mode));
            }
            if !step.reaped.is_empty() {
                let wdir = witness::open_dir(&self.files, dir, None).unwrap_or_else(|e| {
                    tracing::warn!(path = %self.path().display(), error = %e, "cannot remove the witness files of reaped entries");
                    None
                });
                witness::forget_reaped(&self.files, wdir.as_ref(), &step.reaped);
            }
            Ok(step.value)
        })
    }

    /// Reads the current document without the lock; `None` when there is no state file.
    pub fn read(&self) -> Result<Option<(Document, FileMeta)>> {
        let (bytes, meta) = match self.read_raw()? {
            Raw::Missing => return Ok(None),
            Raw::Regular { bytes, meta } => (bytes, meta),
            Raw::TooLarge { len } => {
                return Err(self.corrupt(format!(
                    "the file is {len} bytes, more than the {MAX_STATE_BYTES} bytes a state file may have"
                )));
            }
        };
        let doc = Document::parse(&bytes).map_err(|reason| self.corrupt(reason))?;
        Ok(Some((doc, meta)))
    }

    /// Reads the state file's bytes, without ever blocking on a FIFO or reading more than
    /// [`MAX_STATE_BYTES`]. Anything but a regular file of a trusted owner is refused.
    pub fn read_raw(&self) -> Result<Raw> {
        let Some((file, st)) = self.open_state()? else {
            return Ok(Raw::Missing);
        };
        read_all(file, &st).map_err(|e| self.io_error("read semaphore state at", e))
    }

    /// Up to `limit` bytes of the state file (a regular file of a trusted owner; never
    /// blocking on a FIFO); empty when there is none.
    pub fn read_prefix(&self, limit: u64) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        if let Some((file, _)) = self.open_state()? {
            file.take(limit)
                .read_to_end(&mut bytes)
                .map_err(|e| self.io_error("read semaphore state at", e))?;
        }
        Ok(bytes)
    }

    /// Opens the state file for reading and checks it: `None` when it is absent.
    fn open_state(&self) -> Result<Option<(File, FileStat)>> {
        let files = &self.files;
        let name = files.state_name.as_os_str();
        // O_NONBLOCK: opening a FIFO for reading would wait for a writer, under the lock.
        // It changes nothing for regular files.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let file = match openat(files.dir(), name, flags, mode(0)) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => {
                files.dir_stat()?;
                return Ok(None);
            }
            Err(Errno::ELOOP) => return Err(self.symlink()),
            Err(e) => {
                return Err(files
                    .explain_open_error(files.dir(), name, &files.path, e, Want::File)
                    .unwrap_or_else(|| self.io_error("read semaphore state at", e.into())));
            }
        };
        let st = fstat(&file).map_err(|e| self.io_error("read semaphore state at", e.into()))?;
        self.check_state(&st)?;
        Ok(Some((file, st)))
    }

    /// Refuses a state file that is not a regular file or whose owner is not trusted.
    fn check_state(&self, st: &FileStat) -> Result<()> {
        let files = &self.files;
        files.check(
            &files.path,
            st,
            Want::File,
            || files.dir_stat(),
            dir::parent_dir(&files.path),
        )
    }

    /// Whether a state file exists, refusing a symlink at the state path
    /// ([`Error::Symlink`]) without following or creating anything.
    pub fn check_not_symlink(&self) -> Result<bool> {
        let files = &self.files;
        match files.stat_at(files.dir(), files.state_name.as_os_str()) {
            Ok(Some(st)) if dir::is_symlink(&st) => Err(self.symlink()),
            Ok(Some(_)) => Ok(true),
            Ok(None) => Ok(false),
            Err(e) => Err(self.io_error("look up semaphore state at", e)),
        }
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            path: self.path().to_path_buf(),
            reason,
        }
    }

    /// Reads the current document, failing with [`Error::NotFound`] if there is none.
    pub fn snapshot(&self) -> Result<Document> {
        self.read()?.map(|(d, _)| d).ok_or_else(|| self.not_found())
    }

    /// Runs `f` under the lock without reading the state (used by recovery, which must not
    /// parse the file). `f` gets the directory's status.
    pub fn with_lock<R>(&self, f: impl FnOnce(&FileStat) -> Result<R>) -> Result<R> {
        self.locked(true, LockWait::Timeout, |_, dir| f(dir))
    }

    /// Runs `f` under the lock. The lock file is opened without `O_CREAT` first; only if it is
    /// absent is the state file looked up: without `may_create` a missing semaphore is
    /// [`Error::NotFound`] and nothing is created; otherwise (or if the state file exists) the
    /// lock file is created with the mode derived from the state's. That is one `statx` fewer
    /// per operation than looking up the state file first; a state file that is missing while
    /// its lock file exists is found missing by [`Store::read`].
    ///
    /// If `f` fails, a witness directory this step created is removed again (if empty).
    ///
    /// The lock is waited for as `wait` says: when that time runs out, the error is
    /// [`Error::LockTimeout`] for [`LockWait::Timeout`] and [`Error::LockBusy`] for
    /// [`LockWait::Until`], naming the lock's holder where the kernel tells.
    fn locked<R>(
        &self,
        may_create: bool,
        wait: LockWait,
        f: impl FnOnce(&LockGuard, &FileStat) -> Result<R>,
    ) -> Result<R> {
        let start = Instant::now();
        // One deadline for the in-process queue and the lock file together: otherwise the
        // last of N threads could wait N lock timeouts.
        let deadline = match wait {
            LockWait::Timeout => start.checked_add(self.lock_timeout),
            LockWait::Until(d) => Some(d.max(start + LAST_LOCK_WAIT)),
        };
        let timed_out = |holder: Option<u32>| {
            let (path, lock_path) = (self.path().to_path_buf(), self.files.lock_path.clone());
            let waited = start.elapsed();
            match wait {
                LockWait::Timeout => Error::LockTimeout {
                    path,
                    lock_path,
                    waited,
                    holder,
                },
                LockWait::Until(_) => Error::LockBusy {
                    path,
                    lock_path,
                    waited,
                    holder,
                },
            }
        };
        let Some(_serial) = self.gate.enter(deadline) else {
            // Another thread of this process is inside a step: waiting for the lock file, or
            // holding it. Whoever holds it is the one to name.
            let lock = self
                .files
                .stat_at(self.files.dir(), self.files.lock_name.as_os_str());
            let holder = lock.ok().flatten().and_then(|st| lock::holder_of(&st));
            return Err(timed_out(holder));
        };
        // One fstat per step: a removed directory is never written in, and its status says
        // whose files are trusted.
        let dir = self.files.dir_stat()?;
        let guard = match lock::lock_exclusive(&self.files, None, &dir, deadline) {
            Ok(Some(guard)) => Ok(guard),
            Ok(None) => self.create_lock(may_create, &dir, deadline),
            Err(e) => Err(e),
        };
        let guard = guard.map_err(|e| match e {
            Error::LockTimeout { holder, .. } => timed_out(holder),
            other => other,
        })?;
        *self.step_files() = Some(StepFiles {
            dir,
            state_mode: self.create_mode,
            witness_dir_created: false,
        });
        let r = f(&guard, &dir);
        let step = self.step_files().take();
        if r.is_err() {
            let created = step.is_some_and(|s| s.witness_dir_created);
            WitnessDir::remove_if_created(&self.files, created);
        }
        guard.unlock();
        r
    }

    /// Creates the absent lock file (mode derived from the state file's, or from the create
    /// mode for a new semaphore) and locks it; without `may_create` only if the state file
    /// exists. A state file of the wrong kind or owner is refused before anything is created.
    fn create_lock(
        &self,
        may_create: bool,
        dir: &FileStat,
        deadline: Option<Instant>,
    ) -> Result<LockGuard> {
        let files = &self.files;
        let state = files
            .stat_at(files.dir(), files.state_name.as_os_str())
            .map_err(|e| self.io_error("look up semaphore state at", e))?;
        let state_mode = match state {
            None if !may_create => return Err(self.not_found()),
            None => self.create_mode,
            Some(st) if dir::is_symlink(&st) => return Err(self.symlink()),
            Some(st) => {
                self.check_state(&st)?;
                dir::perm_bits(&st)
            }
        };
        let created = lock::lock_exclusive(files, Some(access_mode(state_mode)), dir, deadline)?;
        created.ok_or_else(|| {
            self.io_error(
                "create the lock file of",
                io::Error::from(io::ErrorKind::NotFound),
            )
        })
    }

    fn step_files(&self) -> MutexGuard<'_, Option<StepFiles>> {
        self.step.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_state_mode(&self, state_mode: u32) {
        if let Some(step) = self.step_files().as_mut() {
            step.state_mode = state_mode & 0o7777;
        }
    }

    /// The step's view of the files; outside a step (never, in this crate) a fresh one.
    fn current(&self) -> Result<StepFiles> {
        match *self.step_files() {
            Some(step) => Ok(step),
            None => Ok(StepFiles {
                dir: self.files.dir_stat()?,
                state_mode: self.create_mode,
                witness_dir_created: false,
            }),
        }
    }

    /// Creates and locks the witness file for `token` (creating the witness directory if
    /// needed), with modes derived from the state file's. Call inside a step.
    pub fn create_witness(&self, token: u64) -> Result<Created> {
        let step = self.current()?;
        let wdir = self.witness_dir_for_create(&step)?;
        if wdir.created
            && let Some(step) = self.step_files().as_mut()
        {
            step.witness_dir_created = true;
        }
        witness::create(&self.files, &wdir, token, access_mode(step.state_mode))
    }

    /// The witness directory, created if absent: the one opened last if `PATH.witness` still
    /// names it (one `fstatat`; its type and owner are checked again on that status), else
    /// opened (and checked) afresh.
    fn witness_dir_for_create(&self, step: &StepFiles) -> Result<WitnessDir> {
        let files = &self.files;
        let cached = self
            .witness_dir
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some((fd, opened)) = cached
            && let Ok(Some(now)) = files.stat_at(files.dir(), files.witness_name.as_os_str())
            && dir::file_id(&now) == dir::file_id(&opened)
        {
            let parent = dir::parent_dir(&files.path);
            files.check(
                &files.witness_path,
                &now,
                Want::Dir,
                || Ok(step.dir),
                parent,
            )?;
            return Ok(WitnessDir {
                fd,
                stat: now,
                created: false,
            });
        }
        let dir_mode = witness_dir_mode(step.state_mode, dir::mode_bits(&step.dir));
        let wdir = witness::open_dir(files, &step.dir, Some(dir_mode))?.ok_or_else(|| {
            let missing = io::Error::from(io::ErrorKind::NotFound);
            files.io(&files.witness_path, "create the witness directory", missing)
        })?;
        *self
            .witness_dir
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((Arc::clone(&wdir.fd), wdir.stat));
        Ok(wdir)
    }

    /// Removes witness files no entry (with a token in `live`) refers to and nobody holds.
    /// Call inside a step.
    pub fn remove_orphans(&self, live: &[u64]) -> Result<Vec<PathBuf>> {
        let step = self.current()?;
        match witness::open_dir(&self.files, &step.dir, None)? {
            Some(wdir) => witness::remove_orphans(&self.files, &wdir, live),
            None => Ok(Vec::new()),
        }
    }

    /// Removes temp files left by killed writers. Lists the directory: call inside a step of
    /// `open` or `reap` only.
    pub fn remove_leftovers(&self) -> Result<Vec<PathBuf>> {
        atomic::remove_leftovers(&self.files, &self.current()?.dir)
    }

    pub fn not_found(&self) -> Error {
        self.files.missing(Error::NotFound {
            path: self.path().to_path_buf(),
        })
    }

    fn symlink(&self) -> Error {
        Error::Symlink {
            path: self.path().to_path_buf(),
        }
    }

    pub fn io_error(&self, action: &'static str, e: io::Error) -> Error {
        Error::io(self.path(), self.path(), action, e)
    }
}

/// The largest state file that is read, in bytes: 64 MiB, room for well over 100 000 holders.
/// A larger file is [`Error::Corrupt`] rather than read into memory (a sparse file of a few
/// terabytes would otherwise abort the process).
pub(crate) const MAX_STATE_BYTES: u64 = 64 << 20;

/// What [`Store::read_raw`] found at the state path.
pub(crate) enum Raw {
    Missing,
    Regular {
        bytes: Vec<u8>,
        meta: FileMeta,
    },
    /// A regular file over [`MAX_STATE_BYTES`]; `len` is its size in bytes.
    TooLarge {
        len: u64,
    },
}

fn read_all(file: File, st: &FileStat) -> io::Result<Raw> {
    let len = u64::try_from(st.st_size).unwrap_or(0);
    if len > MAX_STATE_BYTES {
        return Ok(Raw::TooLarge { len });
    }
    // The file may grow while we read (a foreign writer): never read past the limit.
    let mut bytes = Vec::with_capacity(len as usize + 1);
    file.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Ok(Raw::TooLarge {
            len: bytes.len() as u64,
        });
    }
    let meta = FileMeta {
        mode: dir::perm_bits(st),
        owner: Some((st.st_uid, st.st_gid)),
    };
    Ok(Raw::Regular { bytes, meta })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Store {
        let files = Files::open(&dir.join("s.json"), dir::Trust::new(&[])).unwrap();
        Store::new(Arc::new(files), false, DEFAULT_MODE, Duration::from_secs(1))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn step_on_a_missing_semaphore_creates_no_file() {
        // Queries, release and remove on an absent semaphore create neither state nor lock file.
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let r = store.transact(None, |_, _| Ok(Step::changed(())));
        assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
        assert!(names(dir.path()).is_empty());

        // A lock file left without its state file: still NotFound, still no state file.
        std::fs::write(&store.files.lock_path, b"").unwrap();
        let r = store.transact(None, |_, _| Ok(Step::changed(())));
        assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
        assert_eq!(names(dir.path()), ["s.json.lock"]);
    }

    #[test]
    fn step_on_a_state_file_without_lock_file_creates_the_lock_file() {
        // A state file written by hand (or copied) without its lock file is still usable.
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        std::fs::write(store.path(), br#"{"capacity": 2, "holders": []}"#).unwrap();
        let capacity = store.transact(None, |doc, _| Ok(Step::unchanged(doc.capacity())));
        assert_eq!(capacity.unwrap(), 2);
        assert_eq!(names(dir.path()), ["s.json", "s.json.lock"]);
    }

    #[test]
    fn step_on_a_symlinked_state_file_is_refused() {
        // A symlink at PATH is never followed or replaced, whether or not the lock file exists.
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let target = dir.path().join("elsewhere.json");
        std::fs::write(&target, br#"{"capacity": 2, "holders": []}"#).unwrap();
        std::os::unix::fs::symlink(&target, store.path()).unwrap();
        let r = store.transact(None, |_, _| Ok(Step::changed(())));
        assert!(matches!(r, Err(Error::Symlink { .. })), "{r:?}");
        std::fs::write(&store.files.lock_path, b"").unwrap();
        let r = store.transact(None, |_, _| Ok(Step::changed(())));
        assert!(matches!(r, Err(Error::Symlink { .. })), "{r:?}");
        assert!(
            std::fs::symlink_metadata(store.path())
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read(&target).unwrap(),
            br#"{"capacity": 2, "holders": []}"#
        );
    }
}
