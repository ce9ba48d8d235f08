//! Kernel-held witness files: the strongest evidence that a holder is alive.
//!
//! Each process-bound hold has `PATH.witness/<number>`, named by the number it was created
//! under (the fencing token of a direct grant, the ticket of a waiter, which keeps that name
//! once granted: see [`Entry::witness_name`](crate::core::doc::Entry::witness_name); never by
//! holder ID, which may be `../x`), locked with flock *before* the entry naming it is written
//! (a hard link to a locked spare file of the handle, see [`super::spare`]), and records its
//! device and inode in the entry. The kernel drops the lock when the
//! last descriptor of that open file closes, i.e. when the holder (and any child that inherited
//! the descriptor) is gone. So: lock held = alive; lock free (same file) = dead; file missing or
//! replaced = no evidence; file there but not examinable = no verdict at all.
//!
//! The witness directory is opened relative to the semaphore's bound directory with
//! `O_NOFOLLOW|O_DIRECTORY` and checked (a directory, of a trusted owner) before use; the
//! files in it are opened relative to that descriptor with `O_NOFOLLOW|O_NONBLOCK`, and
//! removed with `unlinkat` on it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, openat};
use nix::sys::stat::{FileStat, fchmod, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};

use super::dir::{DirStatus, Files, Want, file_id, is_regular, mode, perm_bits};
use super::lock::unlock;
use super::spare::{Spare, Spares, is_spare_name};
use crate::core::doc::Witness;
use crate::error::Result;

/// The witness directory of the semaphore at `path`: `PATH.witness` (for tests; the store
/// knows it as [`Files::witness_path`]).
#[cfg(test)]
pub(crate) fn dir_of(path: &Path) -> PathBuf {
    let mut d = path.as_os_str().to_os_string();
    d.push(".witness");
    PathBuf::from(d)
}

/// The witness directory, open and checked.
pub(crate) struct WitnessDir {
    /// Shared with the witness locks created in it (and a handle's cache).
    pub fd: Arc<OwnedFd>,
    /// Its status when opened: who is trusted in it.
    pub stat: FileStat,
    /// Whether this call created it.
    pub created: bool,
}

/// Opens `PATH.witness` for creating, probing and removing witness files, creating it with
/// exactly `create`'s mode if it is absent and `create` is given (else `Ok(None)`). `state_dir`
/// is the semaphore directory's status, against which the witness directory's owner is judged.
///
/// # Errors
///
/// [`Error::Untrusted`](crate::Error::Untrusted) if it is not a directory (a symlink, a
/// file) or its owner is not trusted; [`Error::Io`](crate::Error::Io).
pub(crate) fn open_dir(
    files: &Files,
    state_dir: &DirStatus<'_>,
    create: Option<u32>,
) -> Result<Option<WitnessDir>> {
    let name = files.witness_name.as_os_str();
    let object = &files.witness_path;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let refuse = |errno: Errno, action| {
        files
            .explain_open_error(files.dir(), name, object, errno, Want::Dir)
            .unwrap_or_else(|| files.io(object, action, errno))
    };
    let mut created = false;
    // Another process may remove the directory between our mkdir and open: a few rounds.
    let mut rounds = 0;
    let fd = loop {
        rounds += 1;
        match openat(files.dir(), name, flags, mode(0)) {
            Ok(fd) => break fd,
            Err(Errno::ENOENT) if !created && rounds <= 3 => {}
            Err(e) => return Err(refuse(e, "open the witness directory")),
        }
        let Some(wanted) = create else {
            return Ok(None);
        };
        match mkdirat(files.dir(), name, mode(wanted)) {
            Ok(()) => created = true,
            Err(Errno::EEXIST) => {}
            Err(Errno::ENOENT) => {
                return Err(files.missing(refuse(Errno::ENOENT, "create the witness directory")));
            }
            Err(e) => return Err(refuse(e, "create the witness directory")),
        }
    };
    let stat = fstat(&fd).map_err(|e| files.io(object, "look up the witness directory", e))?;
    files.check(
        object,
        &stat,
        Want::Dir,
        || state_dir.get(),
        super::dir::parent_dir(&files.path),
    )?;
    let mut dir = WitnessDir {
        fd: Arc::new(fd),
        stat,
        created,
    };
    if let Some(wanted) = create.filter(|_| created) {
        // mkdir(2) applies the umask and ignores set-group-ID.
        if perm_bits(&dir.stat) != wanted {
            fchmod(&dir.fd, mode(wanted)).map_err(|e| files.io(object, "set the mode of", e))?;
            dir.stat =
                fstat(&dir.fd).map_err(|e| files.io(object, "look up the witness directory", e))?;
        }
    }
    Ok(Some(dir))
}

