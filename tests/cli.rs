//! The `filesem` binary, driven as a shell user would: exit codes, `run`'s pass-through of
//! exit codes and signals, `status --json`, holds across invocations, concurrency, nesting,
//! recovery. Every process started here has a deadline and is killed when it runs out.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[path = "common/cli.rs"]
mod cli_common;
use cli_common::{DEADLINE, Finished, filesem, lines, wait_until, wait_within_deadline};

/// A process started in the background, killed if the test ends before it does.
struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    fn start(command: &mut Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start filesem");
        let stdout = lines_of(child.stdout.take().expect("stdout"));
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The next line the process prints on stdout, within the deadline.
    fn line(&self) -> String {
        self.stdout
            .recv_timeout(DEADLINE)
            .expect("a line on stdout before the deadline")
    }

    /// The next line the process prints on stderr, within the deadline.
    fn error_line(&self) -> String {
        self.stderr
            .recv_timeout(DEADLINE)
            .expect("a line on stderr before the deadline")
    }

    /// Waits for the end (killing the process at the deadline) and collects its output.
    fn finish(mut self) -> Finished {
        let start = Instant::now();
        let status = wait_within_deadline(&mut self.child, "the process");
        // The rest of the output, up to end-of-file (the pipes close when the process and
        // anything it started are gone).
        let rest = |lines: &mpsc::Receiver<String>| {
            let mut all = Vec::new();
            loop {
                match lines.recv_timeout(DEADLINE.saturating_sub(start.elapsed())) {
                    Ok(line) => all.push(line),
                    Err(mpsc::RecvTimeoutError::Disconnected) => break all.join("\n"),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        panic!("output still open at the deadline")
                    }
                }
            }
        };
        Finished {
            status,
            stdout: rest(&self.stdout),
            stderr: rest(&self.stderr),
        }
    }
}

/// The lines read from `pipe` by a thread of their own, until end-of-file.
fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to its end (at most [`DEADLINE`]).
fn finish(command: &mut Command) -> Finished {
    Running::start(command).finish()
}

/// A shell loop that runs until `stop` exists, or its directory is gone (so that a command
/// outliving a failed test does not loop forever).
fn until_stop(stop: &Path) -> String {
    let dir = stop.parent().expect("stop file in a directory");
    format!(
        "while [ ! -e {} ] && [ -d {} ]; do sleep 0.02; done",
        stop.display(),
        dir.display()
    )
}

/// Waits until process `pid` (not our child) has exited: gone, or a zombie not yet reaped by
/// its new parent.
fn wait_for_exit(pid: Pid) {
    wait_until(
        &format!("process {pid} exited"),
        || match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        },
    );
}

fn sem_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("sem.json")
}

/// Takes a detached hold (via the CLI) so that the semaphore is full.
fn hold(path: &Path, id: &str, capacity: u32) {
    let out = finish(
        filesem()
            .args(["acquire", "-n", "-q", "-c"])
            .arg(capacity.to_string())
            .arg(path)
            .args(["--id", id]),
    );
    assert_eq!(out.code(), 0, "{out:?}");
}

fn status_json(path: &Path) -> serde_json::Value {
    let out = finish(filesem().args(["status", "--json"]).arg(path));
    assert_eq!(out.code(), 0, "{out:?}");
    serde_json::from_str(&out.stdout).expect("status --json parses")
}

#[test]
fn run_passes_the_command_exit_code_through() {
    // `filesem run` must be transparent to scripts that check the command's status.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    for code in [0, 3, 42, 255] {
        let out = finish(filesem().arg("run").arg(&path).args([
            "--",
            "sh",
            "-c",
            &format!("exit {code}"),
        ]));
        assert_eq!(out.code(), code, "{out:?}");
    }
    assert_eq!(
        status_json(&path)["count"],
        0,
        "the slot is released after each run"
    );
}

#[test]
fn run_reports_128_plus_the_signal_that_killed_the_command() {
    // As shells report it: a command killed by SIGTERM makes `filesem run` exit 143.
    let dir = tempfile::tempdir().unwrap();
    let out = finish(filesem().arg("run").arg(sem_path(&dir)).args([
        "sh",
        "-c",
        "kill -TERM $$; sleep 5",
    ]));
    assert_eq!(out.code(), 128 + 15, "{out:?}");
    let out = finish(
        filesem()
            .arg("run")
            .arg(sem_path(&dir))
            .args(["sh", "-c", "kill -KILL $$"]),
    );
    assert_eq!(out.code(), 128 + 9, "{out:?}");
}

#[test]
fn run_exits_127_for_a_missing_command_and_126_for_one_that_cannot_run() {
    // The codes of coreutils `env` and `timeout`, and the slot is not kept.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let out = finish(
        filesem()
            .arg("run")
            .arg(&path)
            .arg("no-such-command-filesem-test"),
    );
    assert_eq!(out.code(), 127, "{out:?}");
    assert!(
        out.stderr
            .contains("cannot run `no-such-command-filesem-test`"),
        "{}",
        out.stderr
    );
    let script = dir.path().join("not-executable.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let out = finish(filesem().arg("run").arg(&path).arg(&script));
    assert_eq!(out.code(), 126, "{out:?}");
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "printed once: {}",
        out.stderr
    );
    assert_eq!(status_json(&path)["count"], 0);
}

#[test]
fn no_slot_exits_1_or_the_conflict_code_and_q_silences_it() {
    // `-n` on a full semaphore: exit 1 (or -E CODE) and nothing runs, as `flock -n`.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    hold(&path, "blocker", 1);
    let marker = dir.path().join("ran");
    let out = finish(
        filesem()
            .args(["run", "-n"])
            .arg(&path)
            .args(["touch"])
            .arg(&marker),
    );
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr.contains("no available capacity"),
        "{}",
        out.stderr
    );
    assert!(!marker.exists(), "the command must not run without a slot");
    let out = finish(
        filesem()
            .args(["run", "-n", "-E", "75"])
            .arg(&path)
            .arg("true"),
    );
    assert_eq!(out.code(), 75, "{out:?}");
    let out = finish(
        filesem()
            .args(["acquire", "-n", "-q"])
            .arg(&path)
            .args(["--id", "other"]),
    );
    assert_eq!(out.code(), 1, "{out:?}");
    assert_eq!(out.stderr, "", "-q prints nothing for contention");
}

#[test]
fn run_timeout_gives_up_with_exit_1_no_earlier_than_the_timeout() {
    // `-w` bounds the wait for a slot; the promise is "not before the time given".
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    hold(&path, "blocker", 1);
    for timeout in ["0.3", "300ms"] {
        let start = Instant::now();
        let out = finish(
            filesem()
                .args(["run", "-w", timeout])
                .arg(&path)
                .arg("true"),
        );
        assert!(start.elapsed() >= Duration::from_millis(300), "{timeout}");
        assert_eq!(out.code(), 1, "{out:?}");
        // In a unit people read (`timed out after 300 ms`), not Debug's `300.4121ms`.
        assert!(
            out.stderr.contains("timed out after ") && out.stderr.contains(" ms waiting"),
            "{}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("waiting for a slot on"),
            "no note without a terminal"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    // Mistyped command lines never run anything and are told apart from contention.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir).display().to_string();
    for args in [
        vec!["run", &path],
        vec!["run", "-n", "-w", "1", &path, "true"],
        vec!["run", "-w", "1x", &path, "true"],
        vec!["run", "-c", "0", &path, "true"],
        vec!["acquire", &path],
        vec!["recover", &path],
        vec!["frobnicate"],
    ] {
        let out = finish(filesem().args(&args));
        assert_eq!(out.code(), 2, "{args:?}: {out:?}");
    }
    assert!(!Path::new(&path).exists(), "usage errors create nothing");
    let out = finish(filesem().args(["run", "--id", "bad\nid", &path, "true"]));
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("invalid holder ID"), "{}", out.stderr);
}

#[test]
fn an_invalid_id_is_shown_escaped_once() {
    // The ID is quoted with its escapes once (`"bad\tid"`, not `"bad\\tid"`), and no raw
    // control character reaches the terminal.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let out = finish(
        filesem()
            .args(["acquire"])
            .arg(&path)
            .args(["--id", "bad\tid\u{1b}[2J"]),
    );
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr
            .contains(r#"invalid holder ID "bad\tid\u{1b}[2J" for semaphore"#),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains('\t') && !out.stderr.contains('\u{1b}'));
}

#[test]
fn a_capacity_out_of_range_is_told_the_real_range() {
    // `-c 0` and `set-capacity F 0` name 1..=MAX_CAPACITY, not u32's range.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir).display().to_string();
    let range = format!("1..={}", filesem::MAX_CAPACITY);
    for args in [
        vec!["run", "-c", "0", &path, "true"],
        vec!["set-capacity", &path, "0"],
        vec!["recover", &path, "-c", "1000001"],
    ] {
        let out = finish(filesem().args(&args));
        assert_eq!(out.code(), 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(&range), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("4294967295"), "{}", out.stderr);
    }
}

#[test]
fn acquire_help_describes_its_own_lease_and_says_each_default_once() {
    // `acquire`'s lease is not renewed by anyone, unlike `run`'s; help must not claim it is,
    // and must not print a default twice.
    let help = |sub: &str| {
        let out = finish(filesem().args([sub, "--help"]));
        assert_eq!(out.code(), 0, "{out:?}");
        out.stdout
    };
    let (acquire, run) = (help("acquire"), help("run"));
    assert!(!acquire.contains("`run` renews"), "{acquire}");
    assert!(
        acquire.contains("nothing renews a detached hold's lease"),
        "{acquire}"
    );
    assert!(run.contains("`run` renews it in the background"), "{run}");
    for text in [&acquire, &run] {
        assert!(!text.contains("(default 1)"), "{text}");
        assert_eq!(text.matches("[default: 1]").count(), 1, "{text}");
    }
}

#[test]
fn corrupt_state_exits_125_naming_the_path_once_with_a_hint() {
    // filesem's own failures are 125, distinct from the command's codes and from contention.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    fs::write(&path, "{\"capacity\": 2, \"hold").unwrap();
    for args in [vec!["run"], vec!["status"], vec!["acquire", "--id", "x"]] {
        let mut command = filesem();
        command.args(&args).arg(&path);
        if args[0] == "run" {
            command.arg("true");
        }
        let out = finish(&mut command);
        assert_eq!(out.code(), 125, "{args:?}: {out:?}");
        let first = out.stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains("is corrupt") && first.contains(&path.display().to_string()),
            "{}",
            out.stderr
        );
        assert_eq!(out.stderr.matches("is corrupt").count(), 1, "printed once");
        assert!(out.stderr.contains("filesem recover"), "{}", out.stderr);
    }
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "{\"capacity\": 2, \"hold"
    );
}

