//! The API of Redis semaphores (feature `redis`): opening one by URL, recovering its key,
//! and the counters of its client. Everything else is the same [`Semaphore`] and [`Permit`]
//! API as for a file (see the crate docs, "Redis").
//!
//! [`Permit`]: crate::Permit

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::options::{DEFAULT_REDIS_LEASE, MAX_REDIS_TIMEOUT, OpenOptions, check_lease};
use crate::semaphore::{Recovered, Semaphore, check_capacity};
use crate::store::Store;
use crate::store::redis::location::Location;
use crate::store::redis::store::{Recovery, RedisStore, Settings};

/// Counters of a Redis semaphore handle's client since it was opened, for monitoring and
/// benchmarks ([`Semaphore::redis_stats`]). Shared by the handle's clones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Changes started (each one step: read, then compare-and-swap).
    pub steps: u64,
    /// Lost races: a compare-and-swap that found the key changed by another writer since
    /// it was read, followed by another read (or by giving up at the deadline).
    pub retries: u64,
    /// Changes committed.
    pub commits: u64,
    /// Connections opened (the pub/sub connection of waiters not included).
    pub connects: u64,
}

impl Semaphore {
    /// Opens the semaphore kept in a Redis server at `url`, creating it with `capacity`
    /// slots if the key does not exist.
    ///
    /// `url` is `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]/KEY`: port 6379 and database 0
    /// by default; the first path segment is the database number when it is all digits and
    /// a key follows (`redis://h/0/jobs/gpus` is key `jobs/gpus` in database 0, as is
    /// `redis://h/jobs/gpus`); user name, password and key are percent-decoded (`%2F`,
    /// `%40`); `?` and `#` must be escaped. `rediss://` (TLS) is not supported: reach a
    /// TLS-only server through a tunnel. The key holds the same JSON document as a state
    /// file. Everything the semaphore says ([`path`](Semaphore::path), every error) shows the
    /// URL with the password replaced by `***`, port and database written out:
    /// `redis://:***@host:6379/0/gpus`.
    ///
    /// The same rules as [`open`](Semaphore::open): a capacity of 0 means 1, the key is the
    /// source of truth afterwards, [`OpenOptions::create_new`] applies. See the crate docs,
    /// "Redis", for what differs from a file (leases, the server's clock, failover,
    /// timeouts).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidLocation`] for a URL that does not parse (nothing is contacted);
    /// [`Error::CapacityMismatch`], [`Error::InvalidCapacity`] as for `open`;
    /// [`Error::Corrupt`] if the key holds something that is not a state document (garbage,
    /// a value over 64 MiB, a Redis list or hash...; see
    /// [`recover_redis`](Semaphore::recover_redis)); [`Error::RedisUnreachable`],
    /// [`Error::RedisTimeout`], [`Error::RedisDisconnected`], [`Error::RedisAuth`],
    /// [`Error::Redis`] for the server; [`Error::Contended`] if other writers changed the key
    /// at every attempt for the lock timeout; [`Error::NotReplicated`] with
    /// [`OpenOptions::replica_ack`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use filesem::Semaphore;
    ///
    /// // Four GPUs shared by workers on several hosts.
    /// let sem = Semaphore::open_redis("redis://cache.internal:6379/0/gpus", 4)?;
    /// let permit = sem.try_acquire("trainer-7")?; // a 30 s lease, renewed in the background
    /// println!("GPU {} with fencing token {}", permit.slot(), permit.token());
    /// # Ok::<(), filesem::Error>(())
    /// ```
    pub fn open_redis(url: &str, capacity: u32) -> Result<Semaphore> {
        OpenOptions::new().open_redis(url, capacity)
    }

    /// Opens the semaphore kept in a Redis server at `url` if its key exists, adopting the
    /// capacity stored in it; creates nothing. See [`open_redis`](Semaphore::open_redis).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the key does not exist; otherwise as
    /// [`open_redis`](Semaphore::open_redis).
    pub fn open_redis_existing(url: &str) -> Result<Semaphore> {
        OpenOptions::new().open_redis_existing(url)
    }

    /// Recovers a Redis semaphore whose key holds something that is not a valid state
    /// document (garbage, a value over 64 MiB, a key of another Redis type): moves the key
    /// aside to `KEY.corrupt-<server time>` (UTC, to the microsecond) and puts an empty
    /// semaphore with `capacity` slots in its place, in one atomic script that does nothing
    /// if the key changed since it was looked at (it then looks again). The new fencing-token
    /// counter is above every `token`, `ticket` or `next_token` number in the readable bytes
    /// of the old value, and at least the server's clock in microseconds since 1970, so it
    /// stays above tokens a damaged value lost.
    ///
    /// **Stop all holders first**, as for [`recover`](Semaphore::recover): their holds are
    /// forgotten. A valid key is left as it is (`moved_to` is `None`); a missing key is
    /// created with `capacity` slots. `moved_to` is the location the old value went to,
    /// shown like [`path`](Semaphore::path). If the outcome is unknown (the server stopped
    /// answering during the move), run it again: a valid key means the move was made.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidLocation`], [`Error::InvalidCapacity`], the server's errors as for
    /// [`open_redis`](Semaphore::open_redis); [`Error::Redis`] if the name to move the key
    /// to is taken; [`Error::Contended`] if the key kept changing for the lock timeout.
    pub fn recover_redis(url: &str, capacity: u32) -> Result<Recovered> {
        OpenOptions::new().recover_redis(url, capacity)
    }

