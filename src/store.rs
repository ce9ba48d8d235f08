//! The file store: one locked step ("lock, read, apply a rule, write if changed, unlock") and
//! a lock-free snapshot for queries.
//!
//! Queries need no lock: every writer (ours and the Go package) replaces the state file by
//! `rename`, so a reader always sees one complete version.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::atomic::{self, FileMeta};
use crate::error::{Error, Result};
use crate::lock;
use crate::rules;
use crate::rules::Removed;
use crate::state::Document;
use crate::witness;

/// The mode of a newly created state file when [`crate::OpenOptions::mode`] is not set: the
/// Go package's 0644.
pub(crate) const DEFAULT_MODE: u32 = 0o644;

/// Where and how one semaphore is stored.
#[derive(Debug)]
pub(crate) struct Store {
    pub path: PathBuf,
    pub lock_path: PathBuf,
    pub durable: bool,
    pub create_mode: u32,
    pub lock_timeout: Duration,
    /// Serializes threads of this process sharing the handle, so they wait here (without
    /// polling) rather than on the lock file. Held only for one step; waiting for it counts
    /// against the lock timeout.
    gate: Gate,
}

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
    pub fn new(path: PathBuf, durable: bool, create_mode: u32, lock_timeout: Duration) -> Store {
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        Store {
            lock_path: PathBuf::from(lock),
            path,
            durable,
            create_mode,
            lock_timeout,
            gate: Gate::default(),
        }
    }

    /// One locked read-modify-write. With `create = Some(capacity)` a missing state file is
    /// created (an empty semaphore of that capacity) and written even if the rule changes
    /// nothing; with `None` a missing file is [`Error::NotFound`] and nothing is created.
    /// `rule` gets the document and whether it was just created.
    pub fn transact<R>(
        &self,
        create: Option<u32>,
        rule: impl FnOnce(&mut Document, bool) -> Result<Step<R>>,
    ) -> Result<R> {
        self.locked(create.is_some(), || {
            let (mut doc, meta, created) = match self.read()? {
                Some((mut doc, meta)) => {
                    rules::resume_token_counter(&mut doc, chrono::Utc::now());
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
            let step = rule(&mut doc, created)?;
            if step.changed || created {
                if doc.version.is_none() {
                    doc.version = Some(crate::state::FORMAT_VERSION);
                }
                atomic::write_atomic(&self.path, &doc.to_bytes(), meta, self.durable)?;
            }
            witness::forget_reaped(&self.path, &step.reaped);
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
            Raw::NotRegular { kind } => {
                return Err(self.corrupt(format!("it is a {kind}, not a regular file")));
            }
        };
        let doc = Document::parse(&bytes).map_err(|reason| self.corrupt(reason))?;
        Ok(Some((doc, meta)))
    }

    /// Reads the state file's bytes, without ever blocking on a FIFO or reading more than
    /// [`MAX_STATE_BYTES`]. A directory is an I/O error (`EISDIR`), as reading it would be.
    pub fn read_raw(&self) -> Result<Raw> {
        // O_NONBLOCK: opening a FIFO for reading would wait for a writer, under the lock.
        // It changes nothing for regular files.
        let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits())
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Raw::Missing),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(self.symlink()),
            Err(e) => return Err(self.io_error("read semaphore state at", e)),
        };
        read_all(file).map_err(|e| self.io_error("read semaphore state at", e))
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// Reads the current document, failing with [`Error::NotFound`] if there is none.
    pub fn snapshot(&self) -> Result<Document> {
        self.read()?.map(|(d, _)| d).ok_or_else(|| self.not_found())
    }

    /// Fails unless a state file (not a symlink) exists, without creating anything.
    pub fn check_exists(&self) -> Result<()> {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => Err(self.symlink()),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.not_found()),
            Err(e) => Err(self.io_error("look up semaphore state at", e)),
        }
    }

    /// Runs `f` under the lock without reading the state (used by recovery, which must not
    /// parse the file).
    pub fn with_lock<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        self.locked(true, f)
    }

    /// Runs `f` under the lock. Without `may_create`, nothing is created for a missing
    /// semaphore: the lock file is opened without `O_CREAT`, and only if it is absent is the
    /// state file looked up ([`Error::NotFound`]) before the lock file is created. That is
    /// one `statx` fewer per operation than looking up the state file first; a state file
    /// that is missing while its lock file exists is found missing by [`Store::read`].
    fn locked<R>(&self, may_create: bool, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let start = Instant::now();
        let timed_out = || Error::LockTimeout {
            path: self.path.clone(),
            lock_path: self.lock_path.clone(),
            waited: start.elapsed(),
        };
        // One deadline for the in-process queue and the lock file together: otherwise the
        // last of N threads could wait N lock timeouts.
        let _serial = self
            .gate
            .enter(start.checked_add(self.lock_timeout))
            .ok_or_else(timed_out)?;
        let left = || self.lock_timeout.saturating_sub(start.elapsed());
        let create = || lock::lock_exclusive(&self.path, &self.lock_path, self.create_mode, left());
        let locked = if may_create {
            create()
        } else {
            match lock::lock_exclusive_existing(&self.path, &self.lock_path, left()) {
                Ok(Some(guard)) => Ok(guard),
                Ok(None) => self.check_exists().and_then(|()| create()),
                Err(e) => Err(e),
            }
        };
        let guard = locked.map_err(|e| match e {
            Error::LockTimeout { .. } => timed_out(),
            other => other,
        })?;
        let r = f()?;
        guard.unlock();
        Ok(r)
    }

    pub fn not_found(&self) -> Error {
        Error::NotFound {
            path: self.path.clone(),
        }
    }

    fn symlink(&self) -> Error {
        Error::Symlink {
            path: self.path.clone(),
        }
    }

    pub fn io_error(&self, action: &'static str, e: io::Error) -> Error {
        Error::io(&self.path, &self.path, action, e)
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
    /// A FIFO, socket or device; `kind` names it.
    NotRegular {
        kind: &'static str,
    },
}

