//! A file-based counting semaphore: at most N named holders use a shared resource at once,
//! across processes, coordinated through a small JSON state file and an flock'd lock file.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! use filesem::Semaphore;
//!
//! // A database that takes 3 writers.
//! let sem = Semaphore::open(dir.path().join("db-writers.json"), 3)?;
//! let permit = sem.try_acquire("importer-1")?;
//! assert_eq!(sem.count()?, 1);
//! assert_eq!(sem.available()?, 2);
//! // ... write to the database, passing permit.token() as a fencing token ...
//! permit.release()?;
//! assert_eq!(sem.count()?, 0);
//! # Ok::<(), filesem::Error>(())
//! ```
//!
//! # Semantics
//!
//! - [`Semaphore::open`] creates the semaphore (and its directory) if absent; a capacity of 0
//!   means 1, as in the Go package this grows from. After opening, the state file is the
//!   source of truth for the capacity ([`Semaphore::set_capacity`] changes it).
//! - [`Semaphore::try_acquire`] takes a slot or fails at once with [`Error::NoCapacity`] or
//!   [`Error::AlreadyHeld`]. The [`Permit`] it returns releases the slot when dropped, carries
//!   a fencing [`token`](Permit::token) (strictly increasing per semaphore in the order of
//!   grants: a newer grant has a larger token) and a [`slot`](Permit::slot) index in
//!   `0..capacity`.
//! - [`Semaphore::release`] and [`Semaphore::remove`] end holds by ID (for holds kept with
//!   [`Permit::keep`], or cleanup). Queries ([`holders`](Semaphore::holders),
//!   [`count`](Semaphore::count), [`available`](Semaphore::available)) return errors instead
//!   of made-up numbers when the file cannot be read.
//! - Every change is one critical section: lock `PATH.lock` (waiting at most the
//!   [lock timeout](OpenOptions::lock_timeout), or until the deadline of an acquire given a
//!   [timeout](AcquireOptions::timeout)), read `PATH`, apply the rule, write a temp file,
//!   `fsync`, `rename` over `PATH`, `fsync` the directory, unlock. Nothing is written when the
//!   rule changes nothing (a refused acquire writes nothing).
//! - A [`Semaphore`] handle is `Send + Sync`. Threads sharing one handle are serialized in
//!   process; separate handles and processes are serialized by the lock file.
//! - A handle is bound to the directory of its state file when it is opened: it opens that
//!   directory once (following symlinks in the path as given, once) and makes every later
//!   file operation, its permits' and its waits' relative to it. Neither a change of the
//!   working directory nor a renamed directory or a repointed symlink in the path changes
//!   what it acts on, just as an open file stays bound to its inode
//!   ([`resolved_path`](Semaphore::resolved_path) is where it was opened). If the directory is
//!   removed, every operation fails with [`Error::DirectoryGone`] and nothing is created; if
//!   only the state file is removed, operations on a handle that found it fail with
//!   [`Error::Removed`] (a waiting acquire ends with it; a permit's keep-alive reports the
//!   hold lost).
//!
//! ## Waiting: fairness, hand-off, timeouts, wake-up
//!
//! - [`Semaphore::acquire`] waits for a slot, [`Semaphore::acquire_timeout`] waits at most a
//!   [`Duration`](std::time::Duration) and then fails with [`Error::Timeout`] (distinct from
//!   [`Error::NoCapacity`] and from [`Error::LockTimeout`]), and [`Semaphore::acquire_with`]
//!   takes [`AcquireOptions`]: [`timeout`](AcquireOptions::timeout),
//!   [`priority`](AcquireOptions::priority), a [`CancelToken`], an
//!   [`on_wait`](AcquireOptions::on_wait) callback.
//! - **Fairness.** An acquire that finds no free slot joins a queue kept in the state file
//!   (`waiters`, listed by [`Semaphore::waiters`]): higher priority first, first come first
//!   served within a priority. A newcomer never
//!   overtakes the queue: [`Semaphore::try_acquire`] fails with [`Error::NoCapacity`] while
//!   anyone is queued, and [`Semaphore::available`] counts queued waiters as taken.
//! - **Direct hand-off.** Whoever frees a slot (a release or dropped permit, reaping,
//!   [`Semaphore::remove`], a higher [`capacity`](Semaphore::set_capacity)) grants it to the
//!   head of the queue in the same write: the waiter's entry moves into `holders` with a slot
//!   and the next fencing token, so tokens increase in the order slots are granted, even when
//!   a waiter of higher priority overtakes one that queued earlier. The waiter only has to
//!   notice; it holds no lock while it waits.
//! - **Timeouts and cancellation.** Deadlines are measured on the monotonic clock from the
//!   call; signals (`EINTR`) neither fail a wait nor restart its deadline. A timeout bounds
//!   the whole call, its waits for `PATH.lock` included: the call returns by its deadline
//!   plus a few milliseconds whoever holds the lock, with [`Error::LockBusy`] if another
//!   process held it until then (a process stopped inside its critical section): its lock
//!   waits end at its deadline, not at the [lock timeout](OpenOptions::lock_timeout).
//!   [`Duration::ZERO`](std::time::Duration::ZERO) makes one attempt and queues nothing; a
//!   duration too large for the clock waits without limit. A wait that times out or is
//!   cancelled leaves the queue in one locked step. If the slot was handed over in the
//!   meantime, a timed-out call returns the permit (it was granted) and a cancelled one
//!   releases it to the next waiter: no slot is ever leaked. If the lock is busy at the
//!   deadline, the call unlocks its queue entry's witness instead of waiting: the next
//!   process that looks judges the entry dead and reaps it, with any slot handed to it.
//! - **Dead waiters.** A waiter's entry records its owner and a witness lock, like a holder's
//!   (see [Crash behavior](#crash-behavior)), so a killed waiter is judged dead and removed by
//!   the next waiter that looks. For waiters nobody can judge (on another machine), each waiter also
//!   keeps an expiry 6 s ahead, refreshed every 2 s (on Redis: its lease, see [Redis](#redis)); one that stops refreshing (dead, or
//!   stopped) leaves the queue 8 s later ([`LEASE_GRACE`] included) and is never granted a
//!   slot. A waiter whose entry vanished (removed with [`Semaphore::remove`], or dropped by a
//!   write of the Go package, which does not know the queue) joins the queue again, at the
//!   back.
//! - **Wake-up.** On Linux a waiter sleeps in `poll(2)` on inotify watches of the
//!   semaphore's directory (the state file is replaced by `rename`, which a watch on the file
//!   itself would not follow) and of the witness directory (a dying holder's witness closes),
//!   so it looks again within microseconds of a change. A timer is the safety net (100 ms
//!   doubling to 1 s, with jitter). Without inotify (instance limits, network filesystems,
//!   other Unix systems) it polls: 5 ms doubling to 250 ms, back to 5 ms when the state
//!   changes. Measured with `examples/handoff.rs` on a shared 2-core VM: release-to-acquire
//!   hand-off between processes p50 0.33 ms on tmpfs, 0.7-0.9 ms on ext4 with durable writes; a
//!   waiter asleep for 10 s used about 5 ms of CPU.
//!
//! # Crash behavior
//!
//! - The state file is never truncated or half-written: writers replace it by `rename`. After
//!   `try_acquire` or `release` returns, its change survives a crash of the process (and, with
//!   [durable](OpenOptions::durable) writes, of the machine).
//! - A process killed inside the critical section releases the lock file as the kernel closes
//!   its descriptors; its temp file is removed by the next write (every write first tries the
//!   same temp name, `.NAME.00000000.filesem-tmp`, and a file found there under the lock is a
//!   leftover), and leftovers under other temp names by the next [`Semaphore::open`] or
//!   [`Semaphore::reap`] (which list the directory).
//! - A holder that dies without releasing gets its slot back as soon as it is *provably* dead:
//!   acquires reap stale entries in their way ([`OpenOptions::auto_reap`]), and
//!   [`Semaphore::reap`] does it on demand. A live holder is never declared dead; an entry that
//!   cannot be judged keeps its slot until its lease expires or it is removed. The verdicts
//!   ([`Liveness`], shown by [`Semaphore::holders`]):
//!
//! | the entry | verdict |
//! | --- | --- |
//! | its witness file `PATH.witness/<N>` (`N`: its token, or its ticket if it queued) is flock'd by anyone (the holder, or a child that inherited it via [`Permit::inherit_witness`]) | alive |
//! | its witness file is there but this user may not open it: `/proc/locks` lists it as locked | alive |
//! | same, not listed (the listing can skip a held lock, so this proves nothing) | unknown (the pid is never consulted: a child may hold the witness) |
//! | witness free, holder on this boot of this machine, local filesystem | dead |
//! | witness missing or replaced, same boot and pid namespace: pid gone (`kill(pid, 0)` = `ESRCH`), zombie, or reused (other start time, compared only within one time namespace and when `/proc` shows the checker's own pid namespace) | dead |
//! | same, pid running with the recorded start time | alive |
//! | written in an earlier boot of this machine (same machine id, other boot id), local filesystem | dead |
//! | another machine, another pid namespace, a network filesystem | unknown |
//! | no owner recorded (Go package, older versions) | unknown |
//! | detached ([`Permit::keep`], [`AcquireOptions::detached`]) | unknown |
//! | lease ([`AcquireOptions::lease`]) expired more than [`LEASE_GRACE`] ago | expired |
//!
//!   "Dead" and "expired" are stale: only they are reaped. Pid evidence is never inferred from a
//!   missing `/proc` entry (`hidepid` hides live processes), and never used across machines,
//!   boots or pid namespaces.
//! - **Leases** ([`AcquireOptions::lease`], [`OpenOptions::default_lease`]) are at least
//!   [`MIN_LEASE`] (1 s; shorter is [`Error::InvalidLease`]): renewals rewrite the state file
//!   under the lock every user needs, so they must not come many times a second.
//!   [`Permit::renew`] extends a lease; [`Permit::keep_alive`] starts a thread owned by the
//!   permit that renews at a third of the lease and reports a lost hold
//!   ([`Permit::is_lost`]); releasing, keeping or dropping the permit stops it first.
//! - **Durations** of every setting may be as large as [`Duration::MAX`](std::time::Duration::MAX):
//!   too large for the clock means no limit (a lock wait or an acquire without deadline), too
//!   large for the calendar means a lease ending 9999-12-31T23:59:59Z. Nothing overflows.
//! - A corrupt state file is reported as [`Error::Corrupt`] by every operation and is never
//!   overwritten; [`Semaphore::recover`] sets it aside explicitly, and `PATH` is never
//!   missing meanwhile: a recovery that fails or is killed leaves it corrupt (or recovered).
//! - **Fencing tokens never go backwards** at one path: a semaphore created where an earlier
//!   one left its lock file (never deleted) or witness directory starts its counter at the
//!   clock in microseconds and above every witness file's number, not at 1.
//! - **Durability**: after the rename that commits a change, a failed `fsync` of the
//!   directory does not fail the operation (the change is made and seen by every process);
//!   a `tracing` warning says it may not survive a power loss. A directory that cannot be
//!   `fsync`ed at all (searchable, not readable) fails durable changes before they start
//!   ([`Error::CannotSyncDirectory`]).
//!
//! # Trust model
//!
//! Anyone who can write a semaphore's directory or its files can disturb it. filesem makes
//! sure that nobody else can turn it against its users:
//!
//! - It acts only on its own objects and never through a symlink: `PATH`, `PATH.lock`, temp
//!   files, `PATH.witness/` and its files are opened relative to the bound directory without
//!   following symlinks (`O_NOFOLLOW`, `O_DIRECTORY`), and their type is checked on the opened
//!   descriptor. A symlink, FIFO, socket or device where a file belongs, or a file where the
//!   witness directory belongs, is refused with [`Error::Untrusted`] before anything changes
//!   (a symlink at `PATH` itself is [`Error::Symlink`]); its
//!   [`kind`](UntrustedKind::WrongType) says that no option makes such an object usable.
//! - Owners: let `D` be the directory that holds an object (the semaphore's directory, or the
//!   witness directory for witness files). If `D` is neither world-writable nor sticky, every
//!   owner is trusted (whoever can write `D` can replace any file in it anyway). In a
//!   world-writable or sticky `D` such as `/tmp`, the owner must be the caller (effective
//!   uid), root, `D`'s owner, or a uid given to [`OpenOptions::trust_owner`]; anything else is
//!   [`Error::Untrusted`] of kind [`UntrustedKind::Owner`], naming the owner to trust if the
//!   semaphore is shared on purpose. So a root-run semaphore in `/tmp` never adopts a state
//!   file, lock file or witness directory another user planted there.
//! - Cleanup (temp files of killed writers, orphan witness files, witness files of reaped
//!   entries) removes only regular files with filesem's names whose owner is trusted.
//! - A witness that cannot be examined is never evidence of death (see the table above).
//! - A failed operation removes the witness directory, witness file or temp file it created;
//!   only a lock file may stay (it is never deleted).
//! - [`Semaphore::recover`] sets aside only a regular file of a trusted owner, and every mode
//!   it sets (the new state file's, the lock file's) derives from the old file's read and
//!   write bits without world-write: never set-id, sticky, world-write or execute bits.
//! - Modes: the lock file and witness files are readable and writable only by the classes of
//!   users who may write the state, whatever the umask (see [`OpenOptions::mode`]), so users
//!   who may only read the state can query it but cannot stall writers or keep a dead holder
//!   "alive". Every operation of the lock file's owner that takes the lock tightens a lock
//!   file that grants more (older versions and the Go package made them 0644).
//!
//! To keep others out, put a semaphore in a directory only you (or your group) can write; to
//! share it with a group, use a group directory with mode 2775 and
//! [`OpenOptions::mode(0o664)`](OpenOptions::mode) (docs/how-it-works.md has the recipe).
//!
//! # Redis
//!
//! With the cargo feature `redis`, a semaphore can live in one key of a Redis server instead
//! of a file, so that processes on several machines share it (GPU jobs on several hosts, CI
//! runners, containers on different nodes). Open it by URL with `Semaphore::open_redis`
//! (`OpenOptions::open_redis`, `open_redis_existing`, `recover_redis`):
//! `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]/KEY`, for example
//! `redis://:s3cret@cache.internal:6379/0/gpus`.
//!
//! **What is the same.** The whole API and its semantics: named holders, slots, fencing
//! tokens (strictly increasing across all hosts), the queue (priority, then first come
//! first served) with direct hand-off, timeouts and cancellation, `holders`, `waiters`,
//! `reap`, `remove`, `set_capacity`. The key holds the same JSON document as a state file
//! (see docs/how-it-works.md, "File format"), so status tools read it unchanged. Every change is one
//! atomic step on the server: a Lua script compares the key with what was read and writes
//! the new document only if nobody changed it in between (and then publishes a change
//! notice); a lost race runs the rule again on the newer document. No sequence of commands
//! can be left half done.
//!
//! **What differs.**
//!
//! - **Time is the server's.** Every rule (lease ends, grant times, waiters' expiries) and
//!   every query's verdicts use the server's `TIME`, never a client's clock: hosts' clocks
//!   differ. [`Semaphore::now`] reads it, to show ages and the time left of leases that
//!   agree with the verdicts.
//! - **Leases only.** A process on another machine cannot be judged by its pid or a
//!   witness lock, so the store offers no evidence of death: every entry is
//!   [`Liveness::Unknown`] until its lease runs out (plus [`LEASE_GRACE`]). Every hold has a
//!   lease: [`AcquireOptions::lease`], else [`OpenOptions::default_lease`], else 30 s
//!   (`DEFAULT_REDIS_LEASE`), never below [`MIN_LEASE`]; its [`Permit`] renews it in the
//!   background from the start (a third of the lease apart). A detached hold
//!   ([`AcquireOptions::detached`], [`Permit::keep`]) keeps its lease and is not renewed: it
//!   ends by release, `remove`, or its lease. A crashed, killed or partitioned holder's slot
//!   comes back when its lease runs out. A queued waiter has the same lease (its acquire's:
//!   the option, else the handle's default, else 30 s), renewed a third of it apart while it
//!   waits (each renewal is a write that wakes every waiter, so a short lease costs
//!   traffic); a killed waiter leaves the queue when it runs out, or, if the queue hands it
//!   a slot first, when that hold's lease does. The trade-off: a dead queue head blocks the
//!   queue for at most its lease plus [`LEASE_GRACE`]; choose a shorter lease where a
//!   blocked queue costs more than the renewals.
//! - **A key the server forgets or rolls back.** A server restarted without persistence
//!   (`appendonly`), a `FLUSHDB`, an eviction (a `maxmemory-policy` other than
//!   `noeviction`) or a `DEL` forgets every hold at once, and a server restarted from an
//!   older snapshot (RDB, or `appendfsync everysec` after a crash) forgets the holds granted
//!   since: their slots are granted again while the forgotten holders may still be working
//!   (each of their permits finds its entry missing at its next renewal and reports the
//!   hold lost). Fencing tokens still never go backwards: every token is at least the
//!   server's clock in microseconds at its grant (the counter is raised to it), so a grant
//!   after the restart is above every token before it, as long as the server's clock does
//!   not go back. The first token of a new semaphore is therefore a large number, not 1.
//!   Run the server with `appendonly yes`, `appendfsync always` and no eviction where
//!   forgotten holds matter.
//! - **A permit finds out when it lost its hold.** It keeps its lease's end on this
//!   machine's monotonic clock, counted from when its last successful renewal was *sent*
//!   (so never later than the server's). Once that passes without a renewal (the server or
//!   the network failed for a whole lease), [`Permit::is_held`] is `false` (without asking
//!   the server), [`Permit::is_lost`] is `true`, the keep-alive's callback
//!   ([`Permit::keep_alive_with`]) gets `Error::LeaseExpired`, and the permit never renews
//!   that hold again, even if its entry is still on the server; releasing or dropping it
//!   still removes the entry if it is there. Check `is_lost` between steps of long work.
//! - **Timeouts everywhere.** Opening a connection may take the connect timeout and each
//!   command the response timeout (2 s each by default, `OpenOptions::connect_timeout` and
//!   `response_timeout`), so no operation, and no `Drop` of a permit, hangs on a stopped,
//!   overloaded or partitioned server: it fails with a typed error (`Error::RedisTimeout`,
//!   `RedisUnreachable`, `RedisDisconnected`, `RedisAuth`, `Redis`), each naming the URL
//!   without its password. There is no lock to wait for: [`OpenOptions::lock_timeout`] is
//!   how long a change keeps retrying while other writers win the races, then
//!   `Error::Contended` (contention, like [`Error::LockBusy`]). A waiting acquire fails
//!   with the error when the server cannot be reached (its queue entry then expires).
//! - **Unknown outcomes are settled.** When a change got no answer (the server stopped or
//!   the connection broke while the script was on its way), it may or may not have been
//!   made, and may even be made later by the stopped server. The operation then reads the
//!   key again, for as long as its lock timeout (or deadline) allows, and looks for its own
//!   effect before acting again: an acquire for its entry (by token or ticket, ID, owner
//!   and grant time), a release for its entry's absence. It never reports a hold that was not
//!   written, and never leaves its own entry behind for a hold it reports failed, unless the
//!   server stays unreachable until the deadline: then the error says the outcome is
//!   unknown, and an acquire's entry may be on the server, held by nobody, until its lease
//!   runs out.
//! - **Failover.** Redis replicates asynchronously: a change the primary acknowledged can be
//!   lost if it fails before a replica has it, and the promoted replica then runs with an
//!   older document: a grant lost (its slot granted again while the first holder still uses
//!   it), a release lost (the slot stays taken until its lease ends), steps of the token
//!   counter lost (a fencing token handed out twice only if the promoted replica's clock
//!   is behind the old primary's by more than the failover took, since every token is
//!   raised to the server's clock). `OpenOptions::replica_ack(n,
//!   timeout)` makes every change wait (`WAIT`) until `n` replicas have it: an acquire whose
//!   grant was not acknowledged in time releases it again and fails with
//!   `Error::NotReplicated`; other operations report that error, their change made on the
//!   primary. This narrows the window; it is not a consensus protocol. A fencing resource
//!   that must never accept a token twice needs more than Redis gives. Redis Cluster is not
//!   supported (the script uses one key, but the URL names one server); with Sentinel, point
//!   the URL at the current primary.
//! - **No TLS.** `rediss://` is refused (this build includes no TLS stack): reach a TLS-only
//!   server through a tunnel (`stunnel`, `spiped`). The host name lookup is not bounded by
//!   the connect timeout.
//! - **Settings that make no sense there are ignored:** [`OpenOptions::durable`] (the
//!   server's `appendonly` and `appendfsync` decide what survives its crash),
//!   [`OpenOptions::mode`] and [`OpenOptions::trust_owner`] (no files; the server's ACLs
//!   decide who may change the key). [`Semaphore::path`] and
//!   [`resolved_path`](Semaphore::resolved_path) are the URL with the password replaced by
//!   `***` and port and database written out; so is every error's `path`.
//! - **Trust.** Anyone who can write the key can disturb the semaphore, as anyone who can
//!   write a state file can: give the semaphore's users an ACL of their own on their keys.
//!   A key of another Redis type or with garbage in it is [`Error::Corrupt`] for every
//!   operation and is never changed; `Semaphore::recover_redis` moves it aside to
//!   `KEY.corrupt-<server time>` and starts afresh, with a token counter above every token
//!   the old value shows and above the server's clock in microseconds.
//! - **Resources.** A handle keeps up to 4 idle connections; once one of its acquires has
//!   waited, it also keeps a pub/sub connection and a thread (the waiters' wake-up, a
//!   `PING` every response timeout), until its last clone is dropped (an async handle's
//!   waiting tasks use a pub/sub connection read on the runtime instead, only while some
//!   wait: see "Async (tokio)"). Each permit runs its keep-alive thread. A forked child
//!   opens its own connections.
//!
//! Waiting works as on a file: a blocking waiter sleeps in `poll(2)` on a socket that the
//! handle's pub/sub subscriber rings for every change notice, together with its
//! [`CancelToken`]'s socket, with the same safety-net timer; the releaser's write hands the
//! slot over, and the waiter only reads the key to see it.
//!
//! # Async (tokio)
//!
//! With the cargo feature `tokio`, `AsyncSemaphore` and `AsyncPermit` offer every
//! operation as an `async` method, for services on a tokio runtime (`current_thread` or
//! `multi_thread`, with I/O and time enabled). Without the feature the crate has no tokio
//! dependency. They run the same steps as the blocking API, so queue order, priorities,
//! hand-off, fencing tokens and slots are the same, and blocking and async users (threads,
//! tasks, other processes, the CLI) share one semaphore at once.
//!
//! - **No blocking call on a runtime thread.** Each handle (with its clones) has two threads
//!   of its own: one runs its locked steps in order, the other its lock-free reads. A
//!   handle's steps take turns for the lock file anyway (as the blocking API's threads do),
//!   so tokio's blocking pool would only park more threads behind them; and the handle's
//!   threads outlive the runtime.
//! - **Waiting costs no thread.** One watcher per handle and runtime serves all its waiting
//!   tasks there (so that the waiters of one runtime never depend on another being driven): on
//!   Linux an inotify descriptor driven by the runtime's reactor (`AsyncFd`), one read of the
//!   document per change shared by every waiter, and one step that refreshes all their queue
//!   entries (on Redis, one async pub/sub connection; see below). A thousand tasks waiting
//!   on one handle use the runtime's threads, the handle's two and no more (tested by
//!   counting the process's threads).
//! - **Dropping a permit never blocks**: the release is handed to the handle's step thread,
//!   and runs even if the runtime shuts down right after. It does not run if the process
//!   exits first; the kernel then unlocks the hold's witness, and the next user reaps the
//!   entry, as after a crash.
//! - **Cancel safety.** Dropping an acquire future (through `tokio::time::timeout`,
//!   `select!`, an aborted task) leaves the queue; a slot handed over as it was dropped is
//!   released and handed on, never leaked. A step already started finishes on the step
//!   thread (see `AsyncSemaphore`, "Cancel safety").
//! - **A timeout bounds the whole call**, as in the blocking API, even while an earlier step
//!   of the same handle (one without a deadline, or another task's) waits for the lock a
//!   stopped process holds: a step of the acquire that has not started at its deadline,
//!   while the step ahead of it has run for 20 ms or more, is given up, and the call returns
//!   `Error::Timeout` within a few tens of milliseconds of its deadline. The given-up step
//!   never runs; its queue entry is dropped on the step thread when its turn comes, as for a
//!   dropped acquire future (see `AsyncSemaphore::acquire_with`, "Deadlines"). A
//!   `try_acquire_with` given a timeout is bounded the same way, and fails as the blocking
//!   one does when the lock stays busy: `Error::LockBusy`, naming the lock's holder.
//! - **Cost**: a step's hand-over to the handle's thread and back. For quick steps (tmpfs)
//!   on a machine with more than one CPU, the task polls for the reply (waking itself, so
//!   the runtime runs other tasks in between) instead of sleeping until woken, and the step
//!   thread looks for the next job for 100 µs before it sleeps: a cycle on tmpfs takes
//!   1.1-1.3 times as long as a blocking one when the CPUs are not busy with other work, at
//!   about twice its CPU time. An idle handle uses no CPU (`docs/performance.md`, "Async").
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # fn main() -> Result<(), filesem::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! use std::time::Duration;
//! use filesem::AsyncSemaphore;
//!
//! let sem = AsyncSemaphore::open(dir.path().join("gpus.json"), 2).await?;
//! let mut tasks = Vec::new();
//! for i in 0..5 {
//!     let sem = sem.clone();
//!     tasks.push(tokio::spawn(async move {
//!         // Waits in the queue (a task, not a thread) until a slot is handed over.
//!         let permit = sem.acquire_timeout(&format!("job-{i}"), Duration::from_secs(30)).await?;
//!         tokio::time::sleep(Duration::from_millis(10)).await; // use GPU permit.slot()
//!         permit.release().await
//!     }));
//! }
//! for task in tasks {
//!     task.await.expect("the task ran")?;
//! }
//! assert_eq!(sem.count().await?, 0);
//! # Ok(())
//! # })
//! # }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```
//!
//! `AsyncSemaphore::from_blocking` and `AsyncSemaphore::blocking` convert handles,
//! `AsyncPermit::from_blocking` and `AsyncPermit::into_blocking` permits.
//!
//! With the features `redis` and `tokio`, `AsyncSemaphore::open_redis`,
//! `open_redis_existing` and `recover_redis` (and their `_with` variants taking
//! [`OpenOptions`]) open a Redis semaphore. Where each behaviour comes from:
//!
//! - **Steps** (acquire, release, renew, ...) run on the handle's step thread through the
//!   blocking engine, its connections and its one compare-and-swap, retry and settling path;
//!   so does connecting when the handle is opened. They never run on a runtime thread.
//! - **Waiting** is the `redis` crate's async pub/sub connection, one per handle, opened by
//!   its first waiting task and read by a task on the runtime, shared by all the handle's
//!   waiting tasks: no thread (the blocking API's waiters have a subscriber thread instead).
//!   It uses the URL's credentials and database and the handle's connect and response
//!   timeouts (a `PING` when nothing came for the response timeout); every (re)subscription
//!   is followed by a look, so a change announced while nothing was subscribed is not
//!   missed; a broken connection (a restarted server, `CLIENT KILL TYPE pubsub`) is opened
//!   again after 50 ms doubling to 1 s, and meanwhile the watcher looks at the polling pace
//!   (5 ms doubling to 250 ms). The connection is closed when the handle's last waiting task
//!   stops waiting.
//!
//! # Errors
//!
//! Every operation returns [`Result`]. Besides the errors of its own (listed in its
//! `# Errors`), any operation on the files can fail with [`Error::Io`] (whose message ends
//! with the OS error), [`Error::Untrusted`] (an object of the wrong type or owner),
//! [`Error::DirectoryGone`] (the directory was removed after the semaphore was opened) and
//! [`Error::Removed`] (the state file was); operations that may change the state also with
//! [`Error::LockTimeout`] (or, for an acquire given a timeout, [`Error::LockBusy`]),
//! [`Error::UnsupportedVersion`] (a state file of a newer format, never rewritten) and, for
//! durable changes, [`Error::CannotSyncDirectory`]. None of them changes anything on disk.
//!
//! # Platform notes
//!
//! - Unix only; Linux first: pid, boot-id and machine-id evidence are Linux facilities; other
//!   Unix systems get witness locks (held = alive) and leases. On Linux, a witness this user
//!   may not open is looked up in `/proc/locks`, and a directory it may search but not read
//!   is opened with `O_PATH` (queries work; durable writes, which `fsync` the directory, do
//!   not).
//! - Each handle (with its clones) keeps its directory open, and once it has taken a
//!   process-bound hold also the witness directory; each such permit keeps its witness file
//!   open. flock is *advisory*: every
//!   program that uses the semaphore must follow this protocol (this crate, the Go package, or
//!   the documented file format).
//! - A [`Permit`] belongs to the process that acquired it: in a forked child, dropping it does
//!   nothing, and [`Permit::release`] / [`Permit::keep`] fail with [`Error::NotOwner`].
//! - flock over network filesystems (NFS, SMB) is not reliable everywhere; keep semaphore files
//!   on a local filesystem (tmpfs is ideal for throwaway ones: `OpenOptions::durable(false)`).
//! - The Go package can share a semaphore file if both sides use the same capacity; it drops
//!   the fields it does not know (tokens, owners, queue) when it writes. A [`Permit`] whose
//!   entry it stripped writes back everything the hold records the next time it looks
//!   ([`Permit::renew`], [`Permit::is_held`], [`Permit::keep`], its keep-alive), so the hold can
//!   be reaped again when its process dies. Fields that neither side knows are kept by filesem
//!   as the exact JSON text they had, wherever they are; a field filesem uses that appears twice
//!   in one object makes the file [`Error::Corrupt`].

