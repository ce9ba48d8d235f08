//! Liveness verdicts: the [`Liveness`] of an entry, the [`Judge`] interface through which a
//! store's evidence reaches the rules, and the pure part of every verdict (a lease that ran
//! out, a detached hold).
//!
//! The verdicts are deliberately asymmetric: only [`Liveness::Dead`] and
//! [`Liveness::Expired`] free a slot. Anything a judge cannot prove is
//! [`Liveness::Unknown`] and keeps its slot: wrongly reaping a live holder would put two
//! holders over capacity, the worst failure a semaphore can have.
//!
//! The evidence itself (witness locks, pids, boot ids) is the store's: each store has its own
//! judge (the file store's is `store::file::judge::SystemJudge`); the rules see only the
//! [`Judge`] trait, and tests give them fakes.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::core::doc::Entry;

/// How long past `expires_at` an entry is still considered alive, for clock skew between
/// machines sharing the file.
pub const LEASE_GRACE: Duration = Duration::from_secs(2);

/// A liveness verdict on a holder or waiter, with the evidence it rests on.
///
/// Shown by [`HolderInfo::liveness`](crate::HolderInfo::liveness) and returned by reaping.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Liveness {
    /// The owner is provably alive.
    Alive {
        /// Why, e.g. "witness lock is held".
        evidence: String,
    },
    /// The owner is provably dead; the entry is stale and may be reaped.
    Dead {
        /// Why, e.g. "pid 4242 no longer exists".
        evidence: String,
    },
    /// The lease ran out; the entry is stale and may be reaped.
    Expired {
        /// Why, e.g. "lease expired at 2026-01-01T10:00:00Z".
        evidence: String,
    },
    /// Nothing proves the owner dead: the entry keeps its slot (entries written by Go, by
    /// another machine, detached holds).
    Unknown {
        /// Why no verdict can be given.
        evidence: String,
    },
}

impl Liveness {
    /// `true` for [`Dead`](Liveness::Dead) and [`Expired`](Liveness::Expired): the entry
    /// may be reaped.
    pub fn is_stale(&self) -> bool {
        matches!(self, Liveness::Dead { .. } | Liveness::Expired { .. })
    }

    /// The evidence behind the verdict.
    pub fn evidence(&self) -> &str {
        match self {
            Liveness::Alive { evidence }
            | Liveness::Dead { evidence }
            | Liveness::Expired { evidence }
            | Liveness::Unknown { evidence } => evidence,
        }
    }

    /// A one-word name: `alive`, `dead`, `expired` or `unknown`.
    pub fn name(&self) -> &'static str {
        match self {
            Liveness::Alive { .. } => "alive",
            Liveness::Dead { .. } => "dead",
            Liveness::Expired { .. } => "expired",
            Liveness::Unknown { .. } => "unknown",
        }
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.evidence())
    }
}

/// Judges whether the process behind an entry is alive, from the evidence its store offers:
/// the file store's judge looks at witness locks, pids and boot ids; a store that offers
/// leases only judges nothing (every entry it is asked about is `Unknown`, and only its lease
/// ends it). Fakes in tests.
pub(crate) trait Judge {
    /// The verdict on a non-detached entry whose lease (if any) has not expired.
    fn judge(&self, entry: &Entry) -> Liveness;
}

/// The verdict on one entry: lease first (pure), then detached, then the judge.
pub(crate) fn verdict(entry: &Entry, now: DateTime<Utc>, judge: &dyn Judge) -> Liveness {
    if let Some(expired) = expired(entry, now) {
        return expired;
    }
    if entry.detached {
        return Liveness::Unknown {
            evidence: match entry.expires_at {
                Some(_) => "detached hold: ends by release, remove or its lease".to_string(),
                None => "detached hold: ends by release or remove".to_string(),
            },
        };
    }
    judge.judge(entry)
}

/// `Expired` when the entry's `expires_at` (plus [`LEASE_GRACE`]) has passed: the pure part
/// of [`verdict`], which needs no judge.
pub(crate) fn expired(entry: &Entry, now: DateTime<Utc>) -> Option<Liveness> {
    let expires_at = entry.expires_at?;
    (now > expiry(entry)?).then(|| Liveness::Expired {
        evidence: format!(
            "lease expired at {}",
            expires_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        ),
    })
}

/// The instant after which [`expired`] calls the entry expired, if it has an expiry.
/// `None` also when adding the grace would overflow chrono's range (an `expires_at` at its
/// end, read from the file): such an entry never expires, and nothing panics.
pub(crate) fn expiry(entry: &Entry) -> Option<DateTime<Utc>> {
    let grace = chrono::Duration::from_std(LEASE_GRACE).unwrap_or_default();
    entry.expires_at?.checked_add_signed(grace)
}

/// A judge for tests of the pure rules: every entry is `Unknown`.
#[cfg(test)]
pub(crate) struct NoEvidence;

#[cfg(test)]
impl Judge for NoEvidence {
    fn judge(&self, entry: &Entry) -> Liveness {
        Liveness::Unknown {
            evidence: if entry.owner.is_none() {
                "no owner recorded (written by Go or an older version)".to_string()
            } else {
                "owner checks are not available".to_string()
            },
        }
    }
}
