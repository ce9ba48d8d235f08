//! The file store: the document in the state file `PATH`, one locked step ("lock, read, apply
//! a rule, write if changed, unlock") and a lock-free snapshot for queries, all relative to
//! the semaphore's bound directory ([`Files`]).
//!
//! Queries need no lock: every writer (ours and the Go package) replaces the state file by
//! `rename`, so a reader always sees one complete version. No query opens the lock file.
//!
//! The modules: [`dir`] (the bound directory and the checks every object passes), [`lock`]
//! (`PATH.lock`), [`atomic`] (the atomic write), [`witness`] (witness files), [`flocks`]
//! (`/proc/locks`), [`identity`] (this process's owner record), [`judge`] (the liveness judge:
//! witness, pid, boot), `gate` (threads of one process taking turns), `read` (reading the
//! state file), `step` (what a step does with files besides the document), `recover`
//! (moving a corrupt state file aside), [`waker`] (inotify, or polling).

use std::cell::Cell;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::stat::FileStat;
use std::os::fd::AsFd;

use super::{InStep, LockWait, Snapshot, Step, StepContext};
use crate::core::doc::Document;
use crate::error::{Error, Result};
use atomic::FileMeta;
use dir::{DirStatus, Files, Trust, access_mode};
use gate::Gate;
use judge::SystemJudge;
use lock::{LockFile, LockGuard};
use read::Written;
use witness::WitnessDir;

mod atomic;
mod dir;
mod flocks;
mod gate;
mod identity;
mod judge;
mod lock;
#[cfg(target_os = "linux")]
mod notify;
mod read;
mod recover;
mod spare;
mod step;
pub(crate) mod waker;
pub(super) mod witness;

pub(crate) use step::FileStep;

/// How long a step with a deadline ([`LockWait::Until`]) tries for the lock at least, even
/// when the deadline has passed: a zero timeout still gets its one attempt past an ordinary
/// critical section of another process (a read, a write and two `fsync`s), and a call that
/// ends at its deadline still tries to leave the queue. Short enough that such a call
/// returns within a few milliseconds of its deadline whoever holds the lock.
pub(crate) const LAST_LOCK_WAIT: Duration = Duration::from_millis(5);

/// How a file store is opened: the settings of
/// [`OpenOptions`](crate::OpenOptions) it uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings<'a> {
    /// `fsync` every write and its directory.
    pub durable: bool,
    /// The mode of a new state file.
    pub mode: u32,
    /// How long a step without a deadline waits for the lock.
    pub lock_timeout: Duration,
    /// Owners trusted beyond the caller, root and the directory's owner.
    pub trusted_owners: &'a [u32],
}

/// One semaphore's state file and the files beside it.
#[derive(Debug)]
pub(crate) struct FileStore {
    /// The bound directory and the names in it; shared with the liveness judge.
    pub(super) files: Arc<Files>,
    pub(super) durable: bool,
    create_mode: u32,
    pub(super) lock_timeout: Duration,
    /// Serializes threads of this process sharing the handle, so they wait here (without
    /// polling) rather than on the lock file. Held only for one step; waiting for it counts
    /// against the step's lock wait ([`LockWait`]).
    gate: Gate,
    /// The lock file as the last step left it, open and unlocked (see [`lock`]); used only
    /// inside the gate.
    lock_file: Mutex<Option<LockFile>>,
    /// What the last step wrote, if it wrote (see [`read`]); used only inside the gate.
    written: Mutex<Option<Written>>,
    /// The spare witness files this handle keeps locked for its next holds.
    spares: Arc<spare::Spares>,
    /// The inotify instances of waits that ended, for the next waits (see [`waker`]).
    notifiers: waker::KeptNotifiers,
    /// The witness directory as last opened, with its status: an acquire checks by one
    /// `fstatat` that the name still refers to it, instead of opening it again.
    witness_dir: Mutex<Option<(Arc<std::os::fd::OwnedFd>, FileStat)>>,
    /// Judges entries by witness locks, pids and boot ids.
    pub(super) judge: SystemJudge,
    /// Whether this handle has found (or written) the state file: a missing one is then
    /// [`Error::Removed`], not [`Error::NotFound`].
    seen: AtomicBool,
}