// The code blocks of the README and of docs/ are compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[doc = include_str!("../docs/how-it-works.md")]
#[cfg(doctest)]
pub struct HowItWorksDoctests;

// The layers, each using only those below it (see the `store` module's "Architecture"):
// `core` (the document and the pure rules), `store` (where the document lives: a file, or
// with the `redis` feature a Redis key), and the blocking API (`semaphore`, `permit`, `wait`,
// `sleeper`, and `redis_api` for opening Redis semaphores). Beside them the values they
// share: `error` (all), `options` (the core's requests, the API), `holder` and `cancel` (the
// API). `layers` checks the rules on the sources.
#[cfg(feature = "tokio")]
mod asynch;
mod cancel;
mod core;
mod error;
mod holder;
#[cfg(test)]
mod layers;
mod options;
mod permit;
#[cfg(feature = "redis")]
mod redis_api;
mod semaphore;
mod sleeper;
mod store;
mod wait;

#[cfg(feature = "tokio")]
pub use crate::asynch::{AsyncKeepError, AsyncPermit, AsyncRecovered, AsyncSemaphore};
pub use crate::cancel::CancelToken;
pub use crate::core::doc::{MAX_CAPACITY, MAX_ID_LEN, MAX_TOKEN};
pub use crate::core::queue::WaitStatus;
pub use crate::core::verdict::{LEASE_GRACE, Liveness};
pub use crate::error::{Error, Result, UntrustedKind};
pub use crate::holder::{HoldMode, Holder, HolderInfo, OwnerInfo};
pub use crate::options::{
    AcquireOptions, DEFAULT_LOCK_TIMEOUT, MAX_METADATA_BYTES, MIN_LEASE, OpenOptions,
};
#[cfg(feature = "redis")]
pub use crate::options::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REDIS_LEASE, DEFAULT_RESPONSE_TIMEOUT};
pub use crate::permit::{KeepError, Permit};
#[cfg(feature = "redis")]
pub use crate::redis_api::RedisStats;
pub use crate::semaphore::{Reaped, Recovered, Semaphore};
