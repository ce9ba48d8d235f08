//! The `filesem` binary where a failure must neither lose state nor mislead: a `recover`
//! that fails or is killed, the modes `recover` sets, lock files tightened by every
//! subcommand, durable changes in a directory that cannot be fsynced, `-n` and `-w` bounding
//! the creation of a semaphore, a semaphore removed under a waiter, an ID from the
//! environment, and a state file of a newer format.
//!
//! Each test reproduces a reported failure and checks the right behaviour. Tests that need
//! other users run as root and start children as throwaway users (uids and gids from 61800)
//! with `setpriv`; tests that inject faults need `strace`, and the full-disk test a private
//! tmpfs (`unshare -m`). Without them a test prints `SKIPPED` and returns. Every process has
//! a deadline and is killed when it runs out.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[path = "common/cli.rs"]
mod cli_common;
mod common;
use cli_common::{FILESEM_VARS, Finished, filesem, wait_until, wait_within_deadline};
use common::can_switch_users;

/// A process started in the background with its output going to files (so that a
/// grandchild that keeps them open cannot block the test), killed if the test ends first.
struct Running {
    child: Child,
    out: tempfile::TempDir,
}

impl Running {
    fn start(command: &mut Command) -> Running {
        let out = tempfile::tempdir().unwrap();
        let file = |name| fs::File::create(out.path().join(name)).unwrap();
        let child = command
            .stdout(file("stdout"))
            .stderr(file("stderr"))
            .spawn()
            .expect("start the process");
        Running { child, out }
    }

    /// Waits for the end (killing the process at the deadline) and collects its output.
    fn finish(mut self) -> Finished {
        let status = wait_within_deadline(&mut self.child, "the process");
        let read = |name| fs::read_to_string(self.out.path().join(name)).unwrap();
        Finished {
            status,
            stdout: read("stdout"),
            stderr: read("stderr"),
        }
    }
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

/// `filesem ARGS...` in `dir`, to its end.
fn filesem_in(dir: &Path, args: &[&str]) -> Finished {
    finish(filesem().current_dir(dir).args(args))
}

/// `filesem ARGS...` in `dir`, which must succeed.
fn ok(dir: &Path, args: &[&str]) -> Finished {
    let out = filesem_in(dir, args);
    assert_eq!(out.code(), 0, "filesem {args:?}: {out:?}");
    out
}

/// `sh -c SCRIPT` in `dir`, with `$F` the built `filesem` and no `FILESEM_*` variables.
fn shell(dir: &Path, script: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .current_dir(dir)
        .args(["-c", script])
        .env("F", env!("CARGO_BIN_EXE_filesem"))
        .stdin(Stdio::null());
    for key in FILESEM_VARS {
        command.env_remove(key);
    }
    command
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The names in `dir` (not recursive) with the text of each file (`None` for anything
/// else), to compare before and after.
fn files(dir: &Path) -> Vec<(String, Option<String>)> {
    let mut all: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let text = e
                .file_type()
                .unwrap()
                .is_file()
                .then(|| String::from_utf8_lossy(&fs::read(e.path()).unwrap()).into_owned());
            (e.file_name().to_string_lossy().into_owned(), text)
        })
        .collect();
    all.sort();
    all
}

/// The token `filesem run` gives its command on the semaphore `sem` (run in `dir`), or the
/// failed run.
fn token_of_a_run(dir: &Path, sem: &str) -> Result<u64, Finished> {
    let out = filesem_in(
        dir,
        &[
            "run",
            "-q",
            sem,
            "--",
            "sh",
            "-c",
            "echo \"$FILESEM_TOKEN\"",
        ],
    );
    match out.code() {
        0 => Ok(out.stdout.trim().parse().expect("a token")),
        _ => Err(out),
    }
}

/// A capacity-2 semaphore `s.json` in `dir` whose two detached holds have tokens 1 and 2,
/// then corrupted by bytes appended to it; returns its bytes.
fn corrupt_semaphore_with_two_tokens(dir: &Path) -> Vec<u8> {
    ok(dir, &["acquire", "-q", "-c", "2", "s.json", "--id", "a"]);
    ok(dir, &["acquire", "-q", "s.json", "--id", "b"]);
    let path = dir.join("s.json");
    let mut bytes = fs::read(&path).unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("\"token\":2"));
    bytes.extend_from_slice(b"garbage");
    fs::write(&path, &bytes).unwrap();
    bytes
}