impl FileStore {
    /// Binds to the directory of the state file `path` (see [`Files::open`]). With `create`,
    /// creates that directory first if needed and refuses a symlink at `path`
    /// ([`Error::Symlink`]) before anything else is created. Refuses another semaphore's
    /// lock file ([`Error::IsLockFile`]). Reads nothing else.
    pub fn open(path: &Path, settings: &Settings<'_>, create: bool) -> Result<FileStore> {
        if create {
            let dir = dir::parent_dir(path);
            fs::create_dir_all(dir).map_err(|e| Error::io(path, dir, "create the directory", e))?;
        }
        let store = FileStore::bind(path, settings)?;
        store.check_not_a_lock_file()?;
        if create {
            // Refused before the lock file is created.
            store.check_not_symlink()?;
        }
        Ok(store)
    }

    /// A store bound to the directory of `path`; checks nothing else.
    fn bind(path: &Path, settings: &Settings<'_>) -> Result<FileStore> {
        let files = Arc::new(Files::open(path, Trust::new(settings.trusted_owners))?);
        Ok(FileStore {
            judge: SystemJudge::new(Arc::clone(&files)),
            files,
            durable: settings.durable,
            create_mode: settings.mode,
            lock_timeout: settings.lock_timeout,
            gate: Gate::default(),
            lock_file: Mutex::new(None),
            written: Mutex::new(None),
            spares: Arc::default(),
            notifiers: waker::KeptNotifiers::default(),
            witness_dir: Mutex::new(None),
            seen: AtomicBool::new(false),
        })
    }

    /// The state file, as given to `open`.
    pub fn path(&self) -> &Path {
        &self.files.path
    }

    /// One locked read-modify-write (see [`Store::step_with`](super::Store::step_with)): the
    /// rule runs under the lock, so nobody changes the document in between. What the rule
    /// changed is written atomically ([`atomic`]); what it reported is done around the write:
    /// cleanup before it ([`Step::tidy`]), the witness files of reaped entries after it.
    pub fn step<R>(
        &self,
        wait: LockWait,
        create: Option<u32>,
        mut rule: impl FnMut(&mut Document, &mut StepContext<'_>) -> Result<Step<R>>,
    ) -> Result<R> {
        let stepped = self.locked(create.is_some(), wait, as_on_file, |guard, dir| {
            let now = Utc::now();
            let (mut doc, meta, created) = match self.read_for_step()? {
                Some((doc, meta)) => (doc, meta, false),
                None => match create {
                    Some(capacity) => {
                        let meta = FileMeta {
                            mode: self.create_mode,
                            owner: None,
                        };
                        let mut doc = Document::new(capacity);
                        // Above every token a semaphore used here before can have handed out.
                        if let Some(floor) = self.counter_floor_here(guard, dir, now)? {
                            doc.next_token = Some(floor);
                        }
                        (doc, meta, true)
                    }
                    None => return Err(self.not_found()),
                },
            };
            let queued = queued_with_witness(&doc);
            let witness_dir_created = Cell::new(false);
            let mut cx = StepContext {
                now,
                created,
                at: InStep::File(FileStep::new(self, dir, meta.mode, &witness_dir_created)),
            };
            let stepped = rule(&mut doc, &mut cx).and_then(|mut step| {
                // A new document is written even if the rule changed nothing.
                step.changed |= created;
                let touches = to_touch(&queued, &doc);
                self.commit(step, &doc, meta, dir, guard, &touches)
            });
            match stepped {
                Ok((value, written)) => {
                    if created {
                        self.saw_state();
                    }
                    if let Some((file, stat)) = written {
                        self.keep_written(Written::new(doc, file, stat));
                    }
                    Ok(value)
                }
                Err(e) => {
                    // A failed operation leaves no new witness directory behind (nor the
                    // spares made in it).
                    if witness_dir_created.get() {
                        self.spares.retire_all();
                    }
                    WitnessDir::remove_if_created(&self.files, witness_dir_created.get());
                    Err(e)
                }
            }
        });
        // A removed semaphore keeps none of this handle's spares in its witness directory.
        let gone = matches!(
            stepped,
            Err(Error::Removed { .. } | Error::DirectoryGone { .. })
        );
        if gone || stepped.is_ok() {
            self.spares.semaphore_gone(gone);
        }
        stepped
    }

    /// Locks the caches a step uses until the result is dropped: a test's stand-in for
    /// another thread caught inside one by a fork (see [`cache`]).
    #[cfg(test)]
    pub(crate) fn lock_caches(&self) -> impl Sized + '_ {
        (
            self.lock_file.lock().unwrap(),
            self.written.lock().unwrap(),
            self.witness_dir.lock().unwrap(),
            self.spares.lock(),
        )
    }

