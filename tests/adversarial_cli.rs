//! Attacks on `filesem run` and friends: nesting through symlinks and relative paths, hostile
//! IDs, commands that are not programs, no terminal and no stdin, signals sent to the whole
//! process group, and stdout or stderr closed, without a reader or on a full disk. Every
//! process has a deadline and is killed when it runs out.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[path = "common/cli.rs"]
mod cli_common;
use cli_common::{filesem, lines, wait_until, wait_within_deadline};

/// Waits for `child` (killing it at the deadline); returns its exit code (128 + signal).
fn wait(child: &mut Child) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let status = wait_within_deadline(child, "the process");
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap())
}

/// Runs `command` to its end: (exit code, stdout, stderr).
fn output(command: &mut Command) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = command
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let code = wait(&mut child);
    let read = |p: &Path| fs::read_to_string(p).unwrap();
    (code, read(&out), read(&err))
}

#[test]
fn nested_run_through_a_symlinked_directory_and_a_relative_path_fails_at_once() {
    // The nested-run rule compares files, not spellings: another path to the same semaphore
    // must not make the inner run wait forever for its own parent's slot.
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real dir");
    fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
    fs::create_dir(dir.path().join("elsewhere")).unwrap();
    let inner = format!(
        "cd elsewhere && {} run ../link/s.json -- true; echo inner=$?",
        env!("CARGO_BIN_EXE_filesem")
    );
    let (code, stdout, stderr) = output(filesem().current_dir(dir.path()).args([
        "run",
        "real dir/s.json",
        "--",
        "sh",
        "-c",
        &inner,
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "inner=1", "{stderr}");
    assert!(stderr.contains("already"), "{stderr}");
}

#[test]
fn ids_with_newlines_or_past_the_limit_are_usage_errors_naming_the_path() {
    // A hostile or mistyped ID is refused before anything runs or is written.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let ran = dir.path().join("ran");
    let (code, _, _) = output(filesem().arg("run").arg(&path).args(["--", "true"]));
    assert_eq!(code, 0);
    let before = fs::read(&path).unwrap();
    let long = "x".repeat(filesem::MAX_ID_LEN + 1);
    for id in ["a\nb", "tab\there", "\u{1b}[2J", "", long.as_str()] {
        let (code, stdout, stderr) = output(
            filesem()
                .arg("run")
                .arg(&path)
                .args(["--id", id, "--", "touch"])
                .arg(&ran),
        );
        assert_eq!(code, 2, "{id:?}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "printed once: {stderr}"
        );
        assert!(
            !stderr.contains('\u{1b}') && !stderr.contains("a\nb"),
            "{stderr:?}"
        );
    }
    assert!(!ran.exists(), "a command ran under a refused ID");
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "the state file was touched"
    );
}

#[test]
fn commands_that_are_directories_empty_or_unexecutable_exit_126_or_127() {
    // As env(1) and timeout(1): 126 found but not runnable, 127 not found; the slot is freed.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let script = dir.path().join("script");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let cases: [(&str, i32); 4] = [
        (dir.path().to_str().unwrap(), 126),
        (script.to_str().unwrap(), 126),
        ("", 127),
        ("no-such-command-filesem-test", 127),
    ];
    for (command, expected) in cases {
        let (code, _, stderr) = output(filesem().arg("run").arg(&path).args(["--", command]));
        assert_eq!(code, expected, "{command:?}: {stderr}");
        assert!(stderr.contains("cannot run"), "{stderr}");
        let (code, _, stderr) = output(filesem().args(["run", "-n"]).arg(&path).arg("true"));
        assert_eq!(code, 0, "the slot was freed after {command:?}: {stderr}");
    }
}

#[test]
fn run_in_a_new_session_without_terminal_or_stdin_passes_the_exit_code() {
    // Cron and CI run commands like this: no controlling terminal, stdin closed.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let mut command = filesem();
    command
        .arg("run")
        .arg(&path)
        .args(["--", "sh", "-c", "read x; echo \"read=$?\"; exit 42"]);
    in_new_session_with_stdin_closed(&mut command);
    let (code, stdout, stderr) = output(&mut command);
    assert_eq!(code, 42, "{stderr}");
    assert_eq!(stdout.trim(), "read=1", "EOF on stdin: {stderr}");
}

