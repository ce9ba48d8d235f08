//! The file store: one locked step ("lock, read, apply a rule, write if changed, unlock") and
//! a lock-free snapshot for queries.
//!
//! Queries need no lock: every writer (ours and the Go package) replaces the state file by
//! `rename`, so a reader always sees one complete version.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::atomic::{self, FileMeta};
use crate::error::{Error, Result};
use crate::lock::{self, LockGuard};
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
    /// polling) rather than on the lock file. Held only for one step.
    mutex: Mutex<()>,
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
            mutex: Mutex::new(()),
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

    /// Takes the lock file, creating it if absent.
    fn lock(&self) -> Result<LockGuard> {
        lock::lock_exclusive(
            &self.path,
            &self.lock_path,
            self.create_mode,
            self.lock_timeout,
        )
    }

    /// Reads the current document without the lock; `None` when there is no state file.
    pub fn read(&self) -> Result<Option<(Document, FileMeta)>> {
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(self.symlink()),
            Err(e) => return Err(self.io_error("read semaphore state at", e)),
        };
        let (bytes, meta) =
            read_all(file).map_err(|e| self.io_error("read semaphore state at", e))?;
        let doc = Document::parse(&bytes).map_err(|reason| Error::Corrupt {
            path: self.path.clone(),
            reason,
        })?;
        Ok(Some((doc, meta)))
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
        let _serial = self.mutex.lock().unwrap_or_else(|p| p.into_inner());
        let guard = if may_create {
            self.lock()?
        } else {
            match lock::lock_exclusive_existing(&self.path, &self.lock_path, self.lock_timeout)? {
                Some(guard) => guard,
                None => {
                    self.check_exists()?;
                    self.lock()?
                }
            }
        };
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

/// Reads the whole file after one `fstat` (for its size, mode and owner). Unlike
/// `File::read_to_end`, which asks for the size again (`statx` and `lseek`), this makes only
/// the `read` calls: two system calls fewer on every operation.
fn read_all(mut file: File) -> io::Result<(Vec<u8>, FileMeta)> {
    let m = file.metadata()?;
    // One byte more than the size, so that the read that finds the end needs no growth.
    let mut bytes = vec![0; usize::try_from(m.len()).unwrap_or(0).saturating_add(1)];
    let mut filled = 0;
    loop {
        if filled == bytes.len() {
            // The file grew since the fstat (a writer that does not replace it by rename).
            bytes.resize(bytes.len().saturating_mul(2), 0);
        }
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(filled);
    let meta = FileMeta {
        mode: m.mode() & 0o7777,
        owner: Some((m.uid(), m.gid())),
    };
    Ok((bytes, meta))
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
