//! Where a Redis semaphore lives: `redis://[:PASSWORD@|USER:PASSWORD@]HOST[:PORT][/DB]/KEY`.
//!
//! - `HOST` is a name, an IPv4 address or an IPv6 address in brackets (`[::1]`); `PORT`
//!   defaults to 6379, `DB` to 0.
//! - The path is `/DB/KEY` or `/KEY`. Its first segment is the database number when it is
//!   made of ASCII digits *and* more follows; everything after it is the key, `/` included:
//!   `redis://h/0/jobs/gpus` is key `jobs/gpus` in database 0, `redis://h/jobs/gpus` the same,
//!   `redis://h/7` is key `7` in database 0. A key whose first segment is all digits needs
//!   the database written out: `redis://h/0/2024/x` (key `2024/x`).
//! - The user name, the password and the key are percent-decoded (`%2F`, `%40`, `%25`, ...)
//!   and must be UTF-8. A literal `?` or `#` is refused (there are no query options): write
//!   `%3F` or `%23`. A user name needs a password (`USER:PASSWORD@`).
//! - `rediss://` (TLS) is refused with [`LocationProblem::TlsUnsupported`]: this build enables
//!   none of the `redis` crate's TLS features (they bring a TLS stack to every user of the
//!   feature). Reach a TLS-only server through a local tunnel (`stunnel`, `spiped`).
//!
//! The display form ([`Location`]'s `Display` and `Debug`) always shows the port and the
//! database and never the password: `redis://:***@host:6379/0/gpus`. It is what every error
//! and message shows; it parses back to the same place (with the password `***`).

use std::fmt;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// The port Redis listens on unless told otherwise.
pub(crate) const DEFAULT_PORT: u16 = 6379;

/// Bytes escaped in the display form of a user name or host: controls, space, and the
/// characters that delimit the parts of the URL. `/` too: unescaped, it would end the
/// authority there, and the display form (`FILESEM_PATH` of the CLI) would name another host.
const ESCAPE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'%')
    .add(b'?')
    .add(b'#')
    .add(b'@')
    .add(b':')
    .add(b'/');

/// The same for a key, where `/` and `:` stay as they are.
const ESCAPE_KEY: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'?').add(b'#');

/// A parsed Redis semaphore location. `Debug` and `Display` show the password as `***`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Location {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database number (`SELECT`).
    pub db: u32,
    /// ACL user name, if any (only with a password).
    pub user: Option<String>,
    /// Password, if any. Never printed.
    pub password: Option<String>,
    /// The key holding the state document.
    pub key: String,
}

/// Why a Redis location did not parse. The message shows the input with its password
/// replaced by `***`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid Redis location `{input}`: {problem}")]
pub(crate) struct LocationError {
    /// The input, password redacted.
    pub input: String,
    /// What is wrong with it.
    pub problem: LocationProblem,
}

/// What is wrong with a Redis location.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LocationProblem {
    /// Not `redis://` (nor `rediss://`).
    #[error("the scheme must be `redis://`, not `{0}://`")]
    UnsupportedScheme(String),
    /// No `scheme://` at all.
    #[error("expected `redis://[:PASSWORD@]HOST[:PORT][/DB]/KEY`")]
    NotAUrl,
    /// `rediss://`: TLS is not built in.
    #[error(
        "TLS (`rediss://`) is not supported by this build of filesem; \
         use `redis://` through a TLS tunnel such as stunnel"
    )]
    TlsUnsupported,
    /// Empty host.
    #[error("the host is missing")]
    MissingHost,
    /// Port not a number in 1..=65535.
    #[error("the port must be a number from 1 to 65535")]
    BadPort,
    /// Database number too large.
    #[error("the database number is too large")]
    BadDatabase,
    /// No key after the host (and database).
    #[error("the key is missing (`redis://HOST[:PORT][/DB]/KEY`)")]
    MissingKey,
    /// A `?` or `#` in the URL.
    #[error("query strings and fragments are not supported (escape `?` as %3F and `#` as %23)")]
    QueryOrFragment,
    /// A `%` not followed by two hex digits, or a decoded part that is not UTF-8.
    #[error("bad percent-escape or non-UTF-8 bytes in the {0}")]
    BadEscape(&'static str),
    /// A control character in the decoded key.
    #[error("the key contains a control character")]
    ControlInKey,
    /// `USER@HOST` without a password.
    #[error("a user name needs a password (`USER:PASSWORD@HOST`)")]
    UserWithoutPassword,
}

