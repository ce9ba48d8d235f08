//! The state file's format: fields filesem does not know survive every write byte for byte
//! (at the top level, in every entry, in `owner` and `witness`), and no valid JSON document is
//! ever reported corrupt because of such a field's value.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use filesem::{AcquireOptions, Error, OpenOptions, Semaphore};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn quick() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durable(false).lock_timeout(Duration::from_secs(10));
    o
}

fn text(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

/// What `filesem run` does to the file: open, acquire, release.
fn run_like_cycle(path: &Path, capacity: u32) {
    let sem = quick().open(path, capacity).unwrap();
    sem.try_acquire("run").unwrap().release().unwrap();
}

/// Replaces the one occurrence of `from` in the file at `path` by `to`.
fn edit(path: &Path, from: &str, to: &str) {
    let t = text(path);
    assert_eq!(t.matches(from).count(), 1, "{from:?} in {t}");
    fs::write(path, t.replace(from, to)).unwrap();
}

#[test]
fn the_reproduction_survives_a_run_byte_for_byte() {
    // `"x_u128": 340282366920938463463374607431768211455, "x_dec": 1.10, "x_neg0": -0` came
    // back as 3.402823669209385e+38, 1.1 and -0.0. Now every unknown field keeps its text and
    // its place after the known fields, at the top level and in entries; only the token
    // counter moved (one grant).
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    fs::write(
        &path,
        r#"{"capacity": 2, "x_u128": 340282366920938463463374607431768211455, "holders": [
            {"id": "go", "x_u128": 340282366920938463463374607431768211455, "x_dec": 1.10,
             "acquired_at": "2026-11-29T17:14:39.996756276+09:00", "x_neg0": -0}],
          "version": 1, "next_token": 5, "x_dec": 1.10, "x_neg0": -0, "x_big": 1e400,
          "x_nest": {"b" : [1,2 ], "a":"\ud800"}}"#,
    )
    .unwrap();
    run_like_cycle(&path, 2);
    assert_eq!(
        text(&path),
        concat!(
            r#"{"capacity":2,"holders":[{"id":"go","acquired_at":"2026-11-29T08:14:39.996756276Z","#,
            r#""x_u128":340282366920938463463374607431768211455,"x_dec":1.10,"x_neg0":-0}],"#,
            r#""version":1,"next_token":6,"x_u128":340282366920938463463374607431768211455,"#,
            r#""x_dec":1.10,"x_neg0":-0,"x_big":1e400,"x_nest":{"b" : [1,2 ], "a":"\ud800"}}"#,
            "\n"
        )
    );
    // A second cycle changes nothing but the counter.
    let once = text(&path);
    run_like_cycle(&path, 2);
    assert_eq!(
        text(&path),
        once.replace("\"next_token\":6", "\"next_token\":7")
    );
}

