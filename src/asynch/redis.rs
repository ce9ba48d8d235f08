//! The async opens of a Redis semaphore (features `tokio` and `redis`): the blocking opens,
//! run on the new handle's step thread, so that connecting never blocks a runtime thread.

use std::path::PathBuf;

use super::{AsyncRecovered, AsyncSemaphore};
use crate::error::Result;
use crate::options::OpenOptions;
use crate::store::redis::location::Location;

/// How `url` is shown in the error of a handle whose threads could not be started: its
/// display form, never its password.
fn shown(url: &str) -> PathBuf {
    PathBuf::from(match Location::parse(url) {
        Ok(location) => location.to_string(),
        Err(e) => e.input,
    })
}

impl AsyncSemaphore {
    /// [`Semaphore::open_redis`](crate::Semaphore::open_redis), async: opens the semaphore
    /// kept in a Redis server at `url` (`redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]/KEY`),
    /// creating it with `capacity` slots if the key does not exist.
    ///
    /// Needs the cargo features `tokio` and `redis`.
    ///
    /// Connecting and the first step run on the handle's step thread, within the connect
    /// and response timeouts, never on a runtime thread. Afterwards the handle works as on
    /// a file (see [`AsyncSemaphore`], "How it runs"): its steps run on the step thread
    /// through the blocking handle's connections, and its waiting tasks share one pub/sub
    /// connection, opened by the first of them and read on the runtime (no thread); it is
    /// closed when the last one stops waiting. See the crate docs, "Redis", for what
    /// differs from a file.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::open_redis`](crate::Semaphore::open_redis):
    /// [`Error::InvalidLocation`](crate::Error::InvalidLocation) for a URL that does not
    /// parse (nothing is contacted), the server's errors
    /// ([`Error::RedisUnreachable`](crate::Error::RedisUnreachable),
    /// [`Error::RedisTimeout`](crate::Error::RedisTimeout),
    /// [`Error::RedisAuth`](crate::Error::RedisAuth), ...); [`Error::Io`](crate::Error::Io)
    /// also if the system refuses the handle's threads.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// # rt.block_on(async {
    /// use filesem::AsyncSemaphore;
    ///
    /// let sem = AsyncSemaphore::open_redis("redis://cache.internal:6379/0/gpus", 4).await?;
    /// let permit = sem.acquire("trainer-7").await?; // waits without a thread
    /// println!("GPU {} with fencing token {}", permit.slot(), permit.token());
    /// permit.release().await?;
    /// # Ok::<(), filesem::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn open_redis(url: &str, capacity: u32) -> Result<AsyncSemaphore> {
        AsyncSemaphore::open_redis_with(&OpenOptions::new(), url, capacity).await
    }

    /// [`OpenOptions::open_redis`], async: [`open_redis`](AsyncSemaphore::open_redis) with
    /// these settings (timeouts, replica acknowledgement, default lease, auto-reap,
    /// `create_new`; the waiting tasks' pub/sub connection uses the connect and response
    /// timeouts too).
    ///
    /// Needs the cargo features `tokio` and `redis`.
    ///
    /// # Errors
    ///
    /// As [`OpenOptions::open_redis`]; [`Error::Io`](crate::Error::Io) also if the system
    /// refuses the handle's threads.
    pub async fn open_redis_with(
        options: &OpenOptions,
        url: &str,
        capacity: u32,
    ) -> Result<AsyncSemaphore> {
        let (options, url) = (options.clone(), url.to_string());
        AsyncSemaphore::opened(&shown(&url), move || options.open_redis(&url, capacity)).await
    }

    /// [`Semaphore::open_redis_existing`](crate::Semaphore::open_redis_existing), async:
    /// opens the semaphore at `url` if its key exists, adopting the capacity stored in it;
    /// creates nothing. See [`open_redis`](AsyncSemaphore::open_redis).
    ///
    /// Needs the cargo features `tokio` and `redis`.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::open_redis_existing`](crate::Semaphore::open_redis_existing):
    /// [`Error::NotFound`](crate::Error::NotFound) if the key does not exist, otherwise as
    /// [`open_redis`](AsyncSemaphore::open_redis).
    pub async fn open_redis_existing(url: &str) -> Result<AsyncSemaphore> {
        AsyncSemaphore::open_redis_existing_with(&OpenOptions::new(), url).await
    }

    /// [`OpenOptions::open_redis_existing`], async.
    ///
    /// Needs the cargo features `tokio` and `redis`.
    ///
    /// # Errors
    ///
    /// As [`OpenOptions::open_redis_existing`]; [`Error::Io`](crate::Error::Io) also if the
    /// system refuses the handle's threads.
    pub async fn open_redis_existing_with(
        options: &OpenOptions,
        url: &str,
    ) -> Result<AsyncSemaphore> {
        let (options, url) = (options.clone(), url.to_string());
        AsyncSemaphore::opened(&shown(&url), move || options.open_redis_existing(&url)).await
    }

    /// [`Semaphore::recover_redis`](crate::Semaphore::recover_redis), async: moves a key
    /// that holds no valid state document aside to `KEY.corrupt-<server time>` and puts an
    /// empty semaphore of `capacity` slots in its place. **Stop all holders first** (see there).
    ///
    /// Needs the cargo features `tokio` and `redis`.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::recover_redis`](crate::Semaphore::recover_redis);
    /// [`Error::Io`](crate::Error::Io) also if the system refuses the handle's threads.
    pub async fn recover_redis(url: &str, capacity: u32) -> Result<AsyncRecovered> {
        AsyncSemaphore::recover_redis_with(&OpenOptions::new(), url, capacity).await
    }

    /// [`OpenOptions::recover_redis`], async.
    ///
    /// Needs the cargo features `tokio` and `redis`.
    ///
    /// # Errors
    ///
    /// As [`OpenOptions::recover_redis`]; [`Error::Io`](crate::Error::Io) also if the
    /// system refuses the handle's threads.
    pub async fn recover_redis_with(
        options: &OpenOptions,
        url: &str,
        capacity: u32,
    ) -> Result<AsyncRecovered> {
        let (options, url) = (options.clone(), url.to_string());
        AsyncSemaphore::recovered(&shown(&url), move || options.recover_redis(&url, capacity)).await
    }
}
