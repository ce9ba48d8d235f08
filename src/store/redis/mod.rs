//! The Redis store: the semaphore's JSON document in one string key of a Redis server,
//! changed only by an atomic compare-and-swap script, judged by leases on the server's
//! clock.
//!
//! - [`store`]: [`RedisStore`](store::RedisStore), the store behind `Store::Redis`: steps
//!   (with unknown outcomes settled), snapshots, recovery, its judge (leases only) and the
//!   new-hold evidence (an owner for display, no witness).
//! - [`location`]: `redis://[:PASSWORD@|USER:PASSWORD@]HOST[:PORT][/DB]/KEY`, and its
//!   display form without the password (`redis://:***@host:6379/0/KEY`), the only form any
//!   message shows.
//! - [`engine`]: [`Engine::step`](engine::Engine::step), one read-modify-write on the
//!   server's clock (`GET` + `TIME`, then `EVALSHA` of `lua/cas.lua`, which sets the value and
//!   publishes a notice only if the key is unchanged), retried with jittered backoff after a
//!   lost race; a read-only snapshot; `WAIT` for replicas; connection handling and timeouts.
//! - [`recovery`]: inspect, move aside, delete a key of any Redis type, only if unchanged.
//! - [`subscriber`]: a pub/sub connection on the semaphore's channel that rings a doorbell
//!   (a socket) per waiter; [`waker`]: a waiter's `poll(2)` on its doorbell and its cancel
//!   socket.
//! - [`notices`] (feature `tokio`): the async API's counterpart of [`subscriber`], a task on
//!   the runtime listening on an async pub/sub connection, one per async handle's watcher.
//! - [`failure`]: the engine's error kinds, each naming the redacted location, and how they
//!   become the crate's `Error`.
//!
//! # How it is a store
//!
//! `Store::Redis` implements what [`super`] lists, each method of
//! [`Store`](super::Store) with one `match` arm:
//!
//! - `step_with(wait, create, rule)`: [`Engine::step`](engine::Engine::step) with the
//!   deadline of `wait` (the call's, or the handle's lock timeout from now), and as its
//!   closure: parse the bytes (`None` with `create` is `Document::new(capacity)`, without it
//!   `Error::NotFound`; garbage or a value over 64 MiB is `Error::Corrupt`), raise the
//!   token counter to the server's clock in microseconds (the key may be older than the
//!   last tokens handed out, or forgotten: see the crate docs), build a
//!   [`StepContext`](super::StepContext) with `now` = the server's time, run the rule
//!   (already wrapped by the shared step code), and answer `Decision::Write(doc.to_bytes(),
//!   value)` or `Decision::NoChange(value)`. The rule is `FnMut`, so a lost race simply runs
//!   it again on the new bytes; so does a commit without an answer, with
//!   [`StepContext::settling`](super::StepContext::settling) set.
//! - `StepContext::new_hold`: take the number from the counter (failing closed when it is
//!   exhausted) and record an owner for display (host, pid); no witness, so nothing to keep.
//! - The judge judges nothing (every entry it is asked about is unknown): every hold and
//!   waiter carries a lease, judged on the server's clock by the core's verdict, and
//!   `Store::imposed_lease` returns the store's default lease; `Store::waiter_expiry` gives
//!   a waiter its acquire's lease as its expiry in the queue.
//! - `snapshot()`: [`Engine::snapshot`](engine::Engine::snapshot), `now` = the server's time.
//! - `waker()`: a doorbell of the handle's [`Subscriber`](subscriber::Subscriber), which the
//!   first wait starts; the doorbell is registered before the waiter's first look, so every
//!   notice after it rings.
//! - `Step::reaped` needs no work after the commit beyond logging; `Step::tidy` none at all
//!   (there is nothing on the server but the key).

pub(crate) mod engine;
pub(crate) mod failure;
pub(crate) mod location;
#[cfg(feature = "tokio")]
pub(crate) mod notices;
pub(crate) mod recovery;
pub(crate) mod store;
pub(crate) mod subscriber;
pub(crate) mod waker;

// Its private `redis-server` helper serves the crate's other Redis tests too.
#[cfg(test)]
pub(crate) mod tests;
