//! The Redis engine: one state document in one key, changed by compare-and-swap.
//!
//! A step is two round trips: a pipelined `GET KEY` + `TIME` (the document and the server's
//! clock), then, if the rule changes the document, one `EVALSHA` of `lua/cas.lua`, which
//! writes the new value and publishes a change notice only if the key still holds what was
//! read (compared by SHA-1). The script is one atomic step on the server: no crash can leave
//! a value written but not announced, or half of anything. A lost race (the key changed in
//! between) writes nothing and is retried from the read, after a jittered exponential
//! backoff, until the caller's deadline. No `WATCH`: the design needs no per-connection
//! state, so it works unchanged on a multiplexed asynchronous connection.
//!
//! Connections: the engine keeps a few idle connections (a mutex-guarded list held
//! only to take or return one, never during a command). A thread takes an idle connection or
//! opens a new one, and returns it after the step unless it failed; a broken or timed-out
//! connection is dropped, so the next step reconnects. An idle connection that turns out to
//! be closed (the server restarted) is replaced once, transparently, before the read. A
//! forked child never uses its parent's idle connections (their sockets are shared with the
//! parent): it forgets them and opens its own.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::io::tcp::TcpSettings;
use ::redis::{Client, Connection, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use ::redis::{Script, Value, cmd, pipe};
use chrono::{DateTime, Utc};

use super::failure::{FailureKind, Phase, RedisFailure};
use super::location::Location;

/// How long opening a connection (TCP connect, `AUTH`, `SELECT`) may take by default.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the server may take to answer a command by default.
pub(crate) const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle connections kept for later steps; more are closed when returned.
const MAX_IDLE: usize = 4;

/// The first backoff after a lost race; it doubles (with jitter) up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_micros(100);

/// The longest backoff between two attempts of one step.
const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// The shortest timeout the engine passes to a socket (a zero timeout would mean none).
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Settings of an [`Engine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EngineOptions {
    /// How long opening a connection may take (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// How long the server may take to answer one command (default
    /// [`DEFAULT_RESPONSE_TIMEOUT`]).
    pub response_timeout: Duration,
    /// Wait after each committed change until this many replicas acknowledge it (`WAIT`);
    /// `None` (the default) does not wait.
    pub replicas: Option<ReplicaAck>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            replicas: None,
        }
    }
}

/// How many replicas must acknowledge each committed change, and how long to wait for them.
///
/// Redis replicates asynchronously: a change the primary has answered can be lost if the
/// primary fails before a replica has it, and a replica promoted then runs with an older
/// state (a slot granted twice, a fencing token issued twice). `WAIT` narrows that window:
/// after each committed change the engine waits until `replicas` replicas have it, at most
/// `timeout`, and fails with [`FailureKind::NotReplicated`] if fewer did (the change stays
/// on the primary). It is not a consensus protocol: a failover can still lose a change that
/// fewer replicas had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReplicaAck {
    /// Replicas that must acknowledge, at least 1.
    pub replicas: u32,
    /// How long the server waits for them (at least 1 ms; `WAIT 0` would wait forever).
    pub timeout: Duration,
}

/// What a rule decides, given the document and the server's clock.
#[derive(Debug)]
pub(crate) enum Decision<T, A> {
    /// Write these bytes (if they differ from what was read), then return `T`.
    Write(Vec<u8>, T),
    /// Write nothing, return `T`.
    NoChange(T),
    /// Write nothing, fail with `A` (for example: the document does not parse).
    Abort(A),
}

/// A finished step.
#[derive(Debug)]
pub(crate) struct Stepped<T> {
    /// What the rule returned.
    pub value: T,
    /// Whether a new value was committed (and announced).
    pub written: bool,
    /// The server's clock at the read the rule saw.
    pub server_now: DateTime<Utc>,
    /// Reads made: 1, plus one per lost race.
    pub attempts: u32,
}

/// Why a step failed: the rule aborted, Redis failed, or a committed change was not
/// confirmed by enough replicas.
#[derive(Debug)]
pub(crate) enum StepError<T, A> {
    /// The rule returned [`Decision::Abort`]; nothing was written.
    Aborted(A),
    /// The engine failed. Nothing was written, unless
    /// [`outcome_unknown`](RedisFailure::outcome_unknown) says it may have been.
    Failed(RedisFailure),
    /// The change *was* committed on the primary (`stepped` is what the step returned), but
    /// [`EngineOptions::replicas`] were not confirmed: [`FailureKind::NotReplicated`], or a
    /// connection failure during [`Phase::Replicate`]. The change may be lost on failover;
    /// the caller decides whether to keep it or undo it.
    Unreplicated {
        /// The committed step.
        stepped: Stepped<T>,
        /// Why replication was not confirmed.
        failure: RedisFailure,
    },
}

/// The document and the server's clock, read together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The value of the key, `None` if it is missing.
    pub value: Option<Vec<u8>>,
    /// The server's clock (`TIME`) when it was read.
    pub server_now: DateTime<Utc>,
}

/// Counters since the engine was made, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Steps started.
    pub steps: u64,
    /// Lost races, each followed by another read (or by giving up at the deadline).
    pub retries: u64,
    /// Changes committed (compare-and-swaps won, recoveries done).
    pub commits: u64,
    /// Connections opened.
    pub connects: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    steps: AtomicU64,
    retries: AtomicU64,
    pub(super) commits: AtomicU64,
    connects: AtomicU64,
}

/// The Lua scripts, with their SHA-1 for `EVALSHA`.
pub(super) struct Scripts {
    pub(super) cas: Script,
    pub(super) inspect: Script,
    pub(super) aside: Script,
    #[cfg_attr(not(test), allow(dead_code))] // see `Engine::delete`
    pub(super) delete: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let unchanged = include_str!("lua/unchanged.lua");
        Scripts {
            cas: Script::new(include_str!("lua/cas.lua")),
            inspect: Script::new(include_str!("lua/inspect.lua")),
            aside: Script::new(&format!("{unchanged}\n{}", include_str!("lua/aside.lua"))),
            delete: Script::new(&format!("{unchanged}\n{}", include_str!("lua/delete.lua"))),
        }
    }
}

/// One Redis semaphore's connection to its server: steps, snapshots, recovery, counters.
/// `Send + Sync`; threads may share one.
pub(crate) struct Engine {
    location: Location,
    /// The location as shown in messages (password redacted).
    shown: String,
    channel: String,
    client: Client,
    options: EngineOptions,
    idle: Mutex<Idle>,
    pub(super) counters: Counters,
    pub(super) scripts: Scripts,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("location", &self.location)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The idle connections, and the process they belong to.
struct Idle {
    pid: u32,
    connections: Vec<Connection>,
}

impl Idle {
    /// The idle connections of this process: after a fork, the parent's are forgotten.
    fn mine(&mut self) -> &mut Vec<Connection> {
        let pid = std::process::id();
        if self.pid != pid {
            self.pid = pid;
            self.connections.clear();
        }
        &mut self.connections
    }
}

/// A connection taken from the engine for one operation; returned to the idle list on drop
/// unless it failed.
pub(super) struct Lease<'e> {
    engine: &'e Engine,
    con: Option<Connection>,
    /// Opened for this operation (not taken from the idle list).
    fresh: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(con) = self.con.take() {
            let mut idle = self.engine.idle.lock().unwrap_or_else(|p| p.into_inner());
            let idle = idle.mine();
            if idle.len() < MAX_IDLE {
                idle.push(con);
            }
        }
    }
}

impl Lease<'_> {
    /// Runs one command (or pipeline) on the connection, opening one if there is none. A
    /// failure that leaves the connection unusable drops it.
    pub(super) fn run<R>(
        &mut self,
        during: Phase,
        op: impl FnOnce(&mut Connection) -> ::redis::RedisResult<R>,
    ) -> Result<R, RedisFailure> {
        let con = match &mut self.con {
            Some(con) => con,
            None => {
                let con = self.engine.connect()?;
                self.fresh = true;
                self.con.insert(con)
            }
        };
        match op(con) {
            Ok(r) => Ok(r),
            Err(e) => {
                let failure = self.engine.failure(during, e);
                if failure.breaks_connection() {
                    self.con = None;
                }
                Err(failure)
            }
        }
    }

    /// Like [`run`](Lease::run) for an operation that may be repeated (it writes nothing):
    /// if an idle connection turns out to be closed, retries once on a new one.
    pub(super) fn run_idempotent<R>(
        &mut self,
        during: Phase,
        mut op: impl FnMut(&mut Connection) -> ::redis::RedisResult<R>,
    ) -> Result<R, RedisFailure> {
        match self.run(during, &mut op) {
            Err(f) if !self.fresh && matches!(f.kind, FailureKind::Disconnected { .. }) => {
                tracing::debug!(location = %self.engine.shown, "idle Redis connection was closed; reconnecting");
                self.run(during, op)
            }
            other => other,
        }
    }
}

impl Engine {
    /// An engine for the semaphore at `location`. Connects lazily: nothing is sent until
    /// the first operation.
    ///
    /// # Errors
    ///
    /// [`FailureKind::Protocol`] if the `redis` crate refuses the connection settings.
    pub(crate) fn new(location: Location, options: EngineOptions) -> Result<Engine, RedisFailure> {
        let shown = location.to_string();
        let mut redis = RedisConnectionInfo::default()
            .set_db(i64::from(location.db))
            .set_lib_name("filesem", env!("CARGO_PKG_VERSION"));
        if let Some(user) = &location.user {
            redis = redis.set_username(user);
        }
        if let Some(password) = &location.password {
            redis = redis.set_password(password);
        }
        let info = ConnectionAddr::Tcp(location.host.clone(), location.port)
            .into_connection_info()
            .map(|info| {
                info.set_redis_settings(redis)
                    .set_tcp_settings(TcpSettings::default().set_nodelay(true))
            });
        let client = info.and_then(Client::open).map_err(|e| {
            RedisFailure::from_redis(&shown, Phase::Connect, options.connect_timeout, e)
        })?;
        Ok(Engine {
            channel: location.channel(),
            location,
            shown,
            client,
            options: EngineOptions {
                connect_timeout: options.connect_timeout.max(MIN_TIMEOUT),
                response_timeout: options.response_timeout.max(MIN_TIMEOUT),
                replicas: options.replicas,
            },
            idle: Mutex::new(Idle {
                pid: std::process::id(),
                connections: Vec::new(),
            }),
            counters: Counters::default(),
            scripts: Scripts::new(),
        })
    }

    /// The location (its `Display` redacts the password).
    pub(crate) fn location(&self) -> &Location {
        &self.location
    }

    /// The channel on which committed changes are announced ([`Location::channel`]).
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// The settings in force (timeouts raised to at least 1 ms).
    pub(crate) fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The `redis` crate client, for the subscriber's own connection.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            steps: self.counters.steps.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            connects: self.counters.connects.load(Ordering::Relaxed),
        }
    }

    /// One atomic read-modify-write of the document, on the server's clock.
    ///
    /// Reads the key and the server's clock in one round trip and calls `f` with the value
    /// (`None` if the key is missing; bytes as stored, whatever they are) and the time. On
    /// [`Decision::Write`] of bytes other than those read, commits them with the
    /// compare-and-swap script, which also publishes a notice on [`channel`](Self::channel);
    /// if the key changed since the read, nothing is written and the step starts again from
    /// the read (calling `f` again) after a jittered backoff (100 µs doubling to 20 ms).
    /// Retries stop at `deadline`; the first attempt is always made. With
    /// [`EngineOptions::replicas`], waits for replicas after the commit.
    ///
    /// # Errors
    ///
    /// [`StepError::Aborted`] with what `f` aborted with (nothing written);
    /// [`StepError::Unreplicated`] (committed, but not confirmed by enough replicas); or
    /// [`StepError::Failed`] with: [`FailureKind::WrongType`] (the key is not a string; it is
    /// left unchanged and `f` is not called), [`FailureKind::Contended`] (every attempt lost
    /// until the deadline), [`FailureKind::Unreachable`], [`FailureKind::Timeout`],
    /// [`FailureKind::Disconnected`] (see [`RedisFailure::outcome_unknown`] for a failure
    /// during the commit), [`FailureKind::Auth`], [`FailureKind::Server`] or
    /// [`FailureKind::Protocol`].
    pub(crate) fn step<T, A>(
        &self,
        deadline: Instant,
        mut f: impl FnMut(Option<&[u8]>, DateTime<Utc>) -> Decision<T, A>,
    ) -> Result<Stepped<T>, StepError<T, A>> {
        self.counters.steps.fetch_add(1, Ordering::Relaxed);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut lease = self.lease();
            let snapshot = self.read(&mut lease).map_err(StepError::Failed)?;
            let current = snapshot.value.as_deref();
            let (new, value) = match f(current, snapshot.server_now) {
                Decision::Abort(a) => return Err(StepError::Aborted(a)),
                Decision::NoChange(value) => (None, value),
                Decision::Write(new, value) if Some(new.as_slice()) == current => (None, value),
                Decision::Write(new, value) => (Some(new), value),
            };
            let Some(new) = new else {
                return Ok(Stepped {
                    value,
                    written: false,
                    server_now: snapshot.server_now,
                    attempts,
                });
            };
            if self
                .compare_and_swap(&mut lease, current, &new)
                .map_err(StepError::Failed)?
            {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                let stepped = Stepped {
                    value,
                    written: true,
                    server_now: snapshot.server_now,
                    attempts,
                };
                return match self.replicate(&mut lease) {
                    Ok(()) => Ok(stepped),
                    Err(failure) => Err(StepError::Unreplicated { stepped, failure }),
                };
            }
            drop(lease);
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            let pause = backoff(attempts);
            if Instant::now() + pause >= deadline {
                return Err(StepError::Failed(
                    self.failure_of(FailureKind::Contended { attempts }),
                ));
            }
            std::thread::sleep(pause);
        }
    }

    /// The document and the server's clock, read together; writes nothing.
    ///
    /// # Errors
    ///
    /// As [`step`](Self::step)'s read: [`FailureKind::WrongType`], [`FailureKind::Unreachable`],
    /// [`FailureKind::Timeout`], [`FailureKind::Disconnected`], [`FailureKind::Auth`],
    /// [`FailureKind::Server`], [`FailureKind::Protocol`].
    pub(crate) fn snapshot(&self) -> Result<Snapshot, RedisFailure> {
        let mut lease = self.lease();
        self.read(&mut lease)
    }

    /// A connection for one operation: an idle one, or none yet (opened on first use).
    pub(super) fn lease(&self) -> Lease<'_> {
        let con = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mine()
            .pop();
        Lease {
            engine: self,
            con,
            fresh: false,
        }
    }

    /// Opens a connection with the connect timeout, then sets the response timeout on it.
    fn connect(&self) -> Result<Connection, RedisFailure> {
        let o = &self.options;
        let con = self
            .client
            .get_connection_with_timeout(o.connect_timeout)
            .map_err(|e| {
                RedisFailure::from_redis(&self.shown, Phase::Connect, o.connect_timeout, e)
            })?;
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        con.set_read_timeout(Some(o.response_timeout))
            .and_then(|()| con.set_write_timeout(Some(o.response_timeout)))
            .map_err(|e| self.failure(Phase::Connect, e))?;
        Ok(con)
    }

    /// `GET KEY` and `TIME` in one round trip.
    fn read(&self, lease: &mut Lease<'_>) -> Result<Snapshot, RedisFailure> {
        let mut p = pipe();
        p.ignore_errors();
        p.cmd("GET").arg(&self.location.key).cmd("TIME");
        let replies: Vec<Value> = lease.run_idempotent(Phase::Read, |c| p.query(c))?;
        let protocol = |detail: String| {
            self.failure_of(FailureKind::Protocol {
                during: Phase::Read,
                detail,
            })
        };
        let [value, time] = replies.as_slice() else {
            return Err(protocol(format!("expected 2 replies, got {replies:?}")));
        };
        let value = match value {
            Value::Nil => None,
            Value::BulkString(b) => Some(b.clone()),
            Value::ServerError(e) if e.code() == "WRONGTYPE" => {
                let found = lease
                    .run(Phase::Read, |c| {
                        cmd("TYPE").arg(&self.location.key).query(c)
                    })
                    .ok();
                return Err(self.failure_of(FailureKind::WrongType { found }));
            }
            Value::ServerError(e) => {
                let e = ::redis::RedisError::from(e.clone());
                return Err(self.failure(Phase::Read, e));
            }
            other => return Err(protocol(format!("GET answered {other:?}"))),
        };
        let server_now = match time {
            Value::Array(parts) if parts.len() == 2 => parse_time(&parts[0], &parts[1]),
            _ => None,
        }
        .ok_or_else(|| protocol(format!("TIME answered {time:?}")))?;
        Ok(Snapshot { value, server_now })
    }

    /// Runs the compare-and-swap script: `true` if `new` was written and announced, `false`
    /// if the key no longer holds `current`.
    fn compare_and_swap(
        &self,
        lease: &mut Lease<'_>,
        current: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, RedisFailure> {
        let expected = current.map(sha1_hex).unwrap_or_default();
        let mut invocation = self.scripts.cas.key(&self.location.key);
        invocation
            .arg(expected)
            .arg(new)
            .arg(&self.channel)
            .arg(sha1_hex(new));
        let won: i64 = lease.run(Phase::Commit, |c| invocation.invoke(c))?;
        Ok(won == 1)
    }

    /// With [`EngineOptions::replicas`]: `WAIT` until that many replicas acknowledged the
    /// connection's writes, or its timeout.
    pub(super) fn replicate(&self, lease: &mut Lease<'_>) -> Result<(), RedisFailure> {
        let Some(ReplicaAck { replicas, timeout }) = self.options.replicas else {
            return Ok(());
        };
        let timeout = timeout.max(MIN_TIMEOUT);
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let patience = self.options.response_timeout.saturating_add(timeout);
        let acked: i64 = lease.run(Phase::Replicate, |c| {
            c.set_read_timeout(Some(patience))?;
            let acked = cmd("WAIT").arg(replicas).arg(millis).query(c);
            let restored = c.set_read_timeout(Some(self.options.response_timeout));
            acked.and_then(|acked| restored.map(|()| acked))
        })?;
        let acked = u32::try_from(acked.max(0)).unwrap_or(u32::MAX);
        if acked < replicas {
            return Err(self.failure_of(FailureKind::NotReplicated {
                wanted: replicas,
                acked,
                timeout,
            }));
        }
        Ok(())
    }

    fn failure(&self, during: Phase, e: ::redis::RedisError) -> RedisFailure {
        let timeout = match during {
            Phase::Connect => self.options.connect_timeout,
            _ => self.options.response_timeout,
        };
        RedisFailure::from_redis(&self.shown, during, timeout, e)
    }

    pub(super) fn failure_of(&self, kind: FailureKind) -> RedisFailure {
        RedisFailure::new(&self.shown, kind)
    }
}

/// The pause before attempt `attempts + 1`: 100 µs doubling per attempt up to 20 ms, then a
/// uniformly random point in its upper half (so that writers that collided spread out).
fn backoff(attempts: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let half = base / 2;
    half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64))
}

/// The SHA-1 of `bytes` in lowercase hex, as Lua's `redis.sha1hex` gives it.
pub(crate) fn sha1_hex(bytes: &[u8]) -> String {
    sha1_smol::Sha1::from(bytes).digest().to_string()
}

/// A bulk or simple string's bytes.
pub(super) fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// `TIME`'s seconds and microseconds (strings or integers) as a UTC time.
pub(super) fn parse_time(seconds: &Value, micros: &Value) -> Option<DateTime<Utc>> {
    let number = |v: &Value| -> Option<i64> {
        match v {
            Value::Int(n) => Some(*n),
            v => std::str::from_utf8(bytes(v)?).ok()?.parse().ok(),
        }
    };
    let micros = number(micros)?;
    if !(0..1_000_000).contains(&micros) {
        return None;
    }
    DateTime::from_timestamp(number(seconds)?, u32::try_from(micros).ok()? * 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_time_keeps_its_microseconds() {
        // The rule gets the server's clock to the microsecond, from strings or integers.
        let t = parse_time(
            &Value::BulkString(b"1700000000".to_vec()),
            &Value::BulkString(b"123456".to_vec()),
        )
        .unwrap();
        assert_eq!(t.to_rfc3339(), "2023-11-14T22:13:20.123456+00:00");
        let t = parse_time(&Value::Int(0), &Value::Int(1)).unwrap();
        assert_eq!(t.timestamp_micros(), 1);
        assert_eq!(parse_time(&Value::Int(0), &Value::Int(1_000_000)), None);
        assert_eq!(parse_time(&Value::Int(0), &Value::Int(-1)), None);
        assert_eq!(parse_time(&Value::Nil, &Value::Int(0)), None);
    }

    #[test]
    fn sha1_matches_redis() {
        // The compare-and-swap compares this digest with `redis.sha1hex` on the server.
        assert_eq!(
            sha1_hex(b"hello"),
            "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"
        );
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    }

    #[test]
    fn backoff_doubles_from_100_us_to_20_ms_with_jitter() {
        // Each pause lies in the upper half of its step; the steps double and stop at 20 ms.
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= Duration::from_micros(50) && first <= Duration::from_micros(100));
            let third = backoff(3);
            assert!(third >= Duration::from_micros(200) && third <= Duration::from_micros(400));
            let late = backoff(40);
            assert!(late >= Duration::from_millis(10) && late <= Duration::from_millis(20));
        }
    }
}