#[test]
fn capacity_mismatch_exits_2_and_says_how_to_change_the_capacity() {
    // -c must match an existing semaphore; the message names set-capacity.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    assert_eq!(
        finish(filesem().args(["run", "-c", "3"]).arg(&path).arg("true")).code(),
        0
    );
    let out = finish(filesem().args(["run", "-c", "2"]).arg(&path).arg("true"));
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr.contains("has capacity 3, not the 2"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("filesem set-capacity {} 2", path.display())),
        "{}",
        out.stderr
    );
    let out = finish(filesem().arg("run").arg(&path).arg("true"));
    assert_eq!(
        out.code(),
        0,
        "without -c the capacity on file is used: {out:?}"
    );
}

#[test]
fn creating_a_semaphore_says_so_and_defaults_to_capacity_1() {
    // A mistyped path must not silently make a second semaphore.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let out = finish(filesem().arg("run").arg(&path).arg("true"));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        out.stderr.contains("created a new semaphore") && out.stderr.contains("capacity 1"),
        "{}",
        out.stderr
    );
    assert_eq!(status_json(&path)["capacity"], 1);
    let out = finish(filesem().arg("run").arg(&path).arg("true"));
    assert_eq!(out.stderr, "", "nothing to say when it exists");
    let out = finish(
        filesem()
            .args(["run", "-q", "-c", "4"])
            .arg(dir.path().join("quiet.json"))
            .arg("true"),
    );
    assert_eq!(out.stderr, "", "-q silences the note");
}

#[test]
fn run_gives_the_command_its_hold_in_the_environment() {
    // FILESEM_PATH/ID/TOKEN/SLOT name the hold the command runs under, as status shows it.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    hold(&path, "first", 2);
    let out = finish(
        filesem()
            .args(["run", "--id", "job-7"])
            .arg(&path)
            .args(["sh", "-c", "echo $FILESEM_PATH; echo $FILESEM_ID; echo $FILESEM_TOKEN; echo $FILESEM_SLOT; filesem_status=1"]),
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let values: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        values[0],
        fs::canonicalize(&path).unwrap().display().to_string()
    );
    assert_eq!(values[1], "job-7");
    let first_token = status_json(&path)["holders"][0]["token"].as_u64().unwrap();
    assert!(
        values[2].parse::<u64>().unwrap() > first_token,
        "tokens increase"
    );
    assert_eq!(values[3], "1", "slot 0 is taken by `first`");
    let out = finish(
        filesem()
            .arg("run")
            .arg(&path)
            .args(["sh", "-c", "echo $FILESEM_ID"]),
    );
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert!(
        out.stdout.starts_with(&format!("run-{host}-")),
        "default ID: {}",
        out.stdout
    );
}

#[test]
fn acquire_and_release_work_across_invocations() {
    // The seed's session use: one invocation takes the hold, a later one ends it.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let out = finish(
        filesem()
            .args([
                "acquire",
                "-c",
                "1",
                "--meta",
                "user=alice",
                "--lease",
                "1h",
            ])
            .arg(&path)
            .args(["--id", "session-1"]),
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let status = status_json(&path);
    assert_eq!(status["count"], 1);
    assert_eq!(status["holders"][0]["id"], "session-1");
    assert_eq!(status["holders"][0]["mode"], "detached");
    assert_eq!(status["holders"][0]["metadata"]["user"], "alice");
    let expires = status["holders"][0]["expires_at"]
        .as_str()
        .expect("a lease");
    let expires = chrono::DateTime::parse_from_rfc3339(expires).unwrap();
    assert!(
        expires > chrono::Utc::now() + chrono::Duration::minutes(59),
        "{expires}"
    );
    assert_eq!(
        finish(filesem().args(["run", "-n"]).arg(&path).arg("true")).code(),
        1,
        "held by the session"
    );
    let out = finish(filesem().arg("release").arg(&path).arg("session-1"));
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        finish(filesem().args(["run", "-n"]).arg(&path).arg("true")).code(),
        0
    );
    let out = finish(filesem().arg("release").arg(&path).arg("session-1"));
    assert_eq!(
        out.code(),
        1,
        "release of an ID that holds nothing: {out:?}"
    );
    assert!(out.stderr.contains("does not hold"), "{}", out.stderr);
}

#[test]
fn status_of_a_lease_in_its_grace_says_when_it_is_reaped_in_one_time_format() {
    // Just past its end, a lease is still within LEASE_GRACE: status must not say "expired"
    // on one line and "runs until" on the next, and every time stamp has the same form.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let out = finish(
        filesem()
            .args(["acquire", "-q", "--lease", "1s"])
            .arg(&path)
            .args(["--id", "session"]),
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let mut text = String::new();
    wait_until("status shows the lease ended", || {
        text = finish(filesem().arg("status").arg(&path)).stdout;
        text.contains("lease expired")
    });
    let verdict = text.lines().last().unwrap_or_default().trim_start();
    if verdict.starts_with("unknown") {
        // Within the grace (the usual case: status ran within 2 s).
        let grace = format!(
            "reaped after the {} s grace",
            filesem::LEASE_GRACE.as_secs()
        );
        assert!(text.contains(&grace), "{text}");
        assert!(!text.contains("runs until"), "{text}");
    } else {
        // The machine was slow enough for the grace to pass: then it is simply expired.
        assert!(verdict.starts_with("expired: lease expired at"), "{text}");
        assert!(!text.contains("grace"), "{text}");
    }
    assert!(!text.contains("+00:00"), "one time format: {text}");
    assert!(text.matches("Z)").count() >= 2, "{text}");
}

#[test]
fn status_json_has_the_documented_fields() {
    // The JSON schema in docs/cli.md is an interface: every documented field, with its type.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    hold(&path, "worker-1", 3);
    let status = status_json(&path);
    assert_eq!(status["schema"], 1);
    assert_eq!(status["path"], path.display().to_string());
    assert_eq!(status["path_escaped"], false);
    assert_eq!(status["capacity"], 3);
    assert_eq!(status["count"], 1);
    assert_eq!(status["available"], 2);
    let holders = status["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 1);
    let h = &holders[0];
    let mut keys: Vec<&str> = h.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "acquired_at",
            "age_seconds",
            "evidence",
            "expires_at",
            "id",
            "liveness",
            "metadata",
            "mode",
            "owner",
            "priority",
            "slot",
            "token"
        ]
    );
    assert_eq!(h["id"], "worker-1");
    assert_eq!(h["slot"], 0);
    assert!(h["token"].is_u64());
    assert!(chrono::DateTime::parse_from_rfc3339(h["acquired_at"].as_str().unwrap()).is_ok());
    assert!(h["age_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(h["mode"], "detached");
    assert!(h["owner"].is_null() || h["owner"]["pid"].is_u64());
    assert!(h["expires_at"].is_null());
    assert!(h["metadata"].is_object());
    assert_eq!(h["priority"], 0);
    assert_eq!(status["waiters"].as_array().unwrap().len(), 0);
    assert!(["alive", "dead", "expired", "unknown"].contains(&h["liveness"].as_str().unwrap()));
    assert!(!h["evidence"].as_str().unwrap().is_empty());
}

#[test]
fn status_escapes_control_characters_in_ids() {
    // An ID written by another program must not reach the terminal raw (Go allows any ID).
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    fs::write(
        &path,
        r#"{"capacity": 2, "holders": [{"id": "evil\u001b[2J\nid", "acquired_at": "2024-01-01T10:00:00+02:00"}]}"#,
    )
    .unwrap();
    let out = finish(filesem().arg("status").arg(&path));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("evil\\u{1b}[2J\\nid"), "{}", out.stdout);
    assert!(!out.stdout.contains('\u{1b}'));
    assert!(
        out.stdout.contains("capacity 2, 1 held, 1 available"),
        "{}",
        out.stdout
    );
    assert_eq!(
        status_json(&path)["holders"][0]["id"],
        "evil\u{1b}[2J\nid",
        "JSON keeps the ID exact"
    );
    let out = finish(filesem().arg("remove").arg(&path).arg("evil\u{1b}[2J\nid"));
    assert_eq!(out.stdout, "removed evil\\u{1b}[2J\\nid", "{out:?}");
}