    /// The counters of this handle's Redis client (shared by its clones): steps, lost races,
    /// commits, connections. `None` for a file semaphore.
    pub fn redis_stats(&self) -> Option<RedisStats> {
        match &self.inner.store {
            Store::Redis(store) => {
                let s = store.stats();
                Some(RedisStats {
                    steps: s.steps,
                    retries: s.retries,
                    commits: s.commits,
                    connects: s.connects,
                })
            }
            Store::File(_) => None,
        }
    }
}

impl OpenOptions {
    /// [`Semaphore::open_redis`] with these settings: the timeouts
    /// ([`connect_timeout`](OpenOptions::connect_timeout),
    /// [`response_timeout`](OpenOptions::response_timeout),
    /// [`lock_timeout`](OpenOptions::lock_timeout)), [`replica_ack`](OpenOptions::replica_ack),
    /// [`default_lease`](OpenOptions::default_lease), [`auto_reap`](OpenOptions::auto_reap),
    /// [`create_new`](OpenOptions::create_new). `durable`, `mode` and `trust_owner` are
    /// ignored.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::open_redis`]; [`Error::AlreadyExists`] with
    /// [`create_new`](OpenOptions::create_new); [`Error::InvalidLease`] for a
    /// [`default_lease`](OpenOptions::default_lease) under [`MIN_LEASE`](crate::MIN_LEASE).
    pub fn open_redis(&self, url: &str, capacity: u32) -> Result<Semaphore> {
        let store = self.redis_store(url, Some(capacity))?;
        Semaphore::opened(Store::Redis(store), Some(capacity), self)
    }

    /// [`Semaphore::open_redis_existing`] with these settings.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::open_redis_existing`]; [`Error::InvalidLease`] for a
    /// [`default_lease`](OpenOptions::default_lease) under [`MIN_LEASE`](crate::MIN_LEASE).
    pub fn open_redis_existing(&self, url: &str) -> Result<Semaphore> {
        let store = self.redis_store(url, None)?;
        Semaphore::opened(Store::Redis(store), None, self)
    }

    /// [`Semaphore::recover_redis`] with these settings.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::recover_redis`]; [`Error::InvalidLease`] for a
    /// [`default_lease`](OpenOptions::default_lease) under [`MIN_LEASE`](crate::MIN_LEASE).
    pub fn recover_redis(&self, url: &str, capacity: u32) -> Result<Recovered> {
        let store = self.redis_store(url, Some(capacity))?;
        check_capacity(store.path(), u64::from(capacity))?;
        match store.recover(capacity)? {
            Recovery::Missing => Ok(Recovered {
                semaphore: self.open_redis(url, capacity)?,
                moved_to: None,
            }),
            Recovery::Valid => Ok(Recovered {
                semaphore: Semaphore::opened(Store::Redis(store), None, self)?,
                moved_to: None,
            }),
            Recovery::MovedTo(aside) => Ok(Recovered {
                semaphore: Semaphore::opened(Store::Redis(store), None, self)?,
                moved_to: Some(aside),
            }),
        }
    }

    /// The store at `url` with these settings, after the checks every Redis open makes (the
    /// URL, the default lease, the capacity asked for). Contacts nothing.
    fn redis_store(&self, url: &str, capacity: Option<u32>) -> Result<RedisStore> {
        let location = Location::parse(url).map_err(|e| Error::InvalidLocation {
            path: PathBuf::from(e.input),
            reason: e.problem.to_string(),
        })?;
        let shown = PathBuf::from(location.to_string());
        check_lease(&shown, self.default_lease)?;
        if let Some(capacity) = capacity {
            check_capacity(&shown, u64::from(capacity.max(1)))?;
        }
        let clamp = |d: Duration| d.clamp(Duration::from_millis(1), MAX_REDIS_TIMEOUT);
        let settings = Settings {
            connect_timeout: clamp(self.connect_timeout),
            response_timeout: clamp(self.response_timeout),
            replicas: self.replicas.map(|(n, timeout)| (n, clamp(timeout))),
            lock_timeout: self.lock_timeout,
            lease: DEFAULT_REDIS_LEASE,
        };
        RedisStore::open(location, &settings)
    }
}

#[cfg(test)]
mod tests;
