//! Where a SEMFILE argument points: a state file, or a Redis key given as a URL, and the
//! options every subcommand takes to open it (`--trust-owner` for files; the Redis
//! settings for URLs).
//!
//! The rule: a SEMFILE that starts with `redis://` or `rediss://` (the scheme in any case)
//! is a Redis URL; anything else is a path. A file whose path would start like that is
//! written with a directory in front (`./redis://x`, or an absolute path).
//!
//! Passwords: a URL without a password takes it from the environment variable
//! `REDISCLI_AUTH` (as `redis-cli` does), if set. Nothing filesem prints or exports shows a
//! password: messages show `***`, and `run` exports `FILESEM_PATH` without it
//! ([`Target::exported`]), so that a command run under a hold (and every process it starts)
//! never gets the password from filesem; a nested `filesem run "$FILESEM_PATH"` reaches
//! the same semaphore with the password in `REDISCLI_AUTH`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use filesem::{OpenOptions, Recovered, Semaphore};

use crate::duration;
use crate::escape::{escape_path, shell_quote};
use crate::exit::{Exit, Fail};
use crate::trust::TrustArgs;

/// The environment variable a URL without a password takes it from.
pub const PASSWORD_VARIABLE: &str = "REDISCLI_AUTH";

/// How long `--replica-ack` waits for the replicas unless `--replica-timeout` says.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_secs(1);

/// The options of every subcommand about how to open its semaphore.
#[derive(Clone, Debug, Default, Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// The settings of a semaphore on a Redis server (SEMFILE a `redis://` URL); refused for a
/// file.
#[derive(Clone, Debug, Default, Args)]
pub struct RedisArgs {
    /// Redis URL only: how long opening a connection (connect, AUTH, SELECT) may take before
    /// filesem fails (default 2 s).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub connect_timeout: Option<Duration>,
    /// Redis URL only: how long the server may take to answer one command before filesem
    /// fails instead of hanging on a stopped or partitioned server (default 2 s).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub response_timeout: Option<Duration>,
    /// Redis URL only: after each change, wait until N replicas have it (Redis WAIT), at
    /// most --replica-timeout; an acquire they do not confirm is undone and fails (exit
    /// 125). Narrows what a failover can lose; it does not close the window.
    #[arg(long, value_name = "N")]
    pub replica_ack: Option<u32>,
    /// Redis URL only: how long --replica-ack waits for the replicas (default 1 s).
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = duration::parse,
        requires = "replica_ack"
    )]
    pub replica_timeout: Option<Duration>,
}

impl RedisArgs {
    /// The first Redis option given, as typed, for the refusal on a file.
    fn first_given(&self) -> Option<&'static str> {
        if self.connect_timeout.is_some() {
            Some("--connect-timeout")
        } else if self.response_timeout.is_some() {
            Some("--response-timeout")
        } else if self.replica_ack.is_some() {
            Some("--replica-ack")
        } else {
            None
        }
    }
}

/// What a SEMFILE argument names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A state file.
    File(PathBuf),
    /// A Redis key: the URL as given (it may hold a password; never printed).
    Redis(String),
}

impl Target {
    /// The target of `semfile`: a Redis URL if it starts with `redis://` or `rediss://`
    /// (any case), else a path.
    pub fn of(semfile: &Path) -> Target {
        match semfile.to_str() {
            Some(text) if is_url(text) => Target::Redis(text.to_string()),
            _ => Target::File(semfile.to_path_buf()),
        }
    }

    /// Whether this is a Redis URL.
    pub fn is_redis(&self) -> bool {
        matches!(self, Target::Redis(_))
    }

    /// The URL to open: as given, with the password of [`PASSWORD_VARIABLE`] added when it
    /// has none.
    fn url(&self) -> Option<String> {
        match self {
            Target::File(_) => None,
            Target::Redis(url) => Some(with_password(
                url,
                std::env::var(PASSWORD_VARIABLE).ok().as_deref(),
            )),
        }
    }

    /// Library options for this target from `args`.
    ///
    /// # Errors
    ///
    /// [`Exit::Usage`] for an option that does not apply: `--trust-owner` or `--mode` (when
    /// `mode` is given) on a Redis URL, a Redis option on a file; a path that is a Redis
    /// URL with white space in front; a Redis URL in a build without the `redis` feature.
    pub fn options(&self, args: &StoreArgs, mode: Option<u32>) -> Result<OpenOptions, Fail> {
        match self {
            Target::File(path) => {
                // ` redis://:PASSWORD@HOST/KEY` (white space picked up by quoting) would be
                // a file, whose directories would be created with the password in their
                // names, and which messages would show. Refused without echoing it.
                if path
                    .to_str()
                    .is_some_and(|text| text != text.trim_start() && is_url(text.trim_start()))
                {
                    return Err(Fail::new(
                        Exit::Usage,
                        "SEMFILE has white space in front of its redis:// URL",
                    )
                    .hint(
                        "remove the white space to name a Redis key; a state file of that \
                         name is written with ./ in front",
                    ));
                }
                if let Some(flag) = args.redis.first_given() {
                    return Err(Fail::new(
                        Exit::Usage,
                        format!("{flag} applies to a Redis URL (redis://...), not to a file"),
                    ));
                }
                let mut options = args.trust.options();
                if let Some(mode) = mode {
                    options.mode(mode);
                }
                Ok(options)
            }
            Target::Redis(_) => {
                if !args.trust.owners.is_empty() {
                    return Err(Fail::new(
                        Exit::Usage,
                        "--trust-owner applies to state files, not to a Redis URL (the \
                         server's credentials decide who may use the key)",
                    ));
                }
                if mode.is_some() {
                    return Err(Fail::new(
                        Exit::Usage,
                        "--mode applies to state files, not to a Redis URL",
                    ));
                }
                redis_options(&args.redis)
            }
        }
    }