#[test]
fn remove_prints_the_removed_ids_and_is_idempotent() {
    // Cleanup by ID after a crash; running it twice is harmless.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    hold(&path, "a", 3);
    hold(&path, "b", 3);
    let out = finish(
        filesem()
            .arg("remove")
            .arg(&path)
            .args(["a", "nobody", "b"]),
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "removed a\nremoved b");
    let out = finish(filesem().arg("remove").arg(&path).args(["a"]));
    assert_eq!((out.code(), out.stdout.as_str()), (0, ""));
    assert_eq!(status_json(&path)["count"], 0);
}

#[test]
fn set_capacity_changes_what_run_can_take() {
    // More slots let a waiting user in; the change is on file for everyone.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    hold(&path, "a", 1);
    assert_eq!(
        finish(filesem().args(["run", "-n"]).arg(&path).arg("true")).code(),
        1
    );
    let out = finish(filesem().arg("set-capacity").arg(&path).arg("2"));
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(status_json(&path)["capacity"], 2);
    assert_eq!(
        finish(filesem().args(["run", "-n"]).arg(&path).arg("true")).code(),
        0
    );
    assert_eq!(
        finish(filesem().arg("set-capacity").arg(&path).arg("0")).code(),
        2
    );
    assert_eq!(
        finish(
            filesem()
                .arg("set-capacity")
                .arg(dir.path().join("none.json"))
                .arg("2")
        )
        .code(),
        125
    );
}

#[test]
fn recover_moves_a_corrupt_file_aside_and_starts_afresh() {
    // The explicit way out of a corrupt state file; the bad bytes are kept for inspection.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    fs::write(&path, "not json").unwrap();
    assert_eq!(
        finish(filesem().arg("run").arg(&path).arg("true")).code(),
        125
    );
    let out = finish(filesem().args(["recover", "-c", "2"]).arg(&path));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        out.stdout.starts_with("moved the corrupt state to "),
        "{}",
        out.stdout
    );
    let aside: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("sem.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        fs::read_to_string(dir.path().join(&aside[0])).unwrap(),
        "not json"
    );
    assert_eq!(status_json(&path)["capacity"], 2);
    assert_eq!(
        finish(filesem().arg("run").arg(&path).arg("true")).code(),
        0
    );
    let out = finish(filesem().args(["recover", "-c", "2"]).arg(&path));
    assert!(out.stdout.ends_with("is valid; nothing changed"), "{out:?}");
    assert_eq!(out.stderr, "", "same capacity: no hint");
}

#[test]
fn recover_of_a_valid_file_with_another_capacity_points_to_set_capacity() {
    // `recover -c 9` never changes a valid file, so it must not look as if the capacity
    // changed: exit 0 (nothing to recover), and a hint with the command that does it.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    hold(&path, "a", 4);
    let out = finish(filesem().args(["recover", "-c", "9"]).arg(&path));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.ends_with("is valid; nothing changed"), "{out:?}");
    let expected = format!(
        "filesem: hint: its capacity stays 4, not the 9 given with -c; \
         `filesem set-capacity {} 9` changes it",
        path.display()
    );
    assert_eq!(out.stderr, expected);
    assert_eq!(status_json(&path)["capacity"], 4);
}

#[test]
fn reap_says_when_there_was_nothing_to_reap_unless_quiet() {
    // An empty answer is explicit on stderr; stdout stays the list of what was reaped, and
    // -q keeps a cron job silent.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    hold(&path, "alive-session", 2);
    let out = finish(filesem().arg("reap").arg(&path));
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.starts_with("filesem: nothing to reap in "),
        "{}",
        out.stderr
    );
    let out = finish(filesem().args(["reap", "-q"]).arg(&path));
    assert_eq!(
        (out.code(), out.stdout.as_str(), out.stderr.as_str()),
        (0, "", "")
    );
    assert_eq!(status_json(&path)["count"], 1, "nothing alive was touched");
}

/// A command that logs each SIGINT/SIGTERM/SIGHUP/SIGUSR1 it gets to `log`, runs `ready`
/// once its traps are set, and runs until `stop` exists.
fn trapping_script(log: &Path, stop: &Path, ready: &str) -> String {
    format!(
        "for s in INT TERM HUP USR1; do trap \"echo $s >> {}\" $s; done; {ready}; {}",
        log.display(),
        until_stop(stop)
    )
}

#[test]
fn signals_sent_to_run_reach_the_command_once() {
    // kill(filesem run) is forwarded exactly once, and run outlives a signal the command handles.
    let dir = tempfile::tempdir().unwrap();
    let (log, stop) = (dir.path().join("log"), dir.path().join("stop"));
    let running = Running::start(filesem().arg("run").arg(sem_path(&dir)).args([
        "sh",
        "-c",
        &trapping_script(&log, &stop, "echo ready"),
    ]));
    assert_eq!(running.line(), "ready");
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        kill(running.pid(), signal).unwrap();
        let name = &signal.as_str()[3..];
        wait_until(&format!("the command logged {name}"), || {
            lines(&log).iter().any(|l| l == name)
        });
    }
    // A last signal as a marker: once it is logged, every earlier one has been forwarded.
    kill(running.pid(), Signal::SIGUSR1).unwrap();
    wait_until("the command logged USR1", || {
        lines(&log).contains(&"USR1".to_string())
    });
    fs::write(&stop, "").unwrap();
    let out = running.finish();
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        lines(&log),
        ["TERM", "INT", "HUP", "USR1"],
        "each signal once, in order"
    );
}

#[test]
fn a_terminal_ctrl_c_reaches_the_command_once() {
    // The terminal sends SIGINT to the whole foreground group: run must not forward a second.
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let dir = tempfile::tempdir().unwrap();
    let (log, stop) = (dir.path().join("log"), dir.path().join("stop"));
    let pty = nix::pty::openpty(None, None).expect("openpty");
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
    }
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    // `setsid -c` makes the pty the controlling terminal of a new session led by filesem.
    let mut child = Command::new("setsid")
        .arg("-c")
        .arg(env!("CARGO_BIN_EXE_filesem"))
        .arg("run")
        .arg(sem_path(&dir))
        .args(["sh", "-c", &trapping_script(&log, &stop, "touch ready")])
        .current_dir(dir.path())
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave))
        .spawn()
        .expect("setsid");
    drop(pty.slave);
    let mut master = fs::File::from(pty.master);
    thread::spawn({
        let mut master = master.try_clone().unwrap();
        move || {
            let mut sink = Vec::new();
            let _ = master.read_to_end(&mut sink);
        }
    });
    wait_until("the command is ready", || dir.path().join("ready").exists());
    std::io::Write::write_all(&mut master, b"\x03").unwrap(); // Ctrl-C
    wait_until("the command logged INT", || {
        lines(&log).contains(&"INT".to_string())
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGUSR1).unwrap();
    wait_until("the command logged USR1", || {
        lines(&log).contains(&"USR1".to_string())
    });
    fs::write(&stop, "").unwrap();
    let status = wait_within_deadline(&mut child, "filesem run");
    assert_eq!(
        status.code(),
        Some(0),
        "filesem survived the Ctrl-C its command handled"
    );
    assert_eq!(
        lines(&log),
        ["INT", "USR1"],
        "one SIGINT, from the terminal only"
    );
}

#[test]
fn a_signal_while_waiting_ends_run_by_that_signal_and_leaves_the_queue() {
    // Interrupting a wait leaves no trace in the semaphore and reports the signal to the shell.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    hold(&path, "blocker", 1);
    let marker = dir.path().join("ran");
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let running = Running::start(
            filesem()
                .args(["run", "-w", "60", "--id", "waiter"])
                .arg(&path)
                .arg("touch")
                .arg(&marker),
        );
        wait_until("the run is queued", || {
            status_json(&path)["waiters"][0]["id"] == "waiter"
        });
        kill(running.pid(), signal).unwrap();
        let out = running.finish();
        assert_eq!(out.status.signal(), Some(signal as i32), "{out:?}");
        assert!(!marker.exists());
        let status = status_json(&path);
        assert_eq!(status["waiters"].as_array().unwrap().len(), 0, "{status}");
        assert_eq!(status["count"], 1);
        assert_eq!(status["holders"][0]["id"], "blocker");
    }
}

