//! Who holds a slot: the [`Holder`] trait for callers, [`HolderInfo`] for queries.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::core::verdict::Liveness;

/// Anything with a holder ID (the Go package's `Holder` interface).
///
/// Implemented for `str` and `String`, so both `sem.try_acquire("worker-1")` and a type of
/// your own work:
///
/// ```
/// struct Session { name: String }
/// impl filesem::Holder for Session {
///     fn id(&self) -> &str { &self.name }
/// }
/// # let dir = tempfile::tempdir().unwrap();
/// let sem = filesem::Semaphore::open(dir.path().join("ws.json"), 1)?;
/// let permit = sem.try_acquire(&Session { name: "session-123".into() })?;
/// assert_eq!(permit.id(), "session-123");
/// # Ok::<(), filesem::Error>(())
/// ```
pub trait Holder {
    /// The holder ID: unique among the holders of one semaphore. An acquire checks it: not
    /// empty, at most [`MAX_ID_LEN`](crate::MAX_ID_LEN) bytes, no control characters.
    fn id(&self) -> &str;
}

impl Holder for str {
    fn id(&self) -> &str {
        self
    }
}

impl Holder for String {
    fn id(&self) -> &str {
        self
    }
}

impl<T: Holder + ?Sized> Holder for &T {
    fn id(&self) -> &str {
        (**self).id()
    }
}

/// How an entry's hold ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HoldMode {
    /// Held for as long as the owning process (and the [`Permit`](crate::Permit)) lives.
    ProcessBound,
    /// Outlives its process (the Go package's session use); ends by release, remove or lease.
    Detached,
    /// No owner recorded (written by the Go package or an older version): ends only by
    /// release or remove.
    Unowned,
}

impl HoldMode {
    /// `process`, `detached` or `unowned`.
    pub fn name(self) -> &'static str {
        match self {
            HoldMode::ProcessBound => "process",
            HoldMode::Detached => "detached",
            HoldMode::Unowned => "unowned",
        }
    }
}

/// The process that took a hold, as recorded in the state file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OwnerInfo {
    /// The host name of the machine (for display; liveness never trusts it).
    pub host: String,
    /// The process ID on that machine.
    pub pid: u32,
}

/// One holder (or waiter) as seen by a query. Produced by
/// [`Semaphore::holders`](crate::Semaphore::holders); nothing is changed to compute it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HolderInfo {
    /// The holder ID, exactly as on file (it may be any string the Go package accepted).
    pub id: String,
    /// When the slot was granted (for a waiter: when it joined the queue).
    pub acquired_at: DateTime<Utc>,
    /// The fencing token of the grant, if the entry has one: `None` for a waiter (it gets its
    /// token when it is granted a slot) and for entries written by the Go package.
    pub token: Option<u64>,
    /// The slot index in `0..capacity`, if the entry has one.
    pub slot: Option<u32>,
    /// How the hold ends.
    pub mode: HoldMode,
    /// The owning process, if recorded.
    pub owner: Option<OwnerInfo>,
    /// The end of the lease, if the hold has one.
    pub expires_at: Option<DateTime<Utc>>,
    /// The metadata given at acquire time.
    pub metadata: BTreeMap<String, String>,
    /// The queue priority given at acquire time ([`AcquireOptions::priority`](crate::AcquireOptions::priority);
    /// 0 when none was given). It orders [`Semaphore::waiters`](crate::Semaphore::waiters):
    /// higher first, then first come, first served.
    pub priority: i32,
    /// The liveness verdict now, with its evidence.
    pub liveness: Liveness,
}