    /// Touches the witnesses of the waiters `numbers` whose entries the write just renamed into
    /// place changed (see [`notify`]): at once, as the directory's watchers learn of a write.
    fn touch_waiters(&self, numbers: &[u64]) {
        if numbers.is_empty() {
            return;
        }
        let cached =
            cache(&self.witness_dir).and_then(|dir| dir.as_ref().map(|(fd, _)| Arc::clone(fd)));
        let opened;
        let dir = match &cached {
            Some(fd) => fd.as_fd(),
            None => match witness::open_dir_for_probe(&self.files) {
                Ok(Some(fd)) => {
                    opened = fd;
                    opened.as_fd()
                }
                _ => return,
            },
        };
        for &n in numbers {
            witness::touch(dir, n);
        }
    }

    /// The end of a step whose rule succeeded: cleanup if asked, the write if anything
    /// changed, the lock file's mode, and the witness files of reaped entries once their
    /// removal is on disk. A write tells the waiters `touches` (see [`notify`]). Returns the
    /// rule's value and, if it wrote, the new state file and its status (see [`read`]).
    ///
    /// A durable change in a directory that cannot be `fsync`ed is refused first, before the
    /// cleanup changes anything ([`Error::CannotSyncDirectory`]). The lock file is tightened
    /// ([`LockGuard::tighten`]) by every step that succeeds, whatever the operation: a lock
    /// file of an older version or of the Go package (0644) lets users who may only read the
    /// state flock it, and the first step of its owner takes that away (one `fchmod`, only
    /// when the mode grants more than it should; its status was taken when it was locked).
    fn commit<R>(
        &self,
        step: Step<R>,
        doc: &Document,
        meta: FileMeta,
        dir: &DirStatus<'_>,
        guard: &LockGuard,
        touches: &[u64],
    ) -> Result<(R, Option<(std::fs::File, FileStat)>)> {
        if step.changed && self.durable {
            self.files.check_syncable()?;
        }
        if step.tidy {
            self.tidy(doc, dir)?;
        }
        let mut written = None;
        if step.changed {
            let bytes = doc.to_bytes();
            let renamed = || self.touch_waiters(touches);
            written =
                atomic::write_atomic_then(&self.files, &bytes, meta, self.durable, dir, renamed)?;
        }
        guard.tighten(&self.files, access_mode(meta.mode));
        if !step.reaped.is_empty() {
            self.forget_reaped(dir, &step.reaped);
        }
        Ok((step.value, written))
    }

