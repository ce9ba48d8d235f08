//! The examples run and succeed: `workers` (the main job, shown in the README), `basic` and
//! `shared`. The first test to need them builds them with the `cargo` that runs the tests
//! (into the same target directory), so a stale example binary is never what gets tested.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[cfg(feature = "redis")]
#[path = "common/redis_server.rs"]
mod redis_server;

/// The built example `name`: `cargo build --example ...` once, into this test's target dir.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // current_exe is <target>/<profile>/deps/examples-<hash>.
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .ok_or("no profile dir")?;
        let target_dir = profile_dir.parent().ok_or("no target dir")?;
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--quiet",
                "--example",
                "workers",
                "--example",
                "basic",
            ])
            .args(["--example", "shared", "--target-dir"])
            .arg(target_dir);
        // The features of this test build, so that `workers --redis` is there when they
        // include `redis`, and the library built for the tests is reused.
        let features: Vec<&str> = [
            ("cli", cfg!(feature = "cli")),
            ("redis", cfg!(feature = "redis")),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        if !features.is_empty() {
            cargo.args(["--features", &features.join(",")]);
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let out = run(cargo, Duration::from_secs(600));
        if !out.status.success() {
            return Err(format!(
                "cargo build of the examples failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(profile_dir.join("examples"))
    });
    match dir {
        Ok(dir) => dir.join(name),
        Err(e) => panic!("{e}"),
    }
}

/// Runs `cmd` to completion, killing it if it takes longer than `limit`.
fn run(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start command");
    let deadline = Instant::now() + limit;
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = loop {
        match child.try_wait().unwrap() {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not finish within {limit:?}");
            }
        }
    };
    Output {
        status,
        stdout: out.join().unwrap().into_bytes(),
        stderr: err.join().unwrap().into_bytes(),
    }
}

#[test]
fn workers_example_shares_the_semaphore_without_exceeding_capacity() {
    // The main job runs as shown in the README and reports success with zero violations.
    let exe = example("workers");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--workers",
        "4",
        "--capacity",
        "2",
        "--cycles",
        "3",
        "--hold-ms",
        "20",
    ]);
    let out = run(cmd, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("4 workers x 3 cycles = 12 grants"),
        "{stdout}"
    );
    assert!(stdout.contains(", 0 violations"), "{stdout}");
    assert!(stdout.contains("OK: never more than 2 inside"), "{stdout}");
    assert!(
        stdout.contains("count 0, available 2 of 2, holders: none"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("entered slot").count(), 12);
    // The demo's own capacity checker is not called a witness (the library's liveness files
    // are), so the two cannot be confused.
    assert!(
        stdout.contains("checker:") && stdout.contains("(checker: "),
        "{stdout}"
    );
    assert!(!stdout.to_lowercase().contains("witness:"), "{stdout}");
}

#[test]
fn workers_example_kill_shows_the_dead_holders_slot_coming_back() {
    // A worker SIGKILLed mid-hold is judged dead and its slot is granted again unprompted.
    let mut cmd = Command::new(example("workers"));
    cmd.args([
        "--workers",
        "4",
        "--cycles",
        "2",
        "--hold-ms",
        "50",
        "--kill",
        "2",
    ]);
    let out = run(cmd, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("worker-2   KILLED with SIGKILL"),
        "{stdout}"
    );
    let verdict = stdout.lines().find(|l| l.contains("its entry")).unwrap();
    assert!(
        // Its witness lock was released; a reaper racing with this look may already have
        // deleted the witness file, leaving the pid as the evidence.
        verdict.contains("dead (witness lock")
            || verdict.contains("dead (pid")
            || verdict.contains("already reaped"),
        "{verdict}"
    );
    assert!(stdout.contains("came back"), "{stdout}");
    // 3 survivors x 2 cycles + the victim's one grant.
    assert!(stdout.contains("= 7 grants"), "{stdout}");
    assert!(stdout.contains("count 0, available 2 of 2"), "{stdout}");
}

/// The timeline of a `workers` run: the lines between its header and the blank line after it.
fn timeline(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("time  worker"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect()
}

/// The time at the start of a timeline line (`  0.215s  worker-1 ...`), in seconds.
fn time_of(line: &str) -> f64 {
    let field = line.split_whitespace().next().unwrap_or_default();
    field
        .strip_suffix('s')
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time at the start of {line:?}"))
}

#[test]
fn workers_example_prints_the_timeline_in_time_order_with_the_kill_in_its_place() {
    // Lines from several pipes are reordered by the time they happened, and the crash demo's
    // own lines sit where they happened in time: after the victim entered, before the slot
    // came back. A long --window-ms makes the order depend only on the reorder buffer's
    // merge, not on how fast the pipes are on a busy machine.
    let mut cmd = Command::new(example("workers"));
    cmd.args([
        "--workers",
        "4",
        "--cycles",
        "2",
        "--hold-ms",
        "40",
        "--kill",
        "3",
        "--window-ms",
        "30000",
    ]);
    let out = run(cmd, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}");
    let lines = timeline(&stdout);
    let times: Vec<f64> = lines.iter().map(|l| time_of(l)).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "times go backwards:\n{}",
        lines.join("\n")
    );
    let position = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{}", lines.join("\n")))
    };
    let killed = position("KILLED with SIGKILL");
    let slot = lines[killed].rsplit(' ').find(|w| !w.is_empty()).unwrap();
    let entered = lines[..killed]
        .iter()
        .rposition(|l| l.contains("worker-3") && l.contains("entered slot"))
        .expect("the victim entered before it was killed");
    assert!(lines[entered].contains(&format!("entered slot {slot} ")));
    assert!(position("its entry") > killed, "{}", lines.join("\n"));
    let back = position("came back");
    assert!(back > killed, "{}", lines.join("\n"));
    assert!(
        lines[back - 1].contains(&format!("entered slot {slot} ")),
        "the slot came back with the entry that took it: {}",
        lines.join("\n")
    );
}

