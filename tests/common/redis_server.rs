//! A private `redis-server` for one test (or benchmark): started on 127.0.0.1 on a free port
//! with its own temporary directory, stopped (SIGTERM, then SIGKILL after a deadline) when
//! dropped. Never a system-wide instance: the server is our child process, found by its pid.
//!
//! The server runs with `--save ""` and `--appendonly no` (nothing kept) unless restarted
//! with [`RedisServer::restart_durable`] (`appendonly yes`, `appendfsync always`, same
//! directory and port). [`RedisServer::pause`] / [`RedisServer::resume`] send SIGSTOP /
//! SIGCONT; [`RedisServer::kill`] sends SIGKILL.
//!
//! When `redis-server` is not installed, [`RedisServer::start`] prints
//! `SKIPPED: redis-server not installed` and returns `None`, except under `CI=true`, where
//! it panics (`.ci/run` installs the Debian package `redis-server`).
//!
//! Used through `#[path]` by `src/store/redis/tests.rs` (and from there by the crate's other
//! unit tests of Redis), `tests/redis.rs`, `tests/redis_processes.rs` and
//! `benches/redis_floor.rs`; it needs only std, `nix` and `tempfile`.

#![allow(dead_code)] // Each user needs a different part.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a server may take to answer `PING` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A `redis-server` child process of this test.
pub struct RedisServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
    durable: bool,
    paused: bool,
}

/// The `redis-server` to run: the first one on `PATH`, or in `/usr/bin` or `/usr/sbin`.
fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

/// A TCP port on 127.0.0.1 that nobody listened on a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port on 127.0.0.1")
        .port()
}

impl RedisServer {
    /// Starts a server without a password; `None` (after printing SKIPPED) if
    /// `redis-server` is not installed and `CI` is not `true`.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(None)
    }

    /// Starts a server that requires `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> Option<RedisServer> {
        RedisServer::start_with(Some(password.to_string()))
    }

    fn start_with(password: Option<String>) -> Option<RedisServer> {
        let Some(binary) = find_binary() else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "redis-server is not installed, and CI=true requires it (.ci/run installs it)"
                );
            }
            eprintln!("SKIPPED: redis-server not installed");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("filesem-redis-")
            .tempdir()
            .expect("create a temp dir for redis-server");
        let mut server = RedisServer {
            binary,
            child: None,
            port: 0,
            dir,
            password,
            durable: false,
            paused: false,
        };
        // Another process may take the free port before the server binds it: try a few.
        for attempt in 1..=5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(why) if attempt < 5 => {
                    eprintln!("redis-server did not start ({why}); retrying")
                }
                Err(why) => panic!("redis-server did not start: {why}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Its directory (`--dir`): the append-only file and the log are there.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `redis://[:PASSWORD@]127.0.0.1:PORT/0/KEY`, with the server's password if it has one.
    pub fn url(&self, key: &str) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0/{key}", self.port),
            None => format!("redis://127.0.0.1:{}/0/{key}", self.port),
        }
    }

    /// `redis://[:PASSWORD@]127.0.0.1:PORT`, for a plain client of the `redis` crate.
    pub fn server_url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// SIGSTOP: the server stops answering, connections stay open.
    pub fn pause(&mut self) {
        self.signal(Signal::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
        self.paused = false;
    }

    /// SIGKILL, and reaps it: connections break, the port is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Kills it (if running) and starts it again on the same port and directory, with the
    /// same settings; returns once it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn()
            .unwrap_or_else(|why| panic!("redis-server did not restart: {why}"));
    }

    /// Like [`restart`](Self::restart), with `appendonly yes` and `appendfsync always` from
    /// now on: every write is in the append-only file before the server answers.
    pub fn restart_durable(&mut self) {
        self.durable = true;
        self.restart();
    }

    fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.pid()).expect("pid fits in i32");
        kill(Pid::from_raw(pid), signal)
            .unwrap_or_else(|e| panic!("send {signal} to redis-server: {e}"));
    }

    /// Starts the process and waits until it answers `PING`; on failure the process is
    /// killed and the reason (with the server's log) returned.
    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no", "--save", ""])
            .arg("--logfile")
            .arg(&log);
        if self.durable {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("exited with {status}; log:\n{log}"));
            }
            if self.answers_ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "no answer to PING within {READY_TIMEOUT:?}; log:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the server answers `PING` (after `AUTH` if it has a password) within 1 s.
    fn answers_ping(&self) -> bool {
        let Ok(stream) =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(1))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let mut request = String::new();
        if let Some(p) = &self.password {
            request.push_str(&format!("AUTH {p}\r\n"));
        }
        request.push_str("PING\r\n");
        let mut writer = &stream;
        if writer.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        if self.password.is_some() {
            if reader.read_line(&mut line).is_err() || !line.starts_with("+OK") {
                return false;
            }
            line.clear();
        }
        reader.read_line(&mut line).is_ok() && line.starts_with("+PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        if self.paused {
            let _ = kill(pid, Signal::SIGCONT);
        }
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
