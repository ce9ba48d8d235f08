//! `filesem status`: the capacity, the holders and the queue, as text or as JSON.
//!
//! The JSON document (`--json`) is a stable interface, documented in docs/cli.md: fields are only
//! ever added, and `schema` changes if one is ever removed or changes meaning.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use filesem::{HolderInfo, Liveness};
use serde::Serialize;

use crate::duration;
use crate::escape::{escape, escape_path};
use crate::exit::{Exit, Fail};
use crate::store::{StoreArgs, Target};

/// The version of the `--json` document.
const SCHEMA: u32 = 1;

#[derive(Debug, Serialize)]
struct Status {
    schema: u32,
    /// The path as given if it is UTF-8, otherwise [`escape_path`]'s form; a Redis URL as
    /// the library shows it (password `***`, port and database written out).
    path: String,
    /// Whether `path` is in [`escape_path`]'s form (only for a path that is not UTF-8).
    path_escaped: bool,
    capacity: u32,
    count: usize,
    available: usize,
    holders: Vec<Holder>,
    waiters: Vec<Holder>,
}

#[derive(Debug, Serialize)]
struct Holder {
    id: String,
    slot: Option<u32>,
    token: Option<u64>,
    acquired_at: String,
    age_seconds: f64,
    mode: &'static str,
    owner: Option<Owner>,
    expires_at: Option<String>,
    metadata: BTreeMap<String, String>,
    priority: i32,
    liveness: &'static str,
    evidence: String,
}

#[derive(Debug, Serialize)]
struct Owner {
    host: String,
    pid: u32,
}

/// Runs `filesem status`.
///
/// # Errors
///
/// The library's errors (no semaphore, corrupt state, I/O); nothing is printed to stdout
/// then.
pub fn status(path: &Path, json: bool, store: &StoreArgs) -> Result<Exit, Fail> {
    let sem = crate::admin::open_existing(path, store)?;
    // A Redis URL is shown as the library shows it: without its password.
    let path = match Target::of(path) {
        Target::File(_) => path,
        Target::Redis(_) => sem.path(),
    };
    let capacity = sem.capacity()?;
    let infos = sem.holders()?;
    let waiting = sem.waiters()?;
    let available = sem.available()?;
    // The clock of the verdicts (on Redis the server's): this machine's may be off.
    let now = sem.now()?;
    let (shown, path_escaped) = match path.to_str() {
        Some(exact) => (exact.to_string(), false),
        None => (escape_path(path), true),
    };
    let status = Status {
        schema: SCHEMA,
        path: shown,
        path_escaped,
        capacity,
        count: infos.len(),
        available,
        holders: infos.iter().map(|h| holder(h, now)).collect(),
        waiters: waiting.iter().map(|w| holder(w, now)).collect(),
    };
    if json {
        let text = serde_json::to_string_pretty(&status)
            .map_err(|e| Fail::new(Exit::Failure, format!("failed to encode status: {e}")))?;
        out!("{text}");
    } else {
        out!("{}", human(path, &status, &infos, &waiting, now));
    }
    Ok(Exit::Success)
}