/// Whether `strace` can trace and inject faults here; prints why not.
fn can_inject_faults(test: &str) -> bool {
    let works = Command::new("strace")
        .args([
            "-f",
            "-o",
            "/dev/null",
            "-e",
            "inject=getpid:retval=1",
            "true",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        println!("SKIPPED: {test}: strace cannot trace and inject faults here");
    }
    works
}

/// `setpriv` wrapping a child as `uid` (primary group `uid`) with the supplementary
/// `groups`, then `program`.
fn as_user(uid: u32, groups: &[u32], program: &str) -> Command {
    let mut command = Command::new("setpriv");
    command.args([format!("--reuid={uid}"), format!("--regid={uid}")]);
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        command.arg(format!("--groups={}", list.join(",")));
    }
    command.arg(program).stdin(Stdio::null());
    for key in FILESEM_VARS {
        command.env_remove(key);
    }
    command
}

/// A base directory that other users may enter (tempfile makes it 0700).
fn shared_base() -> tempfile::TempDir {
    let base = tempfile::tempdir().unwrap();
    chmod(base.path(), 0o755);
    base
}

/// The command in backquotes of the `filesem: hint:` line of `stderr`.
fn hinted_command(stderr: &str) -> String {
    let hint = stderr
        .lines()
        .find(|l| l.starts_with("filesem: hint:"))
        .unwrap_or_else(|| panic!("no hint: {stderr}"));
    let (_, rest) = hint.split_once('`').expect("a command in backquotes");
    let (command, _) = rest.split_once('`').expect("closing backquote");
    command.to_string()
}

/// Runs a hinted command in `sh` in `dir`, with the built `filesem` first in `PATH`.
fn run_hint(dir: &Path, command: &str) -> Finished {
    let bin = Path::new(env!("CARGO_BIN_EXE_filesem")).parent().unwrap();
    let search = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    finish(shell(dir, command).env("PATH", search))
}

// ------------------------------------------------------------------------- recover

#[test]
fn a_recover_whose_write_fails_changes_nothing_and_tokens_never_restart() {
    // A full disk (here: a file size limit) after the corrupt file was moved aside used to
    // leave no state file; the next `run` created a new semaphore and handed out token 1
    // again. Now the failed recover leaves every file as it was, the semaphore stays
    // corrupt (exit 125, never a new one), and a recover that works starts above token 2.
    let dir = tempfile::tempdir().unwrap();
    let bytes = corrupt_semaphore_with_two_tokens(dir.path());
    let before = files(dir.path());
    // The limit applies to recover alone; its stderr goes through a pipe, which the limit
    // does not cover.
    let script = "err=$( (ulimit -f 0; trap '' XFSZ; exec \"$F\" recover s.json -c 2) 2>&1 ); \
                  echo \"$?\"; echo \"$err\"";
    let out = finish(&mut shell(dir.path(), script));
    let (code, message) = out
        .stdout
        .split_once('\n')
        .expect("a code, then the message");
    assert_eq!(code, "125", "{out:?}");
    assert!(message.contains("File too large"), "{out:?}");
    assert_eq!(files(dir.path()), before, "every file as it was");
    let after = token_of_a_run(dir.path(), "s.json").expect_err("still corrupt");
    assert_eq!(after.code(), 125, "{after:?}");
    assert!(after.stderr.contains("is corrupt"), "{after:?}");

    let out = ok(dir.path(), &["recover", "s.json", "-c", "2"]);
    let aside = out
        .stdout
        .split_whitespace()
        .find(|w| w.contains(".corrupt-"))
        .map(|w| w.trim_end_matches(';'))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert_eq!(fs::read(dir.path().join(aside)).unwrap(), bytes);
    let token = token_of_a_run(dir.path(), "s.json").unwrap();
    assert!(token > 2, "token {token} after tokens 1 and 2");
}

