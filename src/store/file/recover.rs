//! Recovery from a corrupt state file: its bytes kept aside as `PATH.corrupt-<UTC time>`, and
//! `PATH` replaced by an empty semaphore whose token counter is above every token the old
//! file can have handed out.
//!
//! # Never without a state file
//!
//! The corrupt file is *linked* to its aside name, and the new state replaces `PATH` by the
//! same atomic write as every other change (temp file, `fsync`, `renameat` over `PATH`). So
//! `PATH` exists at every moment: before the rename it is the corrupt file (every operation
//! still fails with [`Error::Corrupt`]), after it the new state. A recovery that fails (a full
//! disk, an I/O error) or is killed cannot leave the path empty, where the next `open` would
//! create a new semaphore whose counter starts again at 1 and hands out fencing tokens that
//! the old one used already. The corrupt bytes stay reachable: under `PATH` until the rename,
//! under the aside name from the link on. A recovery that fails with an error removes the
//! aside name it made (the bytes are still at `PATH`), so that it changes nothing; one that is
//! killed between the link and the rename leaves both names, and the next one links again.
//!
//! Where the file system refuses a hard link (`EPERM`, as `fs.protected_hardlinks` refuses a
//! user who may not write another user's file; `EMLINK`; `EOPNOTSUPP`), the bytes are copied
//! to the aside name instead.
//!
//! # Modes
//!
//! A corrupt file may have been planted by anyone who can write the directory, with any mode.
//! Every mode recovery sets derives from the corrupt file's without set-user-ID, set-group-ID,
//! sticky, world-write and execute bits, and with read and write for the owner (the new
//! file's owner is the recovering user): [`recovered_mode`]. The lock file, when recovery
//! creates it, and the tightening of an existing one this user owns, derive from that mode
//! too, never from the corrupt file's.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use chrono::Utc;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, fchmod};
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};

use super::atomic::{self, FileMeta};
use super::dir::{self, access_mode, mode};
use super::read::MAX_STATE_BYTES;
use super::{FileStore, LockWait, Settings};
use crate::core::doc::Document;
use crate::core::tokens::token_floor;
use crate::error::{Error, Result};

/// The mode of the state file that replaces a corrupt one of mode `corrupt`: its read and
/// write bits without world-write, plus read and write for the owner (0666 -> 0664, 6777 ->
/// 0664, 0775 -> 0664, 0444 -> 0644, 0600 -> 0600).
pub(super) fn recovered_mode(corrupt: u32) -> u32 {
    (corrupt & 0o664) | 0o600
}

/// How the corrupt bytes were put aside.
enum Aside {
    /// A hard link to the corrupt file (the same inode).
    Link(FileStat),
    /// A copy of its bytes.
    Copy,
}

impl FileStore {
    /// The store of the semaphore at `path` if its state file exists, for recovery; `None`
    /// when it (or its directory) does not. Refuses another semaphore's lock file
    /// ([`Error::IsLockFile`]) and a symlink at `path` ([`Error::Symlink`]).
    pub fn open_for_recovery(path: &Path, settings: &Settings<'_>) -> Result<Option<FileStore>> {
        let store = match FileStore::bind(path, settings) {
            Err(Error::NotFound { .. }) => return Ok(None),
            other => other?,
        };
        store.check_not_a_lock_file()?;
        let exists = store.check_not_symlink()?;
        Ok(exists.then_some(store))
    }

