//! Attacks on `filesem run` and friends: nesting through symlinks and relative paths, hostile
//! IDs, commands that are not programs, no terminal and no stdin, and signals sent to the
//! whole process group. Every process has a deadline and is killed when it runs out.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[path = "common/cli.rs"]
mod cli_common;
use cli_common::{DEADLINE, filesem, lines, wait_until};

/// Waits for `child` (killing it at the deadline); returns its exit code (128 + signal).
fn wait(child: &mut Child) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap());
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not end within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
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
#[ignore = "known limitation (README: `kill -TERM -PGID` reaches the command twice): a signal \
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
