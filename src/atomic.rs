//! Atomic replacement of the state file: a temp file in the same directory, `fsync`,
//! `rename`, then `fsync` of the directory.
//!
//! Temp files get a random name created with `O_EXCL` (by [`tempfile`]), never a fixed
//! `PATH.tmp` that another user could plant as a symlink, and are removed when a write
//! fails. Their names (`.NAME.XXXXXXXX.filesem-tmp`) are recognisably ours, so leftovers of a
//! killed writer can be removed under the lock by [`remove_leftovers`].

use std::ffi::OsString;
use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const TEMP_SUFFIX: &str = ".filesem-tmp";

/// How many random characters a temp file name has between prefix and suffix.
const RAND_LEN: usize = 8;

/// Who should own a newly written state file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FileMeta {
    pub mode: u32,
    /// Owner and group to keep (only applied when we may change them, i.e. as root).
    pub owner: Option<(u32, u32)>,
}

fn temp_prefix(path: &Path) -> OsString {
    let mut p = OsString::from(".");
    p.push(path.file_name().unwrap_or_default());
    p.push(".");
    p
}

/// Replaces `path` with `bytes` so that a reader (or a crash) sees either the old or the new
/// file, never a mix or a truncated one. With `durable`, the data and the rename are on disk
/// when this returns.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], meta: FileMeta, durable: bool) -> Result<()> {
    let dir = crate::store::parent_dir(path);
    let mode = meta.mode & 0o7777;
    let mut temp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .suffix(TEMP_SUFFIX)
        .rand_bytes(RAND_LEN)
        // Created with the wanted mode less the umask: usually exactly the wanted mode.
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| Error::io(path, dir, "create a temp file in", e))?;
    let temp_path = temp.path().to_path_buf();
    let io = |action, e| Error::io(path, &temp_path, action, e);
    // One fstat tells whether the mode or the owner needs changing; changing them only then
    // saves the fchmod, geteuid and fchown that every write made before.
    let created = temp
        .as_file()
        .metadata()
        .map_err(|e| io("look up the temp file", e))?;
    let mut chowned = false;
    if let Some((uid, gid)) = meta.owner {
        if (created.uid(), created.gid()) != (uid, gid) && nix::unistd::geteuid().is_root() {
            std::os::unix::fs::fchown(temp.as_file(), Some(uid), Some(gid))
                .map_err(|e| io("change the owner of", e))?;
            chowned = true;
        }
    }
    // Not subject to the umask: the new file gets exactly the old file's mode (set after the
    // chown, which may clear set-id bits).
    if chowned || created.mode() & 0o7777 != mode {
        temp.as_file()
            .set_permissions(Permissions::from_mode(mode))
            .map_err(|e| io("set the mode of", e))?;
    }
    temp.write_all(bytes).map_err(|e| io("write", e))?;
    if durable {
        temp.as_file().sync_data().map_err(|e| io("fsync", e))?;
    }
    temp.persist(path).map_err(|e| {
        let hint = if e.error.raw_os_error() == Some(libc::EPERM) {
            "rename over (in a sticky directory only the file's owner may replace it; \
             use a group-writable directory without the sticky bit)"
        } else {
            "rename a temp file over"
        };
        Error::io(path, path, hint, e.error)
    })?;
    if durable {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(path, dir, "fsync directory", e))?;
    }
    Ok(())
}

/// Removes temp files that a killed writer of this semaphore left behind. Must be called
/// under the lock (then no live writer of ours has a temp file). Returns the paths removed.
pub(crate) fn remove_leftovers(path: &Path) -> Result<Vec<PathBuf>> {
    let dir = crate::store::parent_dir(path);
    let prefix = temp_prefix(path);
    let prefix = prefix.as_encoded_bytes();
    let mut removed = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io(path, dir, "list directory", e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let bytes = name.as_encoded_bytes();
        if is_our_temp_name(bytes, prefix) {
            let p = entry.path();
            match fs::remove_file(&p) {
                Ok(()) => removed.push(p),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(path, &p, "remove leftover temp file", e)),
            }
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

    #[test]
    fn replaces_file_and_keeps_exact_mode() {
        // The new state file has the mode we ask for, not tempfile's 0600 or the umask's.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        fs::write(&p, b"old").unwrap();
        let meta = FileMeta {
            mode: 0o664,
            owner: None,
        };
        write_atomic(&p, b"new", meta, true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o664
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("s.json")], "no temp file left");
    }

    #[test]
    fn keeps_the_old_owner_and_mode_when_root() {
        // A state file shared between users keeps its owner, group and mode across rewrites.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing a file's owner needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        let meta = FileMeta {
            mode: 0o666,
            owner: Some((4321, 4322)),
        };
        write_atomic(&p, b"new", meta, false).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322));
        assert_eq!(m.permissions().mode() & 0o7777, 0o666);
    }

    #[test]
    fn leftovers_of_this_semaphore_only_are_removed() {
        // Only our own recognisable temp files go; other files in the directory stay.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        for name in [
            ".s.json.abcdefgh.filesem-tmp",
            ".other.json.abcdefgh.filesem-tmp",
            "s.json.tmp",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        let removed = remove_leftovers(&p).unwrap();
        assert_eq!(
            removed,
            vec![dir.path().join(".s.json.abcdefgh.filesem-tmp")]
        );
        assert!(dir.path().join(".other.json.abcdefgh.filesem-tmp").exists());
        assert!(dir.path().join("s.json.tmp").exists());
    }
}