#[test]
fn workers_example_refuses_bad_arguments_with_status_two() {
    // Usage errors are distinguishable from a failed run.
    let exe = example("workers");
    for args in [&["--workers", "0"][..], &["--capacity"], &["--bogus", "1"]] {
        let mut cmd = Command::new(&exe);
        cmd.args(args);
        let out = run(cmd, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    }
}

#[test]
fn workers_example_names_an_unknown_option_and_a_kill_beyond_the_workers() {
    // A typo is reported as what it is, and --kill of a worker that does not exist is refused
    // before any process starts (not discovered as a failed run at the end).
    let exe = example("workers");
    for (args, message) in [
        (&["--bogus"][..], "unknown option --bogus"),
        (&["--bogus=3"], "unknown option --bogus"),
        (
            &["--workers", "3", "--kill", "4"],
            "--kill 4: there are only 3 workers",
        ),
        (&["--kill", "9"], "--kill 9: there are only 5 workers"),
    ] {
        let mut cmd = Command::new(&exe);
        cmd.args(args);
        let out = run(cmd, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing started");
    }
}

#[test]
fn workers_example_refuses_a_semaphore_that_already_has_holders() {
    // The demo's final check needs an empty semaphore; it says so instead of failing later.
    let exe = example("workers");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.json");
    let sem = filesem::Semaphore::open(&path, 2).unwrap();
    sem.try_acquire("squatter").unwrap().keep().unwrap();
    let mut cmd = Command::new(exe);
    cmd.arg("--path").arg(&path);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has 1 holder"));
    assert_eq!(sem.count().unwrap(), 1, "the demo touched nobody's hold");
}

#[test]
fn basic_and_shared_examples_succeed() {
    // The seed's two examples, ported, run to success.
    for name in ["basic", "shared"] {
        let exe = example(name);
        let out = run(Command::new(exe), Duration::from_secs(30));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {stdout}");
        assert!(stdout.contains("done: count 0"), "{name}: {stdout}");
    }
}

#[cfg(feature = "redis")]
#[test]
fn workers_example_shares_a_redis_semaphore_without_exceeding_capacity() {
    // `workers --redis URL`: the same timeline, checker and summary on a Redis key, no
    // violation, and the key empty at the end.
    let Some(server) = redis_server::RedisServer::start() else {
        return;
    };
    let mut cmd = Command::new(example("workers"));
    cmd.args([
        "--workers",
        "4",
        "--capacity",
        "2",
        "--cycles",
        "3",
        "--hold-ms",
        "20",
        "--redis",
        &server.url("workers"),
    ]);
    let out = run(cmd, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = format!("redis://127.0.0.1:{}/0/workers", server.port());
    assert!(stdout.contains(&format!("state key : {shown}")), "{stdout}");
    assert!(
        stdout.contains("4 workers x 3 cycles = 12 grants"),
        "{stdout}"
    );
    assert!(stdout.contains(", 0 violations"), "{stdout}");
    assert!(stdout.contains("OK: never more than 2 inside"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "final state of {shown}:\n  count 0, available 2 of 2, holders: none"
        )),
        "{stdout}"
    );
    assert_eq!(stdout.matches("entered slot").count(), 12);
}

#[cfg(feature = "redis")]
#[test]
fn workers_example_without_a_redis_server_says_so_and_how_to_start_one() {
    // A URL nobody listens at: a clear message and a failure exit, no hang.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut cmd = Command::new(example("workers"));
    cmd.args(["--redis", &format!("redis://127.0.0.1:{port}/0/w")]);
    let out = run(cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no Redis server answers there"), "{stderr}");
    // The hint starts a server where the URL points.
    assert!(
        stderr.contains(&format!(
            "redis-server --port {port} --save '' --appendonly no"
        )),
        "{stderr}"
    );
}

#[cfg(feature = "tokio")]
#[test]
fn async_workers_example_shares_the_semaphore_with_a_second_process_within_capacity() {
    // Tokio tasks in two processes take turns on one file; the example's own checker saw
    // every grant and never more than the capacity inside.
    let exe = example("workers");
    let examples = exe.parent().expect("the examples directory");
    let target_dir = examples
        .parent()
        .and_then(|profile| profile.parent())
        .expect("the target directory");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--features",
            "tokio",
            "--example",
            "async_workers",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    if examples
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "release")
    {
        cargo.arg("--release");
    }
    let built = run(cargo, Duration::from_secs(600));
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let mut cmd = Command::new(examples.join("async_workers"));
    cmd.args(["--tasks", "6", "--capacity", "2", "--cycles", "3"]);
    let out = run(cmd, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 2 processes x 6 tasks x 3 cycles.
    assert!(
        stdout.contains("checker: 36 grants, at most 2 inside (capacity 2), 0 violations")
            || stdout.contains("checker: 36 grants, at most 1 inside (capacity 2), 0 violations"),
        "{stdout}"
    );
    // Both processes print to the same output (the second inherits it).
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": slot ")).count(),
        36,
        "{stdout}"
    );
    assert!(stdout.contains("p2-task-5: slot "), "{stdout}");
}