/// Replaces `command` by `setsid sh -c 'exec "$0" "$@" <&-' command...`: a new session
/// without a controlling terminal, stdin closed outright (as some daemons and cron setups do).
fn in_new_session_with_stdin_closed(command: &mut Command) {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
    let mut wrapped = Command::new("setsid");
    wrapped
        .args(["sh", "-c", "exec \"$0\" \"$@\" <&-"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    *command = wrapped;
}

#[test]
#[ignore = "known limitation (docs/cli.md: `kill -TERM -PGID` reaches the command twice): a signal \
            to run's whole process group, as coreutils `timeout` sends without --foreground, \
            is delivered to the command directly and forwarded by run"]
fn a_signal_to_the_whole_process_group_reaches_the_command_once() {
    // `timeout 10 filesem run ...` and `kill -- -PGID` signal every process of the group.
    let dir = tempfile::tempdir().unwrap();
    let (log, ready, stop) = (
        dir.path().join("log"),
        dir.path().join("ready"),
        dir.path().join("stop"),
    );
    let script = format!(
        "for s in HUP USR2; do trap \"echo $s >> '{log}'\" $s; done; touch '{ready}'; \
         while [ ! -e '{stop}' ] && [ -d '{dir}' ]; do sleep 0.02; done",
        log = log.display(),
        ready = ready.display(),
        stop = stop.display(),
        dir = dir.path().display(),
    );
    let mut child = filesem()
        .arg("run")
        .arg(dir.path().join("s.json"))
        .args(["--", "sh", "-c", &script])
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let run = Pid::from_raw(child.id() as i32);
    wait_until("the command is ready", || ready.exists());
    // Hold run back so that the two copies cannot merge into one pending signal.
    kill(run, Signal::SIGSTOP).unwrap();
    nix::sys::signal::killpg(run, Signal::SIGHUP).unwrap();
    wait_until("the command logged HUP", || lines(&log).len() == 1);
    kill(run, Signal::SIGCONT).unwrap();
    // A marker sent to run alone: once logged, run has forwarded what it was going to.
    kill(run, Signal::SIGUSR2).unwrap();
    wait_until("the command logged USR2", || {
        lines(&log).contains(&"USR2".to_string())
    });
    fs::write(&stop, "").unwrap();
    assert_eq!(wait(&mut child), 0);
    assert_eq!(lines(&log), ["HUP", "USR2"], "the group's HUP once");
}

/// How a standard stream of `filesem` is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broken {
    /// Closed (`>&-`): Rust's runtime puts `/dev/null` there, writes must still not fail.
    Closed,
    /// A pipe whose reader has exited: every write fails with EPIPE.
    ReaderGone,
    /// `/dev/full`: every write fails with ENOSPC.
    Full,
}

const BROKEN: [Broken; 3] = [Broken::Closed, Broken::ReaderGone, Broken::Full];

/// The standard stream a test breaks: 1 (stdout) or 2 (stderr).
type Fd = u8;

/// A stream for the child that is broken as `broken` says (for `Closed`, a placeholder: the
/// wrapper of [`broken_command`] closes the descriptor).
fn broken_stdio(broken: Broken) -> Stdio {
    match broken {
        Broken::Closed => Stdio::null(),
        Broken::ReaderGone => {
            // Close-on-exec, so that no other test's child inherits the read end and keeps
            // the pipe open.
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            drop(read);
            Stdio::from(write)
        }
        Broken::Full => Stdio::from(
            fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        ),
    }
}

/// `filesem ARGS` in `dir`, with descriptor `fd` broken as `broken` says (closed through a
/// `sh -c 'exec "$@" >&-'` wrapper), the other one appended to `capture`.
fn broken_command(dir: &Path, args: &[&str], fd: Fd, broken: Broken, capture: &Path) -> Command {
    let mut command = filesem();
    if broken == Broken::Closed {
        let script = format!("exec \"$@\" {fd}>&-");
        let mut wrapped = Command::new("sh");
        wrapped
            .args(["-c", &script, "sh", env!("CARGO_BIN_EXE_filesem")])
            .stdin(Stdio::null());
        for key in cli_common::FILESEM_VARS {
            wrapped.env_remove(key);
        }
        command = wrapped;
    }
    command.args(args).current_dir(dir);
    let working = || Stdio::from(fs::File::create(capture).unwrap());
    if fd == 1 {
        command.stdout(broken_stdio(broken)).stderr(working());
    } else {
        command.stdout(working()).stderr(broken_stdio(broken));
    }
    command
}

/// What one invocation did: its exit code, the lines of what it printed (on the streams that
/// worked), and the semaphore's files afterwards.
#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: Vec<String>,
    stderr: Vec<String>,
    files: String,
}