    /// Opens an existing semaphore here with `options`.
    ///
    /// # Errors
    ///
    /// The library's errors.
    pub fn open_existing(&self, options: &OpenOptions) -> filesem::Result<Semaphore> {
        match (self, self.url()) {
            #[cfg(feature = "redis")]
            (Target::Redis(_), Some(url)) => options.open_redis_existing(&url),
            (Target::File(path), _) => options.open_existing(path),
            _ => unreachable!("Target::options refuses a Redis URL without the feature"),
        }
    }

    /// Opens the semaphore here with `options`, creating it with `capacity` slots if there is
    /// none.
    ///
    /// # Errors
    ///
    /// The library's errors.
    pub fn open(&self, options: &OpenOptions, capacity: u32) -> filesem::Result<Semaphore> {
        match (self, self.url()) {
            #[cfg(feature = "redis")]
            (Target::Redis(_), Some(url)) => options.open_redis(&url, capacity),
            (Target::File(path), _) => options.open(path, capacity),
            _ => unreachable!("Target::options refuses a Redis URL without the feature"),
        }
    }

    /// Recovers the semaphore here with `options` (see `filesem recover`).
    ///
    /// # Errors
    ///
    /// The library's errors.
    pub fn recover(&self, options: &OpenOptions, capacity: u32) -> filesem::Result<Recovered> {
        match (self, self.url()) {
            #[cfg(feature = "redis")]
            (Target::Redis(_), Some(url)) => options.recover_redis(&url, capacity),
            (Target::File(path), _) => options.recover(path, capacity),
            _ => unreachable!("Target::options refuses a Redis URL without the feature"),
        }
    }

    /// The `FILESEM_PATH` of a `run` on `sem` (opened here): the state file's resolved path,
    /// or the URL without its password ([`exported`]).
    pub fn exported(&self, sem: &Semaphore) -> PathBuf {
        match self {
            Target::File(_) => sem.resolved_path().to_path_buf(),
            Target::Redis(_) => PathBuf::from(exported(&sem.path().to_string_lossy())),
        }
    }
}

/// Library options with the Redis settings of `redis`.
#[cfg(feature = "redis")]
fn redis_options(redis: &RedisArgs) -> Result<OpenOptions, Fail> {
    let mut options = OpenOptions::new();
    if let Some(d) = redis.connect_timeout {
        options.connect_timeout(d);
    }
    if let Some(d) = redis.response_timeout {
        options.response_timeout(d);
    }
    if let Some(n) = redis.replica_ack {
        options.replica_ack(n, redis.replica_timeout.unwrap_or(DEFAULT_REPLICA_TIMEOUT));
    }
    Ok(options)
}

/// A build without the `redis` feature refuses a Redis URL, saying how to get one that
/// does not.
#[cfg(not(feature = "redis"))]
fn redis_options(_: &RedisArgs) -> Result<OpenOptions, Fail> {
    Err(
        Fail::new(Exit::Usage, "this filesem was built without Redis support").hint(
            "build it with `cargo install filesem --features cli,redis`; a state file whose \
             path starts with redis:// is written ./redis://...",
        ),
    )
}

/// Whether `text` is a Redis URL by the rule of this module.
pub fn is_url(text: &str) -> bool {
    let scheme = |s: &str| {
        text.get(..s.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(s))
    };
    scheme("redis://") || scheme("rediss://")
}