impl WitnessDir {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Removes the directory if this call created it and it is still empty: an operation
    /// that fails leaves no new directory behind.
    pub fn remove_if_created(files: &Files, created: bool) {
        if !created {
            return;
        }
        let name = files.witness_name.as_os_str();
        match unlinkat(files.dir(), name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT | Errno::ENOTEMPTY | Errno::EEXIST) => {}
            Err(e) => tracing::warn!(
                dir = %files.witness_path.display(),
                error = %e,
                "failed to remove the witness directory this operation created"
            ),
        }
    }
}

/// A held witness lock: a [`Spare`] linked under the hold's number. Dropping it (or
/// [`release`](WitnessLock::release)) in the process that created it removes that link and
/// gives the spare back; [`WitnessLock::abandon`] leaves both alone (a forked child).
pub(crate) struct WitnessLock {
    /// The spare, linked in its witness directory (the link is removed from there, wherever
    /// the directory has been moved meanwhile).
    spare: Option<Box<Spare>>,
    /// Where the spare goes back to.
    spares: Arc<Spares>,
    /// The hold's number, the link's name.
    name: OsString,
    /// The semaphore's files, for messages.
    files: Arc<Files>,
    /// Whether a descriptor of it was handed out ([`inheritable`](WitnessLock::inheritable)):
    /// then it may stay locked after the hold ends, and is never lent again.
    handed_out: AtomicBool,
    pub record: Witness,
}

impl std::fmt::Debug for WitnessLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitnessLock")
            .field("path", &self.files.witness_path.join(&self.name))
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

/// Makes the witness for `token` in `dir`: links a spare of `spares` (one with exactly
/// `file_mode`, read and write for whoever may write the state, see
/// [`super::dir::access_mode`]) under the token's number.
pub(crate) fn create(
    files: &Arc<Files>,
    spares: &Arc<Spares>,
    dir: &WitnessDir,
    token: u64,
    file_mode: u32,
) -> Result<Created> {
    let spare = spares.take(files, dir, file_mode)?;
    let name = OsString::from(token.to_string());
    match linkat(
        dir.fd(),
        spare.name(),
        dir.fd(),
        name.as_os_str(),
        AtFlags::empty(),
    ) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            spares.give_back(spare);
            return Ok(Created::Taken);
        }
        Err(e) => {
            spares.give_back(spare);
            let path = files.witness_path.join(&name);
            return Err(files.io(&path, "create witness file", e));
        }
    }
    let (dev, ino) = spare.id;
    Ok(Created::Locked(WitnessLock {
        spare: Some(spare),
        spares: Arc::clone(spares),
        name,
        files: Arc::clone(files),
        handed_out: AtomicBool::new(false),
        record: Witness {
            dev,
            ino,
            extra: Default::default(),
        },
    }))
}

impl WitnessLock {
    /// A descriptor of the locked witness without `O_CLOEXEC`, for a child process to inherit:
    /// the hold then stays alive while the child runs.
    pub fn inheritable(&self) -> io::Result<OwnedFd> {
        let flock = self
            .spare
            .as_ref()
            .and_then(|spare| spare.file())
            .ok_or_else(|| io::Error::other("witness already released"))?;
        // Never lent again: the child may hold it locked after this hold ends.
        self.handed_out.store(true, Ordering::SeqCst);
        nix::unistd::dup(flock.as_fd()).map_err(io::Error::from)
    }

