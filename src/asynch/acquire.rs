//! The async acquire: the blocking acquire's steps ([`crate::wait`]), run on the handle's
//! step thread, and its waiting, done on the runtime without a thread: between steps a task
//! awaits the handle's watcher ([`super::hub`]) and its own timers (the expiry refresh, the
//! deadline, the next expiry of an entry ahead of it).
//!
//! Cancel safety: the call's queue entry lives in an [`OffThread`] while the task waits, and
//! travels into each step and back. Dropping the future drops it, wherever it is, on the
//! step thread, where its drop leaves the queue and releases a slot handed to it meanwhile
//! (the blocking acquire's drop guard, [`Queued`]); a permit a step returned to a dropped
//! future is released there too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::hub::Place;
use super::runner::{Lane, OffThread};
use super::{AsyncPermit, AsyncSemaphore};
use crate::core::queue::{granted, needs_step_given};
use crate::error::{Error, Result};
use crate::options::AcquireOptions;
use crate::permit::Seen;
use crate::semaphore::Semaphore;
use crate::wait::{self, Joined, Queued, Waiting};

/// How often a waiter checks its cancel token (the async API has no wake-up socket for it:
/// dropping the future is the usual way to cancel).
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// Acquires a slot for `id` on `handle` as `options` say, waiting without a thread.
pub(crate) async fn acquire(
    handle: &AsyncSemaphore,
    id: String,
    options: AcquireOptions,
) -> Result<AsyncPermit> {
    let start = Instant::now();
    let shared = &handle.inner;
    let sem = shared.sem.clone();
    let path = sem.path().to_path_buf();
    let steps = &shared.runner.steps;
    let deadline = options.timeout.and_then(|d| start.checked_add(d));
    let cancel = options.cancel.clone();
    let call = Arc::new((id, options));
    // Watching starts before the step that may queue, so no change after it is missed.
    let mut watch = shared.hub.subscribe(&sem, &shared.runner);
    let late = || Error::Timeout {
        path: path.clone(),
        waited: start.elapsed(),
    };
    let joined = {
        let (sem, call) = (sem.clone(), Arc::clone(&call));
        steps
            .run_by(&path, deadline, move || {
                let (id, options) = &*call;
                sem.check_request(id, options)?;
                wait::join(&sem, id, options, start)
            })
            .await?
            .ok_or_else(late)?
    };
    let mut queued = match joined {
        Joined::Granted(permit) => return Ok(AsyncPermit::new(permit, handle.clone())),
        Joined::Queued(queued) => OffThread::new(queued, steps.clone()),
    };
    // Looks started before the last step of this call may not show what it wrote.
    let mut after = Instant::now();
    watch.poke();
    // The watcher refreshes the entry's expiry (with those of the handle's other waiters).
    let expiry = {
        let (id, options) = &*call;
        wait::request(&sem, id, options).waiter_expiry
    };
    // Each step after the first: not started at the deadline while an earlier step of the
    // handle is held up, it is given up (`Error::Timeout`), as `with_queued` says.
    let at = Call {
        steps,
        sem: &sem,
        call: &call,
        start,
        deadline,
    };
    let listed = shared
        .hub
        .list(&queued.get().expect("kept between steps").mine, expiry);
    loop {
        if cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            let left = with_queued(&at, &mut queued, |q, _| q.leave(false)).await?;
            left?;
            return Err(Error::Cancelled { path });
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let timeout = Error::Timeout {
                path: path.clone(),
                waited: start.elapsed(),
            };
            let permit = with_queued(&at, &mut queued, move |q, req| {
                q.time_out(req, start, timeout)
            })
            .await??;
            return Ok(AsyncPermit::new(permit, handle.clone()));
        }
        let look = watch.looks.borrow_and_update().clone();
        let mine = &queued.get().expect("kept between steps").mine;
        let mut step = false;
        match look.as_deref() {
            Some(Ok(look)) if look.sent >= after => match look.place(mine) {
                // Still queued: a step only if the queue needs one (judged once per look).
                Some(Some(Place::Waiter(_))) => step = look.queue_step,
                // Not on file: queue again.
                None => step = true,
                // Handed a slot (or something only a scan tells).
                Some(_) => {
                    if let Some(grant) = granted(&look.doc, mine) {
                        let seen = Seen {
                            sent: look.sent,
                            now: look.now,
                        };
                        let permit = with_queued(&at, &mut queued, move |q, req| {
                            q.granted(req, grant, None, start, seen)
                        })
                        .await??;
                        return Ok(AsyncPermit::new(permit, handle.clone()));
                    }
                    step = needs_step_given(&look.doc, mine, || look.queue_step);
                }
            },
            Some(Err(failed)) if *failed >= after => {
                // The watcher's read failed: read again, for this call's own error.
                let sem = sem.clone();
                shared
                    .runner
                    .looks
                    .run(&path, move || sem.inner.store.snapshot())
                    .await?;
                after = Instant::now();
                watch.poke();
                continue;
            }
            // Nothing seen since the last step yet: the watcher looks soon (it was poked).
            _ => {}
        }
        if step {
            let waiting = with_queued(&at, &mut queued, move |q, req| {
                q.step_once(req, false, start)
            })
            .await??;
            match waiting {
                Waiting::Granted(permit) => return Ok(AsyncPermit::new(permit, handle.clone())),
                Waiting::Still { .. } => {
                    listed.update(&queued.get().expect("kept between steps").mine);
                }
            }
            after = Instant::now();
            watch.poke();
            continue;
        }
        // Not kept while asleep: a thousand waiters each holding the look it last saw would
        // keep a thousand versions of the document alive.
        drop(look);
        let mut until = deadline;
        if cancel.is_some() {
            let check = Instant::now() + CANCEL_CHECK;
            until = Some(until.map_or(check, |d| d.min(check)));
        }
        tokio::select! {
            changed = watch.looks.changed() => {
                if changed.is_err() {
                    // The watcher ended with its runtime: watch again, on this one.
                    watch = shared.hub.subscribe(&sem, &shared.runner);
                    watch.poke();
                }
            }
            () = sleep_until(until) => {}
        }
    }
}

