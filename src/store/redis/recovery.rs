//! Recovery of a Redis semaphore's key, whatever it holds: look at it, then move it aside
//! (optionally with a fresh value in its place) or delete it, each only if it is unchanged.
//!
//! The key may hold any Redis type (a list left by another program, garbage bytes), so
//! "unchanged" is judged by a fingerprint that works for all of them: the type and the SHA-1
//! of `DUMP` of the value, computed on the server by `lua/inspect.lua` and compared, in the
//! same atomic script that acts, by `lua/unchanged.lua`.

use std::sync::atomic::Ordering;

use ::redis::Value;
use chrono::{DateTime, Utc};

use super::engine::{Engine, bytes, parse_time};
use super::failure::{FailureKind, Phase, RedisFailure};

/// What a key holds, of any type, for recovery ([`Engine::inspect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inspection {
    /// The Redis type: `none` (missing), `string`, `list`, `hash`, ...
    pub kind: String,
    /// The SHA-1 (hex) of the serialized value (`DUMP`), empty if missing: what
    /// [`Engine::rename_aside`] and [`Engine::delete`] compare.
    pub fingerprint: String,
    /// The first bytes of a string value (up to the limit asked for), empty otherwise.
    pub prefix: Vec<u8>,
    /// The server's clock.
    pub server_now: DateTime<Utc>,
}

impl Engine {
    /// What the key holds, of any type, with a fingerprint for [`rename_aside`] and
    /// [`delete`], the server's clock and up to `prefix_limit` bytes of a string value (at
    /// least 1 byte is asked for). Writes nothing.
    ///
    /// [`rename_aside`]: Self::rename_aside
    /// [`delete`]: Self::delete
    ///
    /// # Errors
    ///
    /// [`FailureKind::Unreachable`], [`FailureKind::Timeout`], [`FailureKind::Disconnected`],
    /// [`FailureKind::Auth`], [`FailureKind::Server`], [`FailureKind::Protocol`].
    pub(crate) fn inspect(&self, prefix_limit: usize) -> Result<Inspection, RedisFailure> {
        let mut lease = self.lease();
        let mut invocation = self.scripts.inspect.key(&self.location().key);
        invocation.arg(prefix_limit.max(1));
        let reply: Value = lease.run_idempotent(Phase::Recover, |c| invocation.invoke(c))?;
        let protocol = |detail: &str| {
            self.failure_of(FailureKind::Protocol {
                during: Phase::Recover,
                detail: format!("{detail}: {reply:?}"),
            })
        };
        let Value::Array(items) = &reply else {
            return Err(protocol("not an array"));
        };
        let [kind, fingerprint, seconds, micros, prefix] = items.as_slice() else {
            return Err(protocol("not 5 items"));
        };
        let (Some(kind), Some(fingerprint), Some(prefix)) =
            (bytes(kind), bytes(fingerprint), bytes(prefix))
        else {
            return Err(protocol("not strings"));
        };
        let server_now = parse_time(seconds, micros).ok_or_else(|| protocol("bad time"))?;
        Ok(Inspection {
            kind: String::from_utf8_lossy(kind).into_owned(),
            fingerprint: String::from_utf8_lossy(fingerprint).into_owned(),
            prefix: prefix.to_vec(),
            server_now,
        })
    }

    /// Moves the key aside to `KEY.corrupt-<server time>` (UTC, to the microsecond), only if
    /// it still holds what `seen` fingerprinted, and puts `replacement` (if any) in its place,
    /// in one atomic script that also publishes a change notice. Returns the key it was moved
    /// to, or `None` if the key changed since `seen` (nothing was done; inspect again).
    ///
    /// # Errors
    ///
    /// [`FailureKind::AsideTaken`] if the name is in use (nothing done),
    /// [`FailureKind::NotReplicated`] (done, not on enough replicas), and the connection
    /// failures of [`inspect`](Self::inspect) (during which the outcome may be unknown).
    pub(crate) fn rename_aside(
        &self,
        seen: &Inspection,
        replacement: Option<&[u8]>,
    ) -> Result<Option<String>, RedisFailure> {
        let aside = format!(
            "{}.corrupt-{}",
            self.location().key,
            seen.server_now.format("%Y%m%dT%H%M%S%.6fZ")
        );
        let mut lease = self.lease();
        let mut invocation = self.scripts.aside.key(&self.location().key);
        invocation
            .key(&aside)
            .arg(&seen.kind)
            .arg(&seen.fingerprint)
            .arg(self.channel())
            .arg(if replacement.is_some() { "1" } else { "0" })
            .arg(replacement.unwrap_or_default());
        let done: i64 = lease.run(Phase::Recover, |c| invocation.invoke(c))?;
        match done {
            1 => {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.replicate(&mut lease)?;
                Ok(Some(aside))
            }
            0 => Ok(None),
            _ => Err(self.failure_of(FailureKind::AsideTaken { aside })),
        }
    }

    /// Deletes the key, only if it still holds what `seen` fingerprinted, publishing a change
    /// notice. Returns `false` if the key changed since `seen` (nothing was done).
    ///
    /// # Errors
    ///
    /// As [`rename_aside`](Self::rename_aside), without [`FailureKind::AsideTaken`].
    // No operation deletes a semaphore yet; the engine's tests cover it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn delete(&self, seen: &Inspection) -> Result<bool, RedisFailure> {
        let mut lease = self.lease();
        let mut invocation = self.scripts.delete.key(&self.location().key);
        invocation
            .arg(&seen.kind)
            .arg(&seen.fingerprint)
            .arg(self.channel());
        let done: i64 = lease.run(Phase::Recover, |c| invocation.invoke(c))?;
        if done == 1 && seen.kind != "none" {
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
            self.replicate(&mut lease)?;
        }
        Ok(done == 1)
    }
}