/// One invocation to try with broken output: a semaphore made by `setup` in a fresh
/// directory, `filesem ARGS` run there (the state file is `s.json`), the exit code it must
/// have, and which streams it writes to (so that breaking them is a real test).
struct Scenario {
    setup: fn(&Path),
    args: &'static [&'static str],
    code: i32,
    stdout: bool,
    stderr: bool,
}

/// Setup: nothing (the command creates the semaphore, or finds none).
fn no_semaphore(_: &Path) {}

/// Setup: a capacity-1 semaphore held by the detached hold `h`.
fn full(dir: &Path) {
    take(dir, "h", 1);
}

/// Setup: a capacity-2 semaphore held by `a` and `b`.
fn two_holders(dir: &Path) {
    take(dir, "a", 2);
    take(dir, "b", 2);
}

/// Setup: a holder whose lease ended long ago (reaped with the evidence on stdout).
fn expired(dir: &Path) {
    fs::write(
        dir.join("s.json"),
        r#"{"capacity": 1, "holders": [{"id": "gone", "acquired_at": "2020-01-01T00:00:00Z",
            "token": 1, "slot": 0, "expires_at": "2020-01-01T00:00:01Z", "lease_ms": 1000,
            "detached": true}], "version": 1, "next_token": 2}"#,
    )
    .unwrap();
}

/// Setup: a state file that is not JSON.
fn corrupt(dir: &Path) {
    fs::write(dir.join("s.json"), "{\"capacity\": 2, \"hold").unwrap();
}

/// A detached hold of `id` on `dir/s.json` (created with `capacity`), taken with working output.
fn take(dir: &Path, id: &str, capacity: u32) {
    let (code, _, stderr) = output(filesem().current_dir(dir).args([
        "acquire",
        "-n",
        "-q",
        "-c",
        &capacity.to_string(),
        "s.json",
        "--id",
        id,
    ]));
    assert_eq!(code, 0, "{stderr}");
}

/// The files `filesem` left in `dir`, comparable between runs: names (a corrupt file's time
/// stamp left out), the state document with its times, owner and witness identity reduced to
/// "present", and the witness files by name.
fn files(dir: &Path) -> String {
    let mut out = Vec::new();
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        match name.split_once(".corrupt-") {
            Some((base, _)) => out.push(format!(
                "{base}.corrupt-*: {}",
                fs::read_to_string(&path).unwrap()
            )),
            None if name == "s.json" => {
                let mut doc: serde_json::Value =
                    serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
                mark_volatile(&mut doc);
                out.push(format!("{name}: {doc}"));
            }
            None if path.is_dir() => {
                let mut inside: Vec<String> = fs::read_dir(&path)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                inside.sort();
                out.push(format!("{name}/: {inside:?}"));
            }
            None => out.push(name),
        }
    }
    out.join("\n")
}

/// Replaces the values that differ between two otherwise equal runs (times, the owner's pid,
/// the witness file's inode, a counter started from the clock) by "present".
fn mark_volatile(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if [
                    "acquired_at",
                    "expires_at",
                    "owner",
                    "witness",
                    "next_token",
                ]
                .contains(&key.as_str())
                {
                    *value = "present".into();
                } else {
                    mark_volatile(value);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mark_volatile),
        _ => {}
    }
}