#[test]
fn waiting_runs_are_served_by_priority_then_arrival_and_status_shows_the_queue() {
    // The queue is visible (`status`) and fair: higher priority first, then first come; a
    // waiter shows no fencing token (it gets one when served), and the tokens the commands
    // get rise in the order they are served.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let log = dir.path().join("order");
    hold(&path, "blocker", 1);
    let mut runs = Vec::new();
    for (id, priority) in [("first", "0"), ("second", "0"), ("urgent", "5")] {
        runs.push(Running::start(
            filesem()
                .args(["run", "--id", id, "--priority", priority])
                .arg(&path)
                .args([
                    "sh",
                    "-c",
                    &format!("echo {id} $FILESEM_TOKEN >> {}", log.display()),
                ]),
        ));
        wait_until(&format!("{id} is queued"), || {
            status_json(&path)["waiters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["id"] == id)
        });
    }
    let status = status_json(&path);
    let queue: Vec<(&str, i64)> = status["waiters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["id"].as_str().unwrap(), w["priority"].as_i64().unwrap()))
        .collect();
    assert_eq!(queue, [("urgent", 5), ("first", 0), ("second", 0)]);
    let waiters = status["waiters"].as_array().unwrap();
    assert!(waiters.iter().all(|w| w["token"].is_null()), "{status}");
    let blocker_token = status["holders"][0]["token"].as_u64().unwrap();
    let text = finish(filesem().arg("status").arg(&path)).stdout;
    assert!(text.contains("1 held, 0 available, 3 waiting"), "{text}");
    let (held, waiting) = text.split_once("waiting, in the order").unwrap();
    assert!(
        held.contains(&format!("token {blocker_token}, held for")),
        "{text}"
    );
    assert!(!waiting.contains("token"), "{text}");
    assert!(text.contains("\n1. urgent (priority 5)\n"), "{text}");
    assert!(text.contains("\n3. second\n"), "{text}");
    assert_eq!(
        finish(filesem().arg("release").arg(&path).arg("blocker")).code(),
        0
    );
    for run in runs {
        assert_eq!(run.finish().code(), 0);
    }
    let served = lines(&log);
    let order: Vec<&str> = served
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(order, ["urgent", "first", "second"]);
    let tokens: Vec<u64> = served
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(
        blocker_token < tokens[0] && tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens in the order of service: {served:?}"
    );
}

#[test]
fn eight_concurrent_runs_on_capacity_2_never_have_more_than_2_commands_inside() {
    // The semaphore's promise, witnessed by the commands: each claims its slot directory with
    // mkdir (which fails if another command holds that slot) and checks the slot is < 2.
    const PROCESSES: usize = 8;
    const ROUNDS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let d = dir.path().display();
    let command = format!(
        "[ \"$FILESEM_SLOT\" -lt 2 ] || echo \"slot $FILESEM_SLOT\" >> {d}/violations; \
         mkdir {d}/slot-$FILESEM_SLOT || echo \"overlap on $FILESEM_SLOT\" >> {d}/violations; \
         echo $FILESEM_ID >> {d}/log; sleep 0.02; rmdir {d}/slot-$FILESEM_SLOT"
    );
    let bin = env!("CARGO_BIN_EXE_filesem");
    let loop_script = format!(
        "for i in $(seq {ROUNDS}); do \"{bin}\" run -q -c 2 --id \"p$0-$i\" {} sh -c '{command}' || exit 1; done",
        path.display()
    );
    let runners: Vec<Running> = (0..PROCESSES)
        .map(|p| Running::start(Command::new("sh").args(["-c", &loop_script, &p.to_string()])))
        .collect();
    for runner in runners {
        let out = runner.finish();
        assert_eq!(out.code(), 0, "{out:?}");
    }
    assert_eq!(
        fs::read_to_string(dir.path().join("violations")).unwrap_or_default(),
        ""
    );
    let log = lines(&dir.path().join("log"));
    println!(
        "{} runs by {PROCESSES} processes on capacity 2, no overlap",
        log.len()
    );
    assert_eq!(log.len(), PROCESSES * ROUNDS);
    assert_eq!(status_json(&path)["count"], 0, "every slot came back");
}

#[test]
fn nested_run_without_id_fails_at_once_instead_of_waiting_for_its_parent() {
    // A nested run on the same semaphore must not deadlock: it inherits the outer ID and
    // gets "already held" (exit 1) with a hint.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let bin = env!("CARGO_BIN_EXE_filesem");
    let out = finish(
        filesem()
            .arg("run")
            .arg(&path)
            .args([bin, "run"])
            .arg(&path)
            .arg("true"),
    );
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("already holds"), "{}", out.stderr);
    assert!(out.stderr.contains("give --id"), "{}", out.stderr);
    // With -w the same is true: the ID is held, so there is nothing to wait for.
    let out = finish(
        filesem()
            .arg("run")
            .arg(&path)
            .args([bin, "run", "-w", "60"])
            .arg(&path)
            .arg("true"),
    );
    assert_eq!(out.code(), 1, "{out:?}");
}

#[test]
fn nested_run_with_another_id_competes_for_a_slot() {
    // With its own ID a nested run is an ordinary holder: a second slot if there is one.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let bin = env!("CARGO_BIN_EXE_filesem");
    let inner = [bin, "run", "-n", "--id", "inner"];
    let out = finish(
        filesem()
            .arg("run")
            .arg(&path)
            .args(inner)
            .arg(&path)
            .args(["sh", "-c", "echo $FILESEM_SLOT"]),
    );
    assert_eq!(
        out.code(),
        1,
        "capacity 1 is taken by the outer run: {out:?}"
    );
    let out = finish(
        filesem()
            .args(["run", "-c", "2"])
            .arg(dir.path().join("two.json"))
            .args(inner)
            .arg(dir.path().join("two.json"))
            .args(["sh", "-c", "echo $FILESEM_SLOT"]),
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "1");
}

#[test]
fn run_killed_with_sigkill_keeps_the_slot_until_the_command_exits() {
    // The command inherits the hold (as with flock(1)): SIGKILL of `filesem run` frees
    // nothing while the command runs; its exit frees the slot for the next run.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let stop = dir.path().join("stop");
    // The command lets go of the test's pipes so that only its exit matters.
    let script = format!("echo $$; exec >/dev/null 2>&1; {}", until_stop(&stop));
    let running = Running::start(filesem().arg("run").arg(&path).args(["sh", "-c", &script]));
    let command_pid: i32 = running.line().parse().unwrap();
    let running_pid = running.pid();
    kill(running_pid, Signal::SIGKILL).unwrap();
    let out = running.finish();
    assert_eq!(out.status.signal(), Some(9));
    assert_eq!(
        finish(filesem().args(["run", "-n"]).arg(&path).arg("true")).code(),
        1,
        "the command still holds the slot"
    );
    // Status explains the held witness next to the gone pid (the verdict stays "alive").
    let status = finish(filesem().arg("status").arg(&path)).stdout;
    assert!(
        status.contains(&format!(
            "is held; the acquiring pid {} has exited",
            running_pid
        )),
        "{status}"
    );
    assert!(status.contains("\n  alive: witness lock "), "{status}");
    fs::write(&stop, "").unwrap();
    wait_for_exit(Pid::from_raw(command_pid));
    let out = finish(filesem().args(["run", "-w", "30"]).arg(&path).arg("true"));
    assert_eq!(
        out.code(),
        0,
        "the slot came back when the command exited: {out:?}"
    );
}

#[test]
fn run_with_close_ends_the_hold_with_filesem_and_reap_says_why() {
    // -o (as flock -o): the command does not inherit the hold, so killing `filesem run` frees
    // the slot while the command goes on; reap removes the entry with its evidence.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let stop = dir.path().join("stop");
    let script = format!("echo $$; exec >/dev/null 2>&1; {}", until_stop(&stop));
    let running = Running::start(
        filesem()
            .args(["run", "-o", "--id", "closed"])
            .arg(&path)
            .args(["sh", "-c", &script]),
    );
    let command_pid = Pid::from_raw(running.line().parse().unwrap());
    kill(running.pid(), Signal::SIGKILL).unwrap();
    assert_eq!(running.finish().status.signal(), Some(9));
    let status = status_json(&path);
    assert_eq!(status["holders"][0]["liveness"], "dead", "{status}");
    let out = finish(filesem().arg("reap").arg(&path));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        out.stdout.starts_with("reaped closed (slot 0, token "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(": dead (witness lock"),
        "{}",
        out.stdout
    );
    assert_eq!(
        finish(filesem().arg("reap").arg(&path)).stdout,
        "",
        "nothing left to reap"
    );
    assert!(kill(command_pid, None).is_ok(), "the command still runs");
    assert_eq!(
        finish(filesem().args(["run", "-n"]).arg(&path).arg("true")).code(),
        0
    );
    fs::write(&stop, "").unwrap();
    wait_for_exit(command_pid);
}

#[test]
fn a_lost_hold_is_reported_and_kill_on_lost_stops_the_command() {
    // If someone removes the hold while the command runs, run says so; --kill-on-lost also
    // sends the command SIGTERM, whose status run passes on.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let running = Running::start(
        filesem()
            .args(["run", "--kill-on-lost", "--id", "victim"])
            .arg(&path)
            .args(["sh", "-c", "echo ready; exec sleep 60"]),
    );
    assert_eq!(running.line(), "ready");
    assert_eq!(
        finish(filesem().arg("remove").arg(&path).arg("victim")).stdout,
        "removed victim"
    );
    let mut warning = running.error_line();
    if warning.contains("created a new semaphore") {
        warning = running.error_line();
    }
    assert!(
        warning.contains("hold of `victim`") && warning.contains("was lost"),
        "{warning}"
    );
    let out = running.finish();
    assert_eq!(out.code(), 128 + 15, "{out:?}");
    assert!(out.stderr.contains("--kill-on-lost"), "{}", out.stderr);
}

