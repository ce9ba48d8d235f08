//! Sharing state files with the Go package the seed describes: we read what Go wrote, write
//! what Go reads, and survive a Go rewrite that drops every field Go does not know.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use common::{arg, say};
use filesem::{AcquireOptions, Error, HoldMode, Semaphore};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Copies fixture `name` into `dir` as `sem.json`, with an empty lock file as Go leaves it.
fn copy_fixture(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join("sem.json");
    fs::copy(Path::new(FIXTURES).join(name), &path).unwrap();
    fs::write(dir.join("sem.json.lock"), b"").unwrap();
    path
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Rewrites the file as the Go package would after its own operation: only `capacity` and
/// `holders[{id, acquired_at}]` survive, times in a +09:00 zone with nanoseconds, 2-space
/// indentation, no trailing newline, written in place without our temp-file protocol.
fn go_rewrite(path: &Path) {
    let doc = read_json(path);
    let tokyo = FixedOffset::east_opt(9 * 3600).unwrap();
    let holders: Vec<Value> = doc["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let at: DateTime<Utc> = h["acquired_at"].as_str().unwrap().parse().unwrap();
            json!({
                "id": h["id"],
                "acquired_at": at
                    .with_timezone(&tokyo)
                    .to_rfc3339_opts(SecondsFormat::AutoSi, false),
            })
        })
        .collect();
    let go = json!({ "capacity": doc["capacity"], "holders": holders });
    fs::write(path, serde_json::to_string_pretty(&go).unwrap()).unwrap();
}

/// Checks that the file has the types the Go package unmarshals.
fn assert_go_readable(path: &Path) {
    let doc = read_json(path);
    assert!(doc["capacity"].is_i64(), "capacity is an int: {doc}");
    let holders = doc["holders"].as_array().expect("holders is a list");
    for h in holders {
        assert!(h["id"].is_string(), "id is a string: {h}");
        let at = h["acquired_at"].as_str().expect("acquired_at is a string");
        DateTime::parse_from_rfc3339(at).expect("acquired_at is RFC 3339");
    }
}

#[test]
fn go_fixture_with_two_holders_reads_correctly() {
    // Go's file: capacity 3, two holders with +09:00 nanosecond times and a quote in an ID.
    let dir = tempfile::tempdir().unwrap();
    let path = copy_fixture(dir.path(), "go-written-two-holders.json");
    let before = common::snapshot(dir.path());
    let sem = Semaphore::open_existing(&path).unwrap();
    assert_eq!(sem.capacity().unwrap(), 3);
    assert_eq!(sem.count().unwrap(), 2);
    assert_eq!(sem.available().unwrap(), 1);
    let holders = sem.holders().unwrap();
    let ids: Vec<&str> = holders.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["session-123", "worker \"2\""]);
    let first: DateTime<Utc> = "2026-11-29T08:14:39.996756276Z".parse().unwrap();
    assert_eq!(holders[0].acquired_at, first);
    for h in &holders {
        assert_eq!(h.token, None);
        assert_eq!(h.slot, None);
        assert_eq!(h.mode, HoldMode::Unowned);
        assert!(!h.liveness.is_stale(), "Go's holders are never judged dead");
    }
    assert!(matches!(
        Semaphore::open(&path, 1),
        Err(Error::CapacityMismatch {
            requested: 1,
            on_file: 3,
            ..
        })
    ));
    assert_eq!(
        common::snapshot(dir.path()),
        before,
        "reading changes nothing"
    );
}

#[test]
fn go_fixture_after_release_reads_as_empty() {
    // Go's file after acquire and release: capacity 1, `"holders": []`.
    let dir = tempfile::tempdir().unwrap();
    let path = copy_fixture(dir.path(), "go-written-released.json");
    let sem = Semaphore::open(&path, 1).unwrap();
    assert_eq!(sem.count().unwrap(), 0);
    assert_eq!(sem.available().unwrap(), 1);
    assert!(sem.holders().unwrap().is_empty());
}

#[test]
fn go_holders_can_be_released_and_removed_by_id() {
    // Any ID Go accepted (quotes included) can be released or removed by us.
    let dir = tempfile::tempdir().unwrap();
    let path = copy_fixture(dir.path(), "go-written-two-holders.json");
    let sem = Semaphore::open(&path, 3).unwrap();
    sem.release("worker \"2\"").unwrap();
    assert_eq!(sem.remove(["session-123"]).unwrap(), ["session-123"]);
    assert_eq!(sem.count().unwrap(), 0);
    assert_go_readable(&path);
}

