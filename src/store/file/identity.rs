//! Who this process is, as the file store records it in the entries it writes (the owner
//! record: host, pid, start time, machine and boot ids, namespaces) and as its judge compares
//! recorded owners with it; and the `/proc` facts both read.

use std::sync::{Arc, Mutex};

use crate::core::doc::Owner;

/// Who this process is, as recorded in the entries it writes.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub host: String,
    pub pid: u32,
    pub start_time: Option<u64>,
    pub machine_id: Option<String>,
    pub boot_id: Option<String>,
    pub pid_ns: Option<u64>,
    /// Inode of `/proc/self/ns/time`: start times in `/proc/PID/stat` are shifted by the
    /// reader's time namespace, so they compare only within one.
    pub time_ns: Option<u64>,
    /// Whether `/proc` shows this process's own pid namespace (`/proc/self` is our pid). A
    /// process that entered another pid namespace but kept the old `/proc` would read other
    /// processes' stat files under the pids it judges.
    pub proc_is_ours: bool,
}

impl Identity {
    /// This process's identity, cached; recomputed after a fork (the pid changed).
    pub fn current() -> Arc<Identity> {
        static CACHE: Mutex<Option<Arc<Identity>>> = Mutex::new(None);
        let pid = std::process::id();
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        match &*cache {
            Some(me) if me.pid == pid => Arc::clone(me),
            _ => {
                let me = Arc::new(Identity::read(pid));
                *cache = Some(Arc::clone(&me));
                me
            }
        }
    }

    fn read(pid: u32) -> Identity {
        // Our own stat through /proc/self, which is this process whatever pid namespace /proc
        // belongs to (/proc/PID could be another process).
        let me = proc_stat_of("self");
        let proc_is_ours = me.as_ref().is_some_and(|s| s.pid == pid);
        Identity {
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            pid,
            start_time: me.map(|s| s.start_time),
            machine_id: machine_id(),
            boot_id: boot_id(),
            pid_ns: namespace("pid"),
            time_ns: namespace("time"),
            proc_is_ours,
        }
    }

    /// The owner record for an entry this process writes.
    pub fn owner(&self) -> Owner {
        Owner {
            host: self.host.clone(),
            pid: self.pid,
            start_time: self.start_time,
            machine_id: self.machine_id.clone(),
            boot_id: self.boot_id.clone(),
            pid_ns: self.pid_ns,
            time_ns: self.time_ns,
            extra: Default::default(),
        }
    }
}

/// Fields of `/proc/PID/stat` we use.
pub(crate) struct ProcStat {
    /// Field 1: the pid, as seen in the pid namespace of this `/proc`.
    pub pid: u32,
    pub state: char,
    /// Field 22: start time in clock ticks after boot.
    pub start_time: u64,
}

pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    proc_stat_of(&pid.to_string())
}

/// `/proc/WHO/stat`, for a pid or `self`.
#[cfg(target_os = "linux")]
fn proc_stat_of(who: &str) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    parse_proc_stat(&text)
}

#[cfg(not(target_os = "linux"))]
fn proc_stat_of(_who: &str) -> Option<ProcStat> {
    None
}

/// Parses `/proc/PID/stat`. The command name (field 2) may contain spaces and parentheses,
/// so fields are counted from the last `)`.
fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is at index 22 - 3.
    Some(ProcStat {
        pid: text.split_whitespace().next()?.parse().ok()?,
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(target_os = "linux")]
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|s| !s.is_empty())
}

#[cfg(not(target_os = "linux"))]
fn boot_id() -> Option<String> {
    None
}

#[cfg(target_os = "linux")]
fn machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
}

#[cfg(not(target_os = "linux"))]
fn machine_id() -> Option<String> {
    None
}

/// The inode of `/proc/self/ns/KIND`, which identifies this process's namespace of that kind.
#[cfg(target_os = "linux")]
fn namespace(kind: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/ns/{kind}"))
        .ok()
        .map(|m| m.ino())
}

#[cfg(not(target_os = "linux"))]
fn namespace(_kind: &str) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_parentheses_in_name() {
        // A command name like "a) b" must not shift the fields.
        let text = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 0 0";
        let s = parse_proc_stat(text).unwrap();
        assert_eq!((s.pid, s.state), (42, 'S'));
        assert_eq!(s.start_time, 123456);
    }
}