#[test]
fn a_recover_on_a_full_tmpfs_leaves_the_state_and_tokens_never_restart() {
    // The reproduction as reported: a 64 KiB tmpfs filled up, `recover` fails with ENOSPC;
    // the state file must still be there (corrupt), and `run` after the disk was freed must
    // fail as corrupt instead of creating a semaphore that hands out token 1.
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("m")).unwrap();
    let script = r#"
        mount -t tmpfs -o size=64k tmpfs m 2>/dev/null || exit 99
        "$F" acquire -q -c 2 m/s.json --id a && "$F" acquire -q m/s.json --id b || exit 98
        printf garbage >> m/s.json
        cp m/s.json corrupt.copy
        dd if=/dev/zero of=m/fill bs=1k count=100 2>/dev/null
        "$F" recover m/s.json -c 2 2>recover.err; echo "recover=$?"
        cmp -s m/s.json corrupt.copy && echo "state=unchanged"
        echo "names=$(ls -A m | tr '\n' ' ')"
        rm m/fill
        "$F" run -q -c 2 m/s.json -- sh -c 'echo "token=$FILESEM_TOKEN"' 2>/dev/null
        echo "run=$?"
    "#;
    let out = finish(
        Command::new("unshare")
            .args(["-m", "sh", "-c", script])
            .current_dir(dir.path())
            .env("F", env!("CARGO_BIN_EXE_filesem"))
            .stdin(Stdio::null()),
    );
    match out.code() {
        99 => {
            println!("SKIPPED: cannot mount a tmpfs in a private mount namespace here");
            return;
        }
        0 => {}
        _ => panic!("{out:?}"),
    }
    let lines: Vec<&str> = out.stdout.lines().collect();
    let recover_err = fs::read_to_string(dir.path().join("recover.err")).unwrap();
    assert!(lines.contains(&"recover=125"), "{lines:?}");
    assert!(
        recover_err.contains("No space left on device"),
        "{recover_err}"
    );
    assert!(lines.contains(&"state=unchanged"), "{lines:?}");
    assert!(
        lines.contains(&"names=fill s.json s.json.lock "),
        "no aside name, no temp file: {lines:?}"
    );
    assert!(lines.contains(&"run=125"), "still corrupt: {lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("token=")), "{lines:?}");
}

#[test]
fn a_recover_killed_at_any_step_leaves_a_state_file_and_tokens_never_restart() {
    // kill -9 between moving the corrupt file aside and writing the new state used to leave
    // no state file (the next `run` handed out token 1 again). Killed before its link, its
    // rename or anywhere between, recover now leaves PATH either corrupt or recovered, the
    // corrupt bytes reachable, and the next run either refused or above token 2.
    if !can_inject_faults("a_recover_killed_at_any_step") {
        return;
    }
    for injection in [
        "linkat:signal=KILL:when=1",
        "renameat:signal=KILL:when=1",
        "renameat:signal=KILL:when=2",
        "fdatasync:signal=KILL:when=1",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let bytes = corrupt_semaphore_with_two_tokens(dir.path());
        let out = finish(
            Command::new("strace")
                .args(["-f", "-o", "/dev/null", "-e"])
                .arg(format!("inject={injection}"))
                .args([
                    env!("CARGO_BIN_EXE_filesem"),
                    "recover",
                    "s.json",
                    "-c",
                    "2",
                ])
                .current_dir(dir.path())
                .stdin(Stdio::null()),
        );
        let state = fs::read(dir.path().join("s.json"))
            .unwrap_or_else(|e| panic!("{injection}: no state file ({e}) after {out:?}"));
        let corrupt = String::from_utf8_lossy(&bytes);
        let kept = files(dir.path())
            .into_iter()
            .any(|(_, text)| text.as_deref() == Some(&*corrupt));
        assert!(kept, "{injection}: the corrupt bytes are gone");
        match token_of_a_run(dir.path(), "s.json") {
            Ok(token) => {
                assert_ne!(state, bytes, "{injection}");
                assert!(token > 2, "{injection}: token {token} after tokens 1 and 2");
            }
            Err(refused) => {
                assert_eq!(state, bytes, "{injection}: {refused:?}");
                assert_eq!(refused.code(), 125, "{injection}: {refused:?}");
            }
        }
    }
}