#[test]
fn a_lease_is_renewed_while_the_command_runs() {
    // With --lease, run renews in the background: past lease + grace the slot is still taken.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let stop = dir.path().join("stop");
    let script = format!("echo ready; {}", until_stop(&stop));
    let running = Running::start(
        filesem()
            .args(["run", "--lease", "1s"])
            .arg(&path)
            .args(["sh", "-c", &script]),
    );
    assert_eq!(running.line(), "ready");
    let start = Instant::now();
    let expired_by = Duration::from_secs(1) + filesem::LEASE_GRACE + Duration::from_millis(500);
    wait_until("lease and grace have passed", || {
        start.elapsed() >= expired_by
    });
    let status = status_json(&path);
    assert_eq!(status["holders"][0]["liveness"], "alive", "{status}");
    assert!(!status["holders"][0]["expires_at"].is_null());
    assert_eq!(
        finish(filesem().args(["run", "-n"]).arg(&path).arg("true")).code(),
        1,
        "still held"
    );
    fs::write(&stop, "").unwrap();
    assert_eq!(running.finish().code(), 0);
}

#[test]
fn racing_runs_say_created_exactly_once() {
    // Of several runs that find no semaphore, exactly one creates it and says so.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let runs: Vec<Running> = (0..6)
        .map(|_| Running::start(filesem().args(["run", "-c", "2"]).arg(&path).arg("true")))
        .collect();
    let mut notes = 0;
    for run in runs {
        let out = run.finish();
        assert_eq!(out.code(), 0, "{out:?}");
        notes += out.stderr.matches("created a new semaphore").count();
    }
    assert_eq!(notes, 1);
}

/// The shell block that follows `<!-- recipe: NAME -->` in docs/cli.md, with `/tmp/` and
/// `/run/lock/` moved into `dir`.
fn recipe(name: &str, dir: &Path) -> String {
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    let marker = format!("<!-- recipe: {name} -->\n```sh\n");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("no recipe {name}"))
        + marker.len();
    let block = &doc[start..start + doc[start..].find("```").unwrap()];
    let dir = format!("{}/", dir.display());
    block.replace("/tmp/", &dir).replace("/run/lock/", &dir)
}

