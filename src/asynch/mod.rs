//! The async API for tokio (feature `tokio`): [`AsyncSemaphore`] and [`AsyncPermit`].
//!
//! The same operations and rules as the blocking API, which they share with it (queue order,
//! priorities, hand-off, fencing tokens and slots are decided by the same steps), built on
//! the blocking handle: every step and read runs on one of the handle's two threads
//! ([`runner`]), never on a runtime worker thread, and waiting for a slot is a task awaiting
//! the handle's shared watcher ([`hub`]), not a thread.

mod acquire;
mod hub;
mod permit;
#[cfg(feature = "redis")]
mod redis;
mod runner;
mod semaphore;

pub use permit::{AsyncKeepError, AsyncPermit};
pub use semaphore::{AsyncRecovered, AsyncSemaphore};
