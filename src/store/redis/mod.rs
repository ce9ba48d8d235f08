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
//!
//! # How it becomes a store
//!
//! A `Store::Redis` variant (behind this feature) implements what [`super`] lists, each
//! method of [`Store`](super::Store) gaining one `match` arm:
//!
//! - `step_with(wait, create, rule)`: [`Engine::step`](engine::Engine::step) with the
//!   deadline of `wait` (the call's, or the handle's lock timeout from now), and as its
//!   closure: parse the bytes (`None` with `create` is `Document::new(capacity)`, without it
//!   `Error::NotFound`; garbage is `Decision::Abort(Error::Corrupt)`), build a
//!   [`StepContext`](super::StepContext) with `now` = the server's time and the store's
//!   side of the step, run the rule (already wrapped by the shared step code), and answer
//!   `Decision::Write(doc.to_bytes(), value)` or `Decision::NoChange(value)`. The rule is
//!   `FnMut`, so a lost race simply runs it again on the new bytes.
//! - `StepContext::new_hold`: take the number from the counter (failing closed when it is
//!   exhausted) and record an owner for display (host, pid); no witness, so nothing to keep.
//! - The judge judges nothing (every entry it is asked about is unknown): every hold and
//!   waiter carries a lease, judged on the server's clock by the core's verdict, and
//!   `Store::imposed_lease` returns the store's default lease.
//! - `snapshot()`: [`Engine::snapshot`](engine::Engine::snapshot), `now` = the server's time.
//! - `waker()`: a [`Subscriber`](subscriber::Subscriber) (one per handle); the waker takes a
//!   [`Mark`](subscriber::Mark) when made and after each wait, so every look follows a mark.
//! - `Step::reaped` and `Step::tidy` need no work after the commit beyond logging.

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