/// `sh -c script` in `dir`, with the built `filesem` first on `PATH`.
fn shell(script: &str, dir: &Path) -> Command {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_filesem")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("sh");
    command
        .args(["-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .stdin(Stdio::null());
    for key in cli_common::FILESEM_VARS {
        command.env_remove(key);
    }
    command
}

#[test]
fn recipe_gpu_jobs_from_xargs_use_each_gpu_alone() {
    // The xargs -P recipe, as written: four jobs at a time, one per GPU slot.
    if Command::new("python3").arg("--version").output().is_err() {
        println!("skipped: the recipe runs python3, which is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("configs")).unwrap();
    for i in 1..=8 {
        fs::write(dir.path().join(format!("configs/job{i}.yaml")), "").unwrap();
    }
    // A stand-in for training: claims its GPU's directory (mkdir fails if another job has it).
    fs::write(
        dir.path().join("train.py"),
        "import os, sys, time\n\
         gpu = os.environ['CUDA_VISIBLE_DEVICES']\n\
         try:\n    os.mkdir('gpu-' + gpu)\n\
         except FileExistsError:\n    open('violations', 'a').write(gpu + '\\n')\n\
         time.sleep(0.05)\n\
         os.rmdir('gpu-' + gpu)\n\
         open('done.log', 'a').write(sys.argv[1] + ' ' + gpu + '\\n')\n",
    )
    .unwrap();
    let out = finish(&mut shell(&recipe("gpu", dir.path()), dir.path()));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        !dir.path().join("violations").exists(),
        "two jobs shared a GPU"
    );
    let mut done = lines(&dir.path().join("done.log"));
    done.sort();
    assert_eq!(done.len(), 8, "{done:?}");
    for (i, line) in done.iter().enumerate() {
        let (config, gpu) = line.split_once(' ').unwrap();
        assert_eq!(config, format!("configs/job{}.yaml", i + 1));
        assert!(gpu.parse::<u32>().unwrap() < 4, "{line}");
    }
}

#[test]
fn recipe_cron_job_skips_while_the_previous_run_goes_on() {
    // The crontab line, as written: a second run while the first goes on exits at once,
    // silently; after the first ends, the next runs.
    let dir = tempfile::tempdir().unwrap();
    let line = recipe("cron", dir.path());
    let entry = line.lines().find(|l| !l.starts_with('#')).unwrap();
    let command: Vec<&str> = entry.split_whitespace().skip(5).collect();
    let backup = dir.path().join("backup.sh");
    let command = command
        .join(" ")
        .replace("/usr/local/bin/backup.sh", &backup.display().to_string());
    let stop = dir.path().join("stop");
    fs::write(
        &backup,
        format!(
            "#!/bin/sh\necho started >> {}\n{}\n",
            dir.path().join("runs").display(),
            until_stop(&stop)
        ),
    )
    .unwrap();
    fs::set_permissions(&backup, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let first = Running::start(&mut shell(&command, dir.path()));
    wait_until("the first backup started", || {
        lines(&dir.path().join("runs")).len() == 1
    });
    let second = finish(&mut shell(&command, dir.path()));
    assert_eq!(
        (
            second.code(),
            second.stdout.as_str(),
            second.stderr.as_str()
        ),
        (1, "", "")
    );
    fs::write(&stop, "").unwrap();
    assert_eq!(first.finish().code(), 0);
    assert_eq!(finish(&mut shell(&command, dir.path())).code(), 0);
    assert_eq!(
        lines(&dir.path().join("runs")).len(),
        2,
        "the skipped run never started"
    );
}

#[test]
fn recipe_crash_inspection_shows_and_removes_the_dead() {
    // The cleanup recipe, as written, on a semaphore with a dead, a detached and a live holder.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpus.json");
    hold(&path, "session-123", 4);
    let stop = dir.path().join("stop");
    let script = format!("echo ready; exec >/dev/null 2>&1; {}", until_stop(&stop));
    let dead = Running::start(
        filesem()
            .args(["run", "-o", "--id", "crashed-job"])
            .arg(&path)
            .args(["sh", "-c", &script]),
    );
    assert_eq!(dead.line(), "ready");
    kill(dead.pid(), Signal::SIGKILL).unwrap();
    dead.finish();
    let alive = Running::start(
        filesem()
            .args(["run", "--id", "live-job"])
            .arg(&path)
            .args(["sh", "-c", &script]),
    );
    assert_eq!(alive.line(), "ready");
    let mut script = recipe("crash", dir.path());
    if Command::new("jq").arg("--version").output().is_err() {
        println!("jq is not installed: the recipe's jq line is left out");
        script = script.replace("| jq", "| cat >/dev/null #");
    }
    let out = finish(&mut shell(&script, dir.path()));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("3 held (1 stale"), "{}", out.stdout);
    assert!(
        out.stdout.contains("\ncrashed-job\n") || script.contains("cat >/dev/null"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("reaped crashed-job (slot 1, token "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.ends_with("removed session-123"),
        "{}",
        out.stdout
    );
    let status = status_json(&path);
    assert_eq!(status["count"], 1);
    assert_eq!(status["holders"][0]["id"], "live-job");
    fs::write(&stop, "").unwrap();
    assert_eq!(alive.finish().code(), 0);
}

#[test]
fn recipe_session_hold_lasts_until_the_script_exits() {
    // acquire + trap release, as written: the hold exists during the script and is gone after.
    let dir = tempfile::tempdir().unwrap();
    let check = format!(
        "filesem status --json {}/deploy.json | grep -c \"\\\"id\\\": \\\"deploy-$(id -un)\\\"\"",
        dir.path().display()
    );
    let script =
        recipe("session", dir.path()).replace("echo \"deploying as the only deployer\"", &check);
    let out = finish(shell(&script, dir.path()).env_remove("USER"));
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "1", "held while the script ran");
    assert_eq!(
        status_json(&dir.path().join("deploy.json"))["count"],
        0,
        "released by the trap"
    );
}

/// Runs `command` with stderr on a fresh pseudo-terminal; returns its exit code and what it
/// wrote there.
fn with_terminal_stderr(command: &mut Command) -> (i32, String) {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let pty = nix::pty::openpty(None, None).expect("openpty");
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::from(pty.slave))
        .spawn()
        .expect("spawn");
    // The command keeps its stdio until changed: let go of our slave descriptor.
    command.stderr(Stdio::null());
    let mut master = fs::File::from(pty.master);
    let (tx, text) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // Reading the master fails with EIO once the last slave descriptor is closed.
        let _ = master.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    let status = wait_within_deadline(&mut child, "the command on the terminal");
    let text = text.recv_timeout(DEADLINE).expect("terminal output");
    (status.code().expect("exit code"), text)
}

#[test]
fn waiting_on_a_terminal_is_announced_once_unless_quiet() {
    // A user at a terminal learns why nothing happens, and who holds the slots; scripts
    // (no terminal) and -q stay silent.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    hold(&path, "blocker", 1);
    let (code, text) =
        with_terminal_stderr(filesem().args(["run", "-w", "0.5"]).arg(&path).arg("true"));
    assert_eq!(code, 1, "{text}");
    assert_eq!(text.matches("waiting for a slot on").count(), 1, "{text}");
    assert!(text.contains(": 1/1 held by blocker"), "{text}");
    let (code, text) = with_terminal_stderr(
        filesem()
            .args(["run", "-q", "-w", "0.2"])
            .arg(&path)
            .arg("true"),
    );
    assert_eq!((code, text.as_str()), (1, ""));
}

#[test]
fn verbose_reports_the_slot_token_and_time_waited() {
    // --verbose tells a user which slot and token the command runs under, and how long it
    // waited for them.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    hold(&path, "first", 2);
    let out = finish(
        filesem()
            .args(["run", "-v", "--id", "job"])
            .arg(&path)
            .arg("true"),
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("acquired"))
        .unwrap_or_default();
    assert!(
        line.starts_with("filesem: acquired slot 1 of "),
        "{}",
        out.stderr
    );
    assert!(
        line.contains(" as job (token ") && line.ends_with('s'),
        "{line}"
    );
}

#[test]
fn filesem_path_is_absolute_with_its_directory_resolved_when_run_opened_it() {
    // 9 §1: a command that changes directory or repoints a symlinked directory must still
    // find its own semaphore through FILESEM_PATH, never another one.
    let dir = tempfile::tempdir().unwrap();
    for name in ["real", "other"] {
        fs::create_dir(dir.path().join(name)).unwrap();
    }
    std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
    let script = format!(
        "echo \"$FILESEM_PATH\"; ln -sfn other link && cd / && {} status --json \"$FILESEM_PATH\"",
        env!("CARGO_BIN_EXE_filesem")
    );
    let out = finish(filesem().current_dir(dir.path()).args([
        "run",
        "-q",
        "--id",
        "job",
        "link/s.json",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    assert_eq!(out.code(), 0, "{out:?}");
    let (first, json) = out.stdout.split_once('\n').expect("two parts");
    let real = fs::canonicalize(dir.path().join("real")).unwrap();
    assert_eq!(first, real.join("s.json").display().to_string());
    let status: serde_json::Value = serde_json::from_str(json).expect("status --json");
    assert_eq!(status["holders"][0]["id"], "job", "its own hold: {status}");
    assert!(
        !dir.path().join("other/s.json").exists(),
        "nothing made elsewhere"
    );
}

#[test]
fn huge_timeouts_and_leases_mean_no_limit_and_never_overflow() {
    // 9 §3: a duration past what the clock can count saturates; nothing panics or wraps to
    // a short wait.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    for wait in [
        "1e30",
        "18446744073709551615",
        "99999999999999h",
        "9999999999999999999999d",
    ] {
        let out = finish(
            filesem()
                .args(["run", "-q", "-w", wait])
                .arg(&path)
                .arg("true"),
        );
        assert_eq!(out.code(), 0, "-w {wait}: {out:?}");
    }
    let leased = dir.path().join("leased.json");
    for (id, lease) in [
        ("a", "99999999999999h"),
        ("b", "18446744073709551615"),
        ("c", "1e30"),
    ] {
        let out = finish(
            filesem()
                .args(["acquire", "-q", "-c", "3", "--lease", lease])
                .arg(&leased)
                .args(["--id", id]),
        );
        assert_eq!(out.code(), 0, "--lease {lease}: {out:?}");
    }
    let status = status_json(&leased);
    for holder in status["holders"].as_array().unwrap() {
        let expires = holder["expires_at"].as_str().expect("a lease end");
        let expires = chrono::DateTime::parse_from_rfc3339(expires).unwrap();
        assert!(
            expires > chrono::Utc::now() + chrono::Duration::days(365 * 1000),
            "{holder}"
        );
        assert_eq!(holder["liveness"], "unknown", "not expired: {holder}");
    }
    // A waiter with an endless -w queues and gets the slot when it is freed.
    hold(&path, "blocker", 1);
    let waiter = Running::start(
        filesem()
            .args(["run", "-q", "-w", "18446744073709551615"])
            .arg(&path)
            .args(["--", "echo", "got it"]),
    );
    wait_until("the waiter is queued", || {
        status_json(&path)["waiters"].as_array().unwrap().len() == 1
    });
    let out = finish(filesem().arg("release").arg(&path).arg("blocker"));
    assert_eq!(out.code(), 0, "{out:?}");
    let out = waiter.finish();
    assert_eq!((out.code(), out.stdout.as_str()), (0, "got it"), "{out:?}");
}

#[test]
fn a_lease_below_one_second_is_a_usage_error_naming_the_minimum() {
    // 9 §4: a tiny lease would rewrite the state many times a second; refused before
    // anything is created or run.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let ran = dir.path().join("ran");
    for lease in ["0", "1ms", "999ms", "0.5", "1e-3"] {
        for mut command in [
            {
                let mut c = filesem();
                c.args(["run", "--lease", lease])
                    .arg(&path)
                    .arg("touch")
                    .arg(&ran);
                c
            },
            {
                let mut c = filesem();
                c.args(["acquire", "--id", "x", "--lease", lease])
                    .arg(&path);
                c
            },
        ] {
            let out = finish(&mut command);
            assert_eq!(out.code(), 2, "--lease {lease}: {out:?}");
            assert!(out.stderr.contains("minimum of 1 s"), "{}", out.stderr);
        }
    }
    assert!(!path.exists() && !ran.exists(), "nothing created or run");
    let out = finish(
        filesem()
            .args(["acquire", "-q", "--id", "x", "--lease", "1s"])
            .arg(&path),
    );
    assert_eq!(out.code(), 0, "the minimum itself is fine: {out:?}");
}

/// The permission bits of `path`.
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `filesem ARGS` under umask 077, so that a mode that reaches the file exactly is not the
/// umask's doing.
fn with_umask_077(args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command
        .args([
            "-c",
            "umask 077; exec \"$@\"",
            "sh",
            env!("CARGO_BIN_EXE_filesem"),
        ])
        .args(args)
        .stdin(Stdio::null());
    for key in cli_common::FILESEM_VARS {
        command.env_remove(key);
    }
    command
}

#[test]
fn mode_sets_the_permission_bits_of_a_state_file_the_command_creates() {
    // 10 §4: `--mode` on every command that can create; exact bits whatever the umask.
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let (a, b, c) = (p("a.json"), p("b.json"), p("c.json"));
    for (args, path, mode) in [
        (vec!["run", "-q", "--mode", "664", &a, "true"], &a, 0o664),
        (
            vec!["acquire", "-q", "--mode", "0o640", &b, "--id", "x"],
            &b,
            0o640,
        ),
        (vec!["recover", "--mode", "0666", "-c", "2", &c], &c, 0o666),
    ] {
        let out = finish(&mut with_umask_077(&args));
        assert_eq!(out.code(), 0, "{args:?}: {out:?}");
        assert_eq!(mode_of(Path::new(path)), mode, "{args:?}");
    }
    // An existing semaphore keeps its mode, and says so unless -q.
    let out = finish(filesem().args(["run", "--mode", "600", &a, "true"]));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        out.stderr.contains(
            "exists with mode 0664; --mode 0600 applies only to a state file this command creates"
        ),
        "{}",
        out.stderr
    );
    let out = finish(filesem().args(["run", "-q", "--mode", "600", &a, "true"]));
    assert_eq!((out.code(), out.stderr.as_str()), (0, ""));
    let out = finish(filesem().args(["recover", "--mode", "600", "-c", "1", &a]));
    assert!(out.stderr.contains("exists with mode 0664"), "{out:?}");
    assert_eq!(mode_of(Path::new(&a)), 0o664);
}

#[test]
fn a_mode_that_is_not_plain_octal_read_write_bits_is_a_usage_error() {
    // Execute, setuid, setgid and sticky bits, or a mode that locks out the owner, never
    // reach a file: refused before anything is created.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir).display().to_string();
    for (mode, says) in [
        ("775", "outside 0666"),
        ("4664", "outside 0666"),
        ("0o1666", "outside 0666"),
        ("444", "needs 0600"),
        ("rw-rw-r--", "expected octal"),
        ("8", "expected octal"),
        ("", "expected octal"),
    ] {
        for args in [
            vec!["run", "--mode", mode, &path, "true"],
            vec!["acquire", "--mode", mode, &path, "--id", "x"],
            vec!["recover", "--mode", mode, "-c", "1", &path],
        ] {
            let out = finish(filesem().args(&args));
            assert_eq!(out.code(), 2, "{args:?}: {out:?}");
            assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        }
    }
    assert!(!Path::new(&path).exists(), "nothing created");
}

/// Undoes the escaping of `status --json`'s `path` when `path_escaped` is true: `\\`, `\n`,
/// `\r`, `\t`, `\u{..}` and `\xNN`, as the schema in docs/cli.md describes.
fn unescape_path(text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            bytes.extend(c.to_string().as_bytes());
            continue;
        }
        match chars.next().expect("escape") {
            '\\' => bytes.push(b'\\'),
            'n' => bytes.push(b'\n'),
            'r' => bytes.push(b'\r'),
            't' => bytes.push(b'\t'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                bytes.push(u8::from_str_radix(&hex, 16).unwrap());
            }
            'u' => {
                let code: String = chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                let c = char::from_u32(u32::from_str_radix(&code, 16).unwrap()).unwrap();
                bytes.extend(c.to_string().as_bytes());
            }
            other => panic!("unknown escape \\{other}"),
        }
    }
    bytes
}

#[test]
fn status_json_gives_a_path_that_is_not_utf8_escaped_and_says_so() {
    // 10 §6: no byte of the path is lost to U+FFFD; the escaped form reverses exactly.
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let dir = tempfile::tempdir().unwrap();
    let odd = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9 \\x41\tdir"));
    fs::create_dir(&odd).unwrap();
    let path = odd.join("s.json");
    hold(&path, "a", 1);
    let status = status_json(&path);
    assert_eq!(status["path_escaped"], true, "{status}");
    let shown = status["path"].as_str().unwrap();
    assert!(shown.ends_with(r"/caf\xe9 \\x41\tdir/s.json"), "{shown}");
    assert_eq!(
        unescape_path(shown),
        path.clone().into_os_string().into_vec()
    );
    let text = finish(filesem().arg("status").arg(&path)).stdout;
    assert!(text.starts_with(&format!("{shown}: capacity 1")), "{text}");
    // A UTF-8 path is given exactly, unescaped, even with a backslash or a tab.
    let plain = dir.path().join("a\\b\tc.json");
    hold(&plain, "a", 1);
    let status = status_json(&plain);
    assert_eq!(status["path_escaped"], false, "{status}");
    assert_eq!(status["path"], plain.to_str().unwrap());
}

#[test]
fn ids_that_start_with_a_dash_are_accepted() {
    // 10 §6: `--id -job`, `--id=-job` and release's `-job` name the ID; remove takes its
    // IDs after `--`, as the tip then says (with the whole ID, not clap's `-j`).
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    for id_args in [["--id", "-job"], ["--id=-job2", "--priority=0"]] {
        let out = finish(
            filesem()
                .args(["acquire", "-q", "-c", "3"])
                .arg(&path)
                .args(id_args),
        );
        assert_eq!(out.code(), 0, "{id_args:?}: {out:?}");
    }
    let out = finish(filesem().args(["run", "--id", "-job3"]).arg(&path).args([
        "--",
        "sh",
        "-c",
        "echo \"$FILESEM_ID\"",
    ]));
    assert_eq!((out.code(), out.stdout.as_str()), (0, "-job3"), "{out:?}");
    let ids: Vec<String> = status_json(&path)["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["-job", "-job2"]);
    let out = finish(filesem().arg("release").arg(&path).arg("-job"));
    assert_eq!(out.code(), 0, "{out:?}");
    let out = finish(filesem().arg("remove").arg(&path).args(["-job2", "-x"]));
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr.contains("unexpected argument '-job2'") && out.stderr.contains("use '-- -job2'"),
        "the tip names the whole ID: {}",
        out.stderr
    );
    let out = finish(
        filesem()
            .arg("remove")
            .arg(&path)
            .args(["--", "-job2", "-x"]),
    );
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, "removed -job2"),
        "the tip works: {out:?}"
    );
    assert_eq!(status_json(&path)["count"], 0);
}

