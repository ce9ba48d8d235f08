//! The core: the state document and the rules of the semaphore, with no I/O.
//!
//! The bottom layer of the crate (the layers: [`crate::store`], "Architecture"). Everything
//! here changes or reads a [`Document`](doc::Document) in memory, and takes what it cannot
//! know as arguments:
//!
//! - **the time** (`now`): the store's clock, so that users of one semaphore on several
//!   machines judge leases by one clock;
//! - **liveness evidence**, through the [`Judge`](verdict::Judge) trait: each store brings
//!   its own judge (the file store's looks at witness locks, pids and boot ids);
//! - **who is asking**: a new entry's owner and witness records come from its store as a
//!   [`Stamp`](queue::Stamp).
//!
//! The modules: [`doc`] (the document, its limits and validation), [`json`] (its exact
//! (de)serializer, compatible with the Go package), [`tokens`] (the fencing-token counter),
//! [`verdict`] (liveness verdicts and the judge interface), [`rules`] (admit, grant, hand
//! off, reap, remove, restore), [`queue`] (the steps of a waiting acquire).
//!
//! # The rule
//!
//! Nothing in `src/core` does I/O or reads a clock: no `std::fs`, `std::io`, `std::env`,
//! `std::process`, `std::thread`, no `nix` or `libc`, no `Utc::now` or `Instant::now`, no
//! identity lookups (`gethostname`, `/proc`), no `tracing`. It uses nothing of the crate but
//! itself, the error type and option values; the stores and the API use it, never the other
//! way round. The tests here are pure too (fixed times, fake judges). `src/layers.rs` checks
//! all of this on the sources.

pub(crate) mod doc;
pub(crate) mod json;
pub(crate) mod queue;
pub(crate) mod rules;
pub(crate) mod tokens;
pub(crate) mod verdict;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod parse_tests;