/// A location's display form (`redis://[USER:]***@HOST:PORT/DB/KEY`, see
/// `Semaphore::path`) without the password: `redis://HOST:PORT/DB/KEY`, or
/// `redis://USER@HOST:PORT/DB/KEY` with a user, which takes its password from
/// [`PASSWORD_VARIABLE`] when opened. What has no password marker is returned as it is.
pub fn exported(shown: &str) -> String {
    let Some((scheme, rest)) = shown.split_once("://") else {
        return shown.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((":***", host)) => host.to_string(),
        Some((user, host)) => match user.strip_suffix(":***") {
            Some(user) => format!("{user}@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    format!("{scheme}://{authority}{path}")
}

/// `url` with `password` (percent-encoded) in it if it has no password of its own:
/// `redis://h/k` becomes `redis://:PASSWORD@h/k`, `redis://user@h/k` becomes
/// `redis://user:PASSWORD@h/k`. A URL with a password, or no `password`, is left as it is.
fn with_password(url: &str, password: Option<&str>) -> String {
    let Some(password) = password else {
        return url.to_string();
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let encoded = percent_encode(password);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => return url.to_string(),
        Some((user, host)) => format!("{user}:{encoded}@{host}"),
        None => format!(":{encoded}@{authority}"),
    };
    format!("{scheme}://{authority}{path}")
}

/// Every byte but the unreserved characters of RFC 3986 as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `HOST` and `PORT` of a location's display form, for the hints' `redis-cli -h HOST -p
/// PORT` (an IPv6 address without its brackets).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub fn host_port(shown: &str) -> Option<(String, String)> {
    let (_, rest) = shown.split_once("://")?;
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = hostport.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.to_string()))
}

/// How messages name the semaphore `semfile` names: a path as given (escaped for the
/// terminal), a Redis URL as the library shows it (`sem_path`: password as `***`).
pub fn shown(semfile: &Path, sem_path: &Path) -> String {
    match Target::of(semfile) {
        Target::File(path) => escape_path(&path),
        Target::Redis(_) => escape_path(sem_path),
    }
}

/// How a hint's command names the semaphore `shown` (a path, or a URL as the library shows
/// it), quoted for the shell: a URL without its password ([`exported`]); [`password_note`]
/// says where the password goes.
pub fn command_arg(shown: &Path) -> String {
    let text = shown.to_string_lossy();
    if is_url(&text) {
        shell_quote(exported(&text))
    } else {
        shell_quote(shown)
    }
}

/// ` (with the password in REDISCLI_AUTH)` for a hint about the URL `shown` if it had a
/// password, else nothing.
pub fn password_note(shown: &Path) -> &'static str {
    let text = shown.to_string_lossy();
    if is_url(&text) && had_password(&text) {
        ", with the password in the environment variable REDISCLI_AUTH"
    } else {
        ""
    }
}

/// Whether a location's display form had a password.
pub fn had_password(shown: &str) -> bool {
    exported(shown) != shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_redis_scheme_makes_a_url_and_a_path_in_front_keeps_a_file() {
        // `./redis://x` and `/tmp/redis://x` are files; the scheme's case does not matter.
        let target = |s: &str| Target::of(Path::new(s));
        assert!(target("redis://h/k").is_redis());
        assert!(target("REDIS://h/k").is_redis());
        assert!(target("rediss://h/k").is_redis());
        assert_eq!(
            target("./redis://h/k"),
            Target::File(PathBuf::from("./redis://h/k"))
        );
        assert!(!target("/tmp/redis://h").is_redis());
        assert!(!target("redis:/h/k").is_redis());
        assert!(!target("sem.json").is_redis());
    }

    #[test]
    fn the_exported_form_drops_the_password_and_keeps_the_user() {
        // FILESEM_PATH never holds a password; a user stays, for REDISCLI_AUTH to complete.
        assert_eq!(exported("redis://:***@h:6379/0/k"), "redis://h:6379/0/k");
        assert_eq!(
            exported("redis://alice:***@h:6379/2/a/b"),
            "redis://alice@h:6379/2/a/b"
        );
        assert_eq!(exported("redis://h:6379/0/k"), "redis://h:6379/0/k");
        assert_eq!(
            exported("redis://:***@[::1]:6380/0/k:***@x"),
            "redis://[::1]:6380/0/k:***@x"
        );
        assert!(had_password("redis://:***@h:6379/0/k"));
        assert!(!had_password("redis://h:6379/0/k"));
    }

    #[test]
    fn a_password_from_the_environment_fills_only_a_url_without_one() {
        // REDISCLI_AUTH completes `redis://h/k` and `redis://user@h/k`, escaped; a URL's own
        // password wins.
        assert_eq!(
            with_password("redis://h:1/0/k", Some("p@ss:w/d")),
            "redis://:p%40ss%3Aw%2Fd@h:1/0/k"
        );
        assert_eq!(
            with_password("redis://alice@h/k", Some("pw")),
            "redis://alice:pw@h/k"
        );
        assert_eq!(
            with_password("redis://:own@h/k", Some("pw")),
            "redis://:own@h/k"
        );
        assert_eq!(with_password("redis://h/k", None), "redis://h/k");
    }

    #[test]
    fn host_and_port_come_from_the_display_form() {
        // The hints' redis-cli commands need them.
        assert_eq!(
            host_port("redis://:***@cache:6390/0/k"),
            Some(("cache".to_string(), "6390".to_string()))
        );
        assert_eq!(
            host_port("redis://[::1]:6379/0/k"),
            Some(("::1".to_string(), "6379".to_string()))
        );
    }
}
