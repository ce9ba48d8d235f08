//! The file store's in-process gate: threads of one process sharing a handle take turns for
//! the lock file here, waiting (with a deadline) on a condition variable rather than by
//! polling `PATH.lock`.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A mutex whose wait has a deadline (std's has none). Besides bounding the wait behind other
/// threads, it keeps a child forked while another thread was inside from hanging: the child
/// sees the gate busy forever and times out, where a std mutex would block it for good.
#[derive(Debug, Default)]
pub(super) struct Gate {
    state: Mutex<GateState>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// A thread is inside.
    busy: bool,
    /// Threads waiting to enter: leaving wakes one only if there is one, so that a handle
    /// used by one thread makes no `futex` call per operation.
    waiting: usize,
}

/// Holding this is being inside the [`Gate`]; dropping it lets the next thread in.
pub(super) struct GateGuard<'a>(&'a Gate);

impl Gate {
    /// Enters, waiting until `deadline` at most (no deadline: without limit); `None` when the
    /// deadline passed first.
    pub(super) fn enter(&self, deadline: Option<Instant>) -> Option<GateGuard<'_>> {
        let mut state = self.lock();
        while state.busy {
            let left = match deadline {
                Some(d) => d.checked_duration_since(Instant::now())?,
                None => Duration::MAX,
            };
            state.waiting += 1;
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.waiting -= 1;
        }
        state.busy = true;
        Some(GateGuard(self))
    }

    /// The state's mutex is held only to read or change it, never across I/O.
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        let waiting = {
            let mut state = self.0.lock();
            state.busy = false;
            state.waiting > 0
        };
        if waiting {
            self.0.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_lets_every_waiting_thread_in_one_at_a_time() {
        // Leaving wakes a waiter whenever there is one (no lost wake-up), and never two inside.
        let gate = std::sync::Arc::new(Gate::default());
        let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (gate, inside) = (gate.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let deadline = Instant::now() + Duration::from_secs(10);
                        let guard = gate
                            .enter(Some(deadline))
                            .expect("entered before the deadline");
                        assert_eq!(inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0);
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        drop(guard);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gate.lock().waiting, 0);
    }

    #[test]
    fn gate_wait_ends_at_the_deadline() {
        // A thread behind a holder that never leaves gives up at its deadline.
        let gate = Gate::default();
        let _held = gate.enter(Some(Instant::now())).unwrap();
        let start = Instant::now();
        assert!(
            gate.enter(Some(start + Duration::from_millis(30)))
                .is_none()
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(gate.lock().waiting, 0);
    }
}
