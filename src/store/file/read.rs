//! Reading the state file: never through a symlink, never blocking on a FIFO, never more
//! than [`MAX_STATE_BYTES`], only a regular file of a trusted owner.
//!
//! # The document this handle wrote last
//!
//! A step that writes the state file keeps what it wrote ([`Written`]): the document, and the
//! file itself, open. The next step of the same handle uses that document instead of reading
//! and parsing the file again if one `fstatat` of `PATH` finds exactly that file unchanged:
//! the same device and inode, size, mode, owner, link count, and modification and change
//! times to the nanosecond, as looked up right after the rename.
//!
//! - **Another writer of the protocol** (this crate in another handle or process, the Go
//!   package, the CLI) replaces the file by `rename`: `PATH` then names another inode. The
//!   kept inode cannot have been freed and its number given to the new file, because the
//!   kept descriptor holds it open.
//! - **A writer that changes the file in place** (an editor, `echo > PATH`, `chmod`, a hard
//!   link) changes its change time, and its size or modification time. Since Linux 6.13 the
//!   kernel gives a change made after the time was looked up a fine-grained, strictly later
//!   time on tmpfs, ext4, xfs and btrfs; on older kernels or other filesystems such a change
//!   within the same clock tick (1 to 10 ms) that keeps the size goes unseen. Every writer of
//!   the protocol replaces the file instead; a writer that ignores the lock can corrupt the
//!   state whatever readers do.
//!
//! A step that fails or writes nothing drops what was kept (a rule may have changed the
//! document in memory before it failed), and the next step reads the file.

use std::fs::File;
use std::io::{self, Read};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, fstat};

use super::FileStore;
use super::atomic::FileMeta;
use super::dir::{self, Want, file_id, mode};
use crate::core::doc::Document;
use crate::error::{Error, Result};

/// What a step wrote last (see the [module docs](self)).
pub(crate) struct Written {
    /// The document, as the file holds it (parsing the file would give exactly this).
    pub doc: Document,
    /// The mode and owner of the file.
    pub meta: FileMeta,
    /// The file, kept open so that its inode cannot be freed and its number reused.
    #[allow(dead_code)] // Never read: holding it open is its job.
    file: File,
    /// Its status right after it was renamed to `PATH`.
    pub stat: FileStat,
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written")
            .field("ino", &self.stat.st_ino)
            .finish_non_exhaustive()
    }
}

impl Written {
    /// What a step just wrote: `doc` in `file`, whose status after the rename is `stat`.
    pub fn new(doc: Document, file: File, stat: FileStat) -> Written {
        Written {
            doc,
            meta: FileMeta {
                mode: dir::perm_bits(&stat),
                owner: Some((stat.st_uid, stat.st_gid)),
            },
            file,
            stat,
        }
    }
}

/// Whether `now` is the status of the file whose status after the rename was `then`, unchanged.
fn unchanged(now: &FileStat, then: &FileStat) -> bool {
    file_id(now) == file_id(then)
        && now.st_size == then.st_size
        && now.st_mode == then.st_mode
        && (now.st_uid, now.st_gid) == (then.st_uid, then.st_gid)
        && now.st_nlink == then.st_nlink
        && (now.st_mtime, now.st_mtime_nsec) == (then.st_mtime, then.st_mtime_nsec)
        && (now.st_ctime, now.st_ctime_nsec) == (then.st_ctime, then.st_ctime_nsec)
}

impl FileStore {
    /// Reads the current document for a step, under the lock: what this handle wrote last if
    /// `PATH` is still exactly that file (see the [module docs](self)), else the file as
    /// [`read`](FileStore::read) reads it. Whatever was kept is dropped either way.
    pub(super) fn read_for_step(&self) -> Result<Option<(Document, FileMeta)>> {
        let kept = self.take_written();
        if let Some(written) = kept {
            let files = &self.files;
            if let Ok(Some(st)) = files.stat_at(files.dir(), files.state_name.as_os_str())
                && unchanged(&st, &written.stat)
            {
                return Ok(Some((written.doc, written.meta)));
            }
        }
        self.read()
    }

    /// Takes what a step wrote last, if it was kept.
    fn take_written(&self) -> Option<Written> {
        super::cache(&self.written).and_then(|mut written| written.take())
    }

    /// The document the last step kept, once no step of another thread is under way (for
    /// tests of the API above, which cannot see inside the store).
    #[cfg(test)]
    pub(crate) fn kept_document(&self) -> Option<Document> {
        let _inside = self.gate.enter(None);
        let written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        written.as_ref().map(|w| w.doc.clone())
    }

    /// Keeps what a step just wrote, for the next step.
    pub(super) fn keep_written(&self, written: Written) {
        if let Some(mut kept) = super::cache(&self.written) {
            *kept = Some(written);
        }
    }

    /// Reads the current document without the lock; `None` when there is no state file.
    /// Records that this handle has seen the state file ([`FileStore::saw_state`]).
    pub(super) fn read(&self) -> Result<Option<(Document, FileMeta)>> {
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
        self.saw_state();
        Ok(Some((doc, meta)))
    }

    /// Reads the state file's bytes, without ever blocking on a FIFO or reading more than
    /// [`MAX_STATE_BYTES`]. Anything but a regular file of a trusted owner is refused.
    pub(super) fn read_raw(&self) -> Result<Raw> {
        let Some((file, st)) = self.open_state()? else {
            return Ok(Raw::Missing);
        };
        read_all(file, &st).map_err(|e| self.io_error("read semaphore state at", e))
    }

    /// Up to `limit` bytes of the state file (a regular file of a trusted owner; never
    /// blocking on a FIFO); empty when there is none.
    pub(super) fn read_prefix(&self, limit: u64) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        if let Some((file, _)) = self.open_state()? {
            file.take(limit)
                .read_to_end(&mut bytes)
                .map_err(|e| self.io_error("read semaphore state at", e))?;
        }
        Ok(bytes)
    }

    /// Opens the state file for reading and checks it: `None` when it is absent.
    pub(super) fn open_state(&self) -> Result<Option<(File, FileStat)>> {
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
    pub(super) fn check_state(&self, st: &FileStat) -> Result<()> {
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
    pub(super) fn check_not_symlink(&self) -> Result<bool> {
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
}

/// The largest state file that is read, in bytes: 64 MiB, room for well over 100 000 holders.
/// A larger file is [`Error::Corrupt`] rather than read into memory (a sparse file of a few
/// terabytes would otherwise abort the process).
pub(crate) const MAX_STATE_BYTES: u64 = 64 << 20;

/// What [`FileStore::read_raw`] found at the state path.
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