#[test]
fn our_rewrite_of_a_go_file_keeps_the_types_go_reads() {
    // After acquire and release, capacity/holders/id/acquired_at keep Go's types and values.
    let dir = tempfile::tempdir().unwrap();
    let path = copy_fixture(dir.path(), "go-written-two-holders.json");
    let sem = Semaphore::open(&path, 3).unwrap();
    let permit = sem.try_acquire("rust-worker").unwrap();
    assert_go_readable(&path);
    let doc = read_json(&path);
    assert_eq!(doc["capacity"], 3);
    assert_eq!(doc["holders"].as_array().unwrap().len(), 3);
    assert_eq!(doc["holders"][0]["id"], "session-123");
    assert_eq!(doc["holders"][1]["id"], "worker \"2\"");
    assert_eq!(doc["holders"][2]["id"], "rust-worker");
    let go_time: DateTime<Utc> = doc["holders"][0]["acquired_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        go_time,
        "2026-11-29T17:14:39.996756276+09:00"
            .parse::<DateTime<Utc>>()
            .unwrap()
    );
    permit.release().unwrap();
    assert_go_readable(&path);
    let doc = read_json(&path);
    let ids: Vec<&str> = doc["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["session-123", "worker \"2\""]);
    let again = sem.try_acquire("x").unwrap();
    assert_eq!(
        again.slot(),
        0,
        "Go's holders have no slot, so ours start at 0"
    );
}

#[test]
fn permit_still_releases_its_entry_after_a_go_rewrite() {
    // A Go write drops tokens; a live permit finds its entry by (id, acquired_at) and releases
    // only that one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sem.json");
    let sem = Semaphore::open(&path, 3).unwrap();
    let mine = sem.try_acquire("mine").unwrap();
    let other = sem.try_acquire("other").unwrap();
    go_rewrite(&path);
    assert!(sem.holders().unwrap().iter().all(|h| h.token.is_none()));
    mine.release().unwrap();
    let ids: Vec<String> = sem.holders().unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(ids, ["other"]);
    drop(other);
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn permit_whose_id_was_regranted_by_go_is_lost_after_a_go_rewrite() {
    // Same ID, different acquired_at (Go re-acquired it): the stale permit must not release it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sem.json");
    let sem = Semaphore::open(&path, 2).unwrap();
    let stale = sem.try_acquire("job").unwrap();
    let go = json!({
        "capacity": 2,
        "holders": [{"id": "job", "acquired_at": "2030-01-01T09:00:00.123456789+09:00"}],
    });
    fs::write(&path, serde_json::to_string_pretty(&go).unwrap()).unwrap();
    assert!(matches!(stale.release(), Err(Error::Lost { .. })));
    assert_eq!(sem.count().unwrap(), 1);
}

#[test]
fn token_counter_resumes_above_every_token_after_a_go_rewrite() {
    // A Go write loses next_token and every token; new grants must still get larger tokens
    // than any handed out before, or fencing breaks.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sem.json");
    let sem = Semaphore::open(&path, 3).unwrap();
    let mut issued = Vec::new();
    for i in 0..5 {
        let p = sem.try_acquire(&format!("w{i}")).unwrap();
        issued.push(p.token());
    }
    let live = sem.try_acquire("live").unwrap();
    issued.push(live.token());
    go_rewrite(&path);
    assert!(read_json(&path).get("next_token").is_none());
    live.release().unwrap();
    let next = sem.try_acquire("after-go").unwrap();
    let highest = *issued.iter().max().unwrap();
    assert!(
        next.token() > highest,
        "token {} after a Go rewrite repeats or precedes {highest}",
        next.token()
    );
    let again = sem.try_acquire("after-go-2").unwrap();
    assert!(again.token() > next.token());
}

#[test]
fn token_counter_resumes_above_a_visible_token_larger_than_the_counter() {
    // A counter behind a token on file (another writer's doing) is overtaken, never repeated.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sem.json");
    let doc = json!({
        "capacity": 2,
        "next_token": 5,
        "holders": [{"id": "a", "acquired_at": "2024-01-01T10:00:00Z", "token": 9000}],
    });
    fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let sem = Semaphore::open(&path, 2).unwrap();
    assert_eq!(sem.try_acquire("b").unwrap().token(), 9001);
}

#[test]
fn unknown_fields_survive_our_writes() {
    // Fields neither we nor Go know (top level and per holder) are kept by every write.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sem.json");
    let doc = json!({
        "capacity": 3,
        "holders": [
            {"id": "go-1", "acquired_at": "2026-11-29T17:14:39.996756276+09:00",
             "color": "red", "nested": {"k": [1, 2, 3]}},
        ],
        "future_field": {"x": true},
        "schema": "v9",
    });
    fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let sem = Semaphore::open(&path, 3).unwrap();
    let permit = sem.try_acquire("ours").unwrap();
    permit.release().unwrap();
    sem.set_capacity(4).unwrap();
    let after = read_json(&path);
    assert_eq!(after["future_field"], json!({"x": true}));
    assert_eq!(after["schema"], "v9");
    assert_eq!(after["holders"][0]["color"], "red");
    assert_eq!(after["holders"][0]["nested"], json!({"k": [1, 2, 3]}));
    assert_eq!(after["holders"][0]["id"], "go-1");
    assert_eq!(after["capacity"], 4);
    assert_go_readable(&path);
}

// ------------------------------------------- a permit restores its stripped entry

/// Our entry (the one with ID `id`) as on file.
fn entry_of(path: &Path, id: &str) -> Value {
    read_json(path)["holders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no entry {id} in {}", read_json(path)))
}