impl Location {
    /// Parses `redis://[:PASSWORD@|USER:PASSWORD@]HOST[:PORT][/DB]/KEY` (see the module
    /// docs for the rules).
    pub(crate) fn parse(input: &str) -> Result<Location, LocationError> {
        parse(input).map_err(|problem| LocationError {
            input: redact_input(input),
            problem,
        })
    }

    /// The pub/sub channel on which committed changes of this key are announced:
    /// `filesem:DB:{KEY}`. Channels are global to a server (not per database), hence the
    /// database number; the braces make the key the channel's hash tag, so that a sharded
    /// channel would live on the key's node.
    pub(crate) fn channel(&self) -> String {
        format!("filesem:{}:{{{}}}", self.db, self.key)
    }

    /// The host as written in a URL (IPv6 in brackets).
    fn url_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            utf8_percent_encode(&self.host, ESCAPE).to_string()
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        match (&self.user, &self.password) {
            (Some(user), _) => write!(f, "{}:***@", utf8_percent_encode(user, ESCAPE))?,
            (None, Some(_)) => f.write_str(":***@")?,
            (None, None) => {}
        }
        write!(
            f,
            "{}:{}/{}/{}",
            self.url_host(),
            self.port,
            self.db,
            utf8_percent_encode(&self.key, ESCAPE_KEY)
        )
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({self})")
    }
}

fn parse(input: &str) -> Result<Location, LocationProblem> {
    let (scheme, rest) = input.split_once("://").ok_or(LocationProblem::NotAUrl)?;
    match scheme.to_ascii_lowercase().as_str() {
        "redis" => {}
        "rediss" => return Err(LocationProblem::TlsUnsupported),
        _ => return Err(LocationProblem::UnsupportedScheme(scheme.to_string())),
    }
    if rest.contains(['?', '#']) {
        return Err(LocationProblem::QueryOrFragment);
    }
    let (authority, path) = rest.split_once('/').ok_or(LocationProblem::MissingKey)?;
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(userinfo) => match userinfo.split_once(':') {
            None => return Err(LocationProblem::UserWithoutPassword),
            Some((user, password)) => {
                let user = decode(user, "user name")?;
                let password = decode(password, "password")?;
                ((!user.is_empty()).then_some(user), Some(password))
            }
        },
    };
    let (host, port) = split_host_port(hostport)?;
    let (db, key) = match path.split_once('/') {
        Some((first, rest)) if !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()) => (
            first.parse().map_err(|_| LocationProblem::BadDatabase)?,
            rest,
        ),
        _ => (0, path),
    };
    let key = decode(key, "key")?;
    if key.is_empty() {
        return Err(LocationProblem::MissingKey);
    }
    if key.chars().any(char::is_control) {
        return Err(LocationProblem::ControlInKey);
    }
    Ok(Location {
        host,
        port,
        db,
        user,
        password,
        key,
    })
}

/// `HOST[:PORT]` or `[IPV6][:PORT]`.
fn split_host_port(hostport: &str) -> Result<(String, u16), LocationProblem> {
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or(LocationProblem::MissingHost)?;
        match after {
            "" => (host.to_string(), None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host.to_string(), Some(port)),
                None => return Err(LocationProblem::BadPort),
            },
        }
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (decode(host, "host")?, Some(port)),
            None => (decode(hostport, "host")?, None),
        }
    };
    if host.is_empty() {
        return Err(LocationProblem::MissingHost);
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            match port.parse::<u16>() {
                Ok(0) | Err(_) => return Err(LocationProblem::BadPort),
                Ok(port) => port,
            }
        }
        Some(_) => return Err(LocationProblem::BadPort),
    };
    Ok((host, port))
}

/// Percent-decodes one part; it must be valid escapes of UTF-8.
fn decode(part: &str, what: &'static str) -> Result<String, LocationProblem> {
    let bytes = part.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(LocationProblem::BadEscape(what));
        }
    }
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| LocationProblem::BadEscape(what))
}

