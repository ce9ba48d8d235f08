//! Where a semaphore's document lives.

pub(crate) mod file;

pub(crate) use file::{DEFAULT_MODE, LockWait, MAX_STATE_BYTES, Step, Store, busy_since};