/// The command between backquotes in the `filesem: hint:` line of `stderr`.
fn hinted_command(stderr: &str) -> String {
    let hint = stderr
        .lines()
        .find(|l| l.starts_with("filesem: hint:"))
        .unwrap_or_else(|| panic!("no hint: {stderr}"));
    let (_, rest) = hint.split_once('`').expect("a command in backquotes");
    let (command, _) = rest.split_once('`').expect("closing backquote");
    command.to_string()
}

/// Runs a hinted command in `sh`, with the built `filesem` first in `PATH`.
fn run_hint(command: &str) -> Finished {
    let bin = Path::new(env!("CARGO_BIN_EXE_filesem")).parent().unwrap();
    let search = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut shell = Command::new("sh");
    shell
        .args(["-c", command])
        .env("PATH", search)
        .stdin(Stdio::null());
    for key in cli_common::FILESEM_VARS {
        shell.env_remove(key);
    }
    finish(&mut shell)
}

#[test]
fn hints_name_commands_that_work_when_pasted_for_paths_that_need_quoting() {
    // 10 §5: every hint names a command that works for that case, even for a path with a
    // space, a quote and a backslash; none names `recover` where it cannot help.
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("it's a \\ dir");
    fs::create_dir(&odd).unwrap();
    let path = odd.join("s.json");
    fs::write(&path, "{\"capacity\": 2, \"hold").unwrap();
    let out = finish(filesem().arg("status").arg(&path));
    assert_eq!(out.code(), 125, "{out:?}");
    let recover = hinted_command(&out.stderr).replace("CAPACITY", "2");
    let done = run_hint(&recover);
    assert_eq!(done.code(), 0, "`{recover}`: {done:?}");
    assert_eq!(status_json(&path)["capacity"], 2);
    let out = finish(filesem().args(["run", "-c", "3"]).arg(&path).arg("true"));
    assert_eq!(out.code(), 2, "{out:?}");
    let set = hinted_command(&out.stderr);
    assert_eq!(run_hint(&set).code(), 0, "`{set}`");
    assert_eq!(status_json(&path)["capacity"], 3);
    let out = finish(filesem().args(["recover", "-c", "5"]).arg(&path));
    let set = hinted_command(&out.stderr);
    assert_eq!(run_hint(&set).code(), 0, "`{set}`");
    assert_eq!(status_json(&path)["capacity"], 5);
    // A FIFO at the path is not a corrupt file that recover could set aside.
    let fifo = dir.path().join("fifo.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let out = finish(filesem().arg("status").arg(&fifo));
    assert_eq!(out.code(), 125, "{out:?}");
    assert!(!out.stderr.contains("recover"), "{}", out.stderr);
    // Its hint shows what is there instead.
    let look = hinted_command(&out.stderr);
    let shown = run_hint(&look);
    assert_eq!(shown.code(), 0, "`{look}`: {shown:?}");
    assert!(shown.stdout.starts_with('p'), "a FIFO: {}", shown.stdout);
}

/// A directory like `/tmp` (mode 1777, root's) inside a fresh temp directory.
fn sticky_dir() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let tmp = base.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    (base, tmp)
}

