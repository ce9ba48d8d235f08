//! Bad input (DESIGN.md section 4): every case gets a typed error that names the path, and
//! every file is left byte-for-byte as it was (compared with a snapshot of the directory).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ChildSpec, Group, arg, say, snapshot};
use filesem::{Error, OpenOptions, Semaphore, UntrustedKind};

/// A semaphore of capacity 2 with one kept holder, so the file has tokens and slots.
fn valid_semaphore(dir: &Path) -> (PathBuf, Semaphore) {
    let path = dir.join("sem.json");
    let sem = Semaphore::open(&path, 2).unwrap();
    sem.try_acquire("kept").unwrap().keep().unwrap();
    (path, sem)
}

fn assert_corrupt<T: std::fmt::Debug>(what: &str, r: filesem::Result<T>, path: &Path) {
    match r {
        Err(e @ Error::Corrupt { .. }) => {
            assert_eq!(e.path(), path, "{what}");
            assert!(
                e.to_string().contains(&path.display().to_string()),
                "{what}: {e}"
            );
        }
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    }
}

/// The state files no reader may accept, with a name for the failure message.
fn bad_documents(valid: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let at = "\"acquired_at\": \"2024-01-01T10:00:00Z\"";
    let doc = |s: String| s.into_bytes();
    vec![
        ("empty", Vec::new()),
        ("only whitespace", b"  \n\t".to_vec()),
        ("truncated", valid[..valid.len() / 2].to_vec()),
        ("truncated by one byte", valid[..valid.len() - 2].to_vec()),
        ("not JSON", b"capacity=1\nholders=".to_vec()),
        ("binary", vec![0, 0xff, 0xfe, 7, 0, 0]),
        ("null", b"null".to_vec()),
        ("a list", b"[]".to_vec()),
        (
            "capacity as string",
            doc(r#"{"capacity": "3", "holders": []}"#.into()),
        ),
        (
            "capacity fractional",
            doc(r#"{"capacity": 1.5, "holders": []}"#.into()),
        ),
        (
            "capacity 0",
            doc(r#"{"capacity": 0, "holders": []}"#.into()),
        ),
        (
            "capacity negative",
            doc(r#"{"capacity": -1, "holders": []}"#.into()),
        ),
        (
            "capacity absurd",
            doc(r#"{"capacity": 99999999999, "holders": []}"#.into()),
        ),
        (
            "capacity above max",
            doc(format!(
                r#"{{"capacity": {}, "holders": []}}"#,
                filesem::MAX_CAPACITY + 1
            )),
        ),
        (
            "capacity huge float",
            doc(r#"{"capacity": 1e30, "holders": []}"#.into()),
        ),
        ("capacity missing", doc(r#"{"holders": []}"#.into())),
        ("holders missing", doc(r#"{"capacity": 1}"#.into())),
        (
            "holders an object",
            doc(r#"{"capacity": 1, "holders": {}}"#.into()),
        ),
        (
            "holder id a number",
            doc(format!(
                r#"{{"capacity": 1, "holders": [{{"id": 3, {at}}}]}}"#
            )),
        ),
        (
            "holder without id",
            doc(format!(r#"{{"capacity": 1, "holders": [{{{at}}}]}}"#)),
        ),
        (
            "holder time not RFC 3339",
            doc(r#"{"capacity": 1, "holders": [{"id": "a", "acquired_at": "yesterday"}]}"#.into()),
        ),
        (
            "token negative",
            doc(format!(
                r#"{{"capacity": 1, "holders": [{{"id": "a", {at}, "token": -4}}]}}"#
            )),
        ),
        (
            "token a string",
            doc(format!(
                r#"{{"capacity": 1, "holders": [{{"id": "a", {at}, "token": "7"}}]}}"#
            )),
        ),
        (
            "next_token negative",
            doc(r#"{"capacity": 1, "holders": [], "next_token": -1}"#.into()),
        ),
        ("trailing garbage", {
            let mut v = valid.to_vec();
            v.extend_from_slice(b"}{");
            v
        }),
    ]
}

#[test]
fn corrupt_state_is_refused_by_every_operation_and_left_byte_for_byte() {
    // A state file that does not parse is Corrupt for every operation (queries fail closed),
    // and nothing in the directory changes: no rewrite, no "treat as empty".
    let dir = tempfile::tempdir().unwrap();
    let (path, sem) = valid_semaphore(dir.path());
    let permit = sem.try_acquire("live").unwrap();
    let valid = fs::read(&path).unwrap();
    let mut checked = 0;
    for (name, bytes) in bad_documents(&valid) {
        fs::write(&path, &bytes).unwrap();
        let before = snapshot(dir.path());
        assert_corrupt(&format!("{name}: open"), Semaphore::open(&path, 2), &path);
        assert_corrupt(&format!("{name}: open 1"), Semaphore::open(&path, 1), &path);
        assert_corrupt(
            &format!("{name}: open_existing"),
            Semaphore::open_existing(&path),
            &path,
        );
        assert_corrupt(
            &format!("{name}: try_acquire"),
            sem.try_acquire("new"),
            &path,
        );
        assert_corrupt(&format!("{name}: release"), sem.release("kept"), &path);
        assert_corrupt(&format!("{name}: remove"), sem.remove(["kept"]), &path);
        assert_corrupt(&format!("{name}: holders"), sem.holders(), &path);
        assert_corrupt(&format!("{name}: count"), sem.count(), &path);
        assert_corrupt(&format!("{name}: available"), sem.available(), &path);
        assert_corrupt(&format!("{name}: capacity"), sem.capacity(), &path);
        assert_corrupt(&format!("{name}: set_capacity"), sem.set_capacity(5), &path);
        assert_eq!(snapshot(dir.path()), before, "{name}: files changed");
        checked += 1;
    }
    // A permit whose file went bad reports it, keeps nothing, and its drop stays quiet.
    let err = permit.keep().unwrap_err();
    assert_corrupt("keep", Err::<(), _>(err.error), &path);
    let before = snapshot(dir.path());
    assert_corrupt("permit release", err.permit.release(), &path);
    assert_eq!(snapshot(dir.path()), before);
    println!("{checked} kinds of corrupt state refused by 11 operations each");
}

#[test]
fn dropping_a_permit_on_a_corrupt_file_neither_panics_nor_writes() {
    // Drop is best effort: a failure is a warning, never a panic or a "repair".
    let dir = tempfile::tempdir().unwrap();
    let (path, sem) = valid_semaphore(dir.path());
    let permit = sem.try_acquire("p").unwrap();
    fs::write(&path, b"{\"capacity\": 2, \"holders\": [").unwrap();
    let before = snapshot(dir.path());
    drop(permit);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn invalid_holder_ids_are_refused_naming_the_path_and_nothing_changes() {
    // IDs are validated on acquire: empty, over MAX_ID_LEN bytes, control characters.
    let dir = tempfile::tempdir().unwrap();
    let (path, sem) = valid_semaphore(dir.path());
    let before = snapshot(dir.path());
    let long = "x".repeat(filesem::MAX_ID_LEN + 1);
    for bad in [
        "",
        long.as_str(),
        "tab\there",
        "new\nline",
        "nul\0",
        "del\u{7f}",
        "esc\u{1b}[31m",
    ] {
        match sem.try_acquire(bad) {
            Err(e @ Error::InvalidId { .. }) => {
                assert_eq!(e.path(), path);
                assert!(e.to_string().contains(&path.display().to_string()), "{e}");
                let Error::InvalidId { id, reason, .. } = e else {
                    unreachable!()
                };
                assert_eq!(id, bad);
                assert!(!reason.is_empty());
            }
            other => panic!("{bad:?}: expected InvalidId, got {other:?}"),
        }
    }
    assert_eq!(snapshot(dir.path()), before);
    let longest = "y".repeat(filesem::MAX_ID_LEN);
    for good in [longest.as_str(), "../x", "ünïcode", "with space"] {
        sem.try_acquire(good).unwrap().release().unwrap();
    }
}

#[test]
fn ids_on_file_are_not_validated_and_can_be_listed_and_removed() {
    // Go accepts any string as an ID; whatever is on file can be seen and cleaned up.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sem.json");
    let long = "z".repeat(1000);
    let doc = serde_json::json!({
        "capacity": 3,
        "holders": [
            {"id": "", "acquired_at": "2024-01-01T10:00:00Z"},
            {"id": "line\nbreak", "acquired_at": "2024-01-01T10:00:00Z"},
            {"id": long, "acquired_at": "2024-01-01T10:00:00Z"},
        ],
    });
    fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    let sem = Semaphore::open(&path, 3).unwrap();
    let ids: Vec<String> = sem.holders().unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(ids, ["", "line\nbreak", long.as_str()]);
    sem.release("line\nbreak").unwrap();
    assert_eq!(
        sem.remove(["", long.as_str()]).unwrap(),
        ["", long.as_str()]
    );
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn symlink_at_the_state_path_is_refused_and_never_replaced() {
    // A link planted at PATH is Error::Symlink for every operation; the link and its target
    // stay as they were (we never write through it or replace it with a file).
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere.json");
    Semaphore::open(&target, 1).unwrap();
    let path = dir.path().join("sem.json");
    let sem = Semaphore::open(&path, 1).unwrap();
    fs::remove_file(&path).unwrap();
    symlink(&target, &path).unwrap();
    let before = snapshot(dir.path());
    let symlink_err = |what: &str, r: Result<(), Error>| match r {
        Err(e @ Error::Symlink { .. }) => assert_eq!(e.path(), path, "{what}"),
        other => panic!("{what}: expected Symlink, got {other:?}"),
    };
    symlink_err("open", Semaphore::open(&path, 1).map(drop));
    symlink_err("open_existing", Semaphore::open_existing(&path).map(drop));
    symlink_err("recover", Semaphore::recover(&path, 1).map(drop));
    symlink_err("try_acquire", sem.try_acquire("x").map(drop));
    symlink_err("release", sem.release("x"));
    symlink_err("remove", sem.remove(["x"]).map(drop));
    symlink_err("count", sem.count().map(drop));
    symlink_err("holders", sem.holders().map(drop));
    symlink_err("set_capacity", sem.set_capacity(2));
    assert_eq!(snapshot(dir.path()), before);

    // A dangling link is refused too, and its target is not created.
    let dangling = dir.path().join("dangling.json");
    let nowhere = dir.path().join("nowhere.json");
    symlink(&nowhere, &dangling).unwrap();
    match Semaphore::open(&dangling, 1) {
        Err(e @ Error::Symlink { .. }) => assert_eq!(e.path(), dangling),
        other => panic!("open dangling: expected Symlink, got {other:?}"),
    }
    assert!(!nowhere.exists());
}

/// Asserts that `r` is [`Error::Untrusted`] for `object` of the semaphore at `path`, with a
/// problem that mentions `problem`.
fn assert_untrusted<T: std::fmt::Debug>(
    what: &str,
    r: filesem::Result<T>,
    path: &Path,
    object: &Path,
    problem: &str,
) -> Error {
    match r {
        Err(e @ Error::Untrusted { .. }) => {
            let Error::Untrusted {
                path: p,
                object: o,
                kind,
                problem: why,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((p.as_path(), o.as_path()), (path, object), "{what}");
            // Every object refused here is of the wrong type: trusting its owner cannot help.
            assert_eq!(*kind, UntrustedKind::WrongType, "{what}");
            assert!(why.contains(problem), "{what}: {e}");
            assert!(e.to_string().contains(&object.display().to_string()), "{e}");
            e
        }
        other => panic!("{what}: expected Untrusted, got {other:?}"),
    }
}

#[test]
fn symlink_at_the_lock_path_is_refused_as_a_symlink_and_not_followed() {
    // The lock file is opened with O_NOFOLLOW: a planted link is refused with an error that
    // says it is a symbolic link, and its target is not created.
    let dir = tempfile::tempdir().unwrap();
    let (path, sem) = valid_semaphore(dir.path());
    let lock = dir.path().join("sem.json.lock");
    fs::remove_file(&lock).unwrap();
    let victim = dir.path().join("victim");
    symlink(&victim, &lock).unwrap();
    let before = snapshot(dir.path());
    let problem = "a symbolic link, not a regular file";
    assert_untrusted("try_acquire", sem.try_acquire("x"), &path, &lock, problem);
    assert_untrusted("open", Semaphore::open(&path, 2), &path, &lock, problem);
    assert_eq!(snapshot(dir.path()), before);
    assert!(!victim.exists(), "the link's target was not created");
}

#[test]
fn symlinks_planted_at_temp_file_names_are_never_followed() {
    // Temp files are created with O_EXCL|O_NOFOLLOW: a link at Go's fixed `PATH.tmp` is
    // ignored, and a link with one of our temp names (first choice or random) is neither
    // followed nor removed (cleanup removes only regular files); its target is untouched.
    let dir = tempfile::tempdir().unwrap();
    let (path, _sem) = valid_semaphore(dir.path());
    let victim = dir.path().join("victim.txt");
    fs::write(&victim, b"precious").unwrap();
    let links = [
        dir.path().join("sem.json.tmp"),
        dir.path().join(".sem.json.AAAAAAAA.filesem-tmp"),
        dir.path().join(".sem.json.00000000.filesem-tmp"),
    ];
    for link in &links {
        symlink(&victim, link).unwrap();
    }
    let sem = Semaphore::open(&path, 2).unwrap();
    sem.try_acquire("a").unwrap().release().unwrap();
    sem.reap().unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    for link in &links {
        assert!(
            fs::symlink_metadata(link).unwrap().file_type().is_symlink(),
            "{} left alone",
            link.display()
        );
    }
    assert!(
        !fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(sem.count().unwrap(), 1, "the writes went to the state file");
}

#[test]
fn objects_of_the_wrong_type_are_refused_by_name_before_anything_changes() {
    // A directory where the lock file belongs, a socket or a directory at the state path, a
    // file where the witness directory belongs: each is named with what it is, and nothing in
    // the directory changes.
    let dir = tempfile::tempdir().unwrap();
    let (path, sem) = valid_semaphore(dir.path());
    let lock = dir.path().join("sem.json.lock");
    fs::remove_file(&lock).unwrap();
    fs::create_dir(&lock).unwrap();
    let before = snapshot(dir.path());
    let problem = "a directory, not a regular file";
    assert_untrusted("release", sem.release("kept"), &path, &lock, problem);
    assert_untrusted("open", Semaphore::open(&path, 2), &path, &lock, problem);
    assert_eq!(snapshot(dir.path()), before);

    let socket_path = dir.path().join("socket.json");
    let _listener = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
    let before = snapshot(dir.path());
    let problem = "a socket, not a regular file";
    for (what, r) in [
        (
            "open_existing",
            Semaphore::open_existing(&socket_path).map(drop),
        ),
        ("open", Semaphore::open(&socket_path, 1).map(drop)),
        ("recover", Semaphore::recover(&socket_path, 1).map(drop)),
    ] {
        assert_untrusted(what, r, &socket_path, &socket_path, problem);
    }
    assert_eq!(snapshot(dir.path()), before, "nothing created or renamed");

    let dir_path = dir.path().join("dir.json");
    fs::create_dir(&dir_path).unwrap();
    let problem = "a directory, not a regular file";
    let r = Semaphore::open_existing(&dir_path);
    assert_untrusted("a directory", r, &dir_path, &dir_path, problem);

    let w = dir.path().join("w.json");
    let sem = Semaphore::open(&w, 1).unwrap();
    let witness = dir.path().join("w.json.witness");
    fs::write(&witness, b"").unwrap();
    let before = snapshot(dir.path());
    let problem = "a regular file, not a directory";
    assert_untrusted("acquire", sem.try_acquire("x"), &w, &witness, problem);
    assert_untrusted("reap", sem.reap(), &w, &witness, problem);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_temp_file_left_by_a_killed_writer_is_removed_by_the_next_write() {
    // Every write tries the same temp name first: a file there under the lock is a leftover
    // of a writer killed before its rename, and any write removes it (not only open).
    let dir = tempfile::tempdir().unwrap();
    let (path, sem) = valid_semaphore(dir.path());
    let leftover = dir.path().join(".sem.json.00000000.filesem-tmp");
    fs::write(&leftover, b"{\"capacity\": 2, \"hol").unwrap();
    let permit = sem.try_acquire("writer").unwrap();
    assert!(!leftover.exists(), "removed by the acquire's write");
    fs::write(&leftover, b"{\"capacity\": 2, \"hol").unwrap();
    permit.release().unwrap();
    assert!(!leftover.exists(), "removed by the release's write");
    assert_eq!(Semaphore::open_existing(&path).unwrap().count().unwrap(), 1);
}

#[test]
fn a_device_node_at_the_state_path_is_refused_and_recover_leaves_it() {
    // recover moves aside only regular files: a device node is named and left in place.
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: making a device node needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.json");
    // The device of /dev/null (1, 3).
    nix::sys::stat::mknod(
        &path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        libc::makedev(1, 3),
    )
    .unwrap();
    let before = snapshot(dir.path());
    let problem = "a character device, not a regular file";
    assert_untrusted(
        "recover",
        Semaphore::recover(&path, 1),
        &path,
        &path,
        problem,
    );
    assert_untrusted("open", Semaphore::open(&path, 1), &path, &path, problem);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn recover_never_passes_on_set_id_sticky_world_write_or_execute_bits() {
    // The new state file keeps the old file's read and write bits without the bits that
    // would let others rewrite it or run with its owner's rights, or that `--mode` refuses
    // (execute); the lock file it creates derives from that mode, never from the planted
    // one (0666 would let anyone stall the semaphore).
    for (planted, state, lock) in [
        (0o6777, 0o664, 0o660),
        (0o775, 0o664, 0o660),
        (0o666, 0o664, 0o660),
        (0o444, 0o644, 0o600),
        (0o600, 0o600, 0o600),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sem.json");
        fs::write(&path, b"garbage").unwrap();
        chmod(&path, planted);
        let recovered = Semaphore::recover(&path, 2).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode(&path),
            state,
            "state file after recovering a {planted:o} file"
        );
        let lock_path = dir.path().join("sem.json.lock");
        assert_eq!(
            mode(&lock_path),
            lock,
            "lock file after recovering a {planted:o} file"
        );
        assert_eq!(
            fs::read(recovered.moved_to.unwrap()).unwrap(),
            b"garbage",
            "the bad bytes are kept aside"
        );
    }
}

#[test]
fn a_lock_file_is_tightened_by_every_successful_step_of_its_owner() {
    // A 0644 lock file (the Go package's) lets readers of the state flock it; the owner's
    // next step, whatever the operation and even if it writes nothing, takes the extra bits
    // away. A failed step and a query (which takes no lock) change nothing, and a lock file
    // of another user is never changed.
    let dir = tempfile::tempdir().unwrap();
    let (path, _sem) = valid_semaphore(dir.path());
    let lock = dir.path().join("sem.json.lock");
    chmod(&lock, 0o644);
    let mode_of = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert!(matches!(
        Semaphore::open(&path, 3),
        Err(Error::CapacityMismatch { .. })
    ));
    assert_eq!(mode_of(&lock), 0o644, "a failed open changes nothing");
    let existing = Semaphore::open_existing(&path).unwrap();
    existing.holders().unwrap();
    assert_eq!(mode_of(&lock), 0o644, "queries take no lock");
    let before = fs::read(&path).unwrap();
    existing.set_capacity(2).unwrap();
    assert_eq!(fs::read(&path).unwrap(), before, "nothing to write");
    assert_eq!(
        mode_of(&lock),
        0o600,
        "tightened by a step that wrote nothing"
    );
    chmod(&lock, 0o644);
    Semaphore::open(&path, 2).unwrap();
    assert_eq!(mode_of(&lock), 0o600);
    if nix::unistd::geteuid().is_root() {
        chmod(&lock, 0o644);
        std::os::unix::fs::chown(&lock, Some(61601), None).unwrap();
        Semaphore::open(&path, 2).unwrap();
        assert_eq!(
            mode_of(&lock),
            0o644,
            "another user's lock file is left alone"
        );
    }
}

#[test]
fn recover_moves_a_corrupt_file_aside_and_starts_above_its_tokens() {
    // Recovery is explicit: the bad bytes are kept at PATH.corrupt-*, the new state is empty
    // with the given capacity, and new tokens exceed any the old file may have handed out.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sem.json");
    let bad =
        br#"{"capacity": 2, "next_token": 77000, "holders": [{"id": "a", "token": 76999, "acq"#;
    fs::write(&path, bad).unwrap();
    fs::write(dir.path().join("sem.json.lock"), b"").unwrap();
    let recovered = Semaphore::recover(&path, 3).unwrap();
    let aside = recovered.moved_to.clone().expect("moved aside");
    let name = aside.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("sem.json.corrupt-"), "{name}");
    assert_eq!(aside.parent(), Some(dir.path()));
    assert_eq!(fs::read(&aside).unwrap(), bad);
    let sem = recovered.semaphore;
    assert_eq!(sem.capacity().unwrap(), 3);
    assert_eq!(sem.count().unwrap(), 0);
    let permit = sem.try_acquire("fresh").unwrap();
    assert!(permit.token() > 77000, "{}", permit.token());
    assert!(dir.path().join("sem.json.lock").exists());
}

#[test]
fn recover_changes_nothing_on_a_valid_file_and_creates_an_absent_one() {
    // recover is safe to call: a valid file stays as it is; a missing one is created.
    let dir = tempfile::tempdir().unwrap();
    let (path, _sem) = valid_semaphore(dir.path());
    let before = snapshot(dir.path());
    let r = Semaphore::recover(&path, 2).unwrap();
    assert!(r.moved_to.is_none());
    assert_eq!(snapshot(dir.path()), before);
    assert_eq!(r.semaphore.count().unwrap(), 1);
    let absent = dir.path().join("new.json");
    let r = Semaphore::recover(&absent, 4).unwrap();
    assert!(r.moved_to.is_none());
    assert_eq!(r.semaphore.capacity().unwrap(), 4);
    assert!(matches!(
        Semaphore::recover(dir.path().join("zero.json"), 0),
        Err(Error::InvalidCapacity { .. })
    ));
    assert!(!dir.path().join("zero.json").exists());
}

/// Unmounts a tmpfs on drop, so a failing test leaves no mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_during_a_write_is_an_io_error_and_leaves_state_and_no_temp_file() {
    // ENOSPC while writing the temp file: a typed Io error, the old state intact, the temp
    // file removed.
    let mnt = tempfile::tempdir().unwrap();
    let mounted = nix::unistd::geteuid().is_root()
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "filesem-test"])
            .arg(mnt.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !mounted {
        println!("SKIPPED: cannot mount a 64 KiB tmpfs here (needs root and mount permission)");
        return;
    }
    let _mount = Mount(mnt.path().to_path_buf());
    let path = mnt.path().join("sem.json");
    let sem = Semaphore::open(&path, 2).unwrap();
    sem.try_acquire("kept").unwrap().keep().unwrap();

    let filler_path = mnt.path().join("filler");
    let mut filler = fs::File::create(&filler_path).unwrap();
    let chunk = vec![0u8; 4096];
    let mut filled = 0usize;
    loop {
        match filler.write(&chunk) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
        assert!(filled <= 1 << 20, "a 64 KiB tmpfs took more than 1 MiB");
    }
    let mut before = snapshot(mnt.path());
    before.remove("filler");

    for (what, r) in [
        ("try_acquire", sem.try_acquire("new").map(drop)),
        ("release", sem.release("kept")),
    ] {
        match r {
            Err(e @ Error::Io { .. }) => {
                assert_eq!(e.path(), path, "{what}");
                let source = std::error::Error::source(&e).unwrap();
                assert!(source.to_string().contains("No space"), "{what}: {source}");
            }
            other => panic!("{what}: expected Io, got {other:?}"),
        }
        let mut after = snapshot(mnt.path());
        after.remove("filler");
        assert_eq!(after, before, "{what}: state unchanged, no temp file left");
    }
    assert_eq!(
        sem.count().unwrap(),
        1,
        "queries still answer from the intact file"
    );

    drop(filler);
    fs::remove_file(&filler_path).unwrap();
    sem.release("kept").unwrap();
    assert_eq!(sem.count().unwrap(), 0);
    println!("filled the 64 KiB tmpfs with {filled} bytes; writes failed cleanly");
}

/// How the unprivileged child is started: through `setpriv` or `runuser` when we are root,
/// directly otherwise. `None` when no way works (the test then says it skipped).
fn unprivileged_wrapper() -> Option<Vec<&'static str>> {
    if !nix::unistd::geteuid().is_root() {
        return Some(Vec::new());
    }
    let candidates: [&[&'static str]; 2] = [
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &["runuser", "-u", "nobody", "--"],
    ];
    candidates.into_iter().map(<[_]>::to_vec).find(|w| {
        Command::new(w[0])
            .args(&w[1..])
            .arg("true")
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn permission_problems_are_io_errors_and_a_read_only_lock_file_still_works() {
    // Without root's privileges: an unwritable directory and an unreadable state file are
    // typed Io errors that change nothing; a lock file this user may only read still locks.
    let Some(wrapper) = unprivileged_wrapper() else {
        println!("SKIPPED: running as root and neither setpriv nor runuser can drop privileges");
        return;
    };
    let base = tempfile::tempdir().unwrap();
    chmod(base.path(), 0o755);
    // ro/: a valid semaphore in a directory the child may not write.
    let ro = base.path().join("ro");
    fs::create_dir(&ro).unwrap();
    Semaphore::open(ro.join("sem.json"), 1).unwrap();
    chmod(&ro.join("sem.json.lock"), 0o644);
    chmod(&ro, 0o555);
    // rw/: a writable directory whose lock file the child may only read.
    let rw = base.path().join("rw");
    fs::create_dir(&rw).unwrap();
    Semaphore::open(rw.join("sem.json"), 1).unwrap();
    chmod(&rw.join("sem.json"), 0o666);
    chmod(&rw.join("sem.json.lock"), 0o444);
    chmod(&rw, 0o777);
    // secret/: a state file the child may not read.
    let secret = base.path().join("secret");
    fs::create_dir(&secret).unwrap();
    Semaphore::open(secret.join("sem.json"), 1).unwrap();
    chmod(&secret.join("sem.json"), 0o000);
    chmod(&secret, 0o777);

    let ro_before = snapshot(&ro);
    let secret_before = snapshot(&secret);
    let rw_lock_before = fs::read(rw.join("sem.json.lock")).unwrap();
    let mut group = Group::new();
    let idx = group.spawn(
        ChildSpec::new("unprivileged", "child_process", "unprivileged")
            .arg("BASE", base.path().display())
            .via(&wrapper),
    );
    let finished = group.finish(common::deadline(60));
    let child = &finished[idx];
    assert!(child.status.success(), "child failed: {:?}", child.lines);
    for check in ["ro", "ro-create", "rw", "secret"] {
        assert!(
            child.lines.iter().any(|l| l == &format!("ok {check}")),
            "check {check} did not run: {:?}",
            child.lines
        );
    }
    assert_eq!(snapshot(&ro), ro_before, "unwritable directory unchanged");
    assert_eq!(
        snapshot(&secret),
        secret_before,
        "unreadable state unchanged"
    );
    assert_eq!(fs::read(rw.join("sem.json.lock")).unwrap(), rw_lock_before);
    // The child's writes left a state file it owns, in a world-writable directory: root
    // trusts it only when told to (a planted file would look the same).
    let child_uid = fs::metadata(rw.join("sem.json")).unwrap().uid();
    if nix::unistd::geteuid().is_root() {
        let r = Semaphore::open_existing(rw.join("sem.json"));
        match r {
            Err(Error::Untrusted { owner, .. }) => assert_eq!(owner, Some(child_uid)),
            other => panic!("expected Untrusted, got {other:?}"),
        }
    }
    let sem = OpenOptions::new()
        .trust_owner(child_uid)
        .open_existing(rw.join("sem.json"))
        .unwrap();
    assert_eq!(
        sem.count().unwrap(),
        0,
        "the child's acquire and release both landed"
    );
    println!("unprivileged checks ran via {wrapper:?}");
}

fn expect_io<T: std::fmt::Debug>(what: &str, r: filesem::Result<T>, path: &Path) -> Error {
    match r {
        Err(e @ Error::Io { .. }) => {
            assert_eq!(e.path(), path, "{what}");
            let source = std::error::Error::source(&e).expect("Io carries the OS error");
            assert!(
                source.to_string().contains("ermission denied"),
                "{what}: {e}: {source}"
            );
            e
        }
        other => panic!("{what}: expected Io, got {other:?}"),
    }
}

/// The checks run without privileges (see the test above). Panics on failure.
fn unprivileged() {
    let base = PathBuf::from(arg("BASE"));
    assert!(
        !nix::unistd::geteuid().is_root(),
        "privileges were not dropped"
    );

    let path = base.join("ro/sem.json");
    let sem = Semaphore::open_existing(&path).unwrap();
    assert_eq!(sem.count().unwrap(), 0, "reading needs no write access");
    let e = expect_io("acquire in unwritable dir", sem.try_acquire("x"), &path);
    let Error::Io { file, .. } = &e else {
        unreachable!()
    };
    // The first write that fails names its file: the directory itself, or the per-semaphore
    // witness directory that an acquire creates in it.
    assert!(
        file.starts_with(base.join("ro")),
        "the error names the file: {e}"
    );
    expect_io("set_capacity in unwritable dir", sem.set_capacity(2), &path);
    say("ok ro");

    let new = base.join("ro/new.json");
    expect_io("create in unwritable dir", Semaphore::open(&new, 1), &new);
    assert!(!new.exists());
    say("ok ro-create");

    let path = base.join("rw/sem.json");
    let sem = OpenOptions::new().open(&path, 1).unwrap();
    let permit = sem.try_acquire("nobody").unwrap();
    assert_eq!(sem.count().unwrap(), 1);
    permit.release().unwrap();
    say("ok rw");

    let path = base.join("secret/sem.json");
    expect_io("open unreadable", Semaphore::open(&path, 1), &path);
    expect_io(
        "open_existing unreadable",
        Semaphore::open_existing(&path),
        &path,
    );
    say("ok secret");
}

#[test]
#[ignore = "a child-process role, started by the other tests in this file"]
fn child_process() {
    // Not a test of its own: the body of the unprivileged process started above.
    match common::role().as_deref() {
        Some("unprivileged") => unprivileged(),
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}
