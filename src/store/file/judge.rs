//! The file store's judge: is a recorded holder provably dead? Witness locks first, then
//! pids, then reboots (see the table in the crate docs, `# Crash behavior`).
//!
//! The verdicts are deliberately asymmetric: only [`Liveness::Dead`] and
//! [`Liveness::Expired`] free a slot. Anything this process cannot prove is
//! [`Liveness::Unknown`] and keeps its slot: wrongly reaping a live holder would put two
//! holders over capacity, the worst failure a semaphore can have.

use std::os::fd::AsFd;
use std::sync::Arc;

use super::dir::Files;
use super::identity::{Identity, proc_stat};
use super::witness::{self, Probe};
use crate::core::doc::Entry;
use crate::core::verdict::{Judge, Liveness};

/// The judge for real files: witness locks, then pids, then reboots. See the table in the
/// crate docs (`# Crash behavior`).
#[derive(Debug)]
pub(crate) struct SystemJudge {
    /// The semaphore's bound directory, where its witness directory is.
    pub files: Arc<Files>,
    /// Whether the state file is on a local filesystem, where flock and boot ids can be
    /// trusted (decided once at open).
    pub local: bool,
    pub me: Arc<Identity>,
}

impl SystemJudge {
    pub fn new(files: Arc<Files>) -> SystemJudge {
        SystemJudge {
            local: is_local_fs(files.dir()),
            files,
            me: Identity::current(),
        }
    }
}

impl Judge for SystemJudge {
    fn judge(&self, entry: &Entry) -> Liveness {
        let owner = entry.owner.as_ref();
        // Same kernel as ours: same boot id (containers on one kernel share it).
        let same_kernel =
            owner.is_some_and(|o| o.boot_id.is_some() && o.boot_id == self.me.boot_id);
        // 1. The witness lock. Held = alive, even if the acquiring pid is gone (a child that
        //    inherited it still runs). Free = dead, but only when the holder ran on this
        //    kernel and the filesystem is local: a lock taken over NFS by another machine may
        //    not show here at all.
        //    The file is named by the number its hold was created under (a waiter's ticket
        //    once it is granted too).
        let mut note = None;
        if let (Some(w), Some(name)) = (&entry.witness, entry.witness_name()) {
            let probe = match witness::open_dir_for_probe(&self.files) {
                Ok(Some(dir)) => witness::probe(&self.files, dir.as_fd(), name, w),
                Ok(None) => Probe::Missing,
                Err(e) => Probe::Unreadable(format!("witness directory: {e}")),
            };
            match probe {
                Probe::Held => {
                    return Liveness::Alive {
                        evidence: format!("witness lock {name} is held"),
                    };
                }
                Probe::Free if same_kernel && self.local => {
                    return Liveness::Dead {
                        evidence: format!("witness lock {name} was released"),
                    };
                }
                Probe::Free => note = Some("witness free but not trusted across machines"),
                Probe::Missing => note = Some("witness file missing or replaced"),
                // The witness is there but cannot be examined: it may be held by a child
                // that outlived the acquiring pid, so the pid proves nothing either.
                Probe::Unreadable(why) => {
                    return Liveness::Unknown {
                        evidence: format!("witness {name} cannot be examined: {why}"),
                    };
                }
            }
        }
        let Some(owner) = owner else {
            return Liveness::Unknown {
                evidence: "no owner recorded (written by Go or an older version)".to_string(),
            };
        };
        let unknown = |why: String| Liveness::Unknown {
            evidence: match note {
                Some(note) => format!("{why}; {note}"),
                None => why,
            },
        };
        if !same_kernel {
            // 2. A reboot: same machine (machine id), another boot id. Only for a state file on
            //    a local filesystem. Any other difference means another machine: no verdict.
            let same_machine = owner.machine_id.is_some() && owner.machine_id == self.me.machine_id;
            return match (&owner.boot_id, &self.me.boot_id) {
                (Some(theirs), Some(ours)) if same_machine && self.local => Liveness::Dead {
                    evidence: format!("holder's machine rebooted (boot id {theirs}, now {ours})"),
                },
                _ => unknown(format!(
                    "pid {} on {}: another machine or boot",
                    owner.pid, owner.host
                )),
            };
        }
        // 3. The pid, only inside the same pid namespace.
        if owner.pid_ns.is_none() || owner.pid_ns != self.me.pid_ns {
            return unknown(format!("pid {} in another pid namespace", owner.pid));
        }
        // Start times compare only within one time namespace (older entries record none).
        let start_time = owner
            .start_time
            .filter(|_| owner.time_ns.is_some() && owner.time_ns == self.me.time_ns);
        judge_pid(owner.pid, start_time, self.me.proc_is_ours, unknown)
    }
}

