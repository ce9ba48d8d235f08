//! Spare witness files: locked files a handle keeps ready in the witness directory, so that a
//! new hold costs one `linkat` and its end one `unlinkat`, instead of creating, inspecting,
//! locking, unlinking, unlocking and closing a file each time.
//!
//! A spare is a regular file `PATH.witness/spare-<16 hex digits>`, created exclusively with the
//! witness files' mode and flock'd by the handle for as long as it keeps it. A new hold
//! numbered `N` gets a hard link `PATH.witness/N` to a spare (before its entry is written, as
//! before) and records the spare's device and inode; the end of the hold removes the link and
//! the spare waits for the next hold. So a witness is exactly as it was: the file its entry
//! names, locked exactly while the process that holds it lives.
//!
//! Why that stays evidence of exactly the same strength:
//!
//! - **A spare proves nothing by itself.** Judges look a witness up by the number its entry
//!   names and compare device and inode; no entry names a spare's own name. A spare is lent to
//!   one hold at a time, and only after the entry that named it is gone from the file (or was
//!   never written: a step that fails removes the link again).
//! - **A spare is never shared with another process.** flock locks belong to the open file
//!   description, which a forked child shares: a spare kept across a `fork` would stay locked
//!   while the child lives, and a hold lent that spare after the fork would look alive for as
//!   long as the child runs, whatever became of its own process. So a spare is lent only by the
//!   process that created it (its pid) and only if that process has not forked since
//!   ([`forks`]): otherwise it is retired (its name unlinked, and closed) and a new one made.
//!   A child process never unlocks or removes its parent's spares.
//! - **A hold whose witness may outlive it is not lent again.** A witness handed to a child
//!   process (`Permit::inherit_witness`), or left unlocked as evidence of death after a
//!   release that could not be written, is retired at the end of its hold, never reused.
//! - **A crash leaves nothing that is judged wrongly.** A killed process's spares and links
//!   are unlocked at once: an entry naming such a link is judged dead, as before; the link of
//!   a hold whose entry was never written, and the spares themselves, are named by no entry
//!   and are removed by the next cleanup ([`super::witness::remove_orphans`]), which removes
//!   only regular files of a trusted owner, with a spare's exact name pattern, that nobody
//!   holds locked.
//!
//! A handle keeps at most [`KEPT`] spares; a dropped handle retires its spares. Spares live in
//! the witness directory because a dying process's witnesses must close there: that is what
//! wakes the waiters watching it ([`super::notify`]).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, openat};
use nix::sys::stat::{fchmod, fstat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::dir::{Files, file_id, mode, perm_bits};
use super::lock::unlock;
use super::witness::WitnessDir;
use crate::error::Result;

/// The start of a spare's name; 16 lowercase hexadecimal digits follow.
const PREFIX: &str = "spare-";
const DIGITS: usize = 16;

/// How many spares a handle keeps when none is lent (one per hold it has at once, up to this).
pub(crate) const KEPT: usize = 4;

/// Whether `name` is a spare's: [`PREFIX`] and [`DIGITS`] lowercase hexadecimal digits.
pub(crate) fn is_spare_name(name: &[u8]) -> bool {
    name.len() == PREFIX.len() + DIGITS
        && name.starts_with(PREFIX.as_bytes())
        && name[PREFIX.len()..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// A spare witness file, open and locked by the process that created it.
pub(crate) struct Spare {
    flock: Option<Flock<File>>,
    name: OsString,
    /// Its device and inode numbers.
    pub id: (u64, u64),
    /// Its permission bits.
    mode: u32,
    /// The process that created it, and how often that process had forked then.
    pid: u32,
    forks: Option<u64>,
    /// The witness directory it is in.
    pub dir: Arc<OwnedFd>,
}

impl std::fmt::Debug for Spare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spare").field("name", &self.name).finish()
    }
}

impl Spare {
    /// Its name in the witness directory.
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// The locked file.
    pub fn file(&self) -> Option<&Flock<File>> {
        self.flock.as_ref()
    }

    /// Whether this process may lend it again: it created it and has not forked since.
    fn reusable(&self) -> bool {
        self.pid == std::process::id() && self.forks.is_some() && self.forks == forks()
    }

    /// Marks it as never to be lent again.
    pub fn spoil(&mut self) {
        self.forks = None;
    }

    /// Removes its name and unlocks and closes it, in the process that created it; in any
    /// other process (a forked child) leaves both alone, as they are the parent's.
    pub fn retire(mut self) {
        self.retire_now();
    }

    fn retire_now(&mut self) {
        let Some(flock) = self.flock.take() else {
            return;
        };
        if self.pid != std::process::id() {
            std::mem::forget(flock);
            return;
        }
        match unlinkat(
            &*self.dir,
            self.name.as_os_str(),
            UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => {
                tracing::warn!(spare = ?self.name, error = %e, "failed to remove a spare witness file")
            }
        }
        unlock(flock, "spare witness");
    }

    /// Unlocks and closes it but leaves its name, or leaves everything alone in another
    /// process: for a witness that must stay as evidence of death (see
    /// [`WitnessLock::unlock_keeping_file`](super::witness::WitnessLock::unlock_keeping_file)),
    /// whose spare name the next cleanup removes.
    pub fn unlock_keeping_name(mut self) {
        if let Some(flock) = self.flock.take() {
            if self.pid == std::process::id() {
                unlock(flock, "witness");
            } else {
                std::mem::forget(flock);
            }
        }
    }

    /// Leaves the lock and the file alone (a forked child: they are the parent's).
    pub fn abandon(mut self) {
        if let Some(flock) = self.flock.take() {
            std::mem::forget(flock);
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        self.retire_now();
    }
}

/// The spares a handle keeps, in the witness directory it last used.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    // Boxed as a witness holds them (keeping permits small): lent and given back without an
    // allocation per hold.
    #[allow(clippy::vec_box)]
    free: Mutex<Vec<Box<Spare>>>,
    /// The handle's last step found its semaphore removed: spares given back are retired, so
    /// that nothing of this handle stays behind in the witness directory of a removed
    /// semaphore. Cleared by the next step that succeeds.
    gone: AtomicBool,
}

impl Spares {
    #[allow(clippy::vec_box)]
    pub(super) fn lock(&self) -> MutexGuard<'_, Vec<Box<Spare>>> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A spare for a new hold in `dir` whose witness must have `file_mode`: a kept one if one
    /// fits (same directory, same mode, lendable by this process), else a new one. Kept ones
    /// that no longer fit are retired.
    ///
    /// # Errors
    ///
    /// [`Error::Io`](crate::Error::Io) when a new spare cannot be created or locked.
    pub fn take(&self, files: &Files, dir: &WitnessDir, file_mode: u32) -> Result<Box<Spare>> {
        let mut unfit = Vec::new();
        let found = {
            // A busy list (see `cache`): a new spare.
            let mut free = super::cache(&self.free);
            let mut found = None;
            while let Some(spare) = free.as_mut().and_then(|free| free.pop()) {
                if Arc::ptr_eq(&spare.dir, &dir.fd) && spare.mode == file_mode && spare.reusable() {
                    found = Some(spare);
                    break;
                }
                unfit.push(spare);
            }
            found
        };
        unfit.into_iter().for_each(|spare| spare.retire());
        match found {
            Some(spare) => Ok(spare),
            None => create(files, dir, file_mode).map(Box::new),
        }
    }

    /// Keeps a spare whose hold ended (its link removed), unless it may not be lent again or
    /// enough are kept: then it is retired.
    pub fn give_back(&self, spare: Box<Spare>) {
        if !spare.reusable() || self.gone.load(Ordering::Relaxed) {
            spare.retire();
            return;
        }
        if let Some(mut free) = super::cache(&self.free)
            && free.len() < KEPT
        {
            free.push(spare);
            return;
        }
        spare.retire();
    }

    /// Records whether the handle's last step found its semaphore removed (the state file or
    /// its directory); if so, retires every kept spare too, and those given back from now on.
    pub fn semaphore_gone(&self, gone: bool) {
        if self.gone.load(Ordering::Relaxed) != gone {
            self.gone.store(gone, Ordering::Relaxed);
        }
        if gone {
            self.retire_all();
        }
    }

    /// Retires every kept spare (before an operation that created the witness directory
    /// removes it again).
    pub fn retire_all(&self) {
        let all = std::mem::take(&mut *self.lock());
        all.into_iter().for_each(|spare| spare.retire());
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.retire_all();
    }
}

/// Creates and locks a new spare in `dir` with exactly `file_mode`.
fn create(files: &Files, dir: &WitnessDir, file_mode: u32) -> Result<Spare> {
    let flags = OFlag::O_RDWR
        | OFlag::O_CREAT
        | OFlag::O_EXCL
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_CLOEXEC;
    // Another name is drawn only if one exists already (2^64 names: practically never).
    let mut tries = 0;
    let (fd, name) = loop {
        let name = OsString::from(format!("{PREFIX}{:016x}", fastrand::u64(..)));
        match openat(dir.fd(), name.as_os_str(), flags, mode(file_mode)) {
            Ok(fd) => break (fd, name),
            Err(Errno::EEXIST) if tries < 8 => tries += 1,
            Err(e) => {
                let path = files.witness_path.join(&name);
                return Err(files.io(&path, "create a spare witness file", e));
            }
        }
    };
    let forks = forks();
    let file = File::from(fd);
    let removing = |action: &'static str, e: Errno| {
        let _ = unlinkat(dir.fd(), name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        files.io(&files.witness_path.join(&name), action, e)
    };
    let st = fstat(&file).map_err(|e| removing("stat a spare witness file", e))?;
    if perm_bits(&st) != file_mode {
        fchmod(&file, mode(file_mode)).map_err(|e| removing("set the mode of", e))?;
    }
    let flock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| removing("lock a spare witness file", e))?;
    Ok(Spare {
        flock: Some(flock),
        name,
        id: file_id(&st),
        mode: file_mode,
        pid: std::process::id(),
        forks,
        dir: Arc::clone(&dir.fd),
    })
}

