//! Recovery from a corrupt state file: moved aside to `PATH.corrupt-<UTC time>`, replaced
//! by an empty semaphore whose token counter is above every token the old file can have
//! handed out.

use std::path::{Path, PathBuf};

use chrono::Utc;

use super::atomic::{self, FileMeta};
use super::dir;
use super::read::MAX_STATE_BYTES;
use super::{FileStore, LockWait, Settings};
use crate::core::doc::Document;
use crate::core::tokens::token_floor;
use crate::error::{Error, Result};

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
    /// is too large), moves it aside and writes an empty semaphore with `capacity` slots and
    /// a token counter above every token and ticket found in its bytes and above the clock.
    /// Returns where the old file went; `None` when it was valid (nothing changed).
    ///
    /// Only a regular file of a trusted owner is moved aside (anything else is refused by the
    /// read, untouched). The new file keeps the old one's mode without set-id, sticky and
    /// world-write bits.
    pub fn recover(&self, capacity: u32) -> Result<Option<PathBuf>> {
        let path = self.path();
        let files = &self.files;
        self.locked(true, LockWait::Timeout, |_, dir| {
            let bytes = match self.read() {
                Ok(_) => return Ok(None),
                // Tokens are looked for in what can be read safely: the first bytes of a
                // file over the size limit.
                Err(Error::Corrupt { .. }) => self.read_prefix(MAX_STATE_BYTES)?,
                Err(e) => return Err(e),
            };
            let name = files.state_name.as_os_str();
            let old_mode = files
                .stat_at(files.dir(), name)
                .map_err(|e| self.io_error("look up semaphore state at", e))?
                .map_or(self.create_mode, |st| dir::perm_bits(&st));
            // Never pass on set-id, sticky or world-write bits of a file someone planted.
            let mode = old_mode & 0o775;
            let stamp = Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
            let aside_name = {
                let mut n = name.to_os_string();
                n.push(format!(".corrupt-{stamp}"));
                n
            };
            let aside = dir::parent_dir(path).join(&aside_name);
            nix::fcntl::renameat(files.dir(), name, files.dir(), aside_name.as_os_str())
                .map_err(|e| Error::io(path, &aside, "move the corrupt state file to", e.into()))?;
            let mut doc = Document::new(capacity);
            doc.next_token = Some(token_floor(&bytes, Utc::now()));
            let meta = FileMeta { mode, owner: None };
            atomic::write_atomic(files, &doc.to_bytes(), meta, self.durable, dir)?;
            tracing::warn!(path = %path.display(), aside = %aside.display(), "recovered corrupt semaphore state");
            Ok(Some(aside))
        })
    }
}