/// The pid verdict: gone, zombie or reused = dead; same start time = alive. `proc_is_ours`
/// says whether `/proc/PID` shows the process `kill` reaches; if not, only `kill` is evidence.
fn judge_pid(
    pid: u32,
    start_time: Option<u64>,
    proc_is_ours: bool,
    unknown: impl Fn(String) -> Liveness,
) -> Liveness {
    let Ok(raw) = i32::try_from(pid) else {
        return unknown(format!("pid {pid} is out of range"));
    };
    // Never infer death from a missing /proc entry: `hidepid` hides live processes.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Err(nix::errno::Errno::ESRCH) => {
            return Liveness::Dead {
                evidence: format!("pid {pid} no longer exists"),
            };
        }
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(e) => return unknown(format!("pid {pid}: kill(0) failed: {e}")),
    }
    if !proc_is_ours {
        return unknown(format!(
            "pid {pid} exists; /proc shows another pid namespace, so it cannot be checked"
        ));
    }
    let Some(stat) = proc_stat(pid) else {
        return unknown(format!(
            "pid {pid} exists but /proc/{pid}/stat is unreadable"
        ));
    };
    if stat.state == 'Z' {
        return Liveness::Dead {
            evidence: format!("pid {pid} is a zombie"),
        };
    }
    match start_time {
        Some(t) if t != stat.start_time => Liveness::Dead {
            evidence: format!(
                "pid {pid} was reused (holder started at tick {t}, running process at tick {})",
                stat.start_time
            ),
        },
        Some(_) => Liveness::Alive {
            evidence: format!("pid {pid} is running"),
        },
        None => unknown(format!(
            "pid {pid} exists; no comparable start time recorded to rule out reuse"
        )),
    }
}

/// Whether the directory open as `dir` is on a filesystem whose flock and boot-id evidence
/// we trust: a local disk filesystem or tmpfs. Network and FUSE filesystems (NFS, SMB, 9p,
/// virtiofs, ...) are not.
#[cfg(target_os = "linux")]
pub(crate) fn is_local_fs(dir: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::sys::statfs::{self, FsType};
    const LOCAL: &[i64] = &[
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x8584_58f6, // ramfs
        0xF2F5_2010, // f2fs
        0x2fc1_2fc1, // zfs
        0x794c_7630, // overlayfs
        0xca45_1a4e, // bcachefs
    ];
    match statfs::fstatfs(dir) {
        Ok(s) => {
            let FsType(t) = s.filesystem_type();
            // The field's type differs between targets (i64, u32, ...).
            #[allow(clippy::unnecessary_cast)]
            let t = t as i64;
            LOCAL.contains(&t)
        }
        Err(_) => false,
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn is_local_fs(_dir: std::os::fd::BorrowedFd<'_>) -> bool {
    // Without a filesystem type we cannot tell; flock on BSD/macOS local disks is reliable,
    // and boot ids are not used there.
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_identity_is_alive_by_pid() {
        // This process, judged by its own owner record, is alive; a changed start time is reuse.
        let me = Identity::current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_time.is_some() && me.boot_id.is_some() && me.pid_ns.is_some());
        let unknown = |e: String| Liveness::Unknown { evidence: e };
        assert!(me.proc_is_ours);
        assert!(matches!(
            judge_pid(me.pid, me.start_time, true, unknown),
            Liveness::Alive { .. }
        ));
        let other = me.start_time.map(|t| t + 1);
        let v = judge_pid(me.pid, other, true, unknown);
        assert!(v.is_stale() && v.evidence().contains("reused"), "{v}");
        // Through a /proc of another pid namespace, a differing start time proves nothing.
        let v = judge_pid(me.pid, other, false, unknown);
        assert_eq!(v.name(), "unknown", "{v}");
    }

    #[test]
    fn local_filesystems_are_recognised() {
        // tmpfs and the temp dir of this machine are local; /proc is not a place for state.
        let local = |p: &str| is_local_fs(std::fs::File::open(p).unwrap().as_fd());
        assert!(local("/dev/shm"));
        assert!(!local("/proc"));
    }
}
