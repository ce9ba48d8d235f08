//! Atomic replacement of the state file: a temp file in the same directory, `fsync`,
//! `renameat`, then `fsync` of the directory, all relative to the bound directory. The
//! rename is the commit: a failure before it changes nothing, and after it the change stands
//! (see [`write_atomic`] for a directory `fsync` that fails).
//!
//! Temp files are named `.NAME.XXXXXXXX.filesem-tmp` and created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW`: an object planted at a temp name is never followed or
//! written, only examined. A failed write removes its temp file.
//!
//! # Why a fixed name comes first
//!
//! A write first tries the fixed name `.NAME.00000000.filesem-tmp`. Only the holder of the
//! state lock writes a temp file, so a file found at that name is a leftover of a writer
//! killed between creating it and the rename: every write removes it (if it is a regular file
//! of a trusted owner) and takes the name, which costs nothing when there is none (the create
//! succeeds at once). With random names only, finding leftovers means listing the directory,
//! too slow for every write of a semaphore that may share its directory with thousands of
//! files, so a killed writer's file would stay until the next `open` or `reap`.
//!
//! Only when something else sits at the fixed name (a symbolic link, a file of an untrusted
//! owner, a FIFO: never ours, so left alone) does the write fall back to a random name, made
//! by [`tempfile::Builder`] (its name generation and its retry on a name that exists) and
//! created by us with `openat` on the bound directory. tempfile never gets a real path:
//! [`NAME_ONLY`] stands in for the directory, only the file name it makes up is used, and
//! its path-based cleanup is disabled and the path forgotten. Leftovers under random names
//! (that fallback, or older versions) are removed by [`remove_leftovers`] when a semaphore is
//! opened or reaped.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{FileStat, fchmod, fstat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::dir::{DirStatus, Files, mode, parent_dir};
use crate::error::Result;

const TEMP_SUFFIX: &str = ".filesem-tmp";

/// How many random characters a temp file name has between prefix and suffix.
const RAND_LEN: usize = 8;

/// The middle part of the fixed first-choice temp name.
const FIRST_CHOICE: &str = "00000000";

/// Tries with random names after the first choice, before giving up (tempfile itself would
/// try 65536 names, each a system call, under the lock that every user waits for).
const RANDOM_TRIES: usize = 16;

/// The "directory" given to [`tempfile::Builder::make_in`], which only joins the name it
/// makes up to it: the file is created relative to the bound directory, by name, and
/// tempfile's path-based cleanup is disabled, so nothing ever acts on a path under it.
/// Absolute, so that tempfile does not look up the working directory (which may be gone).
const NAME_ONLY: &str = "/";

/// The set-user-ID, set-group-ID and sticky bits: a state file never gets them.
const SPECIAL_BITS: u32 = 0o7000;

/// Who should own a newly written state file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FileMeta {
    pub mode: u32,
    /// Owner and group to keep (only applied when we may change them, i.e. as root).
    pub owner: Option<(u32, u32)>,
}

fn temp_prefix(name: &OsStr) -> OsString {
    let mut p = OsString::from(".");
    p.push(name);
    p.push(".");
    p
}

fn temp_name(prefix: &OsStr, middle: &str) -> OsString {
    let mut n = prefix.to_os_string();
    n.push(middle);
    n.push(TEMP_SUFFIX);
    n
}

/// Replaces the state file with `bytes` so that a reader (or a crash) sees either the old or
/// the new file, never a mix or a truncated one. The new file gets `meta.mode` without the
/// set-id and sticky bits, whatever the umask, and (as root) `meta.owner`. `dir` is the
/// directory's status, against which a leftover's owner is judged. Call under the state
/// lock.
///
/// With `durable`, the data is on disk before the rename and the rename once the directory
/// is `fsync`ed after it. A directory that cannot be `fsync`ed at all (opened search-only)
/// is refused before anything is written ([`Files::check_syncable`]). An `fsync` of the
/// directory that fails *after* the rename does not fail the write: the new state is in
/// place and every process reads it (a waiter may already act on it), so reporting the
/// change as not made would contradict the file (a caller told that its acquire failed
/// while its hold is on file would leak the slot). Only its survival of a power loss is in
/// doubt, which a warning says.
///
/// Returns the new state file, still open, and its status after the rename: what a handle
/// keeps to recognise the file as the one it wrote (see [`super::read`]); `None` if that
/// status cannot be looked up (the write stands all the same).
pub(crate) fn write_atomic(
    files: &Files,
    bytes: &[u8],
    meta: FileMeta,
    durable: bool,
    dir: &DirStatus<'_>,
) -> Result<Option<(File, FileStat)>> {
    write_atomic_then(files, bytes, meta, durable, dir, || {})
}