/// Sleeps until `until`; for ever without one.
async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What every step of a queued call needs.
struct Call<'a> {
    steps: &'a Lane,
    sem: &'a Semaphore,
    call: &'a Arc<(String, AcquireOptions)>,
    start: Instant,
    deadline: Option<Instant>,
}

/// Runs `f` on the queue entry of the call on the step thread, with the call's request,
/// and puts the entry back. If the future is dropped meanwhile, the entry is dropped on the
/// thread (leaving the queue), and so is what `f` returned (a permit is released).
///
/// With a deadline, the step is given up if it has not started by then (or by now, for a
/// step sent after it) while an earlier step of the handle is held up (one without a
/// deadline waiting for a lock held by a stopped process may wait up to the lock timeout):
/// the entry is then dropped on the thread when its turn comes, exactly as if the acquire's
/// future had been dropped, and the call ends with [`Error::Timeout`] at once.
///
/// # Errors
///
/// [`Error::Timeout`] when the step was given up; [`Error::Io`] if the step thread is gone.
async fn with_queued<R: Send + 'static>(
    at: &Call<'_>,
    queued: &mut OffThread<Queued>,
    f: impl FnOnce(&mut Queued, &crate::core::queue::Request<'_>) -> R + Send + 'static,
) -> Result<R> {
    let mut entry = queued.take().expect("kept between steps");
    let (sem, call) = (at.sem.clone(), Arc::clone(at.call));
    let path = sem.path().to_path_buf();
    let start_by = at.deadline.map(|d| d.max(Instant::now()));
    let stepped = at
        .steps
        .run_by(&path, start_by, move || {
            let (id, options) = &*call;
            let req = wait::request(&sem, id, options);
            let out = f(&mut entry, &req);
            Ok((entry, out))
        })
        .await?;
    let Some((entry, out)) = stepped else {
        return Err(Error::Timeout {
            path,
            waited: at.start.elapsed(),
        });
    };
    *queued = OffThread::new(entry, at.steps.clone());
    Ok(out)
}
