//! [`CancelToken`]: stops a waiting acquire from another thread.

use std::fmt;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Cancels waiting acquires from another thread (or a signal-handling thread).
///
/// Give a clone to [`AcquireOptions::cancel_token`](crate::AcquireOptions::cancel_token);
/// calling [`cancel`](CancelToken::cancel) on any clone wakes every acquire waiting with it at
/// once. Each of them leaves the queue and fails with [`Error::Cancelled`](crate::Error::Cancelled);
/// if a slot had been handed to it meanwhile, the slot is released (handed on to the next
/// waiter) in the same step, so nothing leaks.
///
/// Cancellation is permanent: an acquire started with a token that is already cancelled fails
/// at once, before touching the queue. Use a new token for new work.
///
/// A token only ever stops *waiting*: [`Semaphore::try_acquire`](crate::Semaphore::try_acquire)
/// and the first attempt of an acquire that finds a free slot are not affected by a token
/// cancelled afterwards, and permits already returned stay held.
///
/// # Examples
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// use filesem::{AcquireOptions, CancelToken, Error, Semaphore};
///
/// let sem = Semaphore::open(dir.path().join("gpu.json"), 1)?;
/// let _busy = sem.try_acquire("trainer")?;
///
/// let token = CancelToken::new();
/// let canceller = token.clone();
/// let waiter = std::thread::spawn({
///     let sem = sem.clone();
///     move || sem.acquire_with("evaluator", &AcquireOptions::new().cancel_token(&token))
/// });
/// // Cancel once the waiter is queued.
/// while sem.waiters()?.is_empty() {
///     std::thread::sleep(std::time::Duration::from_millis(1));
/// }
/// canceller.cancel();
/// assert!(matches!(waiter.join().unwrap(), Err(Error::Cancelled { .. })));
/// assert!(sem.waiters()?.is_empty());
/// # Ok::<(), filesem::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    /// Wake-up sockets of the acquires waiting with this token right now. Weak: a wait that
    /// ends drops its socket, and its entry is pruned at the next registration.
    wakers: Mutex<Vec<Weak<UnixStream>>>,
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Cancels every acquire waiting with this token (and every later one). Idempotent;
    /// never blocks for long (it writes one byte to each waiter's wake-up socket).
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        let wakers = self.inner.wakers.lock().unwrap_or_else(|p| p.into_inner());
        for waker in wakers.iter().filter_map(Weak::upgrade) {
            // Non-blocking: a full socket already holds a wake-up byte.
            let _ = (&*waker).write(&[1]);
        }
    }

    /// Whether [`cancel`](CancelToken::cancel) was called on this token or a clone of it.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Registers a wait: returns the socket that becomes readable on cancellation, or `None`
    /// when no socket could be made (then the waiter checks the flag on a short timer).
    pub(crate) fn register(&self) -> Option<Registration> {
        let (reader, writer) = UnixStream::pair().ok()?;
        reader.set_nonblocking(true).ok()?;
        writer.set_nonblocking(true).ok()?;
        let writer = Arc::new(writer);
        let mut wakers = self.inner.wakers.lock().unwrap_or_else(|p| p.into_inner());
        wakers.retain(|w| w.strong_count() > 0);
        wakers.push(Arc::downgrade(&writer));
        drop(wakers);
        // A cancel that ran before the push did not see this socket: wake it ourselves.
        if self.is_cancelled() {
            let _ = (&*writer).write(&[1]);
        }
        Some(Registration {
            reader,
            _writer: writer,
        })
    }
}

/// One wait's wake-up socket; dropping it unregisters the wait.
pub(crate) struct Registration {
    pub reader: UnixStream,
    _writer: Arc<UnixStream>,
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn cancel_token_is_send_sync_clone() {
        // A token is shared between the waiting thread and the one that cancels.
        assert_send_sync::<CancelToken>();
    }

    #[test]
    fn cancel_wakes_registered_waits_and_is_permanent() {
        // Every registered wait gets a wake-up byte; a wait registered later sees the flag.
        let token = CancelToken::new();
        let a = token.register().unwrap();
        let b = token.clone().register().unwrap();
        assert!(!token.is_cancelled());
        token.clone().cancel();
        assert!(token.is_cancelled());
        for r in [&a, &b] {
            let mut buf = [0u8; 8];
            assert_eq!((&r.reader).read(&mut buf).unwrap(), 1);
        }
        let late = token.register().unwrap();
        let mut buf = [0u8; 8];
        assert_eq!((&late.reader).read(&mut buf).unwrap(), 1);
    }

    #[test]
    fn ended_waits_are_pruned() {
        // Tokens reused for many waits do not accumulate dead sockets.
        let token = CancelToken::new();
        for _ in 0..10 {
            drop(token.register().unwrap());
        }
        let _live = token.register().unwrap();
        assert_eq!(token.inner.wakers.lock().unwrap().len(), 1);
    }
}