#[test]
fn recover_derives_every_mode_from_the_sanitized_one() {
    // A group member plants a 0666 corrupt file in a setgid group directory; root's recover
    // made the state 0664 but the lock file 0666, so any local user could flock it and stall
    // the semaphore. Now the lock file is 0660, a user outside the group cannot open it, and
    // an existing lock file of root's that grants too much is tightened; execute bits of the
    // corrupt file are never passed on.
    if !can_switch_users("recover_derives_every_mode_from_the_sanitized_one") {
        return;
    }
    let (member, outsider, group) = (61811, 61812, 61810);
    let base = shared_base();
    let g = base.path().join("g");
    fs::create_dir(&g).unwrap();
    std::os::unix::fs::chown(&g, Some(0), Some(group)).unwrap();
    chmod(&g, 0o2775);
    let planted = finish(
        as_user(member, &[group], "sh")
            .current_dir(base.path())
            .args(["-c", "echo garbage > g/s.json && chmod 666 g/s.json"]),
    );
    assert_eq!(planted.code(), 0, "{planted:?}");
    ok(base.path(), &["recover", "g/s.json", "-c", "2"]);
    assert_eq!(mode_of(&g.join("s.json")), 0o664);
    assert_eq!(mode_of(&g.join("s.json.lock")), 0o660);
    let stall = finish(
        as_user(outsider, &[], "flock")
            .current_dir(base.path())
            .args(["-n", "g/s.json.lock", "true"]),
    );
    assert_ne!(stall.code(), 0, "{stall:?}");
    assert!(stall.stderr.contains("Permission denied"), "{stall:?}");
    ok(base.path(), &["run", "-n", "g/s.json", "--", "true"]);

    // Again with execute bits on the corrupt file and a lock file of root's left at 0666.
    fs::write(g.join("s.json"), b"garbage").unwrap();
    chmod(&g.join("s.json"), 0o775);
    chmod(&g.join("s.json.lock"), 0o666);
    ok(base.path(), &["recover", "g/s.json", "-c", "2"]);
    assert_eq!(mode_of(&g.join("s.json")), 0o664);
    assert_eq!(mode_of(&g.join("s.json.lock")), 0o660);
}

