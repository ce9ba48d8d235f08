//! The engine's errors: what failed, while doing what, on which semaphore.
//!
//! Every [`RedisFailure`] names the semaphore by its redacted location
//! (`redis://:***@host:6379/0/KEY`, which includes the key) and keeps the `redis` crate's
//! error as its [`source`](std::error::Error::source) when there is one. The store turns
//! each into the crate's [`Error`] ([`RedisFailure::into_error`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ::redis::{ErrorKind, RedisError};

use crate::error::Error;

/// What the engine was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Opening a connection: TCP connect, `AUTH`, `SELECT`.
    Connect,
    /// Reading the state and the server's clock (`GET` + `TIME`).
    Read,
    /// Committing a change (the compare-and-swap script).
    Commit,
    /// Waiting for replicas to acknowledge a committed change (`WAIT`).
    Replicate,
    /// Subscribing to, or listening for, change notices.
    Subscribe,
    /// Inspecting, moving aside or deleting a key for recovery.
    Recover,
}

impl Phase {
    /// What the engine was doing, for messages: "reading the state", ...
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Phase::Connect => "connecting",
            Phase::Read => "reading the state",
            Phase::Commit => "committing a change",
            Phase::Replicate => "waiting for replicas",
            Phase::Subscribe => "listening for changes",
            Phase::Recover => "recovering the key",
        }
    }

    /// A change may have been made (or not) when a command of this phase got no answer.
    fn writes(self) -> bool {
        matches!(self, Phase::Commit | Phase::Recover)
    }
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// No connection could be opened: refused, no route, unknown host.
    Unreachable,
    /// An open connection broke (reset, closed by the server) in the middle of a command.
    /// During [`Phase::Commit`] or [`Phase::Recover`] the change may or may not have been made.
    Disconnected {
        /// What the engine was doing.
        during: Phase,
    },
    /// No answer within the connect timeout ([`Phase::Connect`]) or the response timeout:
    /// a stopped, overloaded or partitioned server. During [`Phase::Commit`] or
    /// [`Phase::Recover`] the change may or may not have been made.
    Timeout {
        /// What the engine was doing.
        during: Phase,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The server refused the credentials (wrong password, unknown user), asked for
    /// credentials that were not given (`NOAUTH`), or the user may not run a command
    /// (`NOPERM`).
    Auth {
        /// The server's or the client's words.
        detail: String,
    },
    /// The key holds a Redis value that is not a string (a list, a hash, ...). Nothing was
    /// changed.
    WrongType {
        /// The Redis type found (`TYPE`), if it could be asked.
        found: Option<String>,
    },
    /// Every attempt lost the compare-and-swap to another writer until the caller's
    /// deadline passed. Nothing was changed.
    Contended {
        /// Attempts made (reads, each followed by a lost compare-and-swap).
        attempts: u32,
    },
    /// A change was committed on the server, but fewer replicas than asked for
    /// acknowledged it (`WAIT`) in time: it is on the primary and may be lost if the
    /// primary fails before a replica has it.
    NotReplicated {
        /// Replicas asked for.
        wanted: u32,
        /// Replicas that acknowledged the change.
        acked: u32,
        /// How long the server waited for them.
        timeout: Duration,
    },
    /// Recovery could not move the key aside: the name it would take is in use.
    AsideTaken {
        /// The name the key would have been moved to.
        aside: String,
    },
    /// The server answered with an error that has no kind of its own (`READONLY`,
    /// `LOADING`, out of memory, a script error, ...).
    Server {
        /// What the engine was doing.
        during: Phase,
        /// The server's error.
        message: String,
    },
    /// The server's answer did not have the expected shape.
    Protocol {
        /// What the engine was doing.
        during: Phase,
        /// What was wrong with it.
        detail: String,
    },
    /// A local resource failed (a thread could not be started).
    Local {
        /// What failed.
        detail: String,
    },
}

/// An error of the Redis engine, naming the semaphore by its redacted location.
#[derive(Debug)]
pub(crate) struct RedisFailure {
    /// The semaphore, as `redis://[:***@]HOST:PORT/DB/KEY` (never with the password).
    pub location: String,
    /// What went wrong.
    pub kind: FailureKind,
    /// The `redis` crate's error, if there is one.
    pub source: Option<RedisError>,
}

impl RedisFailure {
    /// A failure without an underlying `redis` crate error.
    pub(crate) fn new(location: &str, kind: FailureKind) -> RedisFailure {
        RedisFailure {
            location: location.to_string(),
            kind,
            source: None,
        }
    }

    /// Classifies an error of the `redis` crate. `timeout` is the one in force for the
    /// command (connect or response timeout), named if the command timed out.
    pub(crate) fn from_redis(
        location: &str,
        during: Phase,
        timeout: Duration,
        error: RedisError,
    ) -> RedisFailure {
        let kind = classify(&error, during, timeout);
        RedisFailure {
            location: location.to_string(),
            kind,
            source: Some(error),
        }
    }