    /// Under the lock, without parsing anything first: if the state file does not parse (or
    /// is too large), keeps its bytes under an aside name and replaces it by an empty
    /// semaphore with `capacity` slots and a token counter above every token and ticket found
    /// in its bytes and above the clock (see the [module docs](self)). Returns the aside
    /// path; `None` when the file was valid (nothing changed but the lock file's mode).
    ///
    /// Only a regular file of a trusted owner is set aside (anything else is refused by the
    /// read, untouched). On failure every file is as it was (the lock file aside, which may
    /// have been created).
    pub fn recover(&self, capacity: u32) -> Result<Option<PathBuf>> {
        let path = self.path();
        let files = &self.files;
        self.locked(true, LockWait::Timeout, recovered_mode, |guard, dir| {
            let bytes = match self.read() {
                Ok(Some((_, meta))) => {
                    guard.tighten(files, access_mode(meta.mode));
                    return Ok(None);
                }
                // Absent since it was looked up: the caller creates a semaphore.
                Ok(None) => return Err(self.not_found()),
                // Tokens are looked for in what can be read safely: the first bytes of a
                // file over the size limit.
                Err(Error::Corrupt { .. }) => self.read_prefix(MAX_STATE_BYTES)?,
                Err(e) => return Err(e),
            };
            if self.durable {
                files.check_syncable()?;
            }
            let name = files.state_name.as_os_str();
            let corrupt = files
                .stat_at(files.dir(), name)
                .map_err(|e| self.io_error("look up semaphore state at", e))?
                .ok_or_else(|| self.not_found())?;
            let mode = recovered_mode(dir::perm_bits(&corrupt));
            let stamp = Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
            let aside_name = {
                let mut n = name.to_os_string();
                n.push(format!(".corrupt-{stamp}"));
                n
            };
            let aside_path = dir::parent_dir(path).join(&aside_name);
            let aside = self.set_aside(&aside_name, &aside_path, &corrupt, mode)?;
            let mut doc = Document::new(capacity);
            doc.next_token = Some(token_floor(&bytes, Utc::now()));
            let meta = FileMeta { mode, owner: None };
            let written = atomic::write_atomic(files, &doc.to_bytes(), meta, self.durable, dir);
            if let Err(e) = written {
                // The corrupt file is still at PATH: the aside name goes, and nothing changed.
                self.remove_aside(&aside_name, &aside_path, &aside);
                return Err(e);
            }
            self.saw_state();
            guard.tighten(files, access_mode(mode));
            tracing::warn!(path = %path.display(), aside = %aside_path.display(), "recovered corrupt semaphore state");
            Ok(Some(aside_path))
        })
    }

    /// Makes the corrupt file (status `corrupt`) reachable under `aside_name` too: a hard
    /// link, or where the file system refuses one, a copy of its bytes with mode `mode`.
    fn set_aside(
        &self,
        aside_name: &std::ffi::OsStr,
        aside_path: &Path,
        corrupt: &FileStat,
        mode: u32,
    ) -> Result<Aside> {
        let files = &self.files;
        let name = files.state_name.as_os_str();
        let linked = linkat(files.dir(), name, files.dir(), aside_name, AtFlags::empty());
        match linked {
            Ok(()) => Ok(Aside::Link(*corrupt)),
            Err(Errno::EPERM | Errno::EMLINK | Errno::EOPNOTSUPP) => {
                self.copy_aside(aside_name, aside_path, mode)?;
                Ok(Aside::Copy)
            }
            Err(e) => Err(Error::io(
                self.path(),
                aside_path,
                "keep the corrupt state file as",
                e.into(),
            )),
        }
    }

    /// Copies the state file's bytes to a new file `aside_name` (mode `mode`, exactly),
    /// flushed if writes are durable; a failed copy removes what it created.
    fn copy_aside(
        &self,
        aside_name: &std::ffi::OsStr,
        aside_path: &Path,
        mode_bits: u32,
    ) -> Result<()> {
        let files = &self.files;
        let failed =
            |e: io::Error| Error::io(self.path(), aside_path, "copy the corrupt state file to", e);
        let Some((mut source, _)) = self.open_state()? else {
            return Err(self.not_found());
        };
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(files.dir(), aside_name, flags, mode(mode_bits))
            .map_err(|e| failed(e.into()))?;
        let mut copy = File::from(fd);
        let copied = fchmod(&copy, mode(mode_bits))
            .map_err(io::Error::from)
            .and_then(|()| io::copy(&mut source, &mut copy))
            .and_then(|_| {
                if self.durable {
                    copy.sync_data()
                } else {
                    Ok(())
                }
            });
        if let Err(e) = copied {
            if let Err(removing) = unlinkat(files.dir(), aside_name, UnlinkatFlags::NoRemoveDir) {
                tracing::warn!(file = %aside_path.display(), error = %removing, "failed to remove a partial copy of the corrupt state");
            }
            return Err(failed(e));
        }
        Ok(())
    }

    /// Removes the aside name a failed recovery made, if it still names what it made (for a
    /// link: the corrupt file's inode). A failure to remove it is logged: the corrupt bytes
    /// are then at both names, and the state is as it was.
    fn remove_aside(&self, aside_name: &std::ffi::OsStr, aside_path: &Path, aside: &Aside) {
        let files = &self.files;
        let ours = match (files.stat_at(files.dir(), aside_name), aside) {
            (Ok(Some(st)), Aside::Link(corrupt)) => dir::file_id(&st) == dir::file_id(corrupt),
            (Ok(Some(st)), Aside::Copy) => dir::is_regular(&st),
            _ => false,
        };
        if !ours {
            return;
        }
        if let Err(e) = unlinkat(files.dir(), aside_name, UnlinkatFlags::NoRemoveDir) {
            tracing::warn!(path = %self.path().display(), aside = %aside_path.display(), error = %e, "failed to remove the aside name of a recovery that failed");
        }
    }
}
