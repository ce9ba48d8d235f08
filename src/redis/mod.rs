//! The Redis engine under the (coming) Redis store: the semaphore's JSON document in one
//! string key of a Redis server, changed only by an atomic compare-and-swap script.
//!
//! - [`location`]: `redis://[:PASSWORD@|USER:PASSWORD@]HOST[:PORT][/DB]/KEY`, and its
//!   display form without the password (`redis://:***@host:6379/0/KEY`), the only form any
//!   message shows.
//! - [`engine`]: [`Engine::step`](engine::Engine::step), one read-modify-write on the
//!   server's clock (`GET` + `TIME`, then `EVALSHA` of `lua/cas.lua`, which sets the value and
//!   publishes a notice only if the key is unchanged), retried with jittered backoff after a
//!   lost race; a read-only snapshot; `WAIT` for replicas; connection handling and timeouts.
//! - [`recovery`]: inspect, move aside, delete a key of any Redis type, only if unchanged.
//! - [`subscriber`]: the waiters' waker, a pub/sub connection on the semaphore's channel.
//! - [`failure`]: the error kinds, each naming the redacted location.
//!
//! Nothing here knows the document's rules; the store maps [`engine::Decision`]s to them.

// The store does not use the engine yet: it is built and tested against a real server
// first, and wired in as `Store::Redis` with the store boundary. Until then its items are
// used only by its tests.
#![allow(dead_code)]

pub(crate) mod engine;
pub(crate) mod failure;
pub(crate) mod location;
pub(crate) mod recovery;
pub(crate) mod subscriber;

#[cfg(test)]
mod tests;