#[test]
fn a_recover_that_may_not_link_the_corrupt_file_keeps_a_copy() {
    // With fs.protected_hardlinks, a group member may not link another member's 0644 file,
    // though the directory lets them replace it: recover then copies the corrupt bytes to the
    // aside name (its own file), and still never leaves the path without a state file.
    if !can_switch_users("a_recover_that_may_not_link_the_corrupt_file_keeps_a_copy") {
        return;
    }
    let protected =
        fs::read_to_string("/proc/sys/fs/protected_hardlinks").is_ok_and(|v| v.trim() == "1");
    if !protected {
        println!("SKIPPED: fs.protected_hardlinks is off, so every link succeeds");
        return;
    }
    let (writer, recoverer, group) = (61831, 61832, 61830);
    let base = shared_base();
    let g = base.path().join("g");
    fs::create_dir(&g).unwrap();
    std::os::unix::fs::chown(&g, Some(0), Some(group)).unwrap();
    chmod(&g, 0o2775);
    let planted = finish(
        as_user(writer, &[group], "sh")
            .current_dir(base.path())
            .args(["-c", "printf garbage > g/s.json && chmod 644 g/s.json"]),
    );
    assert_eq!(planted.code(), 0, "{planted:?}");
    let out = finish(
        as_user(recoverer, &[group], env!("CARGO_BIN_EXE_filesem"))
            .current_dir(base.path())
            .args(["recover", "g/s.json", "-c", "2"]),
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let aside: Vec<PathBuf> = fs::read_dir(&g)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(fs::read(&aside[0]).unwrap(), b"garbage");
    let copy = fs::metadata(&aside[0]).unwrap();
    assert_eq!(copy.uid(), recoverer, "a copy of the recovering user");
    assert_eq!(copy.permissions().mode() & 0o7777, 0o644);
    ok(base.path(), &["status", "g/s.json"]);
}

// ----------------------------------------------------------------------- lock modes

#[test]
fn every_subcommand_that_takes_the_lock_tightens_an_old_lock_file() {
    // A 0644 lock file (older versions, the Go package) lets users who may only read the
    // state flock it. Only a library `open` used to tighten it, and the command line opens
    // with `open_existing`: now every step of the lock file's owner does, whichever command
    // takes it. `status` takes no lock and changes nothing.
    let cases: [&[&str]; 8] = [
        &["run", "s.json", "--", "true"],
        &["acquire", "s.json", "--id", "x"],
        &["release", "s.json", "held"],
        &["remove", "s.json", "nobody"],
        &["reap", "-q", "s.json"],
        &["set-capacity", "s.json", "3"],
        &["recover", "s.json", "-c", "2"],
        &["status", "s.json"],
    ];
    for args in cases {
        let dir = tempfile::tempdir().unwrap();
        ok(
            dir.path(),
            &["acquire", "-q", "-c", "2", "s.json", "--id", "held"],
        );
        let lock = dir.path().join("s.json.lock");
        chmod(&lock, 0o644);
        ok(dir.path(), args);
        let expected = if args[0] == "status" { 0o644 } else { 0o600 };
        assert_eq!(mode_of(&lock), expected, "filesem {args:?}");
    }
}

// ------------------------------------------------------------------------ durability

#[test]
fn a_durable_change_in_a_directory_this_user_may_not_read_fails_before_changing_anything() {
    // In a directory the user may write and search but not read (opened O_PATH), the fsync
    // of the directory always fails: `acquire` used to report failure (125) after its hold
    // was written, leaking a detached slot. Now it refuses before it changes anything,
    // naming the directory, with a hint that works; queries still work.
    if !can_switch_users("a_durable_change_in_a_directory_this_user_may_not_read") {
        return;
    }
    let user = 61821;
    let base = shared_base();
    let wx = base.path().join("wx");
    ok(
        base.path(),
        &[
            "run",
            "-q",
            "--mode",
            "666",
            "-c",
            "1",
            "wx/s.json",
            "--",
            "true",
        ],
    );
    chmod(&wx, 0o733);
    let before = files(&wx);
    let witnesses = || fs::read_dir(wx.join("s.json.witness")).unwrap().count();
    let program = env!("CARGO_BIN_EXE_filesem");
    let out = finish(as_user(user, &[], program).current_dir(base.path()).args([
        "acquire",
        "wx/s.json",
        "--id",
        "sess",
    ]));
    assert_eq!(out.code(), 125, "{out:?}");
    let first = out.stderr.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        "filesem: cannot make a durable change to semaphore `wx/s.json`: this user may search \
         its directory `wx` but not read it, and a durable change needs an fsync of the \
         directory; nothing was changed"
    );
    assert_eq!(files(&wx), before, "nothing changed");
    assert_eq!(witnesses(), 0, "no witness left");
    let status = finish(
        as_user(user, &[], program)
            .current_dir(base.path())
            .args(["status", "wx/s.json"]),
    );
    assert_eq!(status.code(), 0, "{status:?}");
    let hint = hinted_command(&out.stderr);
    assert_eq!(hint, "chmod o+r wx");
    assert_eq!(run_hint(base.path(), &hint).code(), 0);
    let again = finish(as_user(user, &[], program).current_dir(base.path()).args([
        "acquire",
        "wx/s.json",
        "--id",
        "sess",
    ]));
    assert_eq!(again.code(), 0, "{again:?}");
}

