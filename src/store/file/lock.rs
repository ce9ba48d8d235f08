//! The lock file: the only code that calls flock on `PATH.lock` (through nix's [`Flock`]).
//!
//! The lock is taken for one short read-modify-write and released at once. The lock file is
//! opened relative to the semaphore's bound directory, with `O_NOFOLLOW` (a planted symlink is
//! refused, not followed), `O_NONBLOCK` (a FIFO planted there cannot block the open) and
//! `O_CLOEXEC` (no command we spawn inherits it), and its type and owner are checked on the
//! opened descriptor before it is locked.
//!
//! A handle keeps the lock file open between its steps ([`LockFile`]), as the reference floor
//! does, instead of opening, checking and closing it for every step. Two things make that as
//! safe as opening it every time:
//!
//! - **Only the process that opened it uses it.** A forked child shares its parent's open
//!   file description, and flock locks belong to that description: the child's lock would be
//!   the parent's. A kept lock file records the pid that opened it; any other process opens
//!   its own (and leaves the inherited one locked or unlocked as the parent has it).
//! - **It is still the lock file.** After locking a kept descriptor, one `fstatat` checks that
//!   `PATH.lock` names the same device and inode (which cannot be reused while it is open).
//!   If the lock file was removed or replaced (a cleaner of old files, a user), everybody else
//!   locks the new one: the kept one is unlocked and closed, and the step opens `PATH.lock`
//!   again by name. Because that name is looked up in the bound directory, finding it also
//!   proves the directory has not been removed.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, openat};
use nix::sys::stat::{FileStat, fchmod, fstat};

use super::dir::{DirStatus, Files, Want, file_id, mode};
use crate::error::{Error, Result};

/// The first pause after a failed attempt; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_micros(20);
const MAX_BACKOFF: Duration = Duration::from_millis(2);

/// An exclusive flock on the lock file, released on drop.
pub(crate) struct LockGuard {
    flock: Option<Flock<File>>,
    /// The lock file's status when it was opened (its mode as tightened since).
    stat: Cell<FileStat>,
    /// The process that opened the lock file.
    pid: u32,
    /// Whether this call created the lock file. A lock file that was there already (or that
    /// a handle kept open from an earlier step) is the trace of a semaphore used at this path
    /// before (it is never deleted).
    pub created: bool,
}

/// The lock file, open and unlocked, as a handle keeps it between steps (see the
/// [module docs](self)).
#[derive(Debug)]
pub(crate) struct LockFile {
    file: File,
    /// Its status when it was opened (its mode as tightened since).
    stat: FileStat,
    /// The process that opened it.
    pid: u32,
}

/// Opens and exclusively locks `PATH.lock`, waiting until `deadline` at most (`None`: as
/// long as it takes; a deadline already past: one attempt).
///
/// With `create = Some(mode)` an absent lock file is created with exactly `mode` (whatever
/// the umask); with `None` nothing is created and an absent lock file is `Ok(None)`. The lock
/// file is opened read-write, or read-only if that is all this user may (flock accepts that
/// on local filesystems). `dir` is the status of the semaphore's directory, against which
/// the lock file's owner is judged. The lock file is never deleted.
///
/// # Errors
///
/// [`Error::Untrusted`] for a lock file that is not a regular file or whose owner is not
/// trusted, [`Error::LockTimeout`] (naming the holder where the kernel tells) when the
/// deadline passed, [`Error::Io`].
pub(crate) fn lock_exclusive(
    files: &Files,
    create: Option<u32>,
    dir: &DirStatus<'_>,
    deadline: Option<Instant>,
) -> Result<Option<LockGuard>> {
    let Some((file, created)) = open_lock_file(files, create)? else {
        return Ok(None);
    };
    let stat = fstat(&file).map_err(|e| files.io(&files.lock_path, "look up lock file", e))?;
    files.check(
        &files.lock_path,
        &stat,
        Want::File,
        || dir.get(),
        super::dir::parent_dir(&files.path),
    )?;
    let flock = lock_file(files, file, &stat, deadline)?;
    Ok(Some(LockGuard {
        flock: Some(flock),
        stat: Cell::new(stat),
        pid: std::process::id(),
        created,
    }))
}

