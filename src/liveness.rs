//! Is a recorded holder provably dead?
//!
//! The verdicts are deliberately asymmetric: only [`Liveness::Dead`] and
//! [`Liveness::Expired`] free a slot. Anything this process cannot prove is
//! [`Liveness::Unknown`] and keeps its slot: wrongly reaping a live holder would put two
//! holders over capacity, the worst failure a semaphore can have.

use std::fmt;

use crate::rules::Judge;
use crate::state::Entry;

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

/// The judge used when nothing about owners can be proven: every entry is `Unknown`.
pub(crate) struct NoEvidence;

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