    /// `true` when a change may or may not have been made: the connection broke or timed
    /// out while a write was in flight. The caller must read the state again to find out.
    pub(crate) fn outcome_unknown(&self) -> bool {
        match self.kind {
            FailureKind::Disconnected { during } | FailureKind::Timeout { during, .. } => {
                during.writes()
            }
            _ => false,
        }
    }

    /// `true` when the failure leaves the connection unusable (it is dropped, and the next
    /// operation opens a new one).
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(
            self.kind,
            FailureKind::Unreachable
                | FailureKind::Disconnected { .. }
                | FailureKind::Timeout { .. }
                | FailureKind::Protocol { .. }
        )
    }
}

impl RedisFailure {
    /// The crate's error for this failure; `waited` is how long the step tried (for
    /// [`Error::Contended`]). A key of another type is [`Error::Corrupt`].
    pub(crate) fn into_error(self, waited: Duration) -> Error {
        let outcome_unknown = self.outcome_unknown();
        let path = PathBuf::from(&self.location);
        let source = self
            .source
            .map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
        match self.kind {
            FailureKind::Unreachable => Error::RedisUnreachable { path, source },
            FailureKind::Disconnected { during } => Error::RedisDisconnected {
                path,
                during: during.describe(),
                outcome_unknown,
                source,
            },
            FailureKind::Timeout { during, after } => Error::RedisTimeout {
                path,
                during: during.describe(),
                timeout: after,
                outcome_unknown,
            },
            FailureKind::Auth { detail } => Error::RedisAuth { path, detail },
            FailureKind::WrongType { found } => Error::Corrupt {
                path,
                reason: match found {
                    Some(t) => format!("the Redis key holds a {t}, not a string"),
                    None => "the Redis key holds a value of another type, not a string".into(),
                },
            },
            FailureKind::Contended { attempts } => Error::Contended {
                path,
                attempts,
                waited,
            },
            FailureKind::NotReplicated {
                wanted,
                acked,
                timeout,
            } => Error::NotReplicated {
                path,
                wanted,
                acked,
                timeout,
            },
            FailureKind::AsideTaken { aside } => Error::Redis {
                path,
                during: Phase::Recover.describe(),
                message: format!("the key cannot be moved aside: `{aside}` exists"),
                source,
            },
            FailureKind::Server { during, message } => Error::Redis {
                path,
                during: during.describe(),
                message,
                source,
            },
            FailureKind::Protocol { during, detail } => Error::Redis {
                path,
                during: during.describe(),
                message: format!("unexpected answer: {detail}"),
                source,
            },
            FailureKind::Local { detail } => Error::Redis {
                path,
                during: "starting a thread",
                message: detail,
                source,
            },
        }
    }
}

/// The kind of a `redis` crate error.
fn classify(error: &RedisError, during: Phase, timeout: Duration) -> FailureKind {
    if let Some(code) = error.code() {
        return match code {
            "WRONGTYPE" => FailureKind::WrongType { found: None },
            "NOAUTH" | "WRONGPASS" | "NOPERM" => FailureKind::Auth {
                detail: error.to_string(),
            },
            _ => FailureKind::Server {
                during,
                message: error.to_string(),
            },
        };
    }
    if error.kind() == ErrorKind::AuthenticationFailed {
        return FailureKind::Auth {
            detail: error.to_string(),
        };
    }
    if error.is_timeout() {
        return FailureKind::Timeout {
            during,
            after: timeout,
        };
    }
    if error.is_io_error() {
        return match during {
            Phase::Connect => FailureKind::Unreachable,
            _ => FailureKind::Disconnected { during },
        };
    }
    FailureKind::Protocol {
        during,
        detail: error.to_string(),
    }
}

/// A wait for messages: `300 ms` below a second, else `1.5 s`.
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

