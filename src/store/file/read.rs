//! Reading the state file: never through a symlink, never blocking on a FIFO, never more
//! than [`MAX_STATE_BYTES`], only a regular file of a trusted owner.

use std::fs::File;
use std::io::{self, Read};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, fstat};

use super::FileStore;
use super::atomic::FileMeta;
use super::dir::{self, Want, mode};
use crate::core::doc::Document;
use crate::error::{Error, Result};

impl FileStore {
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