/// [`write_atomic`], calling `renamed` right after the rename (before the directory's
/// `fsync`): when readers can see the new file, as a watcher of the directory learns of it.
pub(crate) fn write_atomic_then(
    files: &Files,
    bytes: &[u8],
    meta: FileMeta,
    durable: bool,
    dir: &DirStatus<'_>,
    renamed: impl FnOnce(),
) -> Result<Option<(File, FileStat)>> {
    if durable {
        files.check_syncable()?;
    }
    let mode_bits = meta.mode & 0o7777 & !SPECIAL_BITS;
    let (mut file, temp) = create_temp(files, mode_bits, dir)?;
    let written = fill(files, &mut file, &temp, bytes, meta, mode_bits, durable).and_then(|()| {
        renameat(
            files.dir(),
            temp.as_os_str(),
            files.dir(),
            files.state_name.as_os_str(),
        )
        .map_err(|e| {
            let action = if e == Errno::EPERM {
                "rename over (in a sticky directory only the file's owner may replace it; \
                     use a group-writable directory without the sticky bit)"
            } else {
                "rename a temp file over"
            };
            files.io(&files.path, action, e)
        })
    });
    if let Err(e) = written {
        remove_temp(files, &temp);
        return Err(e);
    }
    renamed();
    let kept = match fstat(&file) {
        Ok(stat) => Some((file, stat)),
        Err(e) => {
            tracing::debug!(path = %files.path.display(), error = %e, "could not look up the new state file; it is read again next time");
            None
        }
    };
    if durable && let Err(error) = files.sync() {
        tracing::warn!(
            path = %files.path.display(),
            %error,
            "the state file was replaced, but its directory could not be fsynced: the change \
             is made and visible, and may not survive a power loss"
        );
    }
    Ok(kept)
}

/// Creates the temp file: the fixed first choice (removing a leftover found there), else a
/// random name (see the [module docs](self)).
fn create_temp(files: &Files, mode_bits: u32, dir: &DirStatus<'_>) -> Result<(File, OsString)> {
    let prefix = temp_prefix(&files.state_name);
    let first = temp_name(&prefix, FIRST_CHOICE);
    let mut leftover_checked = false;
    loop {
        match open_temp(files, &first, mode_bits) {
            Ok(file) => return Ok((file, first)),
            Err(Errno::EEXIST) if !leftover_checked => {
                leftover_checked = true;
                if remove_if_leftover(files, &first, dir)? {
                    continue;
                }
            }
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(create_failed(files, e)),
        }
        return create_random(files, &prefix, mode_bits);
    }
}

/// Creates a temp file under a random name made by [`tempfile::Builder`], at most
/// [`RANDOM_TRIES`] names.
fn create_random(files: &Files, prefix: &OsStr, mode_bits: u32) -> Result<(File, OsString)> {
    let mut tries = 0;
    let mut failed = None;
    let created = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(TEMP_SUFFIX)
        .rand_bytes(RAND_LEN)
        .disable_cleanup(true)
        .make_in(NAME_ONLY, |made_up| {
            let name = made_up.file_name().unwrap_or_default();
            match open_temp(files, name, mode_bits) {
                Ok(file) => Ok((file, name.to_os_string())),
                Err(Errno::EEXIST) if tries + 1 < RANDOM_TRIES => {
                    tries += 1;
                    // tempfile tries the next name.
                    Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists))
                }
                Err(e) => {
                    failed = Some(e);
                    Err(std::io::Error::other("no temp file created"))
                }
            }
        });
    let created = match (created, failed) {
        (Ok(created), _) => created,
        (Err(_), Some(errno)) => return Err(create_failed(files, errno)),
        (Err(e), None) => {
            let dir_path = parent_dir(&files.path);
            return Err(files.io(dir_path, "create a temp file in", e));
        }
    };
    let ((file, name), made_up) = created.into_parts();
    // Forget the path tempfile made up (its cleanup is off already): it names nothing of ours.
    // `keep` only disarms the path (it cannot fail on Unix); if it did, dropping the path
    // with cleanup off would still touch nothing.
    if let Err(e) = made_up.keep() {
        tracing::debug!(error = %e.error, "tempfile did not forget a made-up temp path");
    }
    Ok((file, name))
}