    /// The locked witness file, to watch it (`None` once released).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.spare
            .as_ref()
            .and_then(|spare| spare.file())
            .map(|flock| flock.as_fd())
    }

    /// The witness directory it is in, as named by the semaphore's path, for messages.
    pub fn dir_path(&self) -> &Path {
        &self.files.witness_path
    }

    /// Removes the file and unlocks it (the entry naming it must already be gone or detached).
    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        let Some(mut spare) = self.spare.take() else {
            return;
        };
        if let Err(e) = unlinkat(
            &*spare.dir,
            self.name.as_os_str(),
            UnlinkatFlags::NoRemoveDir,
        ) && e != Errno::ENOENT
        {
            let path = self.files.witness_path.join(&self.name);
            tracing::warn!(witness = %path.display(), error = %e, "failed to remove witness file");
            // Whatever is left under that name must not be locked by a later hold.
            spare.spoil();
        }
        if self.handed_out.load(Ordering::SeqCst) {
            spare.spoil();
        }
        self.spares.give_back(spare);
    }

    /// Unlocks the witness but leaves its file in place, for an entry that may still be on
    /// file (a step that would remove it could not be made): a free witness proves the entry
    /// dead to whoever looks next, who reaps it and then removes the file. Dropping the
    /// witness instead removes the file first, and a missing witness proves nothing.
    pub fn unlock_keeping_file(mut self) {
        if let Some(spare) = self.spare.take() {
            // Its spare name goes, so that the file is only the evidence it must be.
            match unlinkat(&*spare.dir, spare.name(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    tracing::warn!(witness = ?spare.name(), error = %e, "failed to remove a spare witness name")
                }
            }
            spare.unlock_keeping_name();
        }
    }

    /// Leaves the lock and the file alone (in a forked child, whose parent owns the hold):
    /// unlocking here would unlock the parent's witness too, as both share one open file.
    pub fn abandon(mut self) {
        if let Some(spare) = self.spare.take() {
            spare.abandon();
        }
    }
}

impl Drop for WitnessLock {
    fn drop(&mut self) {
        self.release_inner();
    }
}

