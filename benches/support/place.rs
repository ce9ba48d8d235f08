//! Where measurements run: a tmpfs directory and a directory on the normal disk, each checked
//! with `statfs` so that a "disk" number is never secretly a tmpfs one.
//!
//! Shared by the benchmarks and `examples/contention.rs`.

use std::env;
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{TMPFS_MAGIC, statfs};
use tempfile::TempDir;

/// The kind of file system a measurement runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Medium {
    /// A RAM file system (`/dev/shm`): no device I/O, fsync is free.
    Tmpfs,
    /// The normal disk (ext4, xfs, ...): writes go to a block device.
    Disk,
}

impl Medium {
    /// `tmpfs` or `disk`.
    pub fn name(self) -> &'static str {
        match self {
            Medium::Tmpfs => "tmpfs",
            Medium::Disk => "disk",
        }
    }
}

/// A fresh directory on one medium, removed when dropped.
#[derive(Debug)]
pub struct Place {
    /// What the directory is on.
    pub medium: Medium,
    /// The file system type found by `statfs` (`tmpfs`, `ext4`, ...).
    pub fs_type: String,
    /// The directory itself.
    pub dir: TempDir,
}

impl Place {
    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `tmpfs (tmpfs at /dev/shm/...)`-style description for reports.
    pub fn describe(&self) -> String {
        format!(
            "{} = {} at {}",
            self.medium.name(),
            self.fs_type,
            self.path().display()
        )
    }
}

/// The file system type of `path`, by `statfs` magic number.
pub fn fs_type(path: &Path) -> io::Result<String> {
    let st = statfs(path).map_err(io::Error::from)?;
    let t = st.filesystem_type();
    let name = if t == TMPFS_MAGIC {
        "tmpfs".to_string()
    } else {
        // The values of linux/magic.h; the fallback shows the number.
        match t.0 as u64 {
            0xEF53 => "ext4".to_string(),
            0x5846_5342 => "xfs".to_string(),
            0x9123_683E => "btrfs".to_string(),
            0x794C_7630 => "overlayfs".to_string(),
            0x6969 => "nfs".to_string(),
            0x2FC1_2FC1 => "zfs".to_string(),
            other => format!("fs-{other:#x}"),
        }
    };
    Ok(name)
}

/// A fresh directory on tmpfs: under `$FILESEM_BENCH_TMPFS_DIR` or `/dev/shm`. `Err` says
/// why there is none (the directory is missing or not tmpfs).
pub fn tmpfs() -> Result<Place, String> {
    let base = env::var_os("FILESEM_BENCH_TMPFS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    let fs_type = fs_type(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    if fs_type != "tmpfs" {
        return Err(format!(
            "{} is {fs_type}, not tmpfs (set FILESEM_BENCH_TMPFS_DIR)",
            base.display()
        ));
    }
    place_in(Medium::Tmpfs, &base, fs_type)
}

/// A fresh directory on the normal disk: under `$FILESEM_BENCH_DISK_DIR`, else the first of
/// `candidates` that is not tmpfs, else the system temp directory if it is not tmpfs.
pub fn disk(candidates: &[&Path]) -> Result<Place, String> {
    if let Some(base) = env::var_os("FILESEM_BENCH_DISK_DIR").map(PathBuf::from) {
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        let fs_type = fs_type(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        if fs_type == "tmpfs" {
            return Err(format!(
                "FILESEM_BENCH_DISK_DIR={} is tmpfs, not a disk",
                base.display()
            ));
        }
        return place_in(Medium::Disk, &base, fs_type);
    }
    let temp = env::temp_dir();
    let mut tried = Vec::new();
    for base in candidates.iter().copied().chain([temp.as_path()]) {
        if std::fs::create_dir_all(base).is_err() {
            continue;
        }
        match fs_type(base) {
            Ok(t) if t != "tmpfs" => return place_in(Medium::Disk, base, t),
            Ok(t) => tried.push(format!("{} is {t}", base.display())),
            Err(e) => tried.push(format!("{}: {e}", base.display())),
        }
    }
    Err(format!(
        "no disk directory found ({}); set FILESEM_BENCH_DISK_DIR",
        tried.join(", ")
    ))
}

fn place_in(medium: Medium, base: &Path, fs_type: String) -> Result<Place, String> {
    let dir = tempfile::Builder::new()
        .prefix("filesem-bench-")
        .tempdir_in(base)
        .map_err(|e| format!("cannot create a directory in {}: {e}", base.display()))?;
    Ok(Place {
        medium,
        fs_type,
        dir,
    })
}

/// Both places that are available, tmpfs first; unavailable ones are reported on stderr.
pub fn all(disk_candidates: &[&Path]) -> Vec<Place> {
    let mut places = Vec::new();
    for found in [tmpfs(), disk(disk_candidates)] {
        match found {
            Ok(p) => places.push(p),
            Err(why) => eprintln!("skipping a medium: {why}"),
        }
    }
    places
}