#[test]
fn an_fsync_of_the_directory_that_fails_after_the_rename_reports_the_change_as_made() {
    // The rename is the commit: once it is done every process sees the hold. An fsync of the
    // directory that fails after it used to make `acquire` exit 125 with the hold on file (a
    // leaked slot); now the command reports what the file says (exit 0), and the hold is
    // released as any other.
    if !can_inject_faults("an_fsync_of_the_directory_that_fails_after_the_rename") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    ok(
        dir.path(),
        &["run", "-q", "-c", "1", "s.json", "--", "true"],
    );
    let out = finish(
        Command::new("strace")
            .args(["-f", "-o", "/dev/null", "-e", "trace=fsync", "-e"])
            .arg("inject=fsync:error=EIO")
            .args([
                env!("CARGO_BIN_EXE_filesem"),
                "acquire",
                "s.json",
                "--id",
                "sess",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null()),
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let status = ok(dir.path(), &["status", "--json", "s.json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["holders"][0]["id"], "sess", "{status}");
    ok(dir.path(), &["release", "s.json", "sess"]);
}

// ------------------------------------------------------------------------- deadlines

#[test]
fn n_and_w_bound_the_creation_of_a_semaphore_too() {
    // With the lock file held by a stopped process and no state file yet, `run -w 2` and
    // `run -n` waited the 10 s lock timeout for the creating step, then exited 125 (and
    // printed despite -q). Now the deadline bounds the creation as well: the conflict exit
    // code, the "state lock busy" message, silence with -q, and nothing created.
    use nix::fcntl::{Flock, FlockArg};
    let dir = tempfile::tempdir().unwrap();
    let lock_path = dir.path().join("s.json.lock");
    fs::write(&lock_path, b"").unwrap();
    chmod(&lock_path, 0o600);
    let lock = Flock::lock(fs::File::open(&lock_path).unwrap(), FlockArg::LockExclusive).unwrap();

    let quiet = filesem_in(
        dir.path(),
        &["run", "-q", "-w", "1", "s.json", "--", "true"],
    );
    assert_eq!((quiet.code(), quiet.stderr.as_str()), (1, ""), "{quiet:?}");
    for args in [
        &["run", "-n", "-c", "1", "s.json", "--", "true"][..],
        &["acquire", "-n", "s.json", "--id", "x"],
        &["acquire", "-w", "0.5", "s.json", "--id", "x"],
    ] {
        let out = filesem_in(dir.path(), args);
        assert_eq!(out.code(), 1, "{args:?}: {out:?}");
        assert!(
            out.stderr
                .starts_with("filesem: no slot: the state lock `s.json.lock` was busy for"),
            "{args:?}: {out:?}"
        );
    }
    let conflict = filesem_in(
        dir.path(),
        &["run", "-n", "-E", "75", "s.json", "--", "true"],
    );
    assert_eq!(conflict.code(), 75, "{conflict:?}");
    assert!(!dir.path().join("s.json").exists(), "nothing created");

    drop(lock);
    let created = filesem_in(
        dir.path(),
        &["run", "-n", "-c", "1", "s.json", "--", "true"],
    );
    assert_eq!(created.code(), 0, "{created:?}");
}

// --------------------------------------------------------------------------- removal

#[test]
fn a_semaphore_removed_under_a_waiter_says_so_with_a_hint_that_works() {
    // `rm -rf` deletes the state file before the directory, so a waiter saw "no semaphore
    // at" (exit 125, no hint). Now it says that the semaphore (or its directory) was
    // removed, with the hint to run the same command again, which works.
    for whole_directory in [false, true] {
        let base = tempfile::tempdir().unwrap();
        let v = base.path().join("v");
        ok(
            base.path(),
            &["acquire", "-q", "-c", "1", "v/s.json", "--id", "h"],
        );
        let waiter = Running::start(
            filesem()
                .current_dir(base.path())
                .args(["run", "v/s.json", "--id", "w", "--", "true"]),
        );
        wait_until("the waiter queues", || {
            let out = filesem_in(base.path(), &["status", "--json", "v/s.json"]);
            out.code() == 0 && out.stdout.contains("\"id\": \"w\"")
        });
        if whole_directory {
            fs::remove_dir_all(&v).unwrap();
        } else {
            fs::remove_file(v.join("s.json")).unwrap();
        }
        let out = waiter.finish();
        assert_eq!(out.code(), 125, "{out:?}");
        let first = out.stderr.lines().next().unwrap_or_default();
        let removed =
            "filesem: semaphore `v/s.json` was removed while in use: its state file is gone";
        let gone = "filesem: the directory of semaphore `v/s.json` was removed after the \
                    semaphore was opened; open it again where it now is";
        if whole_directory {
            assert!(first == removed || first == gone, "{out:?}");
        } else {
            assert_eq!(first, removed, "{out:?}");
        }
        let hint = hinted_command(&out.stderr);
        assert_eq!(hint, "filesem run v/s.json --id w -- true");
        let again = run_hint(base.path(), &hint);
        assert_eq!(again.code(), 0, "{again:?}");
    }
}

// ---------------------------------------------------------------------- smaller ones

#[test]
fn an_invalid_id_from_filesem_id_says_where_it_came_from() {
    // A `run` nested in another on the same semaphore takes the outer ID from FILESEM_ID;
    // an invalid one there said only "invalid holder ID", although the user typed none.
    let dir = tempfile::tempdir().unwrap();
    ok(
        dir.path(),
        &["run", "-q", "-c", "2", "s.json", "--", "true"],
    );
    let resolved: PathBuf = fs::canonicalize(dir.path()).unwrap().join("s.json");
    let nested = |args: &[&str]| {
        finish(
            filesem()
                .current_dir(dir.path())
                .env("FILESEM_PATH", &resolved)
                .env("FILESEM_ID", "bad\nid")
                .args(args),
        )
    };
    let out = nested(&["run", "s.json", "--", "true"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr
            .starts_with("filesem: invalid holder ID \"bad\\nid\""),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(
            "filesem: hint: the ID came from the environment variable FILESEM_ID, which an \
             enclosing `filesem run` on this semaphore sets (or which was inherited); give --id"
        ),
        "{out:?}"
    );
    // An ID the user typed is their own: no word about FILESEM_ID.
    let typed = nested(&["run", "--id", "bad\tid", "s.json", "--", "true"]);
    assert_eq!(typed.code(), 2, "{typed:?}");
    assert!(!typed.stderr.contains("FILESEM_ID"), "{typed:?}");
}

#[test]
fn a_state_file_of_a_newer_format_is_shown_but_never_rewritten() {
    // `"version": 2` was accepted and rewritten as version 2 by a filesem that writes version
    // 1. Now every command that may write refuses it (exit 125), naming both versions, and
    // leaves it as it was; the hint's `status` shows it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let newer = r#"{"capacity": 2, "version": 2, "holders": []}"#;
    fs::write(&path, newer).unwrap();
    let out = filesem_in(dir.path(), &["run", "s.json", "--", "true"]);
    assert_eq!(out.code(), 125, "{out:?}");
    assert!(
        out.stderr.starts_with(
            "filesem: semaphore `s.json` is in format version 2, newer than version 1 that \
             this filesem writes"
        ),
        "{out:?}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), newer);
    let hint = hinted_command(&out.stderr);
    assert_eq!(hint, "filesem status s.json");
    let shown = run_hint(dir.path(), &hint);
    assert_eq!(shown.code(), 0, "{shown:?}");
    assert!(shown.stdout.contains("capacity 2"), "{shown:?}");
}
