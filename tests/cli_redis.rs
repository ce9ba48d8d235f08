//! The `filesem` binary on `redis://` URLs, driven as a shell user would: every subcommand
//! with its output, exit code and the key's JSON afterwards; the passwords (never printed,
//! never exported by `run`); a nested `run`; the exit codes and hints of a stopped server,
//! refused credentials and garbage in the key; the options that do not apply. Each test has
//! its own `redis-server` (SKIPPED without one, a failure under `CI=true`), and every process
//! started here has a deadline.

#[path = "common/cli.rs"]
mod cli_common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_common::{DEADLINE, Finished, filesem, wait_within_deadline};
use redis_server::RedisServer;

/// Runs `command` to its end, its output in files (no pipe can fill up); kills it and fails
/// the test if it takes longer than [`DEADLINE`].
fn finish(mut command: Command) -> Finished {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    command
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap());
    let mut child = command.spawn().expect("start filesem");
    let status = wait_within_deadline(&mut child, &format!("{command:?}"));
    Finished {
        status,
        stdout: fs::read_to_string(out).unwrap(),
        stderr: fs::read_to_string(err).unwrap(),
    }
}

/// `filesem ARGS...` to its end, without REDISCLI_AUTH unless the test sets it.
fn fs_run(args: &[&str]) -> Finished {
    let mut command = filesem();
    command.env_remove("REDISCLI_AUTH").args(args);
    finish(command)
}

/// The key's value as JSON (the state document), read with a plain client.
fn key_json(server: &RedisServer, key: &str) -> serde_json::Value {
    let text = get(server, key).unwrap_or_else(|| panic!("no key {key}"));
    serde_json::from_str(&text).unwrap()
}

/// The key's value, if there is one.
fn get(server: &RedisServer, key: &str) -> Option<String> {
    let client = redis::Client::open(server.server_url()).unwrap();
    let mut con = client.get_connection().unwrap();
    redis::cmd("GET").arg(key).query(&mut con).unwrap()
}

