//! Helpers shared by the integration tests: temp directories, directory snapshots, and
//! child processes (the test binary re-running itself in a "role") with a readiness handshake
//! over stdout and a deadline on every wait.

#![allow(dead_code)] // Each test file uses a different part.

#[path = "../../examples/common/witness.rs"]
pub mod witness;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The environment variable that tells a re-executed test binary which role to play.
pub const ROLE_VAR: &str = "FILESEM_TEST_ROLE";

/// Lines a child prints for its parent start with this, to tell them from libtest's output.
pub const MARK: &str = "@@ ";

/// The environment variable that replays a randomized test: its seed. Every randomized test
/// prints `seed=N` when it starts; `FILESEM_TEST_SEED=N cargo test --test FILE -- NAME`
/// runs it again with the same random choices (process scheduling is not replayed). In a
/// child process started with [`ChildSpec::seed`], the same variable carries the child's own
/// seed, derived from the parent's.
pub const SEED_VAR: &str = "FILESEM_TEST_SEED";

/// The seed of a randomized test (or of a child process, see [`ChildSpec::seed`]):
/// [`SEED_VAR`] if set, else a fresh one. Prints `NAME: seed=N` on stderr (shown with
/// `--nocapture`, and in the output of a failed test) and seeds this thread's `fastrand`
/// generator with it; other threads take their own seeds with [`derive_seed`].
pub fn seed(name: &str) -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={value:?} is not a number from 0 to 2^64 - 1")),
        Err(_) => fastrand::u64(..),
    };
    // One write per line, so that the lines of processes writing at once do not interleave.
    let line = match role() {
        Some(_) => format!("{name}: seed={seed}\n"),
        None => format!("{name}: seed={seed} (replay with {SEED_VAR}={seed})\n"),
    };
    eprint!("{line}");
    fastrand::seed(seed);
    seed
}

/// The seed of the `n`th thread or child process of a test seeded with `seed`: different for
/// every `n` and for nearby seeds, the same in every replay (the splitmix64 mixer).
pub fn derive_seed(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fresh directory on tmpfs (`/dev/shm`) if there is one, else in the system temp dir.
pub fn tmpfs_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new()
        .prefix("filesem-test-")
        .tempdir_in(shm);
    match builder {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().expect("create temp dir"),
    }
}

/// A fresh directory on the disk that holds the build (not tmpfs), for durable runs.
pub fn disk_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("filesem-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create temp dir on disk")
}

/// One entry of a [`snapshot`]: file bytes, a symlink's target, a directory, or another kind
/// of object (a FIFO, socket or device, which is never opened) with its mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File { bytes: Vec<u8>, mode: u32 },
    Link(PathBuf),
    Dir,
    Special { mode: u32 },
}

/// Every name in `dir` (not recursive) with its bytes and mode, to compare before and after.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("list dir") {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).expect("stat");
        let node = if meta.file_type().is_symlink() {
            Node::Link(fs::read_link(&path).expect("readlink"))
        } else if meta.is_dir() {
            Node::Dir
        } else if !meta.is_file() {
            Node::Special { mode: meta.mode() }
        } else {
            Node::File {
                bytes: fs::read(&path).expect("read"),
                mode: meta.mode() & 0o7777,
            }
        };
        out.insert(entry.file_name().to_string_lossy().into_owned(), node);
    }
    out
}

/// In a child process: the role it was started for, if any.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// In a child process: a setting passed by the parent.
pub fn arg(name: &str) -> String {
    std::env::var(format!("FILESEM_TEST_{name}"))
        .unwrap_or_else(|_| panic!("parent did not pass FILESEM_TEST_{name}"))
}

/// In a child process: tells the parent something (one line).
pub fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}{}", line.as_ref()).expect("write to parent");
    out.flush().expect("flush to parent");
}

/// In a child process: waits for one line from the parent (returns at EOF too, so a child
/// whose parent died does not wait forever).
pub fn wait_for_parent() -> String {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    line.trim().to_string()
}

/// How to start one child: the test binary, running the (ignored) test `entry` with
/// [`ROLE_VAR`] set to `role`.
pub struct ChildSpec {
    pub name: String,
    entry: String,
    role: String,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
}

