//! Kernel-held witness files: the strongest evidence that a holder is alive.
//!
//! Each process-bound hold creates `PATH.witness/<token>` (named by fencing token, never by
//! holder ID, which may be `../x`), locks it with flock *before* the entry naming it is
//! written, and records its device and inode in the entry. The kernel drops the lock when the
//! last descriptor of that open file closes, i.e. when the holder (and any child that inherited
//! the descriptor) is gone. So: lock held = alive; lock free (same file) = dead; file missing or
//! replaced = no evidence.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};

use crate::error::{Error, Result};
use crate::lock::unlock;
use crate::state::Witness;

/// The witness directory of the semaphore at `path`: `PATH.witness`.
pub(crate) fn dir_of(path: &Path) -> PathBuf {
    let mut d = path.as_os_str().to_os_string();
    d.push(".witness");
    PathBuf::from(d)
}

/// A held witness lock. Dropping it in the process that created it unlocks and removes the
/// file; [`WitnessLock::abandon`] leaves both alone (a forked child).
pub(crate) struct WitnessLock {
    flock: Option<Flock<File>>,
    path: PathBuf,
    pub record: Witness,
}

impl std::fmt::Debug for WitnessLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitnessLock")
            .field("path", &self.path)
            .finish()
    }
}

/// The outcome of creating a witness for a token.
pub(crate) enum Created {
    Locked(WitnessLock),
    /// A file with that name exists already (a token reused after a Go write or recovery):
    /// the caller takes another token.
    Taken,
}

/// Creates and locks the witness file for `token`. `mode` is the state file's create mode; the
/// directory gets the same permissions plus search bits.
pub(crate) fn create(state_path: &Path, token: u64, mode: u32) -> Result<Created> {
    let dir = dir_of(state_path);
    let file_path = dir.join(token.to_string());
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o666)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&file_path)
    };
    let file = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_dir(&dir, mode)
                .map_err(|e| Error::io(state_path, &dir, "create the witness directory", e))?;
            open()
        }
        other => other,
    };
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Created::Taken),
        Err(e) => return Err(Error::io(state_path, &file_path, "create witness file", e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io(state_path, &file_path, "stat witness file", e))?;
    let flock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        Error::io(
            state_path,
            &file_path,
            "lock witness file",
            io::Error::from(errno),
        )
    })?;
    Ok(Created::Locked(WitnessLock {
        flock: Some(flock),
        path: file_path,
        record: Witness {
            dev: meta.dev(),
            ino: meta.ino(),
            extra: Default::default(),
        },
    }))
}

fn create_dir(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    // rw bits of the file mode, plus x wherever r is set: 0644 -> 0755, 0664 -> 0775.
    let dir_mode = (mode & 0o666) | ((mode & 0o444) >> 2);
    match fs::DirBuilder::new().mode(dir_mode).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

impl WitnessLock {
    /// A descriptor of the locked witness without `O_CLOEXEC`, for a child process to inherit:
    /// the hold then stays alive while the child runs.
    pub fn inheritable(&self) -> io::Result<OwnedFd> {
        let flock = self
            .flock
            .as_ref()
            .ok_or_else(|| io::Error::other("witness already released"))?;
        nix::unistd::dup(flock.as_fd()).map_err(io::Error::from)
    }

    /// Removes the file and unlocks it (the entry naming it must already be gone or detached).
    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        let Some(flock) = self.flock.take() else {
            return;
        };
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(witness = %self.path.display(), error = %e, "failed to remove witness file");
            }
        }
        unlock(flock, "witness");
    }

    /// Leaves the lock and the file alone (in a forked child, whose parent owns the hold):
    /// unlocking here would unlock the parent's witness too, as both share one open file.
    pub fn abandon(mut self) {
        if let Some(flock) = self.flock.take() {
            std::mem::forget(flock);
        }
    }
}

impl Drop for WitnessLock {
    fn drop(&mut self) {
        self.release_inner();
    }
}

/// What probing a recorded witness found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Someone holds the lock.
    Held,
    /// The same file exists and nobody holds its lock.
    Free,
    /// The file is gone or is another file: no evidence.
    Missing,
    /// The file could not be examined (permissions, I/O): no evidence.
    Unreadable(String),
}