/// The input with anything that may be a password replaced by `***`: from the first `:`
/// after `scheme://` to the last `@` (`redis://USER:***@HOST/KEY`). Used for inputs that did
/// not parse, so it assumes nothing about them: a password with a raw `/` or `@` is still
/// hidden, at the price of hiding more than the password in odd inputs.
pub(crate) fn redact_input(input: &str) -> String {
    let (prefix, rest) = match input.find("://") {
        Some(i) => input.split_at(i + 3),
        None => ("", input),
    };
    match (rest.find(':'), rest.rfind('@')) {
        (Some(colon), Some(at)) if colon < at => {
            format!("{prefix}{}:***{}", &rest[..colon], &rest[at..])
        }
        _ => input.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(input: &str) -> LocationProblem {
        Location::parse(input).expect_err(input).problem
    }

    #[test]
    fn a_full_location_parses_into_its_parts() {
        // Every part of the grammar lands in its field, escapes decoded.
        let l =
            Location::parse("redis://alice:s%40cret@cache.example:6380/3/jobs/gpu%20pool").unwrap();
        assert_eq!(l.host, "cache.example");
        assert_eq!(l.port, 6380);
        assert_eq!(l.db, 3);
        assert_eq!(l.user.as_deref(), Some("alice"));
        assert_eq!(l.password.as_deref(), Some("s@cret"));
        assert_eq!(l.key, "jobs/gpu pool");
    }

    #[test]
    fn port_and_database_have_defaults() {
        // `redis://HOST/KEY` means port 6379, database 0, no credentials.
        let l = Location::parse("redis://localhost/gpus").unwrap();
        assert_eq!((l.port, l.db, l.user, l.password), (6379, 0, None, None));
        assert_eq!(l.key, "gpus");
    }

    #[test]
    fn a_digit_segment_is_the_database_only_when_a_key_follows() {
        // `/7` alone is a key; `/7/x` is database 7, key x; the key keeps its slashes.
        let l = Location::parse("redis://h/7").unwrap();
        assert_eq!((l.db, l.key.as_str()), (0, "7"));
        let l = Location::parse("redis://h/7/x").unwrap();
        assert_eq!((l.db, l.key.as_str()), (7, "x"));
        let l = Location::parse("redis://h/0/2024/x").unwrap();
        assert_eq!((l.db, l.key.as_str()), (0, "2024/x"));
        let l = Location::parse("redis://h/jobs/7/x").unwrap();
        assert_eq!((l.db, l.key.as_str()), (0, "jobs/7/x"));
        assert_eq!(
            problem("redis://h/99999999999/x"),
            LocationProblem::BadDatabase
        );
    }

    #[test]
    fn ipv6_hosts_are_written_in_brackets() {
        // The brackets delimit the address; the display form puts them back.
        let l = Location::parse("redis://[::1]:7000/k").unwrap();
        assert_eq!((l.host.as_str(), l.port), ("::1", 7000));
        assert_eq!(l.to_string(), "redis://[::1]:7000/0/k");
        let l = Location::parse("redis://[fe80::2]/k").unwrap();
        assert_eq!((l.host.as_str(), l.port), ("fe80::2", 6379));
    }

    #[test]
    fn a_password_alone_or_with_a_user_is_accepted() {
        // `:PASSWORD@` (the default user) and `USER:PASSWORD@` (an ACL user).
        let l = Location::parse("redis://:pw@h/k").unwrap();
        assert_eq!((l.user, l.password.as_deref()), (None, Some("pw")));
        let l = Location::parse("redis://bob:@h/k").unwrap();
        assert_eq!(
            (l.user.as_deref(), l.password.as_deref()),
            (Some("bob"), Some(""))
        );
        assert_eq!(
            problem("redis://bob@h/k"),
            LocationProblem::UserWithoutPassword
        );
    }

    #[test]
    fn the_display_form_redacts_the_password_and_shows_every_default() {
        // Every message shows this form: no password, port and database explicit.
        let l = Location::parse("redis://:hunter2@host/gpus").unwrap();
        assert_eq!(l.to_string(), "redis://:***@host:6379/0/gpus");
        assert_eq!(format!("{l:?}"), "Location(redis://:***@host:6379/0/gpus)");
        let l = Location::parse("redis://alice:hunter2@host:1/2/a/b").unwrap();
        assert_eq!(l.to_string(), "redis://alice:***@host:1/2/a/b");
        let l = Location::parse("redis://host/a").unwrap();
        assert_eq!(l.to_string(), "redis://host:6379/0/a");
    }

    #[test]
    fn the_display_form_parses_back_to_the_same_place() {
        // Escaped characters in the key survive a round trip through the display form.
        for input in [
            "redis://h/0/a%20b%3Fc%23d%25e",
            "redis://h:1/5/x/y:z",
            "redis://h/0/7",
            "redis://h/0/%C3%A9t%C3%A9",
        ] {
            let l = Location::parse(input).unwrap();
            let again = Location::parse(&l.to_string()).unwrap();
            assert_eq!(again, l, "{input} -> {l}");
        }
    }

    #[test]
    fn a_user_or_host_with_a_slash_is_escaped_and_parses_back_to_the_same_server() {
        // An ACL user `ci/runner`: the display form must not end the authority at its `/`
        // (it would name host `ci`, and a password would go there).
        let l = Location::parse("redis://ci%2Frunner:pw@cache:6380/2/k").unwrap();
        assert_eq!(l.user.as_deref(), Some("ci/runner"));
        assert_eq!(l.to_string(), "redis://ci%2Frunner:***@cache:6380/2/k");
        let again = Location::parse(&l.to_string()).unwrap();
        assert_eq!(
            (again.user, again.host, again.port, again.db, again.key),
            (l.user, l.host, l.port, l.db, l.key)
        );
        let l = Location::parse("redis://a%2Fb/k").unwrap();
        assert_eq!(l.to_string(), "redis://a%2Fb:6379/0/k");
        assert_eq!(Location::parse(&l.to_string()).unwrap(), l);
    }

    #[test]
    fn the_channel_names_database_and_key() {
        // One channel per (database, key): channels are server-wide.
        let l = Location::parse("redis://h/3/jobs/gpus").unwrap();
        assert_eq!(l.channel(), "filesem:3:{jobs/gpus}");
    }

    #[test]
    fn bad_locations_get_the_problem_named() {
        // Each malformed part has its own problem, and nothing is guessed.
        assert_eq!(problem("rediss://h/k"), LocationProblem::TlsUnsupported);
        assert_eq!(
            problem("http://h/k"),
            LocationProblem::UnsupportedScheme("http".into())
        );
        assert_eq!(problem("h/k"), LocationProblem::NotAUrl);
        assert_eq!(problem("redis://h"), LocationProblem::MissingKey);
        assert_eq!(problem("redis://h/"), LocationProblem::MissingKey);
        assert_eq!(problem("redis://h/3/"), LocationProblem::MissingKey);
        assert_eq!(problem("redis:///k"), LocationProblem::MissingHost);
        assert_eq!(problem("redis://:pw@:6379/k"), LocationProblem::MissingHost);
        assert_eq!(problem("redis://h:0/k"), LocationProblem::BadPort);
        assert_eq!(problem("redis://h:65536/k"), LocationProblem::BadPort);
        assert_eq!(problem("redis://h:x/k"), LocationProblem::BadPort);
        assert_eq!(problem("redis://h:/k"), LocationProblem::BadPort);
        assert_eq!(problem("redis://[::1/k"), LocationProblem::MissingHost);
        assert_eq!(problem("redis://[::1]x/k"), LocationProblem::BadPort);
        assert_eq!(
            problem("redis://h/k?db=1"),
            LocationProblem::QueryOrFragment
        );
        assert_eq!(problem("redis://h/k#x"), LocationProblem::QueryOrFragment);
        assert_eq!(problem("redis://h/k%zz"), LocationProblem::BadEscape("key"));
        assert_eq!(problem("redis://h/k%ff"), LocationProblem::BadEscape("key"));
        assert_eq!(
            problem("redis://:p%4@h/k"),
            LocationProblem::BadEscape("password")
        );
        assert_eq!(problem("redis://h/a%0Ab"), LocationProblem::ControlInKey);
    }

    #[test]
    fn errors_never_show_the_password() {
        // A location that fails to parse is shown with its password replaced.
        let e = Location::parse("redis://alice:hunter2@h:99999/k").unwrap_err();
        assert_eq!(e.input, "redis://alice:***@h:99999/k");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = Location::parse("rediss://:hunter2@h/k").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid Redis location `rediss://:***@h/k`: TLS (`rediss://`) is not supported \
             by this build of filesem; use `redis://` through a TLS tunnel such as stunnel"
        );
        assert_eq!(redact_input("h:hunter2@x/k"), "h:***@x/k");
        assert_eq!(redact_input("redis://a:b:c@@h/k"), "redis://a:***@h/k");
        assert_eq!(redact_input("redis://:pa/ss@h/k"), "redis://:***@h/k");
        assert_eq!(redact_input("redis://h/k"), "redis://h/k");
        let e = Location::parse("redis://:pa/ss@h/k").unwrap_err();
        assert_eq!(e.input, "redis://:***@h/k");
        assert!(!e.to_string().contains("pa/ss"), "{e}");
    }
}