impl ChildSpec {
    pub fn new(name: impl Into<String>, entry: &str, role: &str) -> ChildSpec {
        ChildSpec {
            name: name.into(),
            entry: entry.to_string(),
            role: role.to_string(),
            env: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// Passes `FILESEM_TEST_<name>=value`, read in the child with [`arg`].
    pub fn arg(mut self, name: &str, value: impl ToString) -> ChildSpec {
        self.env
            .push((format!("FILESEM_TEST_{name}"), value.to_string()));
        self
    }

    /// Gives the child its own seed, which [`seed`] reads in the child (pass
    /// [`derive_seed`]`(parent_seed, n)`).
    pub fn seed(mut self, seed: u64) -> ChildSpec {
        self.env.push((SEED_VAR.to_string(), seed.to_string()));
        self
    }

    /// Runs the child through a wrapper command (e.g. `setpriv ...`).
    pub fn via(mut self, wrapper: &[&str]) -> ChildSpec {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    fn command(&self) -> Command {
        let exe = std::env::current_exe().expect("current exe");
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.args([
            self.entry.as_str(),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(ROLE_VAR, &self.role)
        .envs(self.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        cmd
    }
}

/// What one child said and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub name: String,
    pub status: ExitStatus,
    /// Its [`say`] lines, without the mark.
    pub lines: Vec<String>,
}

impl Finished {
    /// The lines starting with `word `, with that word removed.
    pub fn lines_of(&self, word: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix(word).and_then(|r| r.strip_prefix(' ')))
            .collect()
    }
}

struct Running {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Vec<String>,
    /// Lines received but not yet consumed by [`Group::expect`].
    unread: usize,
    open: bool,
}

/// A set of child processes. Every wait has a deadline; on drop (including a panic) every
/// child still running is killed and reaped.
pub struct Group {
    children: Vec<Running>,
    rx: Receiver<(usize, Option<String>)>,
    tx: mpsc::Sender<(usize, Option<String>)>,
}

impl Default for Group {
    fn default() -> Self {
        Group::new()
    }
}

impl Group {
    pub fn new() -> Group {
        let (tx, rx) = mpsc::channel();
        Group {
            children: Vec::new(),
            rx,
            tx,
        }
    }

    /// Starts a child; returns its index.
    pub fn spawn(&mut self, spec: ChildSpec) -> usize {
        let mut child = spec
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("spawn child {}: {e}", spec.name));
        let idx = self.children.len();
        let stdout = child.stdout.take().expect("child stdout");
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(msg) = line.strip_prefix(MARK)
                    && tx.send((idx, Some(msg.to_string()))).is_err()
                {
                    return;
                }
            }
            let _ = tx.send((idx, None));
        });
        self.children.push(Running {
            name: spec.name,
            stdin: child.stdin.take(),
            child,
            lines: Vec::new(),
            unread: 0,
            open: true,
        });
        idx
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// The OS process ID of child `idx`.
    pub fn pid(&self, idx: usize) -> u32 {
        self.children[idx].child.id()
    }

    /// Receives one message before `deadline`; panics (killing every child) on timeout.
    fn pump(&mut self, deadline: Instant, waiting_for: &str) {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok((idx, Some(line))) => {
                self.children[idx].lines.push(line);
                self.children[idx].unread += 1;
            }
            Ok((idx, None)) => self.children[idx].open = false,
            Err(RecvTimeoutError::Timeout) => {
                self.kill_all();
                panic!("deadline passed waiting for {waiting_for}");
            }
            Err(RecvTimeoutError::Disconnected) => unreachable!("group holds a sender"),
        }
    }

    /// Waits until child `idx` says a line starting with `word`; returns that line. Panics if
    /// the child ends first or the deadline passes.
    pub fn expect(&mut self, idx: usize, word: &str, deadline: Instant) -> String {
        loop {
            let c = &mut self.children[idx];
            while c.unread > 0 {
                let line = c.lines[c.lines.len() - c.unread].clone();
                c.unread -= 1;
                if line == word || line.starts_with(&format!("{word} ")) {
                    return line;
                }
            }
            if !c.open {
                let name = c.name.clone();
                let lines = c.lines.clone();
                self.kill_all();
                panic!("child {name} ended before saying {word:?}; it said {lines:?}");
            }
            let what = format!("{word:?} from child {}", self.children[idx].name);
            self.pump(deadline, &what);
        }
    }

    /// Waits until every child has said `word`.
    pub fn expect_all(&mut self, word: &str, deadline: Instant) {
        for idx in 0..self.children.len() {
            self.expect(idx, word, deadline);
        }
    }

    /// Sends one line to every child's stdin.
    pub fn send_all(&mut self, line: &str) {
        for c in &mut self.children {
            if let Some(stdin) = c.stdin.as_mut() {
                let _ = writeln!(stdin, "{line}");
                let _ = stdin.flush();
            }
        }
    }