/// Examines the witness of the entry with `token`, recorded as `record`. Takes a shared lock
/// for an instant if the file is free (and releases it at once).
pub(crate) fn probe(state_path: &Path, token: u64, record: &Witness) -> Probe {
    let path = dir_of(state_path).join(token.to_string());
    let file = match open_existing(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Probe::Missing,
        Err(e) => return Probe::Unreadable(e.to_string()),
    };
    match file.metadata() {
        // We only ever create regular files: anything else was put there by someone else.
        Ok(m) if m.is_file() && m.dev() == record.dev && m.ino() == record.ino => {}
        Ok(_) => return Probe::Missing,
        Err(e) => return Probe::Unreadable(e.to_string()),
    }
    try_shared(file)
}

/// Opens an existing witness file for reading without following a symlink and without
/// blocking: a FIFO planted under a witness name would otherwise block the opener (who may hold
/// the state lock) until some writer comes.
fn open_existing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
}

fn try_shared(mut file: File) -> Probe {
    loop {
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(flock) => {
                unlock(flock, "witness probe");
                return Probe::Free;
            }
            Err((_, Errno::EWOULDBLOCK)) => return Probe::Held,
            Err((f, Errno::EINTR)) => file = f,
            Err((_, errno)) => return Probe::Unreadable(errno.desc().to_string()),
        }
    }
}

/// Logs entries that were reaped (their removal is on disk) and deletes their witness files
/// if nobody holds them. Called under the state lock.
pub(crate) fn forget_reaped(state_path: &Path, reaped: &[crate::rules::Removed]) {
    for r in reaped {
        tracing::info!(
            path = %state_path.display(),
            id = %r.entry.id,
            token = r.entry.token,
            evidence = r.verdict.evidence(),
            "reaped stale {}",
            if r.was_waiter { "waiter" } else { "holder" }
        );
        if let (Some(token), Some(record)) = (r.entry.token, &r.entry.witness) {
            if probe(state_path, token, record) == Probe::Free {
                let _ = fs::remove_file(dir_of(state_path).join(token.to_string()));
            }
        }
    }
}

/// Removes witness files no entry refers to and nobody holds (left by a process killed between
/// creating its witness and writing its entry, or by reaped holders). Call under the state lock.
pub(crate) fn remove_orphans(state_path: &Path, live_tokens: &[u64]) -> Vec<PathBuf> {
    let dir = dir_of(state_path);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(token) = name.to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if live_tokens.contains(&token) {
            continue;
        }
        // Only our own kind of file: a symlink is not followed, a FIFO not waited on.
        let Ok(file) = open_existing(&entry.path()) else {
            continue;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        if let Ok(flock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            if fs::remove_file(entry.path()).is_ok() {
                removed.push(entry.path());
            }
            unlock(flock, "orphan witness");
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sees_held_free_and_replaced_witness() {
        // Held means alive, free means dead, a replaced file is no evidence.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.json");
        let Created::Locked(lock) = create(&state, 7, 0o644).unwrap() else {
            panic!("token 7 should be free");
        };
        let record = lock.record.clone();
        assert_eq!(probe(&state, 7, &record), Probe::Held);
        assert!(matches!(create(&state, 7, 0o644).unwrap(), Created::Taken));
        let fd = lock.inheritable().unwrap();
        // Unlocking through the guard also releases the duplicate's lock (one open file).
        drop(fd);
        assert_eq!(probe(&state, 7, &record), Probe::Held);
        lock.release();
        assert_eq!(probe(&state, 7, &record), Probe::Missing);

        fs::write(dir_of(&state).join("8"), b"").unwrap();
        let stale = Witness {
            dev: record.dev,
            ino: fs::metadata(dir_of(&state).join("8")).unwrap().ino(),
            extra: Default::default(),
        };
        assert_eq!(probe(&state, 8, &stale), Probe::Free);
        let other = Witness {
            ino: stale.ino + 1,
            ..stale.clone()
        };
        assert_eq!(probe(&state, 8, &other), Probe::Missing);
        assert_eq!(remove_orphans(&state, &[]), vec![dir_of(&state).join("8")]);
    }
}