/// How often this process has forked since spares were first made (counted by a
/// `pthread_atfork` handler: glibc's and musl's `fork`, and so nix's, run it), or `None` where
/// that cannot be counted: then no spare is ever lent twice.
pub(crate) fn forks() -> Option<u64> {
    static WATCHING: Once = Once::new();
    WATCHING.call_once(count_forks);
    COUNTING
        .load(Ordering::SeqCst)
        .then(|| FORKS.load(Ordering::SeqCst))
}

static FORKS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(unsafe_code)] // Reviewed: registers a fork handler that only increments an atomic.
fn count_forks() {
    extern "C" fn before_fork() {
        FORKS.fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: `before_fork` is a valid function for the whole life of the process, takes no
    // arguments, and only performs an atomic increment, which is async-signal-safe (the
    // requirement on handlers that run in a multithreaded process's fork).
    let registered = unsafe { libc::pthread_atfork(Some(before_fork), None, None) };
    COUNTING.store(registered == 0, Ordering::SeqCst);
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn count_forks() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_names_are_recognised_exactly() {
        // Cleanup by others removes only names of this exact pattern.
        assert!(is_spare_name(b"spare-0123456789abcdef"));
        for other in [
            &b"spare-0123456789ABCDEF"[..],
            b"spare-0123456789abcde",
            b"spare-0123456789abcdef0",
            b"spare-0123456789abcdeg",
            b"spares0123456789abcdef",
            b"17",
            b".spare-0123456789abcdef",
        ] {
            assert!(!is_spare_name(other), "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    #[allow(unsafe_code)] // Reviewed: fork in a test; the child only calls _exit.
    fn a_fork_is_counted_in_the_parent() {
        // A spare made before a fork is never lent after it: the parent can tell.
        use nix::sys::wait::waitpid;
        use nix::unistd::{ForkResult, fork};
        let before = forks().expect("forks are counted on Linux");
        // SAFETY: the child calls only _exit.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => unsafe { libc::_exit(0) },
            ForkResult::Parent { child } => {
                waitpid(child, None).unwrap();
            }
        }
        assert!(forks().unwrap() > before);
    }
}