/// Runs `scenario` in a fresh directory; with `broken`, that descriptor broken that way.
fn perform(scenario: &Scenario, broken: Option<(Fd, Broken)>) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let captures = tempfile::tempdir().unwrap();
    (scenario.setup)(dir.path());
    let (out, err) = (captures.path().join("out"), captures.path().join("err"));
    let read = |p: &Path| lines(p);
    let mut child = match broken {
        None => filesem()
            .args(scenario.args)
            .current_dir(dir.path())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
        Some((fd, how)) => {
            let capture = if fd == 1 { &err } else { &out };
            broken_command(dir.path(), scenario.args, fd, how, capture)
                .spawn()
                .unwrap()
        }
    };
    let code = wait(&mut child);
    Outcome {
        code,
        stdout: read(&out),
        stderr: read(&err),
        files: files(dir.path()),
    }
}

/// Runs each scenario with working output, then with stdout and with stderr each closed,
/// without a reader and full: the exit code, the files and the other stream must be those of
/// the working run.
fn check_broken_output(scenarios: &[Scenario]) {
    for scenario in scenarios {
        let args = scenario.args.join(" ");
        let working = perform(scenario, None);
        assert_eq!(
            working.code, scenario.code,
            "`{args}` with working output: {working:?}"
        );
        assert_eq!(
            !working.stdout.is_empty(),
            scenario.stdout,
            "`{args}`: {working:?}"
        );
        assert_eq!(
            !working.stderr.is_empty(),
            scenario.stderr,
            "`{args}`: {working:?}"
        );
        for (fd, printed) in [(1, scenario.stdout), (2, scenario.stderr)] {
            if !printed {
                continue;
            }
            for broken in BROKEN {
                let got = perform(scenario, Some((fd, broken)));
                let case = format!("`{args}` with fd {fd} {broken:?}");
                assert_eq!(got.code, working.code, "{case}: {got:?}");
                assert_eq!(got.files, working.files, "{case}: the files differ");
                // The stream that works says as much as before, and nothing about the other.
                let (other, expected) = if fd == 1 {
                    (&got.stderr, &working.stderr)
                } else {
                    (&got.stdout, &working.stdout)
                };
                assert_eq!(
                    other.len(),
                    expected.len(),
                    "{case}: {other:?} vs {expected:?}"
                );
            }
        }
    }
}

#[test]
fn broken_output_changes_nothing_for_run() {
    // Output errors must not abort run before, while or after its command (9 §2): a created
    // note or a "no slot" message to a gone reader used to exit 101 without running it.
    check_broken_output(&[
        Scenario {
            setup: no_semaphore,
            args: &[
                "run",
                "-v",
                "-c",
                "2",
                "s.json",
                "--",
                "sh",
                "-c",
                "touch ran; exit 3",
            ],
            code: 3,
            stdout: false,
            stderr: true,
        },
        Scenario {
            setup: full,
            args: &["run", "-n", "s.json", "--", "touch", "ran"],
            code: 1,
            stdout: false,
            stderr: true,
        },
    ]);
}

#[test]
fn broken_output_changes_nothing_for_acquire() {
    // The hold is taken (or refused) exactly as with a terminal.
    check_broken_output(&[
        Scenario {
            setup: no_semaphore,
            args: &["acquire", "-v", "-c", "2", "s.json", "--id", "a"],
            code: 0,
            stdout: false,
            stderr: true,
        },
        Scenario {
            setup: full,
            args: &["acquire", "-n", "s.json", "--id", "b"],
            code: 1,
            stdout: false,
            stderr: true,
        },
    ]);
}

#[test]
fn broken_output_changes_nothing_for_release_and_remove() {
    // An unknown ID stays exit 1; removed entries are removed even if nobody reads the list.
    check_broken_output(&[
        Scenario {
            setup: full,
            args: &["release", "s.json", "nobody"],
            code: 1,
            stdout: false,
            stderr: true,
        },
        Scenario {
            setup: two_holders,
            args: &["remove", "s.json", "a", "zz"],
            code: 0,
            stdout: true,
            stderr: false,
        },
    ]);
}

#[test]
fn broken_output_changes_nothing_for_reap() {
    // "nothing to reap" on stderr and the evidence on stdout are both optional to the outcome.
    check_broken_output(&[
        Scenario {
            setup: full,
            args: &["reap", "s.json"],
            code: 0,
            stdout: false,
            stderr: true,
        },
        Scenario {
            setup: expired,
            args: &["reap", "s.json"],
            code: 0,
            stdout: true,
            stderr: false,
        },
    ]);
}

