//! A file-based counting semaphore: at most N named holders use a shared resource at once,
//! across processes, coordinated through a small JSON state file and an flock'd lock file.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! use filesem::Semaphore;
//!
//! // A database that takes 3 writers.
//! let sem = Semaphore::open(dir.path().join("db-writers.json"), 3)?;
//! let permit = sem.try_acquire("importer-1")?;
//! assert_eq!(sem.count()?, 1);
//! assert_eq!(sem.available()?, 2);
//! // ... write to the database, passing permit.token() as a fencing token ...
//! permit.release()?;
//! assert_eq!(sem.count()?, 0);
//! # Ok::<(), filesem::Error>(())
//! ```
//!
//! # Semantics
//!
//! - [`Semaphore::open`] creates the semaphore (and its directory) if absent; a capacity of 0
//!   means 1, as in the Go package this grows from. After opening, the state file is the
//!   source of truth for the capacity ([`Semaphore::set_capacity`] changes it).
//! - [`Semaphore::try_acquire`] takes a slot or fails at once with [`Error::NoCapacity`] or
//!   [`Error::AlreadyHeld`]. The [`Permit`] it returns releases the slot when dropped, carries
//!   a fencing [`token`](Permit::token) (strictly increasing per semaphore) and a
//!   [`slot`](Permit::slot) index in `0..capacity`.
//! - [`Semaphore::release`] and [`Semaphore::remove`] end holds by ID (for holds kept with
//!   [`Permit::keep`], or cleanup). Queries ([`holders`](Semaphore::holders),
//!   [`count`](Semaphore::count), [`available`](Semaphore::available)) return errors instead
//!   of made-up numbers when the file cannot be read.
//! - Every change is one critical section: lock `PATH.lock` (waiting at most the
//!   [lock timeout](OpenOptions::lock_timeout)), read `PATH`, apply the rule, write a temp file,
//!   `fsync`, `rename` over `PATH`, `fsync` the directory, unlock. Nothing is written when the
//!   rule changes nothing (a refused acquire writes nothing).
//! - A [`Semaphore`] handle is `Send + Sync`. Threads sharing one handle are serialized in
//!   process; separate handles and processes are serialized by the lock file.
//!
//! # Crash behavior
//!
//! - The state file is never truncated or half-written: writers replace it by `rename`. After
//!   `try_acquire` or `release` returns, its change survives a crash of the process (and, with
//!   [durable](OpenOptions::durable) writes, of the machine).
//! - A process killed inside the critical section releases the lock file as the kernel closes
//!   its descriptors; its temp file is removed by the next [`Semaphore::open`].
//! - A holder that dies without releasing gets its slot back as soon as it is *provably* dead:
//!   acquires reap stale entries in their way ([`OpenOptions::auto_reap`]), and
//!   [`Semaphore::reap`] does it on demand. A live holder is never declared dead; an entry that
//!   cannot be judged keeps its slot until its lease expires or it is removed. The verdicts
//!   ([`Liveness`], shown by [`Semaphore::holders`]):
//!
//! | the entry | verdict |
//! | --- | --- |
//! | its witness file `PATH.witness/<token>` is flock'd by anyone (the holder, or a child that inherited it via [`Permit::inherit_witness`]) | alive |
//! | witness free, holder on this boot of this machine, local filesystem | dead |
//! | witness missing or replaced, same boot and pid namespace: pid gone (`kill(pid, 0)` = `ESRCH`), zombie, or reused (other start time, compared only within one time namespace and when `/proc` shows the checker's own pid namespace) | dead |
//! | same, pid running with the recorded start time | alive |
//! | written in an earlier boot of this machine (same machine id, other boot id), local filesystem | dead |
//! | another machine, another pid namespace, a network filesystem | unknown |
//! | no owner recorded (Go package, older versions) | unknown |
//! | detached ([`Permit::keep`], [`AcquireOptions::detached`]) | unknown |
//! | lease ([`AcquireOptions::lease`]) expired more than [`LEASE_GRACE`] ago | expired |
//!
//!   "Dead" and "expired" are stale: only they are reaped. Pid evidence is never inferred from a
//!   missing `/proc` entry (`hidepid` hides live processes), and never used across machines,
//!   boots or pid namespaces.
//! - A corrupt state file is reported as [`Error::Corrupt`] by every operation and is never
//!   overwritten; [`Semaphore::recover`] moves it aside explicitly.
//!
//! # Platform notes
//!
//! - Unix only; Linux first: pid, boot-id and machine-id evidence are Linux facilities; other
//!   Unix systems get witness locks (held = alive) and leases. flock is *advisory*: every program that uses the semaphore must
//!   follow this protocol (this crate, the Go package, or the documented file format).
//! - flock over network filesystems (NFS, SMB) is not reliable everywhere; keep semaphore files
//!   on a local filesystem (tmpfs is ideal for throwaway ones: `OpenOptions::durable(false)`).
//! - The Go package can share a semaphore file if both sides use the same capacity; it drops
//!   the fields it does not know (tokens, owners, queue) when it writes.

// The README's code blocks are compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod atomic;
mod error;
mod holder;
mod liveness;
mod lock;
mod options;
mod permit;
mod rules;
mod semaphore;
mod state;
mod store;
mod witness;

pub use error::{Error, Result};
pub use holder::{HoldMode, Holder, HolderInfo, OwnerInfo};
pub use liveness::Liveness;
pub use options::{AcquireOptions, DEFAULT_LOCK_TIMEOUT, MAX_METADATA_BYTES, OpenOptions};
pub use permit::{KeepAlive, KeepError, Permit};
pub use rules::LEASE_GRACE;
pub use semaphore::{Reaped, Recovered, Semaphore};
pub use state::{MAX_CAPACITY, MAX_ID_LEN};