fn holder(info: &HolderInfo, now: DateTime<Utc>) -> Holder {
    let age = (now - info.acquired_at).to_std().unwrap_or(Duration::ZERO);
    Holder {
        id: info.id.clone(),
        slot: info.slot,
        token: info.token,
        acquired_at: rfc3339(info.acquired_at),
        age_seconds: age.as_secs_f64(),
        mode: info.mode.name(),
        owner: info.owner.as_ref().map(|o| Owner {
            host: o.host.clone(),
            pid: o.pid,
        }),
        expires_at: info.expires_at.map(rfc3339),
        metadata: info.metadata.clone(),
        priority: info.priority,
        liveness: info.liveness.name(),
        evidence: info.liveness.evidence().to_string(),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The text form; every string from the file is escaped.
fn human(
    path: &Path,
    status: &Status,
    infos: &[HolderInfo],
    waiting: &[HolderInfo],
    now: DateTime<Utc>,
) -> String {
    let stale = infos.iter().filter(|h| h.liveness.is_stale()).count();
    let stale = if stale > 0 {
        format!(" ({stale} stale: `filesem reap` removes them)")
    } else {
        String::new()
    };
    let mut out = format!(
        "{}: capacity {}, {} held{stale}, {} available, {} waiting",
        escape_path(path),
        status.capacity,
        status.count,
        status.available,
        status.waiters.len()
    );
    for (h, info) in status.holders.iter().zip(infos) {
        let slot = h.slot.map_or("-".to_string(), |s| s.to_string());
        out.push_str(&format!("\n\nslot {slot}: {}", escape(&h.id)));
        entry(&mut out, h, info, now, "held");
    }
    if !status.waiters.is_empty() {
        out.push_str("\n\nwaiting, in the order they will be served:");
    }
    for (position, (w, info)) in status.waiters.iter().zip(waiting).enumerate() {
        out.push_str(&format!("\n\n{}. {}", position + 1, escape(&w.id)));
        if w.priority != 0 {
            out.push_str(&format!(" (priority {})", w.priority));
        }
        entry(&mut out, w, info, now, "waiting");
    }
    out
}

/// The lines about one holder or waiter, after its heading line.
fn entry(out: &mut String, h: &Holder, info: &HolderInfo, now: DateTime<Utc>, what: &str) {
    let token = h.token.map_or(String::new(), |t| format!("token {t}, "));
    out.push_str(&format!(
        "\n  {token}{what} for {} (since {})",
        age(Duration::from_secs_f64(h.age_seconds)),
        h.acquired_at
    ));
    let owner = match &h.owner {
        Some(o) => format!(", pid {} on {}", o.pid, escape(&o.host)),
        None => String::new(),
    };
    out.push_str(&format!("\n  mode {}{owner}", h.mode));
    if let Some(expires) = info.expires_at {
        let at = rfc3339(expires);
        // Past its end but not yet judged expired: within the grace for clock skew.
        let in_grace = !matches!(info.liveness, Liveness::Expired { .. });
        let grace = duration::human(filesem::LEASE_GRACE);
        let line = match (expires - now).to_std() {
            Ok(left) if what == "held" => format!("lease expires in {} ({at})", age(left)),
            Ok(left) => format!(
                "queue entry expires in {} ({at}) unless refreshed",
                age(left)
            ),
            Err(_) => {
                let ago = age((now - expires).to_std().unwrap_or_default());
                match (what == "held", in_grace) {
                    (true, true) => {
                        format!("lease expired {ago} ago ({at}), reaped after the {grace} grace")
                    }
                    (false, true) => format!(
                        "queue entry expired {ago} ago ({at}), dropped after the {grace} grace \
                         unless refreshed"
                    ),
                    (true, false) => format!("lease expired {ago} ago ({at})"),
                    (false, false) => format!("queue entry expired {ago} ago ({at})"),
                }
            }
        };
        out.push_str(&format!("\n  {line}"));
    }
    out.push_str(&format!("\n  {}: {}", h.liveness, escape(&h.evidence)));
    if let Some(pid) = exited_owner(info) {
        out.push_str(&format!(
            "; the acquiring pid {pid} has exited (a process it started keeps the hold)"
        ));
    }
    if !h.metadata.is_empty() {
        let pairs: Vec<String> = h
            .metadata
            .iter()
            .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
            .collect();
        out.push_str(&format!("\n  metadata {}", pairs.join(" ")));
    }
}

/// The pid of an entry judged alive by its witness lock whose acquiring process has exited
/// (`filesem run` killed while its command runs on): shown so that the held lock and the
/// gone pid do not look like a contradiction. Display only: the verdict stays the library's.
/// Looked up only for owners on this host; a pid that was reused reads as running.
fn exited_owner(info: &HolderInfo) -> Option<u32> {
    if !matches!(info.liveness, Liveness::Alive { .. })
        || !info.liveness.evidence().starts_with("witness lock")
    {
        return None;
    }
    let owner = info.owner.as_ref()?;
    let host = nix::unistd::gethostname().ok()?;
    if host.to_str() != Some(owner.host.as_str()) {
        return None;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(owner.pid).ok()?);
    match nix::sys::signal::kill(pid, None) {
        Err(nix::errno::Errno::ESRCH) => Some(owner.pid),
        _ => None,
    }
}

/// A duration for people: `12s`, `3m12s`, `2h05m`, `3d04h`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::age;
    use std::time::Duration;

    #[test]
    fn ages_read_at_a_glance() {
        // Two units at most, so a status line stays short.
        assert_eq!(age(Duration::from_millis(900)), "0s");
        assert_eq!(age(Duration::from_secs(59)), "59s");
        assert_eq!(age(Duration::from_secs(192)), "3m12s");
        assert_eq!(age(Duration::from_secs(7500)), "2h05m");
        assert_eq!(age(Duration::from_secs(3 * 86_400 + 4 * 3600 + 5)), "3d04h");
    }
}
