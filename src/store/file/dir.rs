//! The semaphore's directory, bound once at open, and the checks every managed object passes
//! before it is used.
//!
//! A handle opens the directory that holds its state file once (`O_DIRECTORY`, following
//! symlinks in the path as given: it is resolved once) and keeps that descriptor for its
//! lifetime. Every later file operation of the handle, its permits and its waits is made
//! relative to it (`openat`, `renameat`, `unlinkat`, `mkdirat`, `fstatat`), so neither a
//! `chdir` nor a renamed or repointed path component changes which files it acts on. A
//! directory removed after the open is [`Error::DirectoryGone`]: nothing is ever created in
//! a deleted directory.
//!
//! The managed objects (`PATH`, `PATH.lock`, temp files, `PATH.witness/` and its files) are
//! opened without following symlinks, their type is checked on the opened descriptor, and
//! their owner must be trusted ([`Trust`]); anything else is [`Error::Untrusted`].

use std::cell::OnceCell;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use crate::error::{Error, Result, UntrustedKind};

/// The `S_IFMT` bits of a mode.
const TYPE_MASK: u32 = type_bits(SFlag::S_IFMT);
const WORLD_WRITABLE: u32 = 0o002;
const STICKY: u32 = 0o1000;

/// A semaphore's files, bound to the directory that holds them.
///
/// Shared (in an `Arc`) by the handle, its clones, its permits and its liveness judge.
#[derive(Debug)]
pub(crate) struct Files {
    /// The directory, opened once at open.
    dir: OwnedFd,
    /// Whether it was opened search-only (`O_PATH`: this user may search it but not read
    /// it): it cannot be `fsync`ed, so durable changes are refused before they start.
    search_only: bool,
    /// The state file as given to `open`: used in messages and returned by `path()`.
    pub path: PathBuf,
    /// `PATH.lock` and `PATH.witness` as given, for messages.
    pub lock_path: PathBuf,
    pub witness_path: PathBuf,
    /// The absolute path of the state file when it was opened (canonical directory + name).
    pub resolved: PathBuf,
    /// Names inside the directory.
    pub state_name: OsString,
    pub lock_name: OsString,
    pub witness_name: OsString,
    pub trust: Trust,
}

