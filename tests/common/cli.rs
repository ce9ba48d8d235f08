//! Helpers for the tests that drive the `filesem` binary (built with the `cli` feature);
//! included with `#[path]` by those tests only, since the binary exists only with the feature.

#![allow(dead_code)] // Each test file uses a different part.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long any one process or condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The variables `filesem run` gives its command; tests clear them so that a test run inside
/// a `filesem run` behaves like any other.
pub const FILESEM_VARS: [&str; 4] = [
    "FILESEM_PATH",
    "FILESEM_ID",
    "FILESEM_TOKEN",
    "FILESEM_SLOT",
];

/// A finished process and what it printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The exit code; fails the test if a signal killed the process.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }
}

/// Waits for `child` to end, at most [`DEADLINE`]; kills it (and reaps it) and fails the test
/// naming `what` if it takes longer.
pub fn wait_within_deadline(child: &mut Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The built `filesem`, with no `FILESEM_*` variables inherited from an enclosing run and no
/// stdin.
pub fn filesem() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_filesem"));
    for key in FILESEM_VARS {
        command.env_remove(key);
    }
    command.stdin(Stdio::null());
    command
}

/// Polls `condition` every few milliseconds until it holds; fails the test at the deadline.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The lines of a file a command appended to (none if it does not exist yet).
pub fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}