/// Creates `name` in the bound directory for writing, exclusively, without following a
/// symlink or blocking on a FIFO, with `mode_bits` (before the umask; [`fill`] sets them
/// exactly).
fn open_temp(files: &Files, name: &OsStr, mode_bits: u32) -> nix::Result<File> {
    let flags = OFlag::O_WRONLY
        | OFlag::O_CREAT
        | OFlag::O_EXCL
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_CLOEXEC;
    openat(files.dir(), name, flags, mode(mode_bits)).map(File::from)
}

fn create_failed(files: &Files, errno: Errno) -> crate::error::Error {
    files.io(parent_dir(&files.path), "create a temp file in", errno)
}

/// Sets the owner and mode of the new temp file `temp`, writes `bytes` and (durable) flushes
/// them.
fn fill(
    files: &Files,
    file: &mut File,
    temp: &OsStr,
    bytes: &[u8],
    meta: FileMeta,
    mode_bits: u32,
    durable: bool,
) -> Result<()> {
    let io = |action, e: std::io::Error| files.io(&parent_dir(&files.path).join(temp), action, e);
    // One fstat tells whether the mode or the owner needs changing; changing them only then
    // saves the fchmod, geteuid and fchown that every write would make.
    let created = fstat(&*file).map_err(|e| io("look up the temp file", e.into()))?;
    let mut chowned = false;
    if let Some((uid, gid)) = meta.owner
        && (created.st_uid, created.st_gid) != (uid, gid)
        && nix::unistd::geteuid().is_root()
    {
        std::os::unix::fs::fchown(&*file, Some(uid), Some(gid))
            .map_err(|e| io("change the owner of", e))?;
        chowned = true;
    }
    // Not subject to the umask: the new file gets exactly this mode (set after the chown,
    // which may clear set-id bits).
    if chowned || super::dir::perm_bits(&created) != mode_bits {
        fchmod(&*file, mode(mode_bits)).map_err(|e| io("set the mode of", e.into()))?;
    }
    file.write_all(bytes).map_err(|e| io("write", e))?;
    if durable {
        file.sync_data().map_err(|e| io("fsync", e))?;
    }
    Ok(())
}

/// Removes a temp file of ours after a failed write (logged if that fails too).
fn remove_temp(files: &Files, name: &OsStr) {
    if let Err(e) = unlinkat(files.dir(), name, UnlinkatFlags::NoRemoveDir)
        && e != Errno::ENOENT
    {
        let path = parent_dir(&files.path).join(name);
        tracing::warn!(temp = %path.display(), error = %e, "failed to remove temp file");
    }
}

/// Removes `name` if it is a leftover of ours: a regular file whose owner is trusted in the
/// directory (whose status is `dir`). Returns whether it did. Call under the state lock (then
/// no live writer of this semaphore has a temp file).
fn remove_if_leftover(files: &Files, name: &OsStr, dir: &DirStatus<'_>) -> Result<bool> {
    let path = parent_dir(&files.path).join(name);
    let st = files
        .stat_at(files.dir(), name)
        .map_err(|e| files.io(&path, "look up leftover temp file", e))?;
    let Some(st) = st else {
        return Ok(false);
    };
    let trusted =
        files.trust.trusts_anywhere(st.st_uid) || files.trust.trusts(st.st_uid, &dir.get()?);
    if !super::dir::is_regular(&st) || !trusted {
        tracing::warn!(
            path = %files.path.display(),
            file = %path.display(),
            owner = st.st_uid,
            kind = super::dir::kind_of(super::dir::mode_bits(&st)),
            "left alone a temp-file name that filesem did not create"
        );
        return Ok(false);
    }
    match unlinkat(files.dir(), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => {
            tracing::info!(path = %files.path.display(), file = %path.display(), "removed leftover temp file");
            Ok(true)
        }
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(files.io(&path, "remove leftover temp file", e)),
    }
}

