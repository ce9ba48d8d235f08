//! Who holds a flock on a file, as the kernel lists it in `/proc/locks` (Linux).
//!
//! This needs no access to the file itself: a witness file that this user may not open can
//! still be looked up by device and inode. Two limits, which the callers must respect:
//!
//! - `/proc/locks` lists only the locks of processes visible in the pid namespace of the
//!   `/proc` mount (a lock taken outside a container is invisible inside it); in the initial
//!   pid namespace it lists every lock, even one whose locker has exited while a child that
//!   inherited the descriptor keeps it.
//! - It prints the superblock's device, which is not always the `st_dev` that `stat` reports
//!   (btrfs subvolumes, overlayfs): a lookup by `st_dev` may then miss a lock that is held.
//! - It is built while other processes lock and unlock, and can skip a lock that is held the
//!   whole time (seen on Linux 6.18 in about 1 of 300 reads under lock churn).
//!
//! So a lock listed here is held, and a lock *not* listed proves nothing.

use std::io;

/// The pids that hold a flock on the file with device `dev` and inode `ino`, as printed in
/// `/proc/locks` (the pid that took the lock, in the pid namespace of `/proc`). Empty when
/// `/proc/locks` lists no such lock (see the module docs for what that proves).
///
/// # Errors
///
/// When `/proc/locks` cannot be read (no `/proc`, not Linux).
pub(crate) fn flock_holders(dev: u64, ino: u64) -> io::Result<Vec<i32>> {
    Ok(holders_in(&read()?, dev, ino))
}

/// The text of `/proc/locks`.
#[cfg(target_os = "linux")]
pub(crate) fn read() -> io::Result<String> {
    std::fs::read_to_string("/proc/locks")
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn read() -> io::Result<String> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// The pids of the `FLOCK` lines of `text` (the format of `/proc/locks`) on device `dev`,
/// inode `ino`. Blocked requests (`->` lines) are waiting, not holding, and are skipped.
///
/// A line reads `1: FLOCK  ADVISORY  WRITE 4242 fe:00:10010689 0 EOF`: the device is
/// `MAJOR:MINOR` in hexadecimal, the inode in decimal.
pub(crate) fn holders_in(text: &str, dev: u64, ino: u64) -> Vec<i32> {
    let (major, minor) = split_dev(dev);
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) != Some(&"FLOCK") {
                return None;
            }
            let pid: i32 = fields.get(4)?.parse().ok()?;
            let mut id = fields.get(5)?.split(':');
            let maj = u64::from_str_radix(id.next()?, 16).ok()?;
            let min = u64::from_str_radix(id.next()?, 16).ok()?;
            let i: u64 = id.next()?.parse().ok()?;
            (maj == major && min == minor && i == ino).then_some(pid)
        })
        .collect()
}

/// The major and minor numbers of a device number.
#[cfg(target_os = "linux")]
fn split_dev(dev: u64) -> (u64, u64) {
    let dev = dev as libc::dev_t;
    (u64::from(libc::major(dev)), u64::from(libc::minor(dev)))
}

#[cfg(not(target_os = "linux"))]
fn split_dev(dev: u64) -> (u64, u64) {
    (dev >> 8, dev & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
1: POSIX  ADVISORY  WRITE 811 00:1b:89685 0 EOF
2: FLOCK  ADVISORY  WRITE 18135 00:1b:89685 0 EOF
2: -> FLOCK  ADVISORY  WRITE 18200 00:1b:89685 0 EOF
3: FLOCK  ADVISORY  READ 18136 00:1b:89685 0 EOF
4: FLOCK  ADVISORY  WRITE 18127 fe:00:10010689 0 EOF
5: OFDLCK ADVISORY  READ  -1 fe:00:10010689 0 EOF
6: FLOCK  ADVISORY  WRITE 99 103:02:4242 0 EOF
";

    #[cfg(target_os = "linux")]
    fn dev(major: u32, minor: u32) -> u64 {
        libc::makedev(major, minor)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn flock_lines_are_matched_by_device_and_inode() {
        // Only FLOCK holders of exactly that file count: not POSIX or OFD locks, not
        // blocked requests, not the same inode number on another device.
        assert_eq!(holders_in(SAMPLE, dev(0, 0x1b), 89685), [18135, 18136]);
        assert_eq!(holders_in(SAMPLE, dev(0xfe, 0), 10010689), [18127]);
        assert_eq!(holders_in(SAMPLE, dev(0x103, 2), 4242), [99]);
        assert!(holders_in(SAMPLE, dev(0xfe, 1), 10010689).is_empty());
        assert!(holders_in(SAMPLE, dev(0, 0x1b), 8968).is_empty());
        assert!(holders_in("", dev(0, 0x1b), 89685).is_empty());
        assert!(holders_in("garbage\n1: FLOCK x", dev(0, 0x1b), 89685).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_lock_taken_here_is_listed_with_this_pid() {
        // The parser agrees with the running kernel: our own flock shows up under our pid.
        use std::os::unix::fs::MetadataExt;
        // tmpfs: its `st_dev` is the superblock's device, as /proc/locks prints it.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let path = dir.path().join("f");
        let file = std::fs::File::create(&path).unwrap();
        let meta = file.metadata().unwrap();
        assert!(flock_holders(meta.dev(), meta.ino()).unwrap().is_empty());
        let locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        let pid = i32::try_from(std::process::id()).unwrap();
        assert_eq!(flock_holders(meta.dev(), meta.ino()).unwrap(), [pid]);
        drop(locked);
    }
}