/// Locks the lock file a handle kept open (waiting as [`lock_exclusive`] does), if this
/// process opened it and `PATH.lock` still names it: `Ok(None)` otherwise, and the caller
/// opens `PATH.lock` by name. A kept lock file of another process (inherited by a fork) is
/// closed without being locked or unlocked.
///
/// # Errors
///
/// [`Error::LockTimeout`] when the deadline passed (the kept file is closed), [`Error::Io`].
pub(crate) fn relock(
    files: &Files,
    kept: LockFile,
    deadline: Option<Instant>,
) -> Result<Option<LockGuard>> {
    if kept.pid != std::process::id() {
        return Ok(None);
    }
    let flock = lock_file(files, kept.file, &kept.stat, deadline)?;
    let guard = LockGuard {
        flock: Some(flock),
        stat: Cell::new(kept.stat),
        pid: kept.pid,
        created: false,
    };
    let named = files
        .stat_at(files.dir(), files.lock_name.as_os_str())
        .map_err(|e| files.io(&files.lock_path, "look up lock file", e))?;
    match named {
        Some(st) if file_id(&st) == file_id(&guard.stat()) => Ok(Some(guard)),
        _ => {
            tracing::debug!(lock = %files.lock_path.display(), "the lock file was removed or replaced; opening it again");
            Ok(None)
        }
    }
}

/// Locks the open lock file `file` (whose status is `stat`), polling with backoff until
/// `deadline` at most.
fn lock_file(
    files: &Files,
    file: File,
    stat: &FileStat,
    deadline: Option<Instant>,
) -> Result<Flock<File>> {
    let start = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let mut file = file;
    let mut announced = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => return Ok(flock),
            Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => file = f,
            Err((_, errno)) => return Err(files.io(&files.lock_path, "lock", errno)),
        }
        let now = Instant::now();
        let left = match deadline {
            Some(d) => match d.checked_duration_since(now).filter(|l| !l.is_zero()) {
                Some(left) => left,
                None => {
                    return Err(Error::LockTimeout {
                        path: files.path.clone(),
                        lock_path: files.lock_path.clone(),
                        waited: start.elapsed(),
                        holder: holder_of(stat),
                    });
                }
            },
            None => Duration::MAX,
        };
        if !announced && now - start >= Duration::from_secs(1) {
            // As cargo says "Blocking waiting for file lock": a long wait here is unusual.
            tracing::info!(lock = %files.lock_path.display(), "blocking waiting for file lock");
            announced = true;
        }
        std::thread::sleep(crate::store::jitter(backoff).min(left));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The process that holds a flock on the lock file with status `stat`, as `/proc/locks`
/// lists it (Linux), for messages: `None` when it cannot be told. Only when `/proc` shows
/// this process's own pid namespace (elsewhere its pids would name other processes); a lock
/// held from outside that namespace is not listed, and on filesystems whose `st_dev` is not
/// the device `/proc/locks` prints (btrfs subvolumes, overlayfs) nothing is found.
pub(crate) fn holder_of(stat: &FileStat) -> Option<u32> {
    if !super::identity::Identity::current().proc_is_ours {
        return None;
    }
    let (dev, ino) = super::dir::file_id(stat);
    let holders = super::flocks::flock_holders(dev, ino).ok()?;
    holders.into_iter().find_map(|pid| u32::try_from(pid).ok())
}