/// A mutex whose wait has a deadline (std's has none). Besides bounding the wait behind other
/// threads, it keeps a child forked while another thread was inside from hanging: the child
/// sees the gate busy forever and times out, where a std mutex would block it for good.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// A thread is inside.
    busy: bool,
    /// Threads waiting to enter: leaving wakes one only if there is one, so that a handle
    /// used by one thread makes no `futex` call per operation.
    waiting: usize,
}

/// Holding this is being inside the [`Gate`]; dropping it lets the next thread in.
struct GateGuard<'a>(&'a Gate);

impl Gate {
    /// Enters, waiting until `deadline` at most (no deadline: without limit); `None` when the
    /// deadline passed first.
    fn enter(&self, deadline: Option<Instant>) -> Option<GateGuard<'_>> {
        let mut state = self.lock();
        while state.busy {
            let left = match deadline {
                Some(d) => d.checked_duration_since(Instant::now())?,
                None => Duration::MAX,
            };
            state.waiting += 1;
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.waiting -= 1;
        }
        state.busy = true;
        Some(GateGuard(self))
    }

    /// The state's mutex is held only to read or change it, never across I/O.
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        let waiting = {
            let mut state = self.0.lock();
            state.busy = false;
            state.waiting > 0
        };
        if waiting {
            self.0.freed.notify_one();
        }
    }
}

fn read_all(file: File) -> io::Result<Raw> {
    use std::os::unix::fs::FileTypeExt;
    let m = file.metadata()?;
    let t = m.file_type();
    if t.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    if !t.is_file() {
        let kind = if t.is_fifo() {
            "FIFO"
        } else if t.is_socket() {
            "socket"
        } else if t.is_char_device() {
            "character device"
        } else if t.is_block_device() {
            "block device"
        } else {
            "special file"
        };
        return Ok(Raw::NotRegular { kind });
    }
    if m.len() > MAX_STATE_BYTES {
        return Ok(Raw::TooLarge { len: m.len() });
    }
    // The file may grow while we read (a foreign writer): never read past the limit.
    let mut bytes = Vec::with_capacity(m.len() as usize + 1);
    file.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Ok(Raw::TooLarge {
            len: bytes.len() as u64,
        });
    }
    let meta = FileMeta {
        mode: m.mode() & 0o7777,
        owner: Some((m.uid(), m.gid())),
    };
    Ok(Raw::Regular { bytes, meta })
}

/// The directory that holds `path`.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Store {
        Store::new(
            dir.join("s.json"),
            false,
            DEFAULT_MODE,
            Duration::from_secs(1),
        )
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn gate_lets_every_waiting_thread_in_one_at_a_time() {
        // Leaving wakes a waiter whenever there is one (no lost wake-up), and never two inside.
        let gate = std::sync::Arc::new(Gate::default());
        let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (gate, inside) = (gate.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let deadline = Instant::now() + Duration::from_secs(10);
                        let guard = gate
                            .enter(Some(deadline))
                            .expect("entered before the deadline");
                        assert_eq!(inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0);
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        drop(guard);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gate.lock().waiting, 0);
    }

    #[test]
    fn gate_wait_ends_at_the_deadline() {
        // A thread behind a holder that never leaves gives up at its deadline.
        let gate = Gate::default();
        let _held = gate.enter(Some(Instant::now())).unwrap();
        let start = Instant::now();
        assert!(
            gate.enter(Some(start + Duration::from_millis(30)))
                .is_none()
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(gate.lock().waiting, 0);
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
        fs::write(&store.lock_path, b"").unwrap();
        let r = store.transact(None, |_, _| Ok(Step::changed(())));
        assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
        assert_eq!(names(dir.path()), ["s.json.lock"]);
    }

    #[test]
    fn step_on_a_state_file_without_lock_file_creates_the_lock_file() {
        // A state file written by hand (or copied) without its lock file is still usable.
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        fs::write(&store.path, br#"{"capacity": 2, "holders": []}"#).unwrap();
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
        fs::write(&target, br#"{"capacity": 2, "holders": []}"#).unwrap();
        std::os::unix::fs::symlink(&target, &store.path).unwrap();
        let r = store.transact(None, |_, _| Ok(Step::changed(())));
        assert!(matches!(r, Err(Error::Symlink { .. })), "{r:?}");
        fs::write(&store.lock_path, b"").unwrap();
        let r = store.transact(None, |_, _| Ok(Step::changed(())));
        assert!(matches!(r, Err(Error::Symlink { .. })), "{r:?}");
        assert!(
            fs::symlink_metadata(&store.path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs::read(&target).unwrap(),
            br#"{"capacity": 2, "holders": []}"#
        );
    }
}