/// The IDs of the holders in a state document.
fn holder_ids(doc: &serde_json::Value) -> Vec<String> {
    doc["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_subcommand_works_on_a_redis_url_and_changes_the_key_as_it_says() {
    // acquire, status (text and JSON), release, remove, reap, set-capacity and recover act
    // on the key exactly as on a file, with the file's exit codes.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("jobs");
    let created = fs_run(&["acquire", "-c", "1", "--id", "a", &url]);
    assert_eq!(created.code(), 0, "{created:?}");
    assert!(
        created
            .stderr
            .contains("created a new semaphore at redis://127.0.0.1:")
            && created.stderr.contains("/0/jobs with capacity 1"),
        "{created:?}"
    );
    let doc = key_json(&server, "jobs");
    assert_eq!(doc["capacity"], 1);
    assert_eq!(holder_ids(&doc), ["a"]);
    // A Redis hold always has a lease (30 s by default): the entry says so.
    assert!(doc["holders"][0]["expires_at"].is_string(), "{doc}");

    let full = fs_run(&["acquire", "-n", "--id", "b", &url]);
    assert_eq!(full.code(), 1, "{full:?}");
    assert!(full.stderr.contains("no available capacity"), "{full:?}");

    let status = fs_run(&["status", "--json", &url]);
    assert_eq!(status.code(), 0, "{status:?}");
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(
        json["path"],
        format!("redis://127.0.0.1:{}/0/jobs", server.port())
    );
    assert_eq!(
        (json["capacity"].clone(), json["count"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(json["holders"][0]["id"], "a");
    assert_eq!(json["holders"][0]["liveness"], "unknown");
    assert!(
        json["holders"][0]["evidence"]
            .as_str()
            .unwrap()
            .contains("lease"),
        "{json}"
    );
    let text = fs_run(&["status", &url]);
    assert_eq!(text.code(), 0);
    assert!(
        text.stdout.starts_with(&format!(
            "redis://127.0.0.1:{}/0/jobs: capacity 1, 1 held, 0 available, 0 waiting",
            server.port()
        )),
        "{text:?}"
    );
    assert!(text.stdout.contains("lease expires in"), "{text:?}");

    assert_eq!(fs_run(&["set-capacity", &url, "2"]).code(), 0);
    assert_eq!(key_json(&server, "jobs")["capacity"], 2);
    assert_eq!(fs_run(&["acquire", "-n", "--id", "b", &url]).code(), 0);
    assert_eq!(holder_ids(&key_json(&server, "jobs")), ["a", "b"]);

    let removed = fs_run(&["remove", &url, "b", "nobody"]);
    assert_eq!(removed.code(), 0, "{removed:?}");
    assert_eq!(removed.stdout, "removed b\n");
    assert_eq!(holder_ids(&key_json(&server, "jobs")), ["a"]);

    assert_eq!(fs_run(&["release", &url, "a"]).code(), 0);
    assert!(holder_ids(&key_json(&server, "jobs")).is_empty());
    let again = fs_run(&["release", &url, "a"]);
    assert_eq!(again.code(), 1, "{again:?}");
    assert!(again.stderr.contains("does not hold"), "{again:?}");

    let reap = fs_run(&["reap", &url]);
    assert_eq!(reap.code(), 0, "{reap:?}");
    assert_eq!(reap.stdout, "");
    assert!(
        reap.stderr.contains("nothing to reap in redis://"),
        "{reap:?}"
    );

    let valid = fs_run(&["recover", "-c", "5", &url]);
    assert_eq!(valid.code(), 0, "{valid:?}");
    assert!(
        valid.stdout.contains("is valid; nothing changed"),
        "{valid:?}"
    );
    assert!(valid.stderr.contains("filesem set-capacity"), "{valid:?}");
    assert_eq!(key_json(&server, "jobs")["capacity"], 2, "left as it was");
}

#[test]
fn a_detached_hold_on_redis_ends_with_its_lease_and_reap_then_has_nothing_left() {
    // Nothing renews a detached hold's lease: after it (and the grace) the entry is stale,
    // and reap removes it, saying so.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("d");
    assert_eq!(
        fs_run(&["acquire", "-c", "1", "--lease", "1s", "--id", "short", &url]).code(),
        0
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reap = fs_run(&["reap", &url]);
        assert_eq!(reap.code(), 0, "{reap:?}");
        if !reap.stdout.is_empty() {
            assert!(
                reap.stdout.starts_with("reaped short (slot 0, token "),
                "{reap:?}"
            );
            assert!(reap.stdout.contains("expired"), "{reap:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the lease never ran out");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(holder_ids(&key_json(&server, "d")).is_empty());
}

#[test]
fn run_exports_the_url_without_its_password_and_a_nested_run_reaches_the_same_semaphore() {
    // FILESEM_PATH names the semaphore without the password, so that filesem puts no
    // password in the command's environment; with the password in REDISCLI_AUTH a nested
    // run on "$FILESEM_PATH" reaches the same key: without --id it is refused (the outer
    // hold's ID), with --id it takes the second slot.
    let password = "pw-Ab3:x@y";
    let Some(server) = RedisServer::start_with_password(password) else {
        return;
    };
    let plain = format!("redis://127.0.0.1:{}/0/nest", server.port());
    let script = r#"
        echo "PATH=$FILESEM_PATH"
        echo "ID=$FILESEM_ID"
        env | grep -v -e '^REDISCLI_AUTH=' -e '^SECRET=' | grep -c -F "$SECRET"
        "$FILESEM" run -n "$FILESEM_PATH" true; echo "same-id=$?"
        "$FILESEM" run -n --id inner "$FILESEM_PATH" sh -c 'echo "inner=$FILESEM_PATH"; "$FILESEM" status --json "$FILESEM_PATH"'
        echo "other-id=$?"
    "#;
    let mut command = filesem();
    command
        .env("REDISCLI_AUTH", password)
        .env("SECRET", "pw-Ab3")
        .env("FILESEM", env!("CARGO_BIN_EXE_filesem"))
        .args([
            "run", "-c", "2", "--id", "outer", &plain, "--", "sh", "-c", script,
        ]);
    let done = finish(command);
    assert_eq!(done.code(), 0, "{done:?}");
    let out = &done.stdout;
    assert!(out.contains(&format!("PATH={plain}\n")), "{done:?}");
    assert!(out.contains("ID=outer\n"), "{done:?}");
    assert!(
        out.contains("\n0\n"),
        "no variable of filesem's has it: {done:?}"
    );
    assert!(out.contains("same-id=1\n"), "{done:?}");
    assert!(out.contains(&format!("inner={plain}\n")), "{done:?}");
    assert!(out.contains("other-id=0\n"), "{done:?}");
    // The nested status saw both holds on the same key.
    assert!(
        out.contains("\"id\": \"outer\"") && out.contains("\"id\": \"inner\""),
        "{done:?}"
    );
    assert!(done.stderr.contains("already holds"), "{done:?}");
    assert!(
        !out.contains(password) && !done.stderr.contains(password),
        "{done:?}"
    );
    assert!(
        holder_ids(&key_json(&server, "nest")).is_empty(),
        "all released"
    );

    // The password in the URL instead: still not exported.
    let with_password = server.url("nest");
    let mut command = filesem();
    command.env_remove("REDISCLI_AUTH").args([
        "run",
        &with_password,
        "--",
        "sh",
        "-c",
        "env | grep -c -F pw-Ab3; echo \"PATH=$FILESEM_PATH\"",
    ]);
    let done = finish(command);
    assert_eq!(done.code(), 0, "{done:?}");
    assert_eq!(done.stdout, format!("0\nPATH={plain}\n"), "{done:?}");
}

#[test]
fn a_stopped_or_absent_server_is_exit_125_with_a_hint_that_pings_it() {
    // No hang: the timeouts given end the command, and the hint names the redis-cli
    // command that checks the server.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url("s");
    assert_eq!(fs_run(&["acquire", "-c", "1", "--id", "a", &url]).code(), 0);
    let ping = format!("`redis-cli -h 127.0.0.1 -p {} ping`", server.port());
    server.pause();
    let stopped = fs_run(&[
        "status",
        "--connect-timeout",
        "300ms",
        "--response-timeout",
        "300ms",
        &url,
    ]);
    server.resume();
    assert_eq!(stopped.code(), 125, "{stopped:?}");
    assert!(
        stopped.stderr.contains("did not answer within 300 ms"),
        "{stopped:?}"
    );
    assert!(stopped.stderr.contains(&ping), "{stopped:?}");
    assert_eq!(stopped.stdout, "");
    // It answers again: nothing was lost.
    assert_eq!(holder_ids(&key_json(&server, "s")), ["a"]);

    server.kill();
    let gone = fs_run(&["release", &url, "a"]);
    assert_eq!(gone.code(), 125, "{gone:?}");
    assert!(gone.stderr.contains("cannot connect to Redis"), "{gone:?}");
    assert!(gone.stderr.contains(&ping), "{gone:?}");
}

#[test]
fn refused_credentials_are_exit_125_and_no_password_is_ever_printed() {
    // A wrong password and a missing one are told apart by the server's words; neither the
    // wrong nor the right password appears in any output; the hint names REDISCLI_AUTH.
    let right = "right-Secret-91";
    let Some(server) = RedisServer::start_with_password(right) else {
        return;
    };
    let wrong = format!("redis://:wrong-Secret-17@127.0.0.1:{}/0/k", server.port());
    let refused = fs_run(&["status", &wrong]);
    assert_eq!(refused.code(), 125, "{refused:?}");
    assert!(
        refused.stderr.contains("refused the credentials"),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("REDISCLI_AUTH"), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains(&format!("redis://:***@127.0.0.1:{}/0/k", server.port())),
        "{refused:?}"
    );
    let missing = fs_run(&[
        "status",
        &format!("redis://127.0.0.1:{}/0/k", server.port()),
    ]);
    assert_eq!(missing.code(), 125, "{missing:?}");
    assert!(missing.stderr.contains("NOAUTH"), "{missing:?}");
    let mut with_env = filesem();
    with_env.env("REDISCLI_AUTH", "wrong-Secret-17").args([
        "run",
        "-c",
        "1",
        &format!("redis://127.0.0.1:{}/0/k", server.port()),
        "true",
    ]);
    let env_refused = finish(with_env);
    assert_eq!(env_refused.code(), 125, "{env_refused:?}");
    for done in [&refused, &missing, &env_refused] {
        for secret in ["wrong-Secret", right] {
            assert!(!done.stdout.contains(secret), "{done:?}");
            assert!(!done.stderr.contains(secret), "{done:?}");
        }
    }
    assert_eq!(get(&server, "k"), None, "nothing was created");
}

#[test]
fn garbage_in_the_key_is_exit_125_with_a_recover_hint_that_works_when_pasted() {
    // The hint's command, run as shown (with a capacity), sets the garbage aside and starts
    // afresh; the key is left alone until then.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = redis::Client::open(server.server_url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg("g")
        .arg("not json {")
        .query(&mut con)
        .unwrap();
    let url = server.url("g");
    let corrupt = fs_run(&["status", &url]);
    assert_eq!(corrupt.code(), 125, "{corrupt:?}");
    assert!(corrupt.stderr.contains("is corrupt"), "{corrupt:?}");
    let hint = corrupt
        .stderr
        .lines()
        .find(|l| l.starts_with("filesem: hint: "))
        .unwrap_or_else(|| panic!("no hint: {corrupt:?}"));
    let command = hint.split('`').nth(1).unwrap();
    assert!(command.starts_with("filesem recover "), "{hint}");
    assert_eq!(get(&server, "g").as_deref(), Some("not json {"));
    let pasted = command
        .replacen("filesem", env!("CARGO_BIN_EXE_filesem"), 1)
        .replace("CAPACITY", "2");
    let mut shell = Command::new("sh");
    shell
        .args(["-c", &pasted])
        .env_remove("REDISCLI_AUTH")
        .stdin(Stdio::null());
    let recovered = finish(shell);
    assert_eq!(recovered.code(), 0, "{recovered:?}");
    assert!(
        recovered
            .stdout
            .starts_with("moved the corrupt state to redis://"),
        "{recovered:?}"
    );
    assert_eq!(key_json(&server, "g")["capacity"], 2);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("g.corrupt-*")
        .query(&mut con)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(get(&server, &keys[0]).as_deref(), Some("not json {"));
    assert_eq!(fs_run(&["status", &url]).code(), 0);
}

#[test]
fn options_that_do_not_apply_are_usage_errors_and_a_path_in_front_keeps_a_file() {
    // --mode and --trust-owner on a URL, a Redis option on a file, rediss:// and a bad URL
    // are exit 2 before anything is contacted or created; ./redis://x is a file.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("u");
    for (args, says) in [
        (
            vec!["run", "--mode", "664", &url, "true"],
            "--mode applies to state files",
        ),
        (
            vec!["status", "--trust-owner", "0", &url],
            "--trust-owner applies to state files",
        ),
        (vec!["status", "rediss://127.0.0.1:1/k"], "TLS"),
        (vec!["status", "redis://127.0.0.1:99999/k"], "port"),
    ] {
        let done = fs_run(&args);
        assert_eq!(done.code(), 2, "{args:?}: {done:?}");
        assert!(done.stderr.contains(says), "{args:?}: {done:?}");
    }
    assert_eq!(get(&server, "u"), None, "nothing was created");
    let dir = tempfile::tempdir().unwrap();
    let file = fs_run(&["status", "--connect-timeout", "1s", "./redis://x"]);
    assert_eq!(file.code(), 2, "{file:?}");
    assert!(
        file.stderr
            .contains("--connect-timeout applies to a Redis URL"),
        "{file:?}"
    );
    // A file whose path starts with redis: once a directory is in front.
    fs::create_dir_all(dir.path().join("redis:")).unwrap();
    let mut command = filesem();
    command
        .current_dir(dir.path())
        .args(["acquire", "-c", "1", "--id", "f", "./redis://x"]);
    let made = finish(command);
    assert_eq!(made.code(), 0, "{made:?}");
    assert!(dir.path().join("redis:/x").is_file(), "{made:?}");
}

#[test]
fn a_url_with_white_space_in_front_is_a_usage_error_that_shows_no_password_and_creates_nothing() {
    // ` redis://:PASSWORD@...` (a stray space from quoting) would otherwise be a file path:
    // every subcommand refuses it (exit 2) before creating a directory, without echoing it.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let spaced = format!(
        " {}",
        server
            .url("spaced")
            .replace("redis://", "redis://:hunter2@")
    );
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["run", "-c", "1", spaced.as_str(), "true"],
        vec!["acquire", "-c", "1", "--id", "a", spaced.as_str()],
        vec!["status", spaced.as_str()],
        vec!["release", spaced.as_str(), "a"],
    ] {
        let mut command = filesem();
        command
            .env_remove("REDISCLI_AUTH")
            .current_dir(dir.path())
            .args(&args);
        let done = finish(command);
        assert_eq!(done.code(), 2, "{args:?}: {done:?}");
        assert!(done.stderr.contains("white space in front"), "{done:?}");
        assert!(!done.stderr.contains("hunter2"), "{done:?}");
        assert!(!done.stdout.contains("hunter2"), "{done:?}");
    }
    let made: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(made.is_empty(), "nothing created: {made:?}");
    assert_eq!(get(&server, "spaced"), None, "nor a key");
}

#[test]
fn a_run_whose_server_stops_past_the_lease_kills_the_command_and_says_the_lease_ends_the_hold() {
    // The server stopped for longer than the lease: `run --kill-on-lost` learns the hold is
    // lost, ends the command, cannot release, and its note names the lease (a Redis hold
    // has no witness), never a witness; the entry is on the key until its lease runs out.
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url("stopped");
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut command = filesem();
    command
        .env_remove("REDISCLI_AUTH")
        .args(["run", "-c", "1", "--lease", "2s", "--kill-on-lost"])
        .args(["--connect-timeout", "300ms", "--response-timeout", "300ms"])
        .args([
            &url,
            "--",
            "sh",
            "-c",
            "touch \"$0\"; sleep 60; echo survived",
        ])
        .arg(&started)
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap());
    let mut child = command.spawn().expect("start filesem run");
    let begin = Instant::now();
    while !started.exists() {
        assert!(begin.elapsed() < DEADLINE, "the command never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.pause();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if begin.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("filesem run did not end within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    server.resume();
    let stderr = fs::read_to_string(&err).unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        "",
        "the command was ended"
    );
    assert!(stderr.contains("the hold is lost"), "{stderr}");
    assert!(stderr.contains("sending SIGTERM"), "{stderr}");
    assert!(
        stderr.contains("may still be on the server; it ends when its lease (2 s) runs out"),
        "{stderr}"
    );
    assert!(!stderr.contains("witness"), "{stderr}");
    assert_eq!(key_json(&server, "stopped")["holders"][0]["lease_ms"], 2000);
}

#[test]
fn an_acl_user_with_a_slash_is_exported_escaped_and_a_nested_run_reaches_the_same_server() {
    // User `ci/runner`: FILESEM_PATH keeps the `/` escaped (unescaped it would end the
    // authority and name host `ci`, where a nested run would send REDISCLI_AUTH), has no
    // password marker, and a nested status on it sees the outer hold.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = redis::Client::open(server.server_url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "ci/runner", "on", ">pw-Ab3", "~*", "&*", "+@all"][..])
        .query(&mut con)
        .unwrap();
    let url = format!("redis://ci%2Frunner@127.0.0.1:{}/0/acl", server.port());
    let mut command = filesem();
    command
        .env("REDISCLI_AUTH", "pw-Ab3")
        .env("FILESEM", env!("CARGO_BIN_EXE_filesem"))
        .args(["run", "-c", "1", "--id", "outer", &url, "--", "sh", "-c"])
        .arg(r#"echo "PATH=$FILESEM_PATH"; "$FILESEM" status --json "$FILESEM_PATH""#);
    let done = finish(command);
    assert_eq!(done.code(), 0, "{done:?}");
    assert!(done.stdout.contains(&format!("PATH={url}\n")), "{done:?}");
    let json = done.stdout.split_once('\n').unwrap().1;
    let status: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        status["path"],
        format!("redis://ci%2Frunner:***@127.0.0.1:{}/0/acl", server.port())
    );
    assert_eq!(holder_ids(&status), ["outer"]);
    assert!(!done.stdout.contains("pw-Ab3") && !done.stderr.contains("pw-Ab3"));
}

/// libfaketime, to give one `filesem` process a clock far from the server's; `None` if it is
/// not installed.
fn libfaketime() -> Option<std::path::PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|dir| std::path::Path::new(dir).join("faketime/libfaketime.so.1"))
    .find(|lib| lib.is_file())
}

#[test]
fn status_counts_ages_and_lease_ends_on_the_servers_clock_not_this_machines() {
    // A client clock two minutes ahead must not show a hold within its lease as expired
    // (nor one behind as not yet begun): status computes against the server's TIME, as the
    // verdicts do.
    let Some(lib) = libfaketime() else {
        println!("SKIPPED: libfaketime is not installed (Debian package libfaketime)");
        return;
    };
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url("skew");
    let held = fs_run(&["acquire", "-c", "1", "--id", "held", "--lease", "10m", &url]);
    assert_eq!(held.code(), 0, "{held:?}");
    for offset in ["+120s", "-3600s"] {
        let mut command = filesem();
        command
            .env_remove("REDISCLI_AUTH")
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME", offset)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .args(["status", "--json", &url]);
        let done = finish(command);
        assert_eq!(done.code(), 0, "{offset}: {done:?}");
        let status: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
        let age = status["holders"][0]["age_seconds"].as_f64().unwrap();
        assert!((0.0..100.0).contains(&age), "{offset}: age {age}: {done:?}");

        let mut command = filesem();
        command
            .env_remove("REDISCLI_AUTH")
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME", offset)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .args(["status", &url]);
        let done = finish(command);
        assert_eq!(done.code(), 0, "{offset}: {done:?}");
        assert!(
            done.stdout.contains("lease expires in 9m"),
            "{offset}: {done:?}"
        );
    }
}