/// Opens the lock file read-write (read-only if that is all this user may); creates it with
/// exactly `create`'s mode when it is absent and `create` is given, else `Ok(None)`. With the
/// file, whether this call created it.
fn open_lock_file(files: &Files, create: Option<u32>) -> Result<Option<(File, bool)>> {
    let dir = files.dir();
    let name = files.lock_name.as_os_str();
    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let refuse = |errno: Errno| {
        files
            .explain_open_error(dir, name, &files.lock_path, errno, Want::File)
            .unwrap_or_else(|| files.io(&files.lock_path, "open lock file", errno))
    };
    // Two rounds at most: a lock file created by someone else between our two opens is
    // opened by the second round.
    for _ in 0..2 {
        match openat(dir, name, flags | OFlag::O_RDWR, mode(0)) {
            Ok(fd) => return Ok(Some((File::from(fd), false))),
            Err(e @ (Errno::EACCES | Errno::EROFS)) => {
                // If the read-only open fails too (typically: the directory is not
                // writable and there is no lock file), the first error explains it.
                return match openat(dir, name, flags | OFlag::O_RDONLY, mode(0)) {
                    Ok(fd) => Ok(Some((File::from(fd), false))),
                    Err(Errno::ENOENT) if create.is_none() => Ok(None),
                    Err(_) => Err(refuse(e)),
                };
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(refuse(e)),
        }
        let Some(wanted) = create else {
            return Ok(None);
        };
        let excl = flags | OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL;
        match openat(dir, name, excl, mode(wanted)) {
            Ok(fd) => {
                let file = File::from(fd);
                set_exact_mode(files, &file, wanted)?;
                return Ok(Some((file, true)));
            }
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(refuse(e)),
        }
    }
    Err(files.io(
        &files.lock_path,
        "open lock file",
        io::Error::from(io::ErrorKind::AlreadyExists),
    ))
}

/// Gives a file we just created exactly `wanted` as its mode (the umask cleared some bits).
fn set_exact_mode(files: &Files, file: &File, wanted: u32) -> Result<()> {
    let st = fstat(file).map_err(|e| files.io(&files.lock_path, "look up lock file", e))?;
    if super::dir::perm_bits(&st) != wanted {
        fchmod(file, mode(wanted)).map_err(|e| files.io(&files.lock_path, "set the mode of", e))?;
    }
    Ok(())
}

impl LockGuard {
    /// Takes away the permissions the lock file grants beyond `wanted` (the mode derived from
    /// the state's), if this user owns it: lock files made by older versions and the Go
    /// package are 0644, which lets users who may only read the state flock it. Never adds
    /// a permission. A failure is logged: the lock works as before.
    pub(crate) fn tighten(&self, files: &Files, wanted: u32) {
        let mut stat = self.stat.get();
        let current = super::dir::perm_bits(&stat);
        if current & !wanted == 0 || stat.st_uid != nix::unistd::geteuid().as_raw() {
            return;
        }
        let Some(flock) = &self.flock else { return };
        let tightened = current & wanted;
        match fchmod(&**flock, mode(tightened)) {
            Ok(()) => {
                stat.st_mode = (stat.st_mode & !0o7777) | tightened as libc::mode_t;
                self.stat.set(stat);
                tracing::info!(
                lock = %files.lock_path.display(),
                from = format_args!("{current:o}"),
                to = format_args!("{tightened:o}"),
                "tightened the lock file's mode"
                )
            }
            Err(e) => tracing::warn!(
                lock = %files.lock_path.display(),
                error = %e,
                "failed to tighten the lock file's mode"
            ),
        }
    }

    /// The lock file's status when it was opened (its mode as tightened since).
    pub(crate) fn stat(&self) -> FileStat {
        self.stat.get()
    }

    /// Releases the lock now and closes the lock file.
    #[cfg(test)]
    pub(crate) fn unlock(mut self) {
        self.release();
    }

    /// Releases the lock now and returns the lock file, for the handle to keep for its next
    /// step; `None` if unlocking failed (then the descriptor stays locked until the process
    /// exits, see [`unlock`]).
    pub(crate) fn unlock_keeping_file(mut self) -> Option<LockFile> {
        let flock = self.flock.take()?;
        match flock.unlock() {
            Ok(file) => Some(LockFile {
                file,
                stat: self.stat.get(),
                pid: self.pid,
            }),
            Err((flock, errno)) => {
                tracing::warn!(%errno, "failed to unlock lock file");
                unlock(flock, "lock file");
                None
            }
        }
    }

    fn release(&mut self) {
        if let Some(flock) = self.flock.take() {
            unlock(flock, "lock file");
        }
    }
}

/// Unlocks and closes. `LOCK_UN` on a valid descriptor does not fail on Linux; if it ever
/// does, this retries, and as a last resort leaks the descriptor (keeping the lock until the
/// process exits) rather than let nix's `Drop` for [`Flock`] panic.
pub(crate) fn unlock(mut flock: Flock<File>, what: &'static str) {
    for _ in 0..3 {
        match flock.unlock() {
            Ok(file) => {
                drop(file);
                return;
            }
            Err((again, errno)) => {
                tracing::warn!(%errno, "failed to unlock {what}");
                flock = again;
            }
        }
    }
    tracing::error!("leaking a locked {what} descriptor after repeated unlock failures");
    std::mem::forget(flock);
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path) -> Files {
        Files::open(
            &dir.join("s.json"),
            crate::store::file::dir::Trust::new(&[]),
        )
        .unwrap()
    }

    #[test]
    fn second_lock_times_out_with_lock_timeout_error() {
        // A held lock file makes others wait at most the timeout, then fail distinctly.
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let st = DirStatus::new(&files);
        let lock = |t| lock_exclusive(&files, Some(0o600), &st, Some(Instant::now() + t));
        let held = lock(Duration::from_secs(1)).unwrap().unwrap();
        let t = Instant::now();
        let err = lock(Duration::from_millis(50)).err().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(50));
        match err {
            Error::LockTimeout {
                lock_path,
                waited,
                holder,
                ..
            } => {
                assert_eq!(lock_path, dir.path().join("s.json.lock"));
                assert!(waited >= Duration::from_millis(50));
                // Only this process holds a lock there: whatever `/proc/locks` tells is us.
                assert!(
                    holder.is_none_or(|pid| pid == std::process::id()),
                    "{holder:?}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        held.unlock();
        assert!(lock(Duration::from_millis(50)).unwrap().is_some());
        assert!(files.lock_path.exists(), "the lock file is never deleted");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_lock_wait_that_ends_names_the_holding_pid() {
        // Where the kernel tells (tmpfs: `/proc/locks` prints its `st_dev`), the error names
        // the process holding the lock, here this one through another open file description.
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("SKIPPED: no /dev/shm");
            return;
        };
        if !crate::store::file::identity::Identity::current().proc_is_ours {
            eprintln!("SKIPPED: /proc shows another pid namespace");
            return;
        }
        let files = files(dir.path());
        let st = DirStatus::new(&files);
        let held = lock_exclusive(&files, Some(0o600), &st, None)
            .unwrap()
            .unwrap();
        let err = lock_exclusive(&files, Some(0o600), &st, Some(Instant::now()));
        match err.err().unwrap() {
            Error::LockTimeout { holder, .. } => assert_eq!(holder, Some(std::process::id())),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(holder_of(&held.stat()), Some(std::process::id()));
        held.unlock();
        let stat = fstat(std::fs::File::open(&files.lock_path).unwrap()).unwrap();
        assert_eq!(holder_of(&stat), None, "nobody holds it now");
    }

    #[test]
    fn a_new_lock_file_gets_exactly_its_mode_and_an_absent_one_is_not_created() {
        // The umask does not decide who may open the lock file; without `create` nothing is
        // created.
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let st = DirStatus::new(&files);
        let soon = || Some(Instant::now() + Duration::from_secs(1));
        let none = lock_exclusive(&files, None, &st, soon()).unwrap();
        assert!(none.is_none());
        assert!(!files.lock_path.exists());
        // 0660 is not what open(2) makes under the usual umask 022.
        let guard = lock_exclusive(&files, Some(0o660), &st, soon());
        let guard = guard.unwrap().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.lock_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o660);
        drop(guard);
    }

    /// Whether some open file description other than `guard`'s could lock the file at `path`
    /// exclusively right now (and then let it go).
    fn lockable(path: &std::path::Path) -> bool {
        let file = std::fs::File::open(path).unwrap();
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => {
                unlock(flock, "test");
                true
            }
            Err((_, Errno::EWOULDBLOCK)) => false,
            Err((_, e)) => panic!("flock: {e}"),
        }
    }

    #[test]
    fn a_kept_lock_file_is_locked_again_while_its_name_still_names_it() {
        // The kept descriptor is the lock file: locking it excludes everyone who opens
        // PATH.lock by name.
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let st = DirStatus::new(&files);
        let soon = || Some(Instant::now() + Duration::from_secs(1));
        let guard = lock_exclusive(&files, Some(0o600), &st, soon())
            .unwrap()
            .unwrap();
        let kept = guard.unlock_keeping_file().unwrap();
        assert!(lockable(&files.lock_path), "unlocked between steps");
        let again = relock(&files, kept, soon())
            .unwrap()
            .expect("still PATH.lock");
        assert!(
            !lockable(&files.lock_path),
            "locked through the kept descriptor"
        );
        drop(again);
        assert!(lockable(&files.lock_path));
    }

    #[test]
    fn a_kept_lock_file_that_was_removed_or_replaced_is_not_used() {
        // Whoever opens PATH.lock now locks the new file: a handle that locked its old one
        // would exclude nobody. The kept file is let go, and PATH.lock is opened anew.
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let st = DirStatus::new(&files);
        let soon = || Some(Instant::now() + Duration::from_secs(1));
        for replace in [false, true] {
            let guard = lock_exclusive(&files, Some(0o600), &st, soon())
                .unwrap()
                .unwrap();
            let kept = guard.unlock_keeping_file().unwrap();
            let old = files.lock_path.with_extension("old");
            std::fs::hard_link(&files.lock_path, &old).unwrap();
            std::fs::remove_file(&files.lock_path).unwrap();
            if replace {
                std::fs::write(&files.lock_path, b"").unwrap();
            }
            assert!(
                relock(&files, kept, soon()).unwrap().is_none(),
                "replace {replace}"
            );
            assert!(
                lockable(&old),
                "the old file is not left locked (replace {replace})"
            );
            std::fs::remove_file(&old).unwrap();
            let fresh = lock_exclusive(&files, Some(0o600), &st, soon())
                .unwrap()
                .unwrap();
            assert!(
                !lockable(&files.lock_path),
                "the new PATH.lock is the one locked"
            );
            drop(fresh);
        }
    }

    #[test]
    fn a_lock_file_kept_by_another_process_is_neither_locked_nor_unlocked() {
        // A forked child inherits its parent's kept descriptor, whose flock is the parent's:
        // it must open its own. Here the "parent" holds the lock through that description.
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let st = DirStatus::new(&files);
        let soon = || Some(Instant::now() + Duration::from_secs(1));
        let guard = lock_exclusive(&files, Some(0o600), &st, soon())
            .unwrap()
            .unwrap();
        let kept = guard.unlock_keeping_file().unwrap();
        let shared = kept.file.try_clone().unwrap();
        let parents = Flock::lock(shared, FlockArg::LockExclusiveNonblock).unwrap();
        let inherited = LockFile {
            pid: std::process::id().wrapping_add(1),
            ..kept
        };
        assert!(relock(&files, inherited, soon()).unwrap().is_none());
        assert!(
            !lockable(&files.lock_path),
            "the parent's lock is still held"
        );
        unlock(parents, "test");
        assert!(lockable(&files.lock_path));
    }
}