    /// Sends one line to child `idx`'s stdin.
    pub fn send(&mut self, idx: usize, line: &str) {
        if let Some(stdin) = self.children[idx].stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// Sends SIGKILL to child `idx` and reaps it (within `deadline`).
    pub fn kill(&mut self, idx: usize, deadline: Instant) -> ExitStatus {
        let _ = self.children[idx].child.kill();
        self.reap(idx, deadline)
    }

    fn reap(&mut self, idx: usize, deadline: Instant) -> ExitStatus {
        loop {
            match self.children[idx].child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    let name = self.children[idx].name.clone();
                    self.kill_all();
                    panic!("deadline passed waiting for child {name} to exit");
                }
                Err(e) => panic!("wait for child: {e}"),
            }
        }
    }

    /// Closes every stdin, reads everything the children say and waits for them to exit,
    /// all before `deadline`.
    pub fn finish(mut self, deadline: Instant) -> Vec<Finished> {
        for c in &mut self.children {
            c.stdin = None;
        }
        while self.children.iter().any(|c| c.open) {
            self.pump(deadline, "children to finish");
        }
        let mut out = Vec::new();
        for idx in 0..self.children.len() {
            let status = self.reap(idx, deadline);
            let c = &self.children[idx];
            out.push(Finished {
                name: c.name.clone(),
                status,
                lines: c.lines.clone(),
            });
        }
        self.children.clear();
        out
    }

    fn kill_all(&mut self) {
        for c in &mut self.children {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A deadline `secs` seconds from now.
pub fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// Whether this process may start children as other users (root, and `setpriv` works: tried
/// with a throwaway uid); prints `SKIPPED` with the reason if not.
pub fn can_switch_users(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: {test} needs root to start processes as throwaway users");
        return false;
    }
    let works = Command::new("setpriv")
        .args(["--reuid=61999", "--regid=61999", "--clear-groups", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        println!("SKIPPED: {test}: setpriv cannot switch users here");
        return false;
    }
    // The children run this test binary (or the built CLI beside it) as those users: a
    // checkout under a private directory (`mktemp -d` makes 0700 ones) keeps them out.
    let exe = std::env::current_exe().unwrap();
    let reachable = Command::new("setpriv")
        .args([
            "--reuid=61999",
            "--regid=61999",
            "--clear-groups",
            "test",
            "-x",
        ])
        .arg(&exe)
        .status()
        .is_ok_and(|s| s.success());
    if !reachable {
        println!(
            "SKIPPED: {test}: other users cannot run {} (a parent directory is private); \
             run the tests from a checkout others may traverse",
            exe.display()
        );
    }
    reachable
}

/// Stops process `pid` with SIGSTOP and waits until the kernel shows it stopped (`T` in
/// `/proc/PID/stat`): the signal is delivered asynchronously, so without the wait the process
/// may still run a step (and take a lock) after `kill` returned.
#[allow(dead_code)]
pub fn stop_process(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    wait_until(deadline(30), "the process to stop", || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('T')))
            .unwrap_or(false)
    });
}

/// Polls `done` every few milliseconds until it returns true; panics naming `what` if
/// `deadline` passes first. For conditions no child announces (a process becoming a zombie,
/// a background thread noticing something), so that such a wait cannot hang.
pub fn wait_until(deadline: Instant, what: &str, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(
            Instant::now() < deadline,
            "deadline passed waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One entry of a state file as [`entries_on_file`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnFile {
    pub id: String,
    /// The fencing token (`None` for a waiter).
    pub token: Option<u64>,
    /// The number a waiter took when it queued, kept once it is granted (`None` for a hold
    /// granted directly). Not in the public API: tests read it to find a waiter's entry and
    /// its witness file `PATH.witness/<ticket>`.
    pub ticket: Option<u64>,
}

/// The entries of `list` (`"holders"` or `"waiters"`) in the state file at `path`, read as
/// plain JSON, in file order.
pub fn entries_on_file(path: &Path, list: &str) -> Vec<OnFile> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let doc: serde_json::Value = serde_json::from_slice(&bytes).expect("state file is JSON");
    doc[list]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|e| OnFile {
            id: e["id"].as_str().expect("an entry has an ID").to_string(),
            token: e["token"].as_u64(),
            ticket: e["ticket"].as_u64(),
        })
        .collect()
}

/// The entry of `id` in `list` of the state file at `path`; panics if it is not there.
pub fn entry_on_file(path: &Path, list: &str, id: &str) -> OnFile {
    entries_on_file(path, list)
        .into_iter()
        .find(|e| e.id == id)
        .unwrap_or_else(|| panic!("{id} is not among the {list} of {}", path.display()))
}