/// Tells the waiter whose witness is named `number` in `dir` that its entry changed (granted,
/// removed, or now the head of the queue): sets the file's times to now, which raises
/// `IN_ATTRIB` on the watch its waiter keeps on it (see [`super::notify`]). A symlink planted
/// at that name is not followed. A failure is only logged: the waiter's timer stands in.
pub(crate) fn touch(dir: BorrowedFd<'_>, number: u64) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let name = number.to_string();
    let now = TimeSpec::UTIME_NOW;
    if let Err(e) = utimensat(
        dir,
        name.as_str(),
        &now,
        &now,
        UtimensatFlags::NoFollowSymlink,
    ) {
        tracing::debug!(witness = %name, error = %e, "could not touch a waiter's witness");
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
    /// The file is there but could not be examined (permissions, I/O): no verdict at all.
    Unreadable(String),
}

/// Opens the witness directory for probing: without read permission where the system allows
/// (`O_PATH`), since a reader of the state only needs to search it. `None` when it is absent
/// or is not a directory (a witness in it would be no evidence).
pub(crate) fn open_dir_for_probe(files: &Files) -> io::Result<Option<OwnedFd>> {
    #[cfg(target_os = "linux")]
    let access = OFlag::O_PATH;
    #[cfg(not(target_os = "linux"))]
    let access = OFlag::O_RDONLY;
    let flags = access | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(files.dir(), files.witness_name.as_os_str(), flags, mode(0)) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Examines the witness named `token` (the entry's [`Entry::witness_name`](crate::core::doc::Entry::witness_name)), recorded as `record`, in the witness
/// directory `dir`. Takes a shared lock for an instant if the file is free (and releases it
/// at once). A witness this user may not open is looked up in `/proc/locks` by device and
/// inode (see [`probe_unopenable`]).
pub(crate) fn probe(files: &Files, dir: BorrowedFd<'_>, token: u64, record: &Witness) -> Probe {
    let name = token.to_string();
    let file = match open_existing(dir, OsStr::new(&name)) {
        Ok(f) => f,
        Err(Errno::ENOENT | Errno::ELOOP | Errno::ENXIO) => return Probe::Missing,
        Err(Errno::EACCES | Errno::EPERM) => {
            return probe_unopenable(files, dir, OsStr::new(&name), record);
        }
        Err(e) => return Probe::Unreadable(e.desc().to_string()),
    };
    match fstat(&file) {
        // We only ever create regular files: anything else was put there by someone else.
        Ok(st) if is_regular(&st) && same_file(&st, record) => {}
        Ok(_) => return Probe::Missing,
        Err(e) => return Probe::Unreadable(e.desc().to_string()),
    }
    try_shared(file)
}

fn same_file(st: &FileStat, record: &Witness) -> bool {
    file_id(st) == (record.dev, record.ino)
}

/// Probes a witness this user may not open (another user's, not shared with us): `fstatat`
/// needs only search permission, and the kernel lists held flocks in `/proc/locks`. A lock
/// listed there is held: the holder is alive. A lock *not* listed proves nothing: the kernel
/// builds that listing while other processes lock and unlock, and it can skip a lock that is
/// held the whole time (measured on Linux 6.18: a continuously held flock was missing from
/// 38 of 11,212 reads), besides hiding the locks of processes outside this pid namespace.
/// So an unlisted witness gives no verdict, and the entry is judged by its lease, or by a
/// user who may open the witness (any user who may write the state can, see
/// [`super::dir`]'s derived modes).
fn probe_unopenable(files: &Files, dir: BorrowedFd<'_>, name: &OsStr, record: &Witness) -> Probe {
    let st = match files.stat_at(dir, name) {
        Ok(Some(st)) => st,
        Ok(None) => return Probe::Missing,
        Err(e) => return Probe::Unreadable(e.to_string()),
    };
    if !is_regular(&st) || !same_file(&st, record) {
        return Probe::Missing;
    }
    let text = match super::flocks::read() {
        Ok(t) => t,
        Err(e) => return Probe::Unreadable(format!("cannot open it, nor read /proc/locks: {e}")),
    };
    if super::flocks::holders_in(&text, record.dev, record.ino).is_empty() {
        Probe::Unreadable(
            "cannot open it, and /proc/locks does not list it (which proves nothing)".into(),
        )
    } else {
        Probe::Held
    }
}

/// Opens an existing witness file for reading without following a symlink and without
/// blocking: a FIFO planted under a witness name would otherwise block the opener (who may hold
/// the state lock) until some writer comes.
fn open_existing(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<File> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    openat(dir, name, flags, mode(0)).map(File::from)
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

/// Removes the witness file `name` from `dir` if it is ours to remove and nobody holds it:
/// a regular file (the recorded one, when `expect` is given) whose owner is trusted in the
/// witness directory, locked exclusively by us while it is unlinked. Returns whether it did.
fn remove_if_free(files: &Files, dir: &WitnessDir, name: &OsStr, expect: Option<&Witness>) -> bool {
    let Ok(file) = open_existing(dir.fd(), name) else {
        return false;
    };
    let Ok(st) = fstat(&file) else {
        return false;
    };
    if !is_regular(&st)
        || expect.is_some_and(|w| !same_file(&st, w))
        || !files.trust.trusts(st.st_uid, &dir.stat)
    {
        return false;
    }
    let Ok(flock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return false;
    };
    let removed = unlinkat(dir.fd(), name, UnlinkatFlags::NoRemoveDir);
    unlock(flock, "witness being removed");
    match removed {
        Ok(()) => true,
        Err(e) => {
            if e != Errno::ENOENT {
                let path = files.witness_path.join(name);
                tracing::warn!(witness = %path.display(), error = %e, "failed to remove witness file");
            }
            false
        }
    }
}

/// Logs entries that were reaped (their removal is on disk) and deletes their witness files
/// if nobody holds them, and then the spares nobody holds: a process judged dead by its
/// witness left its spares too (see [`super::spare`]). Called under the state lock, with the
/// witness directory if it exists.
pub(crate) fn forget_reaped(
    files: &Files,
    dir: Option<&WitnessDir>,
    reaped: &[crate::core::rules::Removed],
) {
    let mut witnesses = false;
    for r in reaped {
        tracing::info!(
            path = %files.path.display(),
            id = %r.entry.id,
            token = r.entry.token,
            ticket = r.entry.ticket,
            evidence = r.verdict.evidence(),
            "reaped stale {}",
            if r.was_waiter { "waiter" } else { "holder" }
        );
        if let (Some(dir), Some(name), Some(record)) =
            (dir, r.entry.witness_name(), &r.entry.witness)
        {
            remove_if_free(files, dir, OsStr::new(&name.to_string()), Some(record));
            witnesses = true;
        }
    }
    if let Some(dir) = dir.filter(|_| witnesses) {
        remove_free_spares(files, dir);
    }
}

/// Removes the spares in `dir` that nobody holds (see [`remove_if_free`] for which files are
/// ours to remove). Failures are logged: the next cleanup tries again.
fn remove_free_spares(files: &Files, dir: &WitnessDir) {
    use std::os::unix::ffi::OsStrExt;
    let names = match super::dir::names_in(dir.fd()) {
        Ok(names) => names,
        Err(e) => {
            tracing::debug!(dir = %files.witness_path.display(), error = %e, "cannot list the witness directory for spares");
            return;
        }
    };
    for name in names.iter().filter(|n| is_spare_name(n.as_bytes())) {
        if remove_if_free(files, dir, name, None) {
            tracing::info!(path = %files.path.display(), file = %files.witness_path.join(name).display(), "removed a spare witness file of a dead process");
        }
    }
}

/// Removes witness files no entry refers to and nobody holds (left by a process killed between
/// creating its witness and writing its entry, or by reaped holders), and spares nobody holds
/// (left by killed processes, see [`super::spare`]): only files named by a number or exactly
/// as a spare, regular, of a trusted owner. `live_tokens` are the names entries on file refer
/// to ([`Entry::witness_name`](crate::core::doc::Entry::witness_name)). Call under the state
/// lock. Returns the paths removed.
pub(crate) fn remove_orphans(
    files: &Files,
    dir: &WitnessDir,
    live_tokens: &[u64],
) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let names = super::dir::names_in(dir.fd())
        .map_err(|e| files.io(&files.witness_path, "list the witness directory", e))?;
    let mut removed = Vec::new();
    for name in names {
        let orphan = if is_spare_name(name.as_bytes()) {
            true
        } else {
            let Some(token) = name.to_str().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            !live_tokens.contains(&token) && name.to_str() == Some(token.to_string().as_str())
        };
        if orphan && remove_if_free(files, dir, &name, None) {
            removed.push(files.witness_path.join(&name));
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::fs;

    fn files(dir: &Path) -> Arc<Files> {
        Arc::new(
            Files::open(
                &dir.join("s.json"),
                crate::store::file::dir::Trust::new(&[]),
            )
            .unwrap(),
        )
    }

    fn probe_now(files: &Files, token: u64, record: &Witness) -> Probe {
        match open_dir_for_probe(files).unwrap() {
            Some(d) => probe(files, d.as_fd(), token, record),
            None => Probe::Missing,
        }
    }

    #[test]
    fn probe_sees_held_free_and_replaced_witness() {
        // Held means alive, free means dead, a replaced file is no evidence.
        let tmp = tempfile::tempdir().unwrap();
        let files = files(tmp.path());
        let st = DirStatus::new(&files);
        let dir = open_dir(&files, &st, Some(0o711)).unwrap().unwrap();
        assert!(dir.created);
        let spares = Arc::new(Spares::default());
        let Created::Locked(lock) = create(&files, &spares, &dir, 7, 0o600).unwrap() else {
            panic!("token 7 should be free");
        };
        let record = lock.record.clone();
        assert_eq!(probe_now(&files, 7, &record), Probe::Held);
        assert!(matches!(
            create(&files, &spares, &dir, 7, 0o600).unwrap(),
            Created::Taken
        ));
        let fd = lock.inheritable().unwrap();
        // Unlocking through the guard also releases the duplicate's lock (one open file).
        drop(fd);
        assert_eq!(probe_now(&files, 7, &record), Probe::Held);
        lock.release();
        assert_eq!(probe_now(&files, 7, &record), Probe::Missing);

        let wdir = dir_of(&files.path);
        fs::write(wdir.join("8"), b"").unwrap();
        let stale = Witness {
            dev: record.dev,
            ino: std::os::unix::fs::MetadataExt::ino(&fs::metadata(wdir.join("8")).unwrap()),
            extra: Default::default(),
        };
        assert_eq!(probe_now(&files, 8, &stale), Probe::Free);
        let other = Witness {
            ino: stale.ino + 1,
            ..stale.clone()
        };
        assert_eq!(probe_now(&files, 8, &other), Probe::Missing);
        assert_eq!(
            remove_orphans(&files, &dir, &[]).unwrap(),
            vec![wdir.join("8")]
        );
    }

    #[test]
    fn witness_directory_and_files_get_exact_modes() {
        // Modes come from the state's, not from the umask: writers read-write, readers search.
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let files = files(tmp.path());
        let st = DirStatus::new(&files);
        let dir = open_dir(&files, &st, Some(0o771)).unwrap().unwrap();
        let spares = Arc::new(Spares::default());
        let Created::Locked(lock) = create(&files, &spares, &dir, 3, 0o660).unwrap() else {
            panic!("token 3 should be free");
        };
        let mode_of = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode_of(&files.witness_path), 0o771);
        assert_eq!(mode_of(&files.witness_path.join("3")), 0o660);
        lock.release();
    }

    #[test]
    fn a_symlink_or_file_at_the_witness_directory_is_refused_and_not_followed() {
        // PATH.witness planted as a link (to a victim directory) or a file: refused, with
        // nothing created or removed through it.
        let tmp = tempfile::tempdir().unwrap();
        let files = files(tmp.path());
        let st = DirStatus::new(&files);
        let victim = tmp.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("1"), b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, &files.witness_path).unwrap();
        match open_dir(&files, &st, Some(0o711)) {
            Err(Error::Untrusted {
                object,
                kind,
                problem,
                ..
            }) => {
                assert_eq!(object, files.witness_path);
                assert_eq!(kind, crate::UntrustedKind::WrongType);
                assert!(problem.contains("symbolic link"), "{problem}");
            }
            other => panic!("expected Untrusted, got {:?}", other.map(|d| d.is_some())),
        }
        assert!(open_dir_for_probe(&files).unwrap().is_none());
        assert_eq!(fs::read(victim.join("1")).unwrap(), b"precious");
        fs::remove_file(&files.witness_path).unwrap();
        fs::write(&files.witness_path, b"").unwrap();
        match open_dir(&files, &st, Some(0o711)) {
            Err(Error::Untrusted { kind, problem, .. }) => {
                assert_eq!(kind, crate::UntrustedKind::WrongType);
                assert!(
                    problem.contains("a regular file, not a directory"),
                    "{problem}"
                );
            }
            other => panic!("expected Untrusted, got {:?}", other.map(|d| d.is_some())),
        }
    }

    /// The names in the witness directory, sorted, spares as `spare`.
    fn names(files: &Files) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&files.witness_path)
            .unwrap()
            .map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                if is_spare_name(name.as_bytes()) {
                    "spare".to_string()
                } else {
                    name
                }
            })
            .collect();
        names.sort();
        names
    }

    fn witness(files: &Arc<Files>, spares: &Arc<Spares>, dir: &WitnessDir, n: u64) -> WitnessLock {
        match create(files, spares, dir, n, 0o600).unwrap() {
            Created::Locked(lock) => lock,
            Created::Taken => panic!("{n} is taken"),
        }
    }

    #[test]
    fn an_ended_hold_lends_its_locked_file_to_the_next_under_the_next_number() {
        // The link under the old number goes with the hold; the file, still locked, becomes
        // the next hold's witness: held, under its own number, and the old number is no
        // evidence of anything any more.
        let tmp = tempfile::tempdir().unwrap();
        let files = files(tmp.path());
        let dir = open_dir(&files, &DirStatus::new(&files), Some(0o711))
            .unwrap()
            .unwrap();
        let spares = Arc::new(Spares::default());
        let first = witness(&files, &spares, &dir, 7);
        let record = first.record.clone();
        assert_eq!(names(&files), ["7", "spare"]);
        first.release();
        assert_eq!(names(&files), ["spare"]);
        assert_eq!(probe_now(&files, 7, &record), Probe::Missing);
        let second = witness(&files, &spares, &dir, 8);
        assert_eq!(second.record, record, "the same file, lent again");
        assert_eq!(probe_now(&files, 8, &second.record), Probe::Held);
        assert_eq!(probe_now(&files, 7, &record), Probe::Missing);
        // Two holds at once get two files.
        let third = witness(&files, &spares, &dir, 9);
        assert_ne!(third.record, second.record);
        assert_eq!(names(&files), ["8", "9", "spare", "spare"]);
        drop((second, third));
        assert_eq!(names(&files), ["spare", "spare"]);
        drop(spares);
        assert_eq!(
            names(&files),
            Vec::<String>::new(),
            "a dropped handle's spares go"
        );
    }

    #[test]
    fn a_witness_handed_out_or_left_as_evidence_is_never_lent_again() {
        // A child may hold an inherited witness after the hold ended; a witness unlocked as
        // evidence of death must stay exactly that: neither may become another hold's.
        let tmp = tempfile::tempdir().unwrap();
        let files = files(tmp.path());
        let dir = open_dir(&files, &DirStatus::new(&files), Some(0o711))
            .unwrap()
            .unwrap();
        let spares = Arc::new(Spares::default());
        let inherited = witness(&files, &spares, &dir, 1);
        let handed = inherited.record.clone();
        // The child's copy stays open (its inode cannot be reused meanwhile).
        let child_copy = inherited.inheritable().unwrap();
        inherited.release();
        assert_eq!(names(&files), Vec::<String>::new(), "retired, not kept");
        let next = witness(&files, &spares, &dir, 2);
        assert_ne!(next.record, handed);
        drop(child_copy);

        let evidence = next.record.clone();
        next.unlock_keeping_file();
        assert_eq!(names(&files), ["2"], "only the evidence is left");
        assert_eq!(probe_now(&files, 2, &evidence), Probe::Free);
        let after = witness(&files, &spares, &dir, 3);
        assert_ne!(after.record, evidence);
        assert_eq!(probe_now(&files, 2, &evidence), Probe::Free, "still free");
        drop(after);
        assert_eq!(
            remove_orphans(&files, &dir, &[]).unwrap(),
            vec![files.witness_path.join("2")]
        );
    }

    #[test]
    fn cleanup_removes_free_spares_and_only_files_named_exactly_as_spares() {
        // A killed process's spares are unlocked and named by no entry: the next cleanup
        // removes them. A live handle's spares are locked and stay; names that only look
        // alike, and anything that is not a regular file, stay.
        let tmp = tempfile::tempdir().unwrap();
        let files = files(tmp.path());
        let dir = open_dir(&files, &DirStatus::new(&files), Some(0o711))
            .unwrap()
            .unwrap();
        let spares = Arc::new(Spares::default());
        drop(witness(&files, &spares, &dir, 1));
        let wdir = &files.witness_path;
        for name in [
            "spare-00000000000000aa",
            "spare-00000000000000AB",
            "spare-x",
            "spare",
        ] {
            fs::write(wdir.join(name), b"").unwrap();
        }
        std::os::unix::fs::symlink("/etc/hostname", wdir.join("spare-00000000000000bb")).unwrap();
        let removed = remove_orphans(&files, &dir, &[]).unwrap();
        assert_eq!(removed, vec![wdir.join("spare-00000000000000aa")]);
        let mut left: Vec<String> = fs::read_dir(wdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !is_spare_name(n.as_bytes()) || n == "spare-00000000000000bb")
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "spare",
                "spare-00000000000000AB",
                "spare-00000000000000bb",
                "spare-x"
            ]
        );
        assert_eq!(
            names(&files).iter().filter(|n| *n == "spare").count(),
            3,
            "the live spare stays"
        );
    }

    #[test]
    #[allow(unsafe_code)] // Reviewed: fork in a test; the child drops a witness, then _exit.
    fn after_a_fork_neither_process_lends_or_ends_a_spare_made_before_it() {
        // A spare made before a fork is shared with the child (one open file, one lock): a
        // hold lent it after the fork would look alive while the child lives. The parent
        // makes new ones; the child leaves the parent's alone.
        use nix::sys::wait::{WaitStatus, waitpid};
        use nix::unistd::{ForkResult, fork};
        let tmp = tempfile::tempdir().unwrap();
        let files = files(tmp.path());
        let dir = open_dir(&files, &DirStatus::new(&files), Some(0o711))
            .unwrap()
            .unwrap();
        let spares = Arc::new(Spares::default());
        let held = witness(&files, &spares, &dir, 1);
        drop(witness(&files, &spares, &dir, 2));
        let before = names(&files);
        // SAFETY: the child drops what it inherited and calls _exit.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                held.abandon();
                drop(spares);
                unsafe { libc::_exit(0) };
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
        assert_eq!(names(&files), before, "the child removed nothing");
        assert_eq!(
            probe_now(&files, 1, &held.record),
            Probe::Held,
            "nor unlocked"
        );
        let old = held.record.clone();
        // Kept open, so that its inode number is not given to the next file.
        let _pinned = fs::File::open(files.witness_path.join("1")).unwrap();
        held.release();
        let next = witness(&files, &spares, &dir, 3);
        assert_ne!(next.record, old, "no spare from before the fork is lent");
        assert_eq!(probe_now(&files, 3, &next.record), Probe::Held);
    }
}
