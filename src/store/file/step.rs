//! What a file store step does with files besides the document: the witness file of a new
//! hold or waiter (before the entry naming it is written), cleanup after killed processes
//! when the rule asks for it, and the witness files of reaped entries once the write that
//! removed them has committed.

use std::cell::Cell;
use std::io;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::FileStore;
use super::dir::{self, DirStatus, Want, access_mode, witness_dir_mode};
use super::identity::Identity;
use super::lock::LockGuard;
use super::witness::{self, Created, WitnessDir};
use crate::core::doc::{Document, Entry, MAX_TOKEN};
use crate::core::queue::Stamp;
use crate::core::rules::Removed;
use crate::core::tokens::{take_token, tokens_exhausted};
use crate::core::verdict::Judge;
use crate::error::{Error, Result};
use crate::store::NewHold;

/// What one locked step knows about the semaphore's files, for the files its rule makes.
pub(crate) struct FileStep<'s> {
    store: &'s FileStore,
    /// The directory's status (looked up when first needed): who is trusted in it.
    dir: &'s DirStatus<'s>,
    /// The state file's mode (or the create mode for a new one): lock and witness modes
    /// derive from it.
    state_mode: u32,
    /// Set when this step creates the witness directory (removed again if the step fails).
    witness_dir_created: &'s Cell<bool>,
}

impl<'s> FileStep<'s> {
    pub(super) fn new(
        store: &'s FileStore,
        dir: &'s DirStatus<'s>,
        state_mode: u32,
        witness_dir_created: &'s Cell<bool>,
    ) -> FileStep<'s> {
        FileStep {
            store,
            dir,
            state_mode: state_mode & 0o7777,
            witness_dir_created,
        }
    }

    /// The store's judge: witness locks, pids, boot ids.
    pub(crate) fn judge(&self) -> &'s dyn Judge {
        &self.store.judge
    }

    /// Takes the next number of the token counter (the fencing token of a direct grant, or
    /// the ticket of a waiter) and, for a process-bound hold, creates and locks its witness
    /// file named by it (before the entry naming it is written). Skips numbers whose witness
    /// file exists already (possible after a Go write dropped the counter). The owner is this
    /// process's identity.
    pub(crate) fn new_hold(&mut self, doc: &mut Document, detached: bool) -> Result<NewHold> {
        let store = self.store;
        for _ in 0..64 {
            if tokens_exhausted(doc) {
                // Never hand out a token twice: fail closed.
                return Err(Error::TokensExhausted {
                    path: store.path().to_path_buf(),
                });
            }
            let number = take_token(doc);
            let witness = if detached {
                None
            } else {
                match self.create_witness(number)? {
                    Created::Locked(lock) => Some(lock),
                    Created::Taken => continue,
                }
            };
            let stamp = Stamp {
                number,
                owner: Identity::current().owner(),
                witness: witness.as_ref().map(|w| w.record.clone()),
            };
            return Ok(NewHold { stamp, witness });
        }
        Err(Error::io(
            store.path(),
            &store.files.witness_path,
            "find a free witness name in",
            io::Error::from(io::ErrorKind::AlreadyExists),
        ))
    }

    /// Creates and locks the witness file for `token` (creating the witness directory if
    /// needed), with modes derived from the state file's.
    fn create_witness(&self, token: u64) -> Result<Created> {
        let wdir = self.witness_dir_for_create()?;
        if wdir.created {
            self.witness_dir_created.set(true);
        }
        witness::create(
            &self.store.files,
            &self.store.spares,
            &wdir,
            token,
            access_mode(self.state_mode),
        )
    }

    /// The witness directory, created if absent: the one opened last if `PATH.witness` still
    /// names it (one `fstatat`; its type and owner are checked again on that status), else
    /// opened (and checked) afresh.
    fn witness_dir_for_create(&self) -> Result<WitnessDir> {
        let files = &self.store.files;
        let cached = super::cache(&self.store.witness_dir).and_then(|dir| dir.clone());
        if let Some((fd, opened)) = cached
            && let Ok(Some(now)) = files.stat_at(files.dir(), files.witness_name.as_os_str())
            && dir::file_id(&now) == dir::file_id(&opened)
        {
            let parent = dir::parent_dir(&files.path);
            files.check(
                &files.witness_path,
                &now,
                Want::Dir,
                || self.dir.get(),
                parent,
            )?;
            return Ok(WitnessDir {
                fd,
                stat: now,
                created: false,
            });
        }
        let dir_mode = witness_dir_mode(self.state_mode, dir::mode_bits(&self.dir.get()?));
        let wdir = witness::open_dir(files, self.dir, Some(dir_mode))?.ok_or_else(|| {
            let missing = io::Error::from(io::ErrorKind::NotFound);
            files.io(&files.witness_path, "create the witness directory", missing)
        })?;
        if let Some(mut cached) = super::cache(&self.store.witness_dir) {
            *cached = Some((Arc::clone(&wdir.fd), wdir.stat));
        }
        Ok(wdir)
    }
}