    /// The current document, read without the lock, with this machine's clock.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let doc = self
            .read()?
            .map(|(d, _)| d)
            .ok_or_else(|| self.not_found())?;
        Ok(Snapshot {
            doc,
            now: Utc::now(),
        })
    }

    /// The process that holds `PATH.lock` now, where the kernel tells (see
    /// [`lock::holder_of`]); reads `/proc/locks`, never waits for the lock.
    pub fn lock_holder(&self) -> Option<u32> {
        let lock = self
            .files
            .stat_at(self.files.dir(), self.files.lock_name.as_os_str());
        lock.ok().flatten().and_then(|st| lock::holder_of(&st))
    }

    /// The error of a call with a deadline whose step could not even start by then because
    /// another step of this process held its turn (see [`Store::busy`](super::Store::busy)):
    /// [`Error::LockBusy`] since `start`, naming the lock's holder, as [`locked`] says when
    /// its in-process gate is not entered in time.
    #[cfg(feature = "tokio")]
    pub fn busy(&self, start: Instant) -> Error {
        Error::LockBusy {
            path: self.path().to_path_buf(),
            lock_path: self.files.lock_path.clone(),
            waited: start.elapsed(),
            holder: self.lock_holder(),
        }
    }

    /// A waker for one waiting acquire: inotify on the bound directory, the witness directory
    /// and the waiter's witness `own` where it works.
    pub fn waker(&self, own: Option<&witness::WitnessLock>) -> waker::FileWaker {
        let own = own.and_then(witness::WitnessLock::fd);
        waker::FileWaker::new(&self.files, own, &self.notifiers)
    }

    /// Runs `f` under the lock. The lock file the last step kept open is locked if it is
    /// still `PATH.lock` (see [`lock`]); otherwise `PATH.lock` is opened without `O_CREAT`
    /// first, and only if it is absent is the state file looked up: without `may_create` a
    /// missing semaphore is [`Error::NotFound`] and nothing is created; otherwise (or if the
    /// state file exists) the lock file is created with the mode derived from the state's.
    /// That is one `statx` fewer per operation than looking up the state file first; a state
    /// file that is missing while its lock file exists is found missing by
    /// [`FileStore::read`].
    ///
    /// The lock is waited for as `wait` says: when that time runs out, the error is
    /// [`Error::LockTimeout`] for [`LockWait::Timeout`] and [`Error::LockBusy`] for
    /// [`LockWait::Until`], naming the lock's holder where the kernel tells.
    ///
    /// `state_mode` gives the mode the lock file's mode is derived from when it is created,
    /// from the state file's ([`as_on_file`]; recovery passes its sanitized mode).
    fn locked<R>(
        &self,
        may_create: bool,
        wait: LockWait,
        state_mode: fn(u32) -> u32,
        f: impl FnOnce(&LockGuard, &DirStatus<'_>) -> Result<R>,
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
        let timeout = |e| match e {
            Error::LockTimeout { holder, .. } => timed_out(holder),
            other => other,
        };
        let Some(_serial) = self.gate.enter(deadline) else {
            // Another thread of this process is inside a step: waiting for the lock file, or
            // holding it. Whoever holds it is the one to name.
            return Err(timed_out(self.lock_holder()));
        };
        let kept = cache(&self.lock_file).and_then(|mut kept| kept.take());
        let relocked = match kept {
            Some(kept) => lock::relock(&self.files, kept, deadline).map_err(timeout)?,
            None => None,
        };
        let (guard, dir) = match relocked {
            // The lock file's name was found in the directory: it was not removed.
            Some(guard) => (guard, DirStatus::new(&self.files)),
            None => {
                // A removed directory is never written in, and its status says whose files
                // are trusted.
                let dir = DirStatus::known(&self.files, self.files.dir_stat()?);
                let guard = match lock::lock_exclusive(&self.files, None, &dir, deadline) {
                    Ok(Some(guard)) => Ok(guard),
                    Ok(None) => self.create_lock(may_create, &dir, deadline, state_mode),
                    Err(e) => Err(e),
                };
                (guard.map_err(timeout)?, dir)
            }
        };
        let r = f(&guard, &dir);
        if let Some(file) = guard.unlock_keeping_file()
            && let Some(mut kept) = cache(&self.lock_file)
        {
            *kept = Some(file);
        }
        r
    }

    /// Creates the absent lock file (mode derived from the state file's, or from the create
    /// mode for a new semaphore) and locks it; without `may_create` only if the state file
    /// exists. A state file of the wrong kind or owner is refused before anything is created.
    fn create_lock(
        &self,
        may_create: bool,
        dir: &DirStatus<'_>,
        deadline: Option<Instant>,
        state_mode: fn(u32) -> u32,
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
                state_mode(dir::perm_bits(&st))
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

    /// Refuses `X.lock` when a semaphore state file `X` exists: that is X's lock file, and
    /// using it as a state file (above all `recover`, which moves it aside) would break X's
    /// exclusion.
    fn check_not_a_lock_file(&self) -> Result<()> {
        let files = &self.files;
        let Some(stem) = files
            .state_name
            .to_str()
            .and_then(|n| n.strip_suffix(".lock"))
            .filter(|s| !s.is_empty())
        else {
            return Ok(());
        };
        let is_file = nix::sys::stat::fstatat(files.dir(), stem, nix::fcntl::AtFlags::empty())
            .is_ok_and(|st| dir::is_regular(&st));
        if is_file {
            return Err(Error::IsLockFile {
                path: files.path.clone(),
                semaphore: files.path.with_file_name(stem),
            });
        }
        Ok(())
    }

    /// The error for a missing state file: [`Error::DirectoryGone`] if the directory went
    /// with it; [`Error::Removed`] if this handle has seen the state file before (it was
    /// removed while in use); else [`Error::NotFound`].
    fn not_found(&self) -> Error {
        let path = self.path().to_path_buf();
        self.files.missing(if self.seen.load(Ordering::Relaxed) {
            Error::Removed { path }
        } else {
            Error::NotFound { path }
        })
    }

    /// Records that this handle found (or wrote) the state file: from now on a missing one
    /// was removed ([`Error::Removed`]). Written only once, so that threads sharing the handle
    /// do not contend on it.
    pub(super) fn saw_state(&self) {
        if !self.seen.load(Ordering::Relaxed) {
            self.seen.store(true, Ordering::Relaxed);
        }
    }

    fn symlink(&self) -> Error {
        Error::Symlink {
            path: self.path().to_path_buf(),
        }
    }

    fn io_error(&self, action: &'static str, e: io::Error) -> Error {
        Error::io(self.path(), self.path(), action, e)
    }
}

/// Locks the mutex of one of a handle's caches (the kept lock file, the document written last,
/// the witness directory, spares, inotify instances: what a step can do without) if nobody
/// holds it, else `None`. Threads of a handle rarely contend for one; but a child forked while
/// another thread held one inherits it locked, with nobody to unlock it, and would wait for
/// it for ever. A step that finds a cache busy goes without it.
pub(super) fn cache<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// The tickets of the waiters with a witness file, in queue order: those a write can tell of
/// their changes.
fn queued_with_witness(doc: &Document) -> Vec<u64> {
    doc.waiters
        .iter()
        .filter(|e| e.witness.is_some())
        .filter_map(|e| e.ticket)
        .collect()
}

/// The waiters (of `before`, tickets of [`queued_with_witness`] before a write) that the
/// written document `after` concerns and that do not watch the directory: those behind the
/// head that are no longer queued (granted a slot, or removed), and the new head of the queue
/// if it was queued behind before. The head watches the directory (see [`notify`]), and a
/// waiter that joins with this write is the writer: neither needs a notice.
fn to_touch(before: &[u64], after: &Document) -> Vec<u64> {
    let still = |t: u64| after.waiters.iter().any(|e| e.ticket == Some(t));
    let behind = before.get(1..).unwrap_or_default();
    let mut touch: Vec<u64> = behind.iter().copied().filter(|&t| !still(t)).collect();
    if let Some(head) = after.waiters.first().and_then(|e| e.ticket)
        && behind.contains(&head)
    {
        touch.push(head);
    }
    touch
}

/// The mode of a state file as it is on file: what the lock file's mode derives from in
/// every step but recovery's.
fn as_on_file(mode: u32) -> u32 {
    mode
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn store(dir: &Path) -> FileStore {
        let settings = Settings {
            durable: false,
            mode: 0o644,
            lock_timeout: Duration::from_secs(1),
            trusted_owners: &[],
        };
        FileStore::open(&dir.join("s.json"), &settings, false).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// One step without a deadline of its own.
    fn step<R>(
        store: &FileStore,
        create: Option<u32>,
        rule: impl FnMut(&mut Document, &mut StepContext<'_>) -> Result<Step<R>>,
    ) -> Result<R> {
        store.step(LockWait::Timeout, create, rule)
    }

    /// A document with holders and waiters given as (ticket, has a witness), in order.
    fn queue(holders: &[(u64, bool)], waiters: &[(u64, bool)]) -> Document {
        let entries = |list: &[(u64, bool)]| {
            list.iter()
                .map(|&(t, w)| {
                    let witness = if w { r#","witness":{"dev":1,"ino":2}"# } else { "" };
                    format!(r#"{{"id":"e{t}","acquired_at":"2024-01-01T00:00:00Z","ticket":{t}{witness}}}"#)
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let text = format!(
            r#"{{"capacity":1,"holders":[{}],"version":1,"next_token":100,"waiters":[{}]}}"#,
            entries(holders),
            entries(waiters)
        );
        Document::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn a_write_touches_the_waiters_behind_the_head_that_it_serves_removes_or_makes_head() {
        // Waiters behind the head watch only their witness: every write that changes their
        // entry must name them, or they wait for the timer. The head and new waiters are not
        // named (the head watches the directory; a new waiter is the writer).
        let before = queue(&[(1, true)], &[(2, true), (3, true), (4, false), (5, true)]);
        let queued = queued_with_witness(&before);
        assert_eq!(
            queued,
            [2, 3, 5],
            "only waiters with a witness can be touched"
        );

        // A release that serves the head: 3 becomes the head.
        let served = queue(&[(2, true)], &[(3, true), (4, false), (5, true)]);
        assert_eq!(to_touch(&queued, &served), [3]);
        // Two slots more: 2 and 3 served, 4 (no witness) is the head now, 5 stays behind.
        let grown = queue(&[(1, true), (2, true), (3, true)], &[(4, false), (5, true)]);
        assert_eq!(to_touch(&queued, &grown), [3]);
        // 5 removed (reaped, or its acquire gave up) and 3 and 4 served: 5 is told.
        let removed = queue(&[(1, true), (3, true), (4, false)], &[(2, true)]);
        assert_eq!(to_touch(&queued, &removed), [3, 5]);
        // A new waiter of higher priority ahead of everyone: nobody behind is concerned.
        let joined = queue(
            &[(1, true)],
            &[(9, true), (2, true), (3, true), (4, false), (5, true)],
        );
        assert!(to_touch(&queued, &joined).is_empty());
        // A write that leaves the queue as it is touches nobody.
        assert!(to_touch(&queued, &before).is_empty());
        // The head served and the next one removed: 5, behind, becomes the head.
        let skipped = queue(&[(2, true)], &[(5, true), (4, false)]);
        assert_eq!(to_touch(&queued, &skipped), [3, 5]);
    }

    #[test]
    fn step_on_a_missing_semaphore_creates_no_file() {
        // Queries, release and remove on an absent semaphore create neither state nor lock file.
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let r = step(&store, None, |_, _| Ok(Step::changed(())));
        assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
        assert!(names(dir.path()).is_empty());

        // A lock file left without its state file: still NotFound, still no state file.
        std::fs::write(&store.files.lock_path, b"").unwrap();
        let r = step(&store, None, |_, _| Ok(Step::changed(())));
        assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
        assert_eq!(names(dir.path()), ["s.json.lock"]);
    }

    #[test]
    fn step_on_a_state_file_without_lock_file_creates_the_lock_file() {
        // A state file written by hand (or copied) without its lock file is still usable.
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        std::fs::write(store.path(), br#"{"capacity": 2, "holders": []}"#).unwrap();
        let capacity = step(&store, None, |doc, _| Ok(Step::unchanged(doc.capacity())));
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
        let r = step(&store, None, |_, _| Ok(Step::changed(())));
        assert!(matches!(r, Err(Error::Symlink { .. })), "{r:?}");
        std::fs::write(&store.files.lock_path, b"").unwrap();
        let r = step(&store, None, |_, _| Ok(Step::changed(())));
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

    #[test]
    fn a_step_after_the_lock_file_was_removed_waits_for_whoever_holds_the_new_one() {
        // The handle keeps its lock file open between steps; once PATH.lock names another
        // file (removed by a cleaner and created again by someone), that is the lock.
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        std::fs::write(store.path(), br#"{"capacity": 2, "holders": []}"#).unwrap();
        let read =
            |store: &FileStore| step(store, None, |doc, _| Ok(Step::unchanged(doc.capacity())));
        assert_eq!(read(&store).unwrap(), 2);
        std::fs::remove_file(&store.files.lock_path).unwrap();
        let other = std::fs::File::create(&store.files.lock_path).unwrap();
        let held = nix::fcntl::Flock::lock(other, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        let r = store.step(
            LockWait::Until(Instant::now() + Duration::from_millis(50)),
            None,
            |doc, _| Ok(Step::unchanged(doc.capacity())),
        );
        assert!(matches!(r, Err(Error::LockBusy { .. })), "{r:?}");
        drop(held);
        assert_eq!(read(&store).unwrap(), 2);
    }

    /// The document this store keeps from its last write, if any.
    fn kept(store: &FileStore) -> Option<Document> {
        store
            .written
            .lock()
            .unwrap()
            .as_ref()
            .map(|w| w.doc.clone())
    }

    #[test]
    fn a_step_reads_the_file_when_another_writer_replaced_or_changed_it() {
        // The kept document is used only while PATH is exactly the file this handle wrote:
        // a replacement (rename, as every writer of the protocol does) and a change in place
        // are both read.
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        std::fs::write(store.path(), br#"{"capacity": 2, "holders": []}"#).unwrap();
        let capacity = || step(&store, None, |doc, _| Ok(Step::unchanged(doc.capacity())));
        let bump = |to: u32| {
            step(&store, None, move |doc, _| {
                doc.capacity = i64::from(to);
                Ok(Step::changed(()))
            })
        };
        bump(3).unwrap();
        assert!(kept(&store).is_some());
        // Replaced by rename: the kept file is still open, so its inode is not reused.
        let temp = store.path().with_extension("tmp");
        std::fs::write(&temp, br#"{"capacity": 4, "holders": []}"#).unwrap();
        std::fs::rename(&temp, store.path()).unwrap();
        assert_eq!(capacity().unwrap(), 4);
        // Changed in place, keeping its size: `3` becomes `6`.
        bump(3).unwrap();
        let before = std::fs::metadata(store.path()).unwrap();
        let bytes = std::fs::read(store.path()).unwrap();
        let at = bytes.windows(3).position(|w| w == b":3,").unwrap() + 1;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(store.path())
            .unwrap();
        file.write_all_at(b"6", at as u64).unwrap();
        drop(file);
        let after = std::fs::metadata(store.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        if (after.ctime(), after.ctime_nsec()) == (before.ctime(), before.ctime_nsec()) {
            println!(
                "SKIPPED: this kernel gave the change the same change time (coarse timestamps)"
            );
            return;
        }
        assert_eq!(capacity().unwrap(), 6);
    }

    #[test]
    fn a_failed_or_unchanged_step_keeps_nothing() {
        // A rule may change the document in memory and then fail: the next step must read
        // the file, not that document.
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        std::fs::write(store.path(), br#"{"capacity": 2, "holders": []}"#).unwrap();
        step(&store, None, |_, _| Ok(Step::changed(()))).unwrap();
        assert!(kept(&store).is_some());
        let failed = step(&store, None, |doc, _| -> Result<Step<()>> {
            doc.capacity = 9;
            Err(Error::NotFound {
                path: PathBuf::from("made up"),
            })
        });
        assert!(failed.is_err());
        assert!(kept(&store).is_none());
        let capacity = step(&store, None, |doc, _| Ok(Step::unchanged(doc.capacity())));
        assert_eq!(capacity.unwrap(), 2);
        assert!(kept(&store).is_none(), "an unchanged step keeps nothing");
    }
}