#[test]
fn unknown_fields_in_our_own_entry_its_owner_and_witness_survive_our_writes() {
    // A newer writer adds fields to an entry we hold; our renewals and a hand-off keep them.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    let sem = quick().open(&path, 1).unwrap();
    let permit = sem
        .try_acquire_with(
            "ours",
            &AcquireOptions::new().lease(filesem::MIN_LEASE * 60),
        )
        .unwrap();
    edit(
        &path,
        r#""id":"ours","#,
        r#""id": "ours", "x_u128": 340282366920938463463374607431768211455,"#,
    );
    let pid = format!("\"pid\":{},", std::process::id());
    edit(&path, &pid, &format!("{pid} \"x_dec\": 1.10,"));
    edit(&path, r#""dev":"#, r#""x_neg0": -0, "dev":"#);
    permit.renew().unwrap();
    let after = text(&path);
    // Each written back as it was, after the known fields of its object.
    for field in [
        ",\"x_u128\":340282366920938463463374607431768211455}",
        ",\"x_dec\":1.10}",
        ",\"x_neg0\":-0}",
    ] {
        assert!(after.contains(field), "{field:?} missing from {after}");
    }
    assert!(permit.is_held().unwrap());
    drop(permit);
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn a_go_fixture_with_unknown_fields_keeps_them_through_our_writes() {
    // The Go package's own file, plus fields of a third writer: our acquire and release change
    // our entry and the counter only.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    let go = fs::read_to_string(Path::new(FIXTURES).join("go-written-two-holders.json")).unwrap();
    let extended = go
        .replacen(
            "\"id\": \"session-123\",",
            "\"id\": \"session-123\", \"x_host\": \"b\\u00e9\", \"x_n\": 12345678901234567890123,",
            1,
        )
        .replacen(
            "\"capacity\": 3,",
            "\"capacity\": 3, \"x_schema\": 1.10,",
            1,
        );
    fs::write(&path, &extended).unwrap();
    run_like_cycle(&path, 3);
    let after = text(&path);
    for field in [
        "\"x_schema\":1.10",
        "\"x_host\":\"b\\u00e9\"",
        "\"x_n\":12345678901234567890123",
    ] {
        assert!(after.contains(field), "{field:?} missing from {after}");
    }
    let sem = Semaphore::open_existing(&path).unwrap();
    let ids: Vec<String> = sem.holders().unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(ids, ["session-123", "worker \"2\""]);
}

#[test]
fn repeated_unknown_keys_are_all_kept_and_a_repeated_known_key_is_corrupt() {
    // Unknown data is never dropped, even a repeated key (RFC 8259 leaves its meaning open);
    // two values for a field we use cannot be told apart, so the file is refused unchanged.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    fs::write(
        &path,
        r#"{"capacity": 1, "holders": [], "x": 1, "x": "two", "next_token": 3}"#,
    )
    .unwrap();
    run_like_cycle(&path, 1);
    assert!(
        text(&path).ends_with(",\"x\":1,\"x\":\"two\"}\n"),
        "{}",
        text(&path)
    );

    let bad = r#"{"capacity": 1, "holders": [], "capacity": 2}"#;
    fs::write(&path, bad).unwrap();
    let before = common::snapshot(dir.path());
    match quick()
        .open_existing(&path)
        .and_then(|s| s.try_acquire("a"))
    {
        Err(Error::Corrupt { reason, .. }) => {
            assert!(reason.contains("duplicate field `capacity`"), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(common::snapshot(dir.path()), before);
}

#[test]
fn no_valid_json_value_of_an_unknown_field_makes_the_file_corrupt() {
    // Numbers beyond every numeric type, a lone surrogate, a long string, deep nesting: all
    // valid JSON (RFC 8259), all kept as they are.
    let long = format!("\"{}\"", "x".repeat(1 << 20));
    let deep = format!("{}0{}", "[{\"a\":".repeat(50_000), "}]".repeat(50_000));
    let values = [
        "1e400",
        "-1e-400",
        "340282366920938463463374607431768211455",
        "-0.0e+0",
        "\"\\ud800\\udfff\\u0000\"",
        long.as_str(),
        deep.as_str(),
        "{}",
        "[]",
        "null",
    ];
    for value in values {
        let dir = common::tmpfs_dir();
        let path = dir.path().join("s.json");
        fs::write(
            &path,
            format!(r#"{{"capacity": 1, "holders": [], "x": {value}}}"#),
        )
        .unwrap();
        run_like_cycle(&path, 1);
        let after = text(&path);
        let field = format!(",\"x\":{value}}}\n");
        assert!(after.ends_with(&field), "{}", &value[..value.len().min(40)]);
    }
}

/// A state file of exactly `len` bytes: a valid document padded by an unknown string.
fn state_of_size(dir: &Path, len: usize) -> PathBuf {
    let path = dir.join("s.json");
    let head = r#"{"capacity": 1, "holders": [], "pad": ""#;
    let tail = "\"}";
    let pad = len - head.len() - tail.len();
    fs::write(&path, format!("{head}{}{tail}", "p".repeat(pad))).unwrap();
    path
}

#[test]
fn the_one_limit_left_is_the_file_size_of_64_mib() {
    // Unknown values have no nesting limit (serde_json skips them without recursion); what
    // remains is the state file's size limit: 64 MiB is read and rewritten, one byte more is
    // Corrupt and left alone.
    let max = 64 << 20;
    let dir = common::tmpfs_dir();
    let path = state_of_size(dir.path(), max);
    let sem = quick().open_existing(&path).unwrap();
    assert_eq!(sem.holders().unwrap().len(), 0);
    drop(sem);
    let dir = common::tmpfs_dir();
    let path = state_of_size(dir.path(), max + 1);
    let before = common::snapshot(dir.path());
    match quick().open_existing(&path) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("more than"), "{reason}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(common::snapshot(dir.path()), before);
}

#[test]
fn a_newer_format_version_is_read_but_never_rewritten() {
    // A state file in a format this crate does not know may give its fields meanings this
    // crate cannot keep: every operation that may write refuses it, naming both versions, and
    // leaves it byte for byte; queries still read the fields they know.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    let newer = r#"{"capacity": 2, "version": 2, "holders": [{"id": "v2-job",
        "acquired_at": "2024-01-01T10:00:00Z", "x_v2": {"lease": "elsewhere"}}]}"#;
    fs::write(&path, newer).unwrap();
    let sem = quick().open_existing(&path).unwrap();
    assert_eq!(sem.capacity().unwrap(), 2);
    assert_eq!(sem.holders().unwrap()[0].id, "v2-job");
    assert_eq!(sem.available().unwrap(), 1);
    let refused = |what: &str, result: Result<(), Error>| match result {
        Err(Error::UnsupportedVersion {
            path: p,
            version: 2,
            supported: 1,
        }) => assert_eq!(p, path, "{what}"),
        other => panic!("{what}: expected UnsupportedVersion, got {other:?}"),
    };
    refused("try_acquire", sem.try_acquire("a").map(drop));
    refused(
        "acquire_timeout",
        sem.acquire_timeout("a", Duration::from_millis(50))
            .map(drop),
    );
    refused("release", sem.release("v2-job"));
    refused("remove", sem.remove(["v2-job"]).map(drop));
    refused("reap", sem.reap().map(drop));
    refused("set_capacity", sem.set_capacity(3));
    refused("open", quick().open(&path, 2).map(drop));
    let recovered = quick().recover(&path, 2).unwrap();
    assert_eq!(recovered.moved_to, None, "a valid file is not recovered");
    assert_eq!(text(&path), newer);
    let message = sem.set_capacity(3).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "semaphore `{}` is in format version 2, newer than version 1 that this filesem \
             writes: it can be queried, but only a newer filesem may change it",
            path.display()
        )
    );
}