impl FileStore {
    /// Where the token counter of a semaphore that this step creates starts: `None` (at 1)
    /// for the first semaphore at this path, else above every fencing token an earlier one
    /// can have handed out.
    ///
    /// The lock file is never deleted, so a lock file that was there before this step (or a
    /// witness directory) is the trace of an earlier semaphore at this path whose state file
    /// was removed since: deleted by hand, or lost to a crash of an older version's
    /// `recover`. Its holders may still hold fencing tokens, and a counter that started at 1
    /// again would hand out smaller ones: a fenced resource would refuse the new holders, or
    /// worse, take a stale token for a new one. So the counter starts at the clock in
    /// microseconds since 1970 (`now`), as after a foreign write that dropped the counter
    /// ([`resume_token_counter`](crate::core::tokens::resume_token_counter)), and above every
    /// number a witness file there is named by (in case the clock went back). Names above
    /// [`MAX_TOKEN`] were not made by filesem and are ignored. A lock file that a failed
    /// first attempt left behind costs nothing but larger numbers.
    ///
    /// Lists the witness directory if there is one (checked as every witness directory is).
    pub(super) fn counter_floor_here(
        &self,
        lock: &LockGuard,
        dir: &DirStatus<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<u64>> {
        let files = &self.files;
        let witness_dir = witness::open_dir(files, dir, None)?;
        if lock.created && witness_dir.is_none() {
            return Ok(None);
        }
        let micros = u64::try_from(now.timestamp_micros()).unwrap_or(0);
        let mut floor = micros.max(1);
        if let Some(wdir) = witness_dir {
            let names = dir::names_in(wdir.fd())
                .map_err(|e| files.io(&files.witness_path, "list the witness directory", e))?;
            let taken = names
                .iter()
                .filter_map(|n| n.to_str()?.parse::<u64>().ok())
                .filter(|&n| n <= MAX_TOKEN);
            for n in taken {
                floor = floor.max(n + 1);
            }
        }
        Ok(Some(floor.min(MAX_TOKEN + 1)))
    }

    /// Removes temp files left by killed writers (listing the directory) and witness files
    /// that no entry of `doc` refers to and nobody holds. Under the lock, before the write.
    pub(super) fn tidy(&self, doc: &Document, dir: &DirStatus<'_>) -> Result<()> {
        let mut leftovers = super::atomic::remove_leftovers(&self.files, dir)?;
        if let Some(wdir) = witness::open_dir(&self.files, dir, None)? {
            leftovers.extend(witness::remove_orphans(
                &self.files,
                &wdir,
                &witness_names(doc),
            )?);
        }
        for file in leftovers {
            tracing::info!(path = %self.path().display(), file = %file.display(), "removed leftover file");
        }
        Ok(())
    }

    /// Logs the entries a step reaped and deletes their witness files, once the write that
    /// removed them has committed. Failures are logged: the write stands.
    pub(super) fn forget_reaped(&self, dir: &DirStatus<'_>, reaped: &[Removed]) {
        let wdir = witness::open_dir(&self.files, dir, None).unwrap_or_else(|e| {
            tracing::warn!(path = %self.path().display(), error = %e, "cannot remove the witness files of reaped entries");
            None
        });
        witness::forget_reaped(&self.files, wdir.as_ref(), reaped);
    }
}

/// The names of the witness files that entries on file refer to (a ticket, or a token for a
/// hold granted directly): what orphan cleanup must leave alone.
fn witness_names(doc: &Document) -> Vec<u64> {
    doc.holders
        .iter()
        .chain(&doc.waiters)
        .filter_map(Entry::witness_name)
        .collect()
}