#[test]
fn a_file_of_an_untrusted_owner_names_the_owner_and_the_trust_owner_command_that_works() {
    // 10 §1: in a sticky directory another user's state file is refused (exit 125) with the
    // object, the problem and the owner; the hint is the same command with --trust-owner,
    // and that command works. Nothing is changed before the user opts in.
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: planting a file of another owner needs root");
        return;
    }
    let other = 61431;
    let (_base, tmp) = sticky_dir();
    let path = tmp.join("s.json");
    fs::write(&path, br#"{"capacity": 2, "holders": []}"#).unwrap();
    std::os::unix::fs::lchown(&path, Some(other), Some(other)).unwrap();
    let before = fs::read(&path).unwrap();
    let shown = path.display().to_string();
    for (args, hinted) in [
        (
            vec!["status", &shown],
            format!("filesem status --trust-owner {other} {shown}"),
        ),
        (
            vec!["run", "-n", &shown, "true"],
            format!("filesem run --trust-owner {other} -n {shown} true"),
        ),
        (
            vec!["release", &shown, "job"],
            format!("filesem release --trust-owner {other} {shown} job"),
        ),
    ] {
        let out = finish(filesem().args(&args));
        assert_eq!(out.code(), 125, "{args:?}: {out:?}");
        let first = out.stderr.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            format!(
                "filesem: refusing to use `{shown}` of semaphore `{shown}`: it is owned by uid \
                 {other}, who is not trusted in `{}`: in a world-writable or sticky directory \
                 only the caller, root and the directory's owner are trusted",
                tmp.display()
            ),
            "{args:?}"
        );
        assert!(
            !out.stderr.contains("OpenOptions"),
            "the CLI's words: {}",
            out.stderr
        );
        assert_eq!(hinted_command(&out.stderr), hinted, "{args:?}");
        assert_eq!(fs::read(&path).unwrap(), before, "{args:?}: unchanged");
    }
    let trusted = run_hint(&format!("filesem status --trust-owner {other} {shown}"));
    assert_eq!(trusted.code(), 0, "{trusted:?}");
    assert!(trusted.stdout.contains("capacity 2"), "{}", trusted.stdout);
    let ran = run_hint(&format!(
        "filesem run --trust-owner {other} -n {shown} true"
    ));
    assert_eq!(ran.code(), 0, "{ran:?}");
    // The released hold of `job` is gone, so this one is told so (exit 1), not refused.
    let released = run_hint(&format!(
        "filesem release --trust-owner {other} {shown} job"
    ));
    assert_eq!(released.code(), 1, "{released:?}");
    // Every command takes --trust-owner; a user name that does not exist is a usage error.
    for args in [
        vec!["remove", &shown, "x"],
        vec!["reap", "-q", &shown],
        vec!["set-capacity", &shown, "2"],
        vec!["recover", "-c", "2", &shown],
        vec!["acquire", "-n", &shown, "--id", "a"],
        vec!["release", &shown, "a"],
        vec!["status", "--json", &shown],
    ] {
        let out = finish(filesem().args(&args).args(["--trust-owner", "61431"]));
        assert_eq!(out.code(), 0, "{args:?}: {out:?}");
    }
    let out = finish(filesem().args(["status", "--trust-owner", "no-such-user-filesem", &shown]));
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr.contains("no user named `no-such-user-filesem`"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_object_of_the_wrong_type_is_shown_with_its_owner_and_a_look_at_it_never_trust() {
    // 10 §1: a symlink planted at PATH.witness is refused and never followed; trusting its
    // owner would not help, so the hint shows what is there (a command that works).
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let victim = dir.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("1"), b"precious").unwrap();
    let witness = dir.path().join("sem.json.witness");
    std::os::unix::fs::symlink(&victim, &witness).unwrap();
    let out = finish(
        filesem()
            .args(["run", "-q", "-c", "1"])
            .arg(&path)
            .arg("true"),
    );
    assert_eq!(out.code(), 125, "{out:?}");
    let euid = nix::unistd::geteuid().as_raw();
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "filesem: refusing to use `{}` of semaphore `{}`: it is a symbolic link, not a \
             directory (owned by uid {euid}",
            witness.display(),
            path.display()
        )),
        "{first}"
    );
    assert!(!out.stderr.contains("--trust-owner"), "{}", out.stderr);
    let look = hinted_command(&out.stderr);
    assert_eq!(look, format!("ls -ld -- {}", witness.display()));
    let shown = run_hint(&look);
    assert_eq!(shown.code(), 0, "{shown:?}");
    assert!(
        shown.stdout.contains(&format!("-> {}", victim.display())),
        "{}",
        shown.stdout
    );
    assert_eq!(fs::read(victim.join("1")).unwrap(), b"precious");
    assert_eq!(
        fs::read_dir(&victim).unwrap().count(),
        1,
        "victim untouched"
    );
}

#[test]
fn a_removed_directory_ends_a_wait_and_the_hint_runs_the_same_command_again() {
    // 9 §1: a waiting acquire bound to a directory that is removed fails with exit 125
    // saying so (nothing is created in the removed directory); the hint, the same command,
    // opens the path anew and works.
    use nix::fcntl::{Flock, FlockArg};
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("d");
    let path = dir.join("s.json");
    hold(&path, "a", 2);
    // While the test holds the lock file, the acquire's first locked step waits for it:
    // the directory is then removed whole before that step looks.
    let lock_path = dir.join("s.json.lock");
    let lock = Flock::lock(fs::File::open(&lock_path).unwrap(), FlockArg::LockExclusive).unwrap();
    let waiter = Running::start(
        filesem()
            .args(["acquire", "-w", "30"])
            .arg(&path)
            .args(["--id", "b"]),
    );
    let lock_target = fs::canonicalize(&lock_path).unwrap();
    wait_until("the waiter has the lock file open", || {
        fs::read_dir(format!("/proc/{}/fd", waiter.pid()))
            .map(|fds| {
                fds.flatten()
                    .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t == lock_target))
            })
            .unwrap_or(false)
    });
    fs::remove_dir_all(&dir).unwrap();
    drop(lock);
    let out = waiter.finish();
    assert_eq!(out.code(), 125, "{out:?}");
    let first = out.stderr.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "filesem: the directory of semaphore `{}` was removed after the semaphore was \
             opened; open it again where it now is",
            path.display()
        )
    );
    assert!(!dir.exists(), "nothing was created at the old path");
    let again = hinted_command(&out.stderr);
    assert_eq!(
        again,
        format!("filesem acquire -w 30 {} --id b", path.display())
    );
    let done = run_hint(&again);
    assert_eq!(done.code(), 0, "`{again}`: {done:?}");
    let holders = status_json(&path)["holders"].clone();
    assert_eq!(holders[0]["id"], "b", "{holders}");
}

#[test]
fn run_whose_command_removes_the_directory_keeps_the_command_exit_code_and_says_why() {
    // The hold went with the directory: `run` exits with the command's code and says what
    // happened, without a hint to run the command again.
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("d").join("s.json");
    let out = finish(
        filesem()
            .current_dir(root.path())
            .args(["run", "-q", "-c", "1"])
            .arg(&path)
            .args(["--", "sh", "-c", "rm -r d; exit 7"]),
    );
    assert_eq!(out.code(), 7, "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "filesem: the directory of semaphore `{}` was removed after the semaphore was \
             opened; open it again where it now is",
            path.display()
        )
    );
    assert!(!root.path().join("d").exists(), "nothing created again");
}

#[test]
fn an_exhausted_token_counter_hints_at_the_same_command_on_a_new_path_never_recover() {
    // Tokens must only grow: recover cannot help, a new semaphore path does. The hint is the
    // user's command there, with the old capacity, and it works; the old file is unchanged.
    let dir = tempfile::tempdir().unwrap();
    let path = sem_path(&dir);
    let doc = format!(
        r#"{{"capacity": 3, "next_token": {}, "holders": []}}"#,
        filesem::MAX_TOKEN + 1
    );
    fs::write(&path, &doc).unwrap();
    let out = finish(filesem().args(["run", "-q"]).arg(&path).arg("true"));
    assert_eq!(out.code(), 125, "{out:?}");
    assert!(
        out.stderr.contains("fencing-token counter")
            && out.stderr.contains("use a new semaphore path"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("filesem recover"), "{}", out.stderr);
    let new = dir.path().join("sem-2.json");
    let elsewhere = hinted_command(&out.stderr);
    assert_eq!(
        elsewhere,
        format!("filesem run -c 3 -q {} true", new.display())
    );
    let done = run_hint(&elsewhere);
    assert_eq!(done.code(), 0, "`{elsewhere}`: {done:?}");
    assert_eq!(status_json(&new)["capacity"], 3);
    assert_eq!(fs::read_to_string(&path).unwrap(), doc);
}

#[test]
fn an_os_error_is_printed_once() {
    // 10 §4: the library's I/O message ends with the OS error, which is also its source:
    // the report shows it once.
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: needs root to run filesem as a throwaway user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let private = base.path().join("private");
    fs::create_dir(&private).unwrap();
    let path = private.join("s.json");
    hold(&path, "a", 1);
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let out = finish(
        Command::new("setpriv")
            .args(["--reuid=61441", "--regid=61441", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_filesem"))
            .arg("status")
            .arg(&path)
            .stdin(Stdio::null()),
    );
    assert_eq!(out.code(), 125, "{out:?}");
    assert_eq!(
        out.stderr.matches("Permission denied").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.ends_with(": Permission denied (os error 13)"),
        "{}",
        out.stderr
    );
}