#[test]
fn an_id_with_a_lone_surrogate_escape_is_listed_and_removed_as_go_reads_it() {
    // `"\ud800"` is valid JSON that no Rust string holds; the Go package reads it as U+FFFD.
    // So does filesem: the file is not corrupt, the holder is listed with U+FFFD and removed
    // by that ID, and the fields around it survive the rewrite.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    fs::write(
        &path,
        r#"{"capacity": 2, "holders": [
            {"id": "job-\ud800", "acquired_at": "2024-01-01T10:00:00Z", "x_dec": 1.10},
            {"id": "other", "acquired_at": "2024-01-01T10:00:01Z"}], "x_top": "\udfff"}"#,
    )
    .unwrap();
    let sem = quick().open_existing(&path).unwrap();
    let ids: Vec<String> = sem.holders().unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(ids, ["job-\u{fffd}", "other"]);
    assert_eq!(sem.remove(["job-\u{fffd}"]).unwrap(), ["job-\u{fffd}"]);
    let ids: Vec<String> = sem.holders().unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(ids, ["other"]);
    assert!(
        text(&path).contains(r#""x_top":"\udfff""#),
        "{}",
        text(&path)
    );
}

#[test]
fn a_priority_outside_32_bits_is_corrupt_naming_it_and_the_file_stays() {
    // The file format limits a waiter's priority to a signed 32-bit integer (documented):
    // a larger one cannot be kept as it is, so the file is corrupt, the reason names the
    // priority, and nothing is changed.
    let dir = common::tmpfs_dir();
    let path = dir.path().join("s.json");
    for priority in ["2147483648", "-2147483649"] {
        let doc = format!(
            r#"{{"capacity": 1, "holders": [], "waiters": [{{"id": "w",
                "acquired_at": "2024-01-01T10:00:00Z", "ticket": 3, "priority": {priority}}}]}}"#
        );
        fs::write(&path, &doc).unwrap();
        match Semaphore::open_existing(&path) {
            Err(Error::Corrupt { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(
                    reason.contains(&format!(
                        "priority {priority} is outside the signed 32-bit range"
                    )),
                    "{reason}"
                );
            }
            other => panic!("priority {priority}: expected Corrupt, got {other:?}"),
        }
        assert_eq!(text(&path), doc);
    }
    // The edges of the range are fine.
    for priority in [i32::MIN, i32::MAX] {
        let doc = format!(
            r#"{{"capacity": 1, "holders": [], "waiters": [{{"id": "w",
                "acquired_at": "2024-01-01T10:00:00Z", "ticket": 3, "priority": {priority}}}]}}"#
        );
        fs::write(&path, &doc).unwrap();
        let sem = Semaphore::open_existing(&path).unwrap();
        assert_eq!(sem.waiters().unwrap()[0].priority, priority);
    }
}