impl fmt::Display for RedisFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = &self.location;
        match &self.kind {
            FailureKind::Unreachable => write!(f, "cannot connect to Redis for semaphore `{at}`"),
            FailureKind::Disconnected { during } => write!(
                f,
                "the connection to Redis broke while {} (semaphore `{at}`)",
                during.describe()
            ),
            FailureKind::Timeout { during, after } => write!(
                f,
                "Redis did not answer within {} while {} (semaphore `{at}`)",
                seconds(*after),
                during.describe()
            ),
            FailureKind::Auth { detail } => write!(
                f,
                "Redis refused the credentials for semaphore `{at}`: {detail}"
            ),
            FailureKind::WrongType { found } => write!(
                f,
                "the Redis key of semaphore `{at}` holds {}, not a string; nothing was changed",
                match found {
                    Some(t) => format!("a {t}"),
                    None => "a value of another type".to_string(),
                }
            ),
            FailureKind::Contended { attempts } => write!(
                f,
                "semaphore `{at}` was changed by others during each of {attempts} attempts \
                 until the deadline; nothing was changed"
            ),
            FailureKind::NotReplicated {
                wanted,
                acked,
                timeout,
            } => write!(
                f,
                "the change to semaphore `{at}` is on the Redis primary, but only {acked} of \
                 {wanted} replicas acknowledged it within {}: it may be lost if the primary fails",
                seconds(*timeout)
            ),
            FailureKind::AsideTaken { aside } => write!(
                f,
                "cannot move the Redis key of semaphore `{at}` aside: `{aside}` exists; \
                 nothing was changed"
            ),
            FailureKind::Server { during, message } => write!(
                f,
                "Redis answered with an error while {} (semaphore `{at}`): {message}",
                during.describe()
            ),
            FailureKind::Protocol { during, detail } => write!(
                f,
                "unexpected answer from Redis while {} (semaphore `{at}`): {detail}",
                during.describe()
            ),
            FailureKind::Local { detail } => write!(f, "{detail} (semaphore `{at}`)"),
        }?;
        if self.outcome_unknown() {
            f.write_str("; the change may or may not have been made")?;
        }
        Ok(())
    }
}

impl std::error::Error for RedisFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    const AT: &str = "redis://:***@h:6379/0/gpus";

    fn classified(error: RedisError, during: Phase) -> FailureKind {
        RedisFailure::from_redis(AT, during, Duration::from_secs(2), error).kind
    }

    #[test]
    fn io_errors_are_unreachable_when_connecting_and_disconnected_after() {
        // A refused connect means the server cannot be reached; a reset later means a
        // broken connection, and during a commit an unknown outcome.
        let refused = || RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            classified(refused(), Phase::Connect),
            FailureKind::Unreachable
        );
        let reset = RedisFailure::from_redis(
            AT,
            Phase::Commit,
            Duration::from_secs(2),
            RedisError::from(io::Error::from(io::ErrorKind::ConnectionReset)),
        );
        assert_eq!(
            reset.kind,
            FailureKind::Disconnected {
                during: Phase::Commit
            }
        );
        assert!(reset.outcome_unknown());
        assert_eq!(
            reset.to_string(),
            "the connection to Redis broke while committing a change (semaphore \
             `redis://:***@h:6379/0/gpus`); the change may or may not have been made"
        );
        assert!(std::error::Error::source(&reset).is_some());
    }

    #[test]
    fn timeouts_name_the_phase_and_the_timeout() {
        // A timeout says how long and while doing what; a read's outcome is known.
        let timed_out = RedisError::from(io::Error::from(io::ErrorKind::WouldBlock));
        let f = RedisFailure::from_redis(AT, Phase::Read, Duration::from_millis(300), timed_out);
        assert_eq!(
            f.kind,
            FailureKind::Timeout {
                during: Phase::Read,
                after: Duration::from_millis(300)
            }
        );
        assert!(!f.outcome_unknown());
        assert_eq!(
            f.to_string(),
            "Redis did not answer within 300 ms while reading the state (semaphore \
             `redis://:***@h:6379/0/gpus`)"
        );
    }

    #[test]
    fn authentication_failures_are_their_own_kind() {
        // A refused password is not "unreachable": retrying will not help.
        let e = RedisError::from((
            ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        ));
        assert!(matches!(
            classified(e, Phase::Connect),
            FailureKind::Auth { .. }
        ));
    }

    #[test]
    fn messages_of_the_other_kinds_name_the_semaphore() {
        // Each message names the redacted location and what was (not) changed.
        let show = |kind| RedisFailure::new(AT, kind).to_string();
        assert_eq!(
            show(FailureKind::WrongType {
                found: Some("list".into())
            }),
            "the Redis key of semaphore `redis://:***@h:6379/0/gpus` holds a list, not a \
             string; nothing was changed"
        );
        assert_eq!(
            show(FailureKind::NotReplicated {
                wanted: 1,
                acked: 0,
                timeout: Duration::from_millis(100)
            }),
            "the change to semaphore `redis://:***@h:6379/0/gpus` is on the Redis primary, \
             but only 0 of 1 replicas acknowledged it within 100 ms: it may be lost if the \
             primary fails"
        );
        assert_eq!(
            show(FailureKind::Contended { attempts: 7 }),
            "semaphore `redis://:***@h:6379/0/gpus` was changed by others during each of 7 \
             attempts until the deadline; nothing was changed"
        );
        assert_eq!(
            show(FailureKind::Unreachable),
            "cannot connect to Redis for semaphore `redis://:***@h:6379/0/gpus`"
        );
    }
}