impl Files {
    /// Opens the directory of `path` (which must exist) and binds to it.
    ///
    /// A directory this user may search but not read is opened `O_PATH` (Linux): queries
    /// work through it, durable writes (which `fsync` the directory) are refused before
    /// they change anything ([`Files::check_syncable`]).
    pub fn open(path: &Path, trust: Trust) -> Result<Files> {
        let Some(name) = path.file_name().filter(|n| !n.is_empty()) else {
            return Err(Error::io(
                path,
                path,
                "use as a semaphore state file",
                io::Error::from_raw_os_error(libc::EISDIR),
            ));
        };
        let dir_path = parent_dir(path);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut search_only = false;
        let dir = match openat(AT_FDCWD, dir_path, flags, Mode::empty()) {
            Err(Errno::EACCES) => {
                search_only = true;
                open_search_only(dir_path)
            }
            other => other,
        };
        let dir = match dir {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                return Err(Error::NotFound {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => {
                return Err(Error::io(
                    path,
                    dir_path,
                    "open the directory",
                    io::Error::from(e),
                ));
            }
        };
        let resolved = resolve(&dir, dir_path)
            .map_err(|e| Error::io(path, dir_path, "resolve the directory", e))?
            .join(name);
        let with_suffix = |suffix: &str| {
            let mut p = path.as_os_str().to_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        let named = |suffix: &str| {
            let mut n = name.to_os_string();
            n.push(suffix);
            n
        };
        Ok(Files {
            dir,
            search_only,
            lock_path: with_suffix(".lock"),
            witness_path: with_suffix(".witness"),
            path: path.to_path_buf(),
            resolved,
            state_name: name.to_os_string(),
            lock_name: named(".lock"),
            witness_name: named(".witness"),
            trust,
        })
    }

    /// The bound directory's descriptor.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The directory's status now, or [`Error::DirectoryGone`] if it was removed.
    pub fn dir_stat(&self) -> Result<FileStat> {
        let st = fstat(self.dir.as_fd())
            .map_err(|e| self.io(parent_dir(&self.path), "look up the directory", e))?;
        if st.st_nlink == 0 {
            return Err(self.gone());
        }
        Ok(st)
    }

    /// Turns a missing name into [`Error::DirectoryGone`] when the directory itself was
    /// removed (every name in a removed directory is missing), and into `missing` otherwise.
    pub fn missing(&self, missing: Error) -> Error {
        match self.dir_stat() {
            Ok(_) => missing,
            Err(e) => e,
        }
    }

    pub fn gone(&self) -> Error {
        Error::DirectoryGone {
            path: self.path.clone(),
        }
    }

    /// Refuses a durable change before it starts if the directory cannot be `fsync`ed: it
    /// was opened search-only ([`Error::CannotSyncDirectory`]).
    pub fn check_syncable(&self) -> Result<()> {
        if self.search_only {
            return Err(Error::CannotSyncDirectory {
                path: self.path.clone(),
                directory: parent_dir(&self.path).to_path_buf(),
            });
        }
        Ok(())
    }

    /// `fsync` of the directory, making a rename in it durable.
    pub fn sync(&self) -> Result<()> {
        nix::unistd::fsync(self.dir.as_fd())
            .map_err(|e| self.io(parent_dir(&self.path), "fsync directory", e))
    }

    /// The status of `name` in the directory, not following a symlink; `None` if absent.
    pub fn stat_at(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileStat>> {
        match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// An I/O error on `file` of this semaphore.
    pub fn io(&self, file: &Path, action: &'static str, e: impl Into<io::Error>) -> Error {
        Error::io(&self.path, file, action, e.into())
    }

    /// The [`Error::Untrusted`] for `object` with status `st`, if it is not `want` or its
    /// owner is not trusted in the directory whose status `dir` gives (asked for only when
    /// the owner is not trusted everywhere). `where_` names that directory in the message.
    pub fn check(
        &self,
        object: &Path,
        st: &FileStat,
        want: Want,
        dir: impl FnOnce() -> Result<FileStat>,
        where_: &Path,
    ) -> Result<()> {
        let found = mode_bits(st) & TYPE_MASK;
        if found != want.type_bits() {
            return Err(self.wrong_type(object, st, want));
        }
        let owner = st.st_uid;
        if self.trust.trusts_anywhere(owner) {
            return Ok(());
        }
        let dir = dir()?;
        if self.trust.trusts(owner, &dir) {
            return Ok(());
        }
        Err(Error::Untrusted {
            path: self.path.clone(),
            object: object.to_path_buf(),
            kind: UntrustedKind::Owner,
            problem: format!(
                "it is owned by uid {owner}, who is not trusted in `{}`: in a world-writable \
                 or sticky directory only the caller, root and the directory's owner are \
                 trusted",
                where_.display()
            ),
            owner: Some(owner),
        })
    }

    /// The [`Error::Untrusted`] for an object that is not of the type `want`.
    pub fn wrong_type(&self, object: &Path, st: &FileStat, want: Want) -> Error {
        Error::Untrusted {
            path: self.path.clone(),
            object: object.to_path_buf(),
            kind: UntrustedKind::WrongType,
            problem: format!("it is {}, not {}", kind_of(mode_bits(st)), want.name()),
            owner: Some(st.st_uid),
        }
    }

    /// Explains why `name` in `dir` could not be opened as `want` when the open failed with
    /// `errno`: for `ELOOP`, `ENXIO`, `ENOTDIR` and `EISDIR` the object is of another type
    /// (a symlink, a socket, ...), which `fstatat` tells; otherwise `None`.
    pub fn explain_open_error(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        object: &Path,
        errno: Errno,
        want: Want,
    ) -> Option<Error> {
        if !matches!(
            errno,
            Errno::ELOOP | Errno::ENXIO | Errno::ENOTDIR | Errno::EISDIR
        ) {
            return None;
        }
        let st = self.stat_at(dir, name).ok()??;
        (mode_bits(&st) & TYPE_MASK != want.type_bits()).then(|| self.wrong_type(object, &st, want))
    }
}

/// The bound directory's status for one step, looked up (one `fstat`) only when the step
/// first needs it: to judge the owner of an object that is not trusted everywhere, to derive
/// the witness directory's mode, to clean up. A step whose lock file is found where it was
/// (see [`super::lock`]) knows the directory is still there without it.
pub(crate) struct DirStatus<'a> {
    files: &'a Files,
    stat: OnceCell<FileStat>,
}

impl<'a> DirStatus<'a> {
    /// Nothing looked up yet.
    pub fn new(files: &'a Files) -> DirStatus<'a> {
        DirStatus {
            files,
            stat: OnceCell::new(),
        }
    }

    /// With the status `stat` just looked up.
    pub fn known(files: &'a Files, stat: FileStat) -> DirStatus<'a> {
        DirStatus {
            files,
            stat: OnceCell::from(stat),
        }
    }

    /// The status, looked up the first time ([`Files::dir_stat`]).
    ///
    /// # Errors
    ///
    /// [`Error::DirectoryGone`], [`Error::Io`].
    pub fn get(&self) -> Result<FileStat> {
        if let Some(st) = self.stat.get() {
            return Ok(*st);
        }
        let st = self.files.dir_stat()?;
        Ok(*self.stat.get_or_init(|| st))
    }
}

/// The kind of object a managed name must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    File,
    Dir,
}

impl Want {
    fn type_bits(self) -> u32 {
        match self {
            Want::File => type_bits(SFlag::S_IFREG),
            Want::Dir => type_bits(SFlag::S_IFDIR),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Want::File => "a regular file",
            Want::Dir => "a directory",
        }
    }
}

/// The type and permission bits of `st` (`mode_t` is not `u32` on every target).
#[allow(clippy::unnecessary_cast)]
pub(crate) fn mode_bits(st: &FileStat) -> u32 {
    st.st_mode as u32
}

/// The permission bits (with set-id and sticky) of `st`.
pub(crate) fn perm_bits(st: &FileStat) -> u32 {
    mode_bits(st) & 0o7777
}

/// The device and inode numbers of `st`, which identify a file.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn file_id(st: &FileStat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

#[allow(clippy::unnecessary_cast)]
const fn type_bits(f: SFlag) -> u32 {
    f.bits() as u32
}

/// Whether `st` is the status of a regular file.
pub(crate) fn is_regular(st: &FileStat) -> bool {
    mode_bits(st) & TYPE_MASK == type_bits(SFlag::S_IFREG)
}

/// Whether `st` is the status of a symbolic link.
pub(crate) fn is_symlink(st: &FileStat) -> bool {
    mode_bits(st) & TYPE_MASK == type_bits(SFlag::S_IFLNK)
}

/// "a symbolic link", "a FIFO", ... for the type bits of `mode`.
pub(crate) fn kind_of(mode: u32) -> &'static str {
    let t = mode & TYPE_MASK;
    let is = |f: SFlag| t == type_bits(f);
    if is(SFlag::S_IFREG) {
        "a regular file"
    } else if is(SFlag::S_IFDIR) {
        "a directory"
    } else if is(SFlag::S_IFLNK) {
        "a symbolic link"
    } else if is(SFlag::S_IFIFO) {
        "a FIFO"
    } else if is(SFlag::S_IFSOCK) {
        "a socket"
    } else if is(SFlag::S_IFCHR) {
        "a character device"
    } else if is(SFlag::S_IFBLK) {
        "a block device"
    } else {
        "a special file"
    }
}

/// Whose files filesem trusts.
///
/// The rule (see "Trust model" in the crate docs): in a directory `D` that is neither
/// world-writable nor sticky, every owner is trusted (whoever can write `D` can replace any
/// file in it anyway). In a world-writable or sticky `D` (like `/tmp`), an object's owner is
/// trusted if it is the caller's effective uid, root, `D`'s owner, or a uid added with
/// [`OpenOptions::trust_owner`](crate::OpenOptions::trust_owner).
#[derive(Clone, Debug)]
pub(crate) struct Trust {
    euid: u32,
    extra: Vec<u32>,
}

impl Trust {
    pub fn new(extra: &[u32]) -> Trust {
        Trust {
            euid: nix::unistd::geteuid().as_raw(),
            extra: extra.to_vec(),
        }
    }

    /// Trusted in every directory: the caller, root, an explicit opt-in.
    pub fn trusts_anywhere(&self, owner: u32) -> bool {
        owner == self.euid || owner == 0 || self.extra.contains(&owner)
    }

    /// Trusted in the directory whose status is `dir`.
    pub fn trusts(&self, owner: u32, dir: &FileStat) -> bool {
        let mode = mode_bits(dir);
        let shared = mode & (WORLD_WRITABLE | STICKY) != 0;
        !shared || owner == dir.st_uid || self.trusts_anywhere(owner)
    }
}

/// The directory that holds `path`.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Opens a directory this user may search but not read (`O_PATH`, Linux only).
#[cfg(target_os = "linux")]
fn open_search_only(dir: &Path) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    openat(AT_FDCWD, dir, flags, Mode::empty())
}

#[cfg(not(target_os = "linux"))]
fn open_search_only(_dir: &Path) -> nix::Result<OwnedFd> {
    Err(Errno::EACCES)
}

/// The absolute path of the directory open as `fd`: what `/proc/self/fd/N` points to, or
/// (elsewhere, or without `/proc`) the canonical form of `given`.
fn resolve(fd: &OwnedFd, given: &Path) -> io::Result<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        if let Ok(p) = link
            && p.is_absolute()
            && !p.as_os_str().as_encoded_bytes().ends_with(b" (deleted)")
        {
            return Ok(p);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
    std::fs::canonicalize(given)
}

/// The mode of the lock file and of witness files for a state file of mode `state_mode`:
/// read and write for each class (user, group, other) that may write the state, nothing for
/// the others (0644 -> 0600, 0664 -> 0660, 0666 -> 0666). A user who may only read the state
/// cannot open them, so cannot stall writers or keep a dead holder "alive" by flocking them.
pub(crate) fn access_mode(state_mode: u32) -> u32 {
    let write = state_mode & 0o222;
    write | (write << 1)
}

/// The mode of the witness directory for a state file of mode `state_mode` in a directory of
/// mode `parent_mode`: the witness files' bits ([`access_mode`]), search (x) for every class
/// that may read the state (so that it can look a witness up by name), and setgid if the
/// parent has it (0644 -> 0711, 0664 -> 0771, in a setgid parent 02771).
pub(crate) fn witness_dir_mode(state_mode: u32, parent_mode: u32) -> u32 {
    let search = (state_mode & 0o444) >> 2;
    access_mode(state_mode) | search | (parent_mode & 0o2000)
}

/// The names in the directory open as `dir`, without `.` and `..`.
pub(crate) fn names_in(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut listing = nix::dir::Dir::openat(dir, ".", flags, Mode::empty())?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// `mode` (permission bits) as nix's [`Mode`].
pub(crate) fn mode(bits: u32) -> Mode {
    Mode::from_bits_truncate(bits as libc::mode_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_with(mode: u32, uid: u32) -> FileStat {
        let mut st = fstat(std::fs::File::open("/").unwrap()).expect("fstat /");
        st.st_mode = (type_bits(SFlag::S_IFDIR) | mode) as _;
        st.st_uid = uid;
        st
    }

    #[test]
    fn owners_are_trusted_by_the_directory_rule() {
        // In a private or group directory everyone is trusted; in a world-writable or
        // sticky one only the caller, root, the directory's owner and opt-ins.
        let trust = Trust {
            euid: 1000,
            extra: vec![3000],
        };
        let private = stat_with(0o755, 500);
        let group = stat_with(0o2775, 0);
        let tmp = stat_with(0o1777, 0);
        let sticky_only = stat_with(0o1755, 0);
        let world_no_sticky = stat_with(0o777, 500);
        for dir in [&private, &group] {
            assert!(trust.trusts(2000, dir));
        }
        for dir in [&tmp, &sticky_only, &world_no_sticky] {
            assert!(!trust.trusts(2000, dir), "{:o}", dir.st_mode);
            assert!(trust.trusts(1000, dir) && trust.trusts(0, dir) && trust.trusts(3000, dir));
        }
        assert!(trust.trusts(500, &world_no_sticky), "the directory's owner");
    }

    #[test]
    fn lock_and_witness_modes_follow_who_may_write_the_state() {
        // Only writers may open lock and witness files; readers may search the witness dir.
        assert_eq!(access_mode(0o644), 0o600);
        assert_eq!(access_mode(0o664), 0o660);
        assert_eq!(access_mode(0o666), 0o666);
        assert_eq!(access_mode(0o640), 0o600);
        assert_eq!(access_mode(0o444), 0);
        assert_eq!(witness_dir_mode(0o644, 0o755), 0o711);
        assert_eq!(witness_dir_mode(0o664, 0o2775), 0o2771);
        assert_eq!(witness_dir_mode(0o660, 0o2770), 0o2770);
        assert_eq!(witness_dir_mode(0o666, 0o1777), 0o777);
    }

    #[test]
    fn kinds_are_named() {
        // Refusals name what was found.
        assert_eq!(
            kind_of(type_bits(SFlag::S_IFLNK) | 0o777),
            "a symbolic link"
        );
        assert_eq!(kind_of(type_bits(SFlag::S_IFSOCK)), "a socket");
        assert_eq!(kind_of(type_bits(SFlag::S_IFIFO) | 0o644), "a FIFO");
    }
}