/// Removes temp files that a killed writer of this semaphore left behind under any of our
/// temp names (regular files of trusted owners only; see [`remove_if_leftover`]). Lists the
/// whole directory, so it is called only by `open` and `reap`. Call under the state lock.
/// Returns the paths removed.
pub(crate) fn remove_leftovers(files: &Files, dir: &DirStatus<'_>) -> Result<Vec<PathBuf>> {
    let prefix = temp_prefix(&files.state_name);
    let dir_path = parent_dir(&files.path);
    let names =
        super::dir::names_in(files.dir()).map_err(|e| files.io(dir_path, "list directory", e))?;
    let mut removed = Vec::new();
    for name in names {
        if is_our_temp_name(name.as_bytes(), prefix.as_bytes())
            && remove_if_leftover(files, &name, dir)?
        {
            removed.push(dir_path.join(&name));
        }
    }
    Ok(removed)
}

/// Whether `name` is exactly `prefix`, [`RAND_LEN`] random characters, [`TEMP_SUFFIX`]: a
/// semaphore whose name extends ours (`a.json.x` beside `a.json`) has temp files that start
/// with our prefix, and those may belong to a live writer holding *its* lock, not ours.
fn is_our_temp_name(name: &[u8], prefix: &[u8]) -> bool {
    let suffix = TEMP_SUFFIX.as_bytes();
    name.len() == prefix.len() + RAND_LEN + suffix.len()
        && name.starts_with(prefix)
        && name.ends_with(suffix)
        && name[prefix.len()..prefix.len() + RAND_LEN]
            .iter()
            .all(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    fn files(dir: &Path) -> Files {
        Files::open(
            &dir.join("s.json"),
            crate::store::file::dir::Trust::new(&[]),
        )
        .unwrap()
    }

    fn write(files: &Files, bytes: &[u8], meta: FileMeta) -> Result<()> {
        write_atomic(files, bytes, meta, true, &DirStatus::new(files)).map(drop)
    }

    fn names(dir: &Path) -> Vec<OsString> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replaces_file_and_keeps_exact_mode() {
        // The new state file has the mode we ask for (never set-id or sticky bits), not
        // tempfile's 0600 or the umask's.
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let p = dir.path().join("s.json");
        fs::write(&p, b"old").unwrap();
        for (asked, got) in [(0o664, 0o664), (0o6775, 0o775), (0o1666, 0o666)] {
            let meta = FileMeta {
                mode: asked,
                owner: None,
            };
            write(&files, b"new", meta).unwrap();
            assert_eq!(fs::read(&p).unwrap(), b"new");
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, got, "asked {asked:o}");
        }
        assert_eq!(names(dir.path()), ["s.json"], "no temp file left");
    }

    #[test]
    fn keeps_the_old_owner_and_mode_when_root() {
        // A state file shared between users keeps its owner, group and mode across rewrites.
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED: changing a file's owner needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let meta = FileMeta {
            mode: 0o666,
            owner: Some((4321, 4322)),
        };
        write(&files, b"new", meta).unwrap();
        let m = fs::metadata(dir.path().join("s.json")).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322));
        assert_eq!(m.permissions().mode() & 0o7777, 0o666);
    }

    #[test]
    fn a_leftover_at_the_first_choice_name_is_removed_by_the_next_write() {
        // A writer killed before its rename leaves its temp file; the next write, whatever
        // it is, removes it (not only open).
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let leftover = dir.path().join(".s.json.00000000.filesem-tmp");
        fs::write(&leftover, b"{\"capacity\": 1, \"hol").unwrap();
        let meta = FileMeta {
            mode: 0o644,
            owner: None,
        };
        write(&files, b"new", meta).unwrap();
        assert_eq!(names(dir.path()), ["s.json"]);
    }

    #[test]
    fn a_link_at_the_first_choice_name_is_left_alone_and_not_followed() {
        // An object we did not create at a temp name is neither followed, written nor
        // removed: the write takes a random name.
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let link = dir.path().join(".s.json.00000000.filesem-tmp");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let meta = FileMeta {
            mode: 0o644,
            owner: None,
        };
        write(&files, b"new", meta).unwrap();
        assert_eq!(fs::read(dir.path().join("s.json")).unwrap(), b"new");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(names(dir.path()).len(), 3, "{:?}", names(dir.path()));
    }

    #[test]
    fn anything_planted_at_the_first_choice_forces_a_random_name_and_stays_untouched() {
        // A link, a FIFO or a file of an untrusted owner at the fixed name is not ours: the
        // temp file gets a random name (tempfile's), the write succeeds, and the planted
        // object, and whatever a link points to, are exactly as before. tempfile never acts
        // on a path: its made-up path names nothing, and dropping everything deletes nothing.
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("tmp");
        fs::create_dir(&dir).unwrap();
        // Sticky and world-writable, as /tmp: a file of another owner is not trusted there.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        let files = files(&dir);
        let first = dir.join(".s.json.00000000.filesem-tmp");
        let victim = base.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let mut plants = vec!["symlink", "FIFO"];
        if nix::unistd::geteuid().is_root() {
            plants.push("another user's file");
        } else {
            println!("SKIPPED: another user's file at the fixed name needs root to plant");
        }
        let prefix = temp_prefix(OsStr::new("s.json"));
        for what in plants {
            match what {
                "symlink" => std::os::unix::fs::symlink(&victim, &first).unwrap(),
                "FIFO" => nix::unistd::mkfifo(&first, nix::sys::stat::Mode::S_IRWXU).unwrap(),
                _ => {
                    fs::write(&first, b"theirs").unwrap();
                    std::os::unix::fs::lchown(&first, Some(61451), Some(61451)).unwrap();
                }
            }
            let planted = fs::symlink_metadata(&first).unwrap();
            let planted_bytes = planted.is_file().then(|| fs::read(&first).unwrap());
            let st = DirStatus::new(&files);
            let (file, name) = create_temp(&files, 0o644, &st).unwrap();
            assert_ne!(dir.join(&name), first, "{what}");
            assert!(
                is_our_temp_name(name.as_bytes(), prefix.as_bytes()),
                "{what}: {name:?}"
            );
            assert!(
                !Path::new(NAME_ONLY).join(&name).exists(),
                "{what}: nothing made at tempfile's path"
            );
            drop(file);
            assert!(
                dir.join(&name).is_file(),
                "{what}: tempfile deleted nothing"
            );
            fs::remove_file(dir.join(&name)).unwrap();

            let meta = FileMeta {
                mode: 0o644,
                owner: None,
            };
            write(&files, b"new", meta).unwrap();
            assert_eq!(fs::read(dir.join("s.json")).unwrap(), b"new", "{what}");
            let after = fs::symlink_metadata(&first).unwrap();
            assert_eq!(
                (after.ino(), after.mode(), after.uid()),
                (planted.ino(), planted.mode(), planted.uid()),
                "{what}: the planted object is as it was"
            );
            if let Some(bytes) = planted_bytes {
                assert_eq!(fs::read(&first).unwrap(), bytes, "{what}");
            }
            assert_eq!(fs::read(&victim).unwrap(), b"precious", "{what}");
            let mut expected = vec![OsString::from(".s.json.00000000.filesem-tmp")];
            expected.push("s.json".into());
            assert_eq!(names(&dir), expected, "{what}: no temp file left");
            fs::remove_file(&first).unwrap();
            fs::remove_file(dir.join("s.json")).unwrap();
        }
    }

    #[test]
    fn leftovers_of_this_semaphore_only_are_removed() {
        // Only our own recognisable temp files that are regular files go; other files in
        // the directory, and links with our names, stay.
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        for name in [
            ".s.json.abcdefgh.filesem-tmp",
            ".other.json.abcdefgh.filesem-tmp",
            "s.json.tmp",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::os::unix::fs::symlink(
            "s.json.tmp",
            dir.path().join(".s.json.linklink.filesem-tmp"),
        )
        .unwrap();
        let removed = remove_leftovers(&files, &DirStatus::new(&files)).unwrap();
        assert_eq!(
            removed,
            vec![dir.path().join(".s.json.abcdefgh.filesem-tmp")]
        );
        assert_eq!(
            names(dir.path()),
            [
                ".other.json.abcdefgh.filesem-tmp",
                ".s.json.linklink.filesem-tmp",
                "s.json.tmp"
            ]
        );
    }
}