/// The field names of an entry, sorted.
fn keys(entry: &Value) -> Vec<String> {
    let mut k: Vec<String> = entry.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn a_permit_writes_back_its_stripped_entry_after_every_operation() {
    // Go keeps only id and acquired_at of our entry. renew, is_held, keep and the keep-alive
    // each put back everything the hold records (token, slot, owner, witness, lease and expiry,
    // metadata), so that the hold can still be judged and reaped; Go's own holders stay as Go
    // wrote them.
    for op in ["renew", "is_held", "keep", "keep_alive"] {
        for lease in [Some(filesem::MIN_LEASE * 30), None] {
            // The keep-alive renews every third of the lease: keep its wait short.
            let lease = lease.map(|l| if op == "keep_alive" { l / 10 } else { l });
            let what = format!("{op} with lease {lease:?}");
            let dir = tempfile::tempdir().unwrap();
            let path = copy_fixture(dir.path(), "go-written-two-holders.json");
            let sem = Semaphore::open(&path, 3).unwrap();
            let mut opts = AcquireOptions::new().metadata("job", "42");
            if let Some(l) = lease {
                opts = opts.lease(l);
            }
            let mut permit = Some(sem.try_acquire_with("ours", &opts).unwrap());
            let before = entry_of(&path, "ours");
            assert_eq!(before["owner"]["pid"], std::process::id(), "{what}");
            assert!(before["witness"].is_object(), "{what}");
            assert_eq!(before["lease_ms"].is_u64(), lease.is_some(), "{what}");
            go_rewrite(&path);
            assert_eq!(
                keys(&entry_of(&path, "ours")),
                ["acquired_at", "id"],
                "{what}"
            );

            let mut expected = before.clone();
            match (op, permit.as_mut().unwrap()) {
                ("renew", permit) => {
                    let until = permit.renew().unwrap();
                    assert_eq!(until.is_some(), lease.is_some(), "{what}: never 'no lease'");
                    if let Some(until) = until {
                        expected["expires_at"] =
                            json!(until.to_rfc3339_opts(SecondsFormat::AutoSi, true));
                    }
                }
                ("is_held", permit) => assert!(permit.is_held().unwrap(), "{what}"),
                ("keep", _) => {
                    permit.take().unwrap().keep().unwrap();
                    expected["detached"] = json!(true);
                    expected.as_object_mut().unwrap().remove("witness");
                }
                (_, permit) => {
                    permit.keep_alive().unwrap();
                    common::wait_until(common::deadline(60), "the keep-alive to restore", || {
                        entry_of(&path, "ours").get("owner").is_some()
                    });
                    if lease.is_some() {
                        // It renewed as it restored: only the lease end moved.
                        expected["expires_at"] = entry_of(&path, "ours")["expires_at"].clone();
                        assert!(
                            entry_of(&path, "ours")["expires_at"].as_str()
                                > before["expires_at"].as_str(),
                            "{what}"
                        );
                    }
                }
            }
            assert_eq!(entry_of(&path, "ours"), expected, "{what}");
            for go in ["session-123", "worker \"2\""] {
                assert_eq!(keys(&entry_of(&path, go)), ["acquired_at", "id"], "{what}");
            }
            assert_go_readable(&path);
            if op == "keep" {
                sem.release("ours").unwrap();
            }
            drop(permit);
        }
    }
}

#[test]
fn a_restored_slot_is_ours_unless_someone_else_took_it() {
    // Go drops slots too: ours comes back if it is still free; if a later grant took it, the
    // entry stays without one rather than claim a slot twice.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sem.json");
    let sem = Semaphore::open(&path, 4).unwrap();
    let _first = sem.try_acquire("first").unwrap();
    let ours = sem.try_acquire("ours").unwrap();
    assert_eq!(ours.slot(), 1);
    go_rewrite(&path);
    assert!(ours.is_held().unwrap());
    assert_eq!(entry_of(&path, "ours")["slot"], 1);
    assert_eq!(
        entry_of(&path, "first").get("slot"),
        None,
        "not ours to restore"
    );

    go_rewrite(&path);
    // A grant while both slots are unrecorded takes the lowest index, ours.
    let newcomer = sem.try_acquire("newcomer").unwrap();
    assert_eq!(newcomer.slot(), 0);
    let another = sem.try_acquire("another").unwrap();
    assert_eq!(another.slot(), 1);
    assert!(ours.is_held().unwrap());
    let restored = entry_of(&path, "ours");
    assert_eq!(
        restored.get("slot"),
        None,
        "slot 1 belongs to `another` now"
    );
    assert_eq!(restored["token"], ours.token());
    assert_eq!(restored["owner"]["pid"], std::process::id());
}

/// A child process: takes a slot as `ID` at `PATH` the way `MODE` says (`witness`: a
/// process-bound hold without lease; `lease`: a detached hold with a lease, which only its
/// lease can end; `keep-alive`: a process-bound hold with a lease and a keep-alive), says
/// `held <token>`, then answers the parent's `renew` and `is_held` lines until killed.
fn strip_hold() {
    let sem = Semaphore::open_existing(arg("PATH")).unwrap();
    let opts = match arg("MODE").as_str() {
        "witness" => AcquireOptions::new(),
        "lease" => AcquireOptions::new()
            .detached(true)
            .lease(filesem::MIN_LEASE * 2),
        _ => AcquireOptions::new().lease(filesem::MIN_LEASE * 2),
    };
    let mut permit = sem.try_acquire_with(arg("ID").as_str(), &opts).unwrap();
    if arg("MODE") == "keep-alive" {
        permit.keep_alive().unwrap();
    }
    say(format!("held {}", permit.token()));
    loop {
        match common::wait_for_parent().as_str() {
            "renew" => say(format!("renew {:?}", permit.renew().unwrap().is_some())),
            "is_held" => say(format!("is_held {}", permit.is_held().unwrap())),
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

#[test]
#[ignore = "a child-process role, started by the other tests in this file"]
fn child_process() {
    // Not a test of its own: the body of the processes the tests above start and kill.
    match common::role().as_deref() {
        Some("strip-hold") => strip_hold(),
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}

#[test]
fn a_stripped_hold_of_a_killed_holder_is_reaped_by_its_witness_or_its_lease() {
    // After Go stripped the entry, the holder's next look restores it; once the holder is
    // SIGKILLed, its slot comes back: by the witness lock it no longer holds, or by the lease
    // nobody renews. Without the restore the entry had no owner, witness or lease, and was
    // never reaped.
    for (mode, ask, evidence) in [
        ("witness", Some("is_held"), "witness"),
        ("lease", Some("renew"), "lease expired"),
        ("keep-alive", None, "witness"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = copy_fixture(dir.path(), "go-written-two-holders.json");
        let sem = Semaphore::open(&path, 3).unwrap();
        let mut group = common::Group::new();
        let child = group.spawn(
            common::ChildSpec::new(mode, "child_process", "strip-hold")
                .arg("PATH", path.display())
                .arg("ID", "victim")
                .arg("MODE", mode),
        );
        group.expect(child, "held", common::deadline(30));
        let before = entry_of(&path, "victim");
        go_rewrite(&path);
        assert_eq!(
            keys(&entry_of(&path, "victim")),
            ["acquired_at", "id"],
            "{mode}"
        );
        match ask {
            Some(op) => {
                group.send_all(op);
                let reply = group.expect(child, op, common::deadline(30));
                assert!(reply.ends_with("true"), "{mode}: {reply}");
            }
            None => common::wait_until(common::deadline(60), "the keep-alive to restore", || {
                entry_of(&path, "victim").get("owner").is_some()
            }),
        }
        let restored = entry_of(&path, "victim");
        for field in ["token", "slot", "owner", "witness", "lease_ms", "detached"] {
            assert_eq!(restored.get(field), before.get(field), "{mode}: {field}");
        }
        assert_eq!(restored["owner"]["pid"], group.pid(child), "{mode}");

        group.kill(child, common::deadline(10));
        let reaped = |sem: &Semaphore| sem.reap().unwrap().into_iter().find(|r| r.id == "victim");
        let mut found = None;
        common::wait_until(common::deadline(60), "the victim to be reaped", || {
            found = reaped(&sem);
            found.is_some()
        });
        let found = found.unwrap();
        assert!(
            found.liveness.evidence().contains(evidence),
            "{mode}: {}",
            found.liveness
        );
        let ids: Vec<String> = sem.holders().unwrap().into_iter().map(|h| h.id).collect();
        assert_eq!(
            ids,
            ["session-123", "worker \"2\""],
            "{mode}: Go's holders stay"
        );
    }
}