#[test]
fn broken_output_changes_nothing_for_set_capacity_and_recover() {
    // Maintenance commands finish their change and keep their exit code.
    check_broken_output(&[
        Scenario {
            setup: no_semaphore,
            args: &["set-capacity", "s.json", "3"],
            code: 125,
            stdout: false,
            stderr: true,
        },
        Scenario {
            setup: corrupt,
            args: &["recover", "s.json", "-c", "2"],
            code: 0,
            stdout: true,
            stderr: false,
        },
        Scenario {
            setup: full,
            args: &["recover", "s.json", "-c", "2"],
            code: 0,
            stdout: true,
            stderr: true,
        },
    ]);
}

#[test]
fn broken_output_changes_nothing_for_status() {
    // `status | head -1` and `status > /dev/full` exit as status does; errors keep 125.
    check_broken_output(&[
        Scenario {
            setup: full,
            args: &["status", "s.json"],
            code: 0,
            stdout: true,
            stderr: false,
        },
        Scenario {
            setup: full,
            args: &["status", "--json", "s.json"],
            code: 0,
            stdout: true,
            stderr: false,
        },
        Scenario {
            setup: no_semaphore,
            args: &["status", "s.json"],
            code: 125,
            stdout: false,
            stderr: true,
        },
    ]);
}

#[test]
fn broken_output_changes_nothing_for_help_version_and_usage_errors() {
    // clap's own output: 0 for --help and --version, 2 for a usage error, whatever happens
    // to the text; nothing is run or created.
    check_broken_output(&[
        Scenario {
            setup: no_semaphore,
            args: &["--help"],
            code: 0,
            stdout: true,
            stderr: false,
        },
        Scenario {
            setup: no_semaphore,
            args: &["run", "--help"],
            code: 0,
            stdout: true,
            stderr: false,
        },
        Scenario {
            setup: no_semaphore,
            args: &["--version"],
            code: 0,
            stdout: true,
            stderr: false,
        },
        Scenario {
            setup: no_semaphore,
            args: &["run", "--lease", "0", "s.json", "--", "touch", "ran"],
            code: 2,
            stdout: false,
            stderr: true,
        },
        Scenario {
            setup: no_semaphore,
            args: &["no-such-subcommand"],
            code: 2,
            stdout: false,
            stderr: true,
        },
    ]);
}

#[test]
fn kill_on_lost_stops_the_command_even_when_stderr_is_broken() {
    // The worst case of 9 §2: run used to panic while printing "lost", and its command ran
    // on without a slot. Now the command gets SIGTERM and run exits 128 + 15.
    for broken in BROKEN {
        let dir = tempfile::tempdir().unwrap();
        let captures = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // Created beforehand, so that the first thing run prints is the loss.
        let (code, _, stderr) = output(
            filesem()
                .current_dir(dir.path())
                .args(["run", "-q", "s.json", "--", "true"]),
        );
        assert_eq!(code, 0, "{stderr}");
        let script = "echo $$ > pid.tmp && mv pid.tmp pid && exec sleep 60";
        let mut run = broken_command(
            dir.path(),
            &[
                "run",
                "--kill-on-lost",
                "--id",
                "victim",
                "s.json",
                "--",
                "sh",
                "-c",
                script,
            ],
            2,
            broken,
            &captures.path().join("out"),
        )
        .spawn()
        .unwrap();
        let mut ended = None;
        wait_until("the command is started", || {
            ended = run.try_wait().unwrap();
            pid_file.exists() || ended.is_some()
        });
        assert!(
            pid_file.exists(),
            "run ended at once ({ended:?}), stderr {broken:?}"
        );
        let command = Pid::from_raw(
            fs::read_to_string(&pid_file)
                .unwrap()
                .trim()
                .parse()
                .unwrap(),
        );
        let (code, stdout, stderr) = output(
            filesem()
                .current_dir(dir.path())
                .args(["remove", "s.json", "victim"]),
        );
        assert_eq!((code, stdout.trim()), (0, "removed victim"), "{stderr}");
        let code = wait(&mut run);
        if code != 128 + 15 {
            // run is gone without stopping its command: stop it here, then fail.
            let _ = kill(command, Signal::SIGKILL);
        }
        assert_eq!(code, 128 + 15, "stderr {broken:?}: the command got SIGTERM");
    }
}
