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
//! - A holder killed without releasing keeps its entry until it is removed with
//!   [`Semaphore::remove`] or [`Semaphore::release`]. Entries whose owner cannot be judged are
//!   never removed on a guess: see [`Liveness`].
//! - A corrupt state file is reported as [`Error::Corrupt`] by every operation and is never
//!   overwritten; [`Semaphore::recover`] moves it aside explicitly.
//!
//! # Platform notes
//!
//! - Unix only; Linux first. flock is *advisory*: every program that uses the semaphore must
//!   follow this protocol (this crate, the Go package, or the documented file format).
//! - flock over network filesystems (NFS, SMB) is not reliable everywhere; keep semaphore files
//!   on a local filesystem (tmpfs is ideal for throwaway ones: `OpenOptions::durable(false)`).
//! - The Go package can share a semaphore file if both sides use the same capacity; it drops
//!   the fields it does not know (tokens, owners, queue) when it writes.

mod atomic;
mod cancel;
mod error;
mod holder;
mod liveness;
mod lock;
#[cfg(target_os = "linux")]
mod notify;
mod options;
mod permit;
mod rules;
mod semaphore;
mod state;
mod store;
mod wait;
mod witness;

pub use cancel::CancelToken;
pub use error::{Error, Result};
pub use holder::{HoldMode, Holder, HolderInfo, OwnerInfo};
pub use liveness::Liveness;
pub use options::{AcquireOptions, DEFAULT_LOCK_TIMEOUT, MAX_METADATA_BYTES, OpenOptions};
pub use permit::{KeepAlive, KeepError, Permit};
pub use rules::LEASE_GRACE;
pub use semaphore::{Reaped, Recovered, Semaphore};
pub use state::{MAX_CAPACITY, MAX_ID_LEN};
pub use wait::WaitStatus;
