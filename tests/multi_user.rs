//! Several users on one semaphore: the group-shared recipe, holders of users whose witness
//! others cannot open, users who may only read, and files planted by another user in a
//! world-writable sticky directory (like `/tmp`).
//!
//! These tests run as root and start children as throwaway users (uids and gids from 61000,
//! never real accounts) with `setpriv`; outside root they print `SKIPPED` and return. Every
//! wait has a deadline; grandchildren (the "commands" of run-like holders) end by themselves
//! after a minute if a test fails before killing them.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ChildSpec, Group, arg, can_switch_users, say, snapshot};
use filesem::{Error, OpenOptions, Semaphore, UntrustedKind};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The `setpriv` arguments that run a child as `uid` (primary group `uid`) with the
/// supplementary `groups`.
fn as_user(uid: u32, groups: &[u32]) -> Vec<String> {
    let mut args = vec![
        "setpriv".to_string(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
    ];
    if groups.is_empty() {
        args.push("--clear-groups".into());
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        args.push(format!("--groups={}", list.join(",")));
    }
    args
}

fn spawn_as(group: &mut Group, name: &str, uid: u32, groups: &[u32], spec: ChildSpec) -> usize {
    let wrapper = as_user(uid, groups);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let idx = group.spawn(spec.via(&wrapper));
    assert_eq!(group.len() - 1, idx, "{name}");
    idx
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// A base directory others may enter, with `d/` owned by `root:gid` mode 2775 (the shared
/// group directory of the recipe in docs/how-it-works.md) and `markers/` for the capacity checker.
fn group_dirs(gid: u32) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let base = common::tmpfs_dir();
    chmod(base.path(), 0o755);
    let d = base.path().join("d");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(0), Some(gid)).unwrap();
    chmod(&d, 0o2775);
    let markers = base.path().join("markers");
    fs::create_dir(&markers).unwrap();
    chmod(&markers, 0o777);
    (base, d, markers)
}

/// Waits until process `pid` (not our child) has exited: gone, or a zombie (whose descriptors,
/// and so its flocks, are closed).
fn wait_exited(pid: i32, deadline: Instant) {
    common::wait_until(
        deadline,
        &format!("process {pid} to exit"),
        || match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        },
    );
}

/// The lines of a finished child starting with `word`, without it.
fn said<'a>(lines: &'a [String], word: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(word).and_then(|r| r.strip_prefix(' ')))
        .collect()
}

/// Runs one child to its end and returns what it said; panics if it failed.
fn run_one(spec: ChildSpec, uid: u32, groups: &[u32]) -> Vec<String> {
    let mut group = Group::new();
    let idx = spawn_as(&mut group, "one", uid, groups, spec);
    let finished = group.finish(common::deadline(60));
    let child = &finished[idx];
    assert!(
        child.status.success(),
        "child as uid {uid} failed: {:?}",
        child.lines
    );
    child.lines.clone()
}

// ------------------------------------------------------------------------ the tests

#[test]
fn a_group_shares_a_semaphore_whatever_the_umask_of_its_members() {
    // The recipe in docs/how-it-works.md: a directory `root:GROUP` 2775 and `mode(0o664)`. Two users of the
    // group, one with umask 077, take, release and reap there; every file gets its mode
    // whatever the umask, and a holder that exited leaves nothing that blocks the other.
    if !can_switch_users("the group recipe") {
        return;
    }
    let (gid, a, b) = (61100, 61101, 61102);
    let (_base, d, _markers) = group_dirs(gid);
    let path = d.join("sem.json");
    let spec = |role: &str, id: &str, umask: &str| {
        ChildSpec::new(id, "child_process", role)
            .arg("PATH", path.display())
            .arg("ID", id)
            .arg("UMASK", umask)
    };
    let mut group = Group::new();
    let holder = spawn_as(&mut group, "A", a, &[gid], spec("hold", "A-job", "077"));
    group.expect(holder, "held", common::deadline(60));
    let witness_dir = d.join("sem.json.witness");
    let modes = [
        (path.clone(), 0o664),
        (d.join("sem.json.lock"), 0o660),
        (witness_dir.clone(), 0o2771),
    ];
    for (file, mode) in &modes {
        assert_eq!(mode_of(file), *mode, "{}", file.display());
    }
    let witness = fs::read_dir(&witness_dir).unwrap().next().unwrap().unwrap();
    assert_eq!(
        mode_of(&witness.path()),
        0o660,
        "A's witness, under umask 077"
    );
    assert_eq!(fs::metadata(&witness_dir).unwrap().gid(), gid);

    let lines = run_one(spec("use", "B-job", "022"), b, &[gid]);
    assert_eq!(said(&lines, "used"), ["B-job slot 1, reaped []"]);
    group.send_all("release");
    group.expect(holder, "released", common::deadline(60));
    group.finish(common::deadline(60));
    // After A's holder exited, B's next use works (the issue: 125 on `sem.json.witness/2`).
    let lines = run_one(spec("use", "B-job", "022"), b, &[gid]);
    assert_eq!(said(&lines, "used"), ["B-job slot 0, reaped []"]);

    // A killed holder of A is reaped by B, and the other way round.
    for (killed, uid, reaper, reaper_uid, umask) in [
        ("A-job", a, "B-job", b, "022"),
        ("B-job", b, "A-job", a, "077"),
    ] {
        let mut group = Group::new();
        let other_umask = if umask == "022" { "077" } else { "022" };
        let h = spawn_as(
            &mut group,
            killed,
            uid,
            &[gid],
            spec("hold", killed, other_umask),
        );
        group.expect(h, "held", common::deadline(60));
        group.kill(h, common::deadline(30));
        group.finish(common::deadline(30));
        let lines = run_one(spec("use", reaper, umask), reaper_uid, &[gid]);
        assert_eq!(
            said(&lines, "used"),
            [format!("{reaper} slot 0, reaped [\"{killed}\"]")]
        );
    }
    for (file, mode) in &modes {
        assert_eq!(mode_of(file), *mode, "{} after use", file.display());
    }
    assert_eq!(
        fs::read_dir(&witness_dir).unwrap().count(),
        0,
        "no witness file left"
    );
    let sem = Semaphore::open_existing(&path).unwrap();
    assert_eq!(sem.count().unwrap(), 0);
}

#[test]
fn a_holder_whose_witness_others_cannot_open_is_never_judged_dead_while_it_lives() {
    // Run-like holders of two users (umask 077 and 022) hand their witness to a command and
    // are SIGKILLed; one witness is made unreadable for the other user (0600, as an older
    // version under umask 077 left them). The other user and a reader outside the group
    // must judge them alive or unknown and never reap them; once the command is gone the
    // slot comes back. Per-slot marker files, made by every holder with O_EXCL, check that
    // no two ever hold one slot.
    if !can_switch_users("the unreadable-witness test") {
        return;
    }
    let (gid, a, b, reader) = (61010, 61011, 61012, 61013);
    let (_base, d, markers) = group_dirs(gid);
    let path = d.join("sem.json");
    let spec = |role: &str, id: &str, umask: &str| {
        ChildSpec::new(id, "child_process", role)
            .arg("PATH", path.display())
            .arg("ID", id)
            .arg("UMASK", umask)
            .arg("MARKERS", markers.display())
    };
    let mut group = Group::new();
    let mut commands = Vec::new();
    for (id, uid, umask) in [("A-job", a, "077"), ("B-job", b, "022")] {
        let run = spawn_as(&mut group, id, uid, &[gid], spec("run", id, umask));
        let line = group.expect(run, "running", common::deadline(60));
        let fields: Vec<&str> = line.split(' ').collect();
        let pid: i32 = fields[1].parse().unwrap();
        let slot: u32 = fields[2].parse().unwrap();
        group.expect(run, "marked", common::deadline(60));
        group.kill(run, common::deadline(30));
        commands.push((id, pid, slot));
    }
    // A's witness as an older version made it: only A may open it.
    let sem = Semaphore::open_existing(&path).unwrap();
    let a_token = sem.holders().unwrap()[0].token.unwrap();
    let a_witness = d.join(format!("sem.json.witness/{a_token}"));
    chmod(&a_witness, 0o600);

    let never_stale = |who: &str, lines: &[String]| {
        let verdicts = said(lines, "verdict");
        assert_eq!(verdicts.len(), 2, "{who}: {lines:?}");
        for v in verdicts {
            assert!(
                v.ends_with(" alive") || v.ends_with(" unknown"),
                "{who} judged a live holder: {v}"
            );
        }
    };
    for (who, uid, groups) in [("B", b, &[gid][..]), ("A", a, &[gid][..])] {
        let lines = run_one(spec("contend", &format!("{who}-2"), "022"), uid, groups);
        never_stale(who, &lines);
        assert_eq!(said(&lines, "reaped"), ["[]"], "{who}");
        assert_eq!(said(&lines, "acquire"), ["no capacity"], "{who}");
    }
    let lines = run_one(spec("contend", "reader", "022"), reader, &[]);
    never_stale("reader", &lines);
    // The reader may not write: it cannot even open the lock file.
    let reaped = said(&lines, "reaped");
    assert!(
        reaped[0].contains("failed to open lock file") && reaped[0].contains("os error 13"),
        "{reaped:?}"
    );

    // A's command ends. B still cannot open A's witness, and /proc/locks not listing a lock
    // proves nothing (the listing can skip a held lock): B gives no verdict and the entry
    // stays. A, who may open its witness, proves it free and reaps it: the slot comes back.
    let (_, a_pid, a_slot) = commands[0];
    kill(Pid::from_raw(a_pid), Signal::SIGKILL).unwrap();
    wait_exited(a_pid, common::deadline(30));
    fs::remove_file(markers.join(format!("slot-{a_slot}"))).unwrap();
    let lines = run_one(spec("contend", "B-3", "022"), b, &[gid]);
    never_stale("B after A's command ended", &lines);
    assert_eq!(said(&lines, "reaped"), ["[]"]);
    assert_eq!(said(&lines, "acquire"), ["no capacity"]);
    let lines = run_one(spec("contend", "A-3", "022"), a, &[gid]);
    assert_eq!(said(&lines, "reaped"), ["[\"A-job\"]"]);
    assert_eq!(said(&lines, "acquire"), [format!("slot {a_slot}")]);
    let (_, b_pid, _) = commands[1];
    kill(Pid::from_raw(b_pid), Signal::SIGKILL).unwrap();
    wait_exited(b_pid, common::deadline(30));
    group.finish(common::deadline(30));
    let violations: Vec<_> = fs::read_dir(&markers)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("violation"))
        .collect();
    assert!(
        violations.is_empty(),
        "two holders on one slot: {violations:?}"
    );
}

#[test]
fn a_user_who_may_only_read_the_state_cannot_open_the_lock_or_a_witness() {
    // The lock file and witness files are for those who may change the state: a reader can
    // query (without a lock) but cannot flock them, so cannot stall writers or keep a dead
    // holder alive. A lock file left 0644 (the Go package's) is tightened by its owner's
    // next open.
    if !can_switch_users("the read-only user test") {
        return;
    }
    let reader = 61201;
    let base = common::tmpfs_dir();
    chmod(base.path(), 0o755);
    let path = base.path().join("sem.json");
    drop(Semaphore::open(&path, 1).unwrap());
    let lock = base.path().join("sem.json.lock");
    chmod(&lock, 0o644);
    let sem = Semaphore::open(&path, 1).unwrap();
    assert_eq!(mode_of(&lock), 0o600, "tightened to the state's writers");
    let permit = sem.try_acquire("root-job").unwrap();
    let witness = base
        .path()
        .join(format!("sem.json.witness/{}", permit.token()));
    assert_eq!(mode_of(&witness), 0o600);
    let before = snapshot(base.path());
    let lines = run_one(
        ChildSpec::new("reader", "child_process", "read_only")
            .arg("PATH", path.display())
            .arg("WITNESS", witness.display()),
        reader,
        &[],
    );
    assert_eq!(said(&lines, "open"), ["lock denied", "witness denied"]);
    assert_eq!(said(&lines, "verdict"), ["root-job alive"]);
    let acquire = said(&lines, "acquire");
    assert!(
        acquire[0].starts_with(&format!("failed to open lock file `{}`", lock.display()))
            && acquire[0].ends_with("Permission denied (os error 13)"),
        "{acquire:?}"
    );
    assert_eq!(snapshot(base.path()), before);
    permit.release().unwrap();
}

/// A world-writable sticky directory like `/tmp`, owned by root, inside a fresh base.
fn sticky_dir() -> (tempfile::TempDir, PathBuf) {
    let base = common::tmpfs_dir();
    chmod(base.path(), 0o755);
    let tmp = base.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    chmod(&tmp, 0o1777);
    (base, tmp)
}

#[test]
fn objects_planted_by_another_user_in_a_sticky_directory_are_refused_and_never_followed() {
    // As user m: `ln -s /tmp/victim /tmp/builds.json.witness` made root's run and reap delete
    // the number-named files in the victim directory; a witness directory, state file or
    // lock file planted by m was adopted. Now each is refused before anything changes,
    // naming the object, the problem and the owner, and the victim stays as it was.
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: planting files of another owner needs root");
        return;
    }
    let m = 61301;
    let (_base, tmp) = sticky_dir();
    let victim = tmp.join("victim");
    fs::create_dir(&victim).unwrap();
    for name in ["1", "2", "42"] {
        fs::write(victim.join(name), b"precious").unwrap();
        lchown(victim.join(name), Some(m), Some(m)).unwrap();
    }
    lchown(&victim, Some(m), Some(m)).unwrap();
    let path = tmp.join("builds.json");
    let witness = tmp.join("builds.json.witness");
    symlink(&victim, &witness).unwrap();
    lchown(&witness, Some(m), Some(m)).unwrap();
    let untrusted = |what: &str, r: Result<(), Error>, object: &Path, problem: &str| match r {
        Err(e @ Error::Untrusted { .. }) => {
            let Error::Untrusted {
                path: p,
                object: o,
                kind,
                problem: why,
                owner,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((p, o), (&path, &object.to_path_buf()), "{what}");
            assert!(why.contains(problem), "{what}: {e}");
            assert_eq!(*owner, Some(m), "{what}");
            // Only a refused owner names the opt-in: trusting cannot fix a wrong type.
            let by_owner = problem.starts_with("owned by");
            let expected = if by_owner {
                UntrustedKind::Owner
            } else {
                UntrustedKind::WrongType
            };
            assert_eq!(*kind, expected, "{what}");
            assert_eq!(
                e.to_string().contains("OpenOptions::trust_owner(61301)"),
                by_owner,
                "{what}: {e}"
            );
        }
        other => panic!("{what}: expected Untrusted, got {other:?}"),
    };
    let before = snapshot(&tmp);
    let victim_before = snapshot(&victim);
    let r = Semaphore::open(&path, 3).map(drop);
    untrusted("open", r, &witness, "a symbolic link, not a directory");
    // The lock file an attempt may leave is the documented exception; the state and
    // everything else are unchanged.
    let mut after = snapshot(&tmp);
    after.remove("builds.json.lock");
    assert_eq!(after, before);
    assert_eq!(snapshot(&victim), victim_before);

    // A semaphore that exists, then the link appears: reap and acquire refuse it too.
    fs::remove_file(&witness).unwrap();
    let sem = Semaphore::open(&path, 3).unwrap();
    symlink(&victim, &witness).unwrap();
    lchown(&witness, Some(m), Some(m)).unwrap();
    let problem = "a symbolic link, not a directory";
    untrusted("reap", sem.reap().map(drop), &witness, problem);
    untrusted(
        "try_acquire",
        sem.try_acquire("x").map(drop),
        &witness,
        problem,
    );
    assert_eq!(snapshot(&victim), victim_before, "the victim is untouched");

    // A witness directory m created: m could pre-create or delete root's witness names.
    fs::remove_file(&witness).unwrap();
    fs::create_dir(&witness).unwrap();
    lchown(&witness, Some(m), Some(m)).unwrap();
    let problem = "owned by uid 61301";
    untrusted("acquire", sem.try_acquire("x").map(drop), &witness, problem);
    untrusted(
        "open",
        Semaphore::open(&path, 3).map(drop),
        &witness,
        problem,
    );
    let opt_in = OpenOptions::new().trust_owner(m).open(&path, 3).unwrap();
    opt_in.try_acquire("x").unwrap().release().unwrap();
    // The handle's spare witness file goes with it.
    drop(opt_in);
    fs::remove_dir(&witness).unwrap();

    // A state file and a lock file m planted.
    let planted = tmp.join("planted.json");
    fs::write(&planted, br#"{"capacity": 1000000, "holders": []}"#).unwrap();
    chmod(&planted, 0o666);
    lchown(&planted, Some(m), Some(m)).unwrap();
    let r = Semaphore::open_existing(&planted).map(drop);
    match r {
        Err(e @ Error::Untrusted { .. }) => {
            let Error::Untrusted {
                object,
                owner,
                kind,
                problem,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((object, *owner), (&planted, Some(m)));
            assert_eq!(*kind, UntrustedKind::Owner);
            assert!(problem.contains("owned by uid 61301"), "{problem}");
            assert!(e.to_string().contains("trust_owner(61301)"), "{e}");
        }
        other => panic!("planted state: expected Untrusted, got {other:?}"),
    }
    let lock = tmp.join("builds.json.lock");
    fs::remove_file(&lock).unwrap();
    fs::write(&lock, b"").unwrap();
    lchown(&lock, Some(m), Some(m)).unwrap();
    untrusted("lock", sem.release("x"), &lock, "owned by uid 61301");
}

#[test]
fn an_acquire_that_fails_halfway_leaves_no_witness_directory_or_temp_file() {
    // In a sticky directory only a file's owner may replace it: user m's acquire on root's
    // state file creates the witness directory and file and a temp file, then the rename
    // fails. Everything m created is removed again, so root's next acquire is not blocked.
    if !can_switch_users("the failed-acquire test") {
        return;
    }
    let m = 61401;
    let (_base, tmp) = sticky_dir();
    let path = tmp.join("shared.json");
    drop(OpenOptions::new().mode(0o666).open(&path, 2).unwrap());
    assert_eq!(mode_of(&tmp.join("shared.json.lock")), 0o666);
    let before = snapshot(&tmp);
    let lines = run_one(
        ChildSpec::new("m", "child_process", "acquire_once")
            .arg("PATH", path.display())
            .arg("ID", "m-job"),
        m,
        &[],
    );
    let result = said(&lines, "acquire");
    assert!(
        result[0].contains("sticky directory") && result[0].contains("os error 1"),
        "{result:?}"
    );
    assert_eq!(snapshot(&tmp), before, "nothing left behind");
    let sem = Semaphore::open_existing(&path).unwrap();
    sem.try_acquire("root-job").unwrap().release().unwrap();
}

#[test]
fn recover_refuses_another_users_file_in_a_sticky_directory_and_never_passes_on_special_bits() {
    // m writes garbage to the state path and makes it 6777: root's recover used to create a
    // fresh state file with mode rwsrwsrwx that m could rewrite. Now the planted file is
    // refused unless its owner is trusted explicitly, and the new file never gets set-id,
    // sticky or world-write bits.
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: planting a file of another owner needs root");
        return;
    }
    let m = 61501;
    let (_base, tmp) = sticky_dir();
    let path = tmp.join("r.json");
    fs::write(&path, b"garbage").unwrap();
    lchown(&path, Some(m), Some(m)).unwrap();
    chmod(&path, 0o6777);
    let before = snapshot(&tmp);
    match Semaphore::recover(&path, 2) {
        Err(Error::Untrusted { object, owner, .. }) => {
            assert_eq!((object, owner), (path.clone(), Some(m)));
        }
        other => panic!("expected Untrusted, got {other:?}"),
    }
    let mut after = snapshot(&tmp);
    after.remove("r.json.lock");
    assert_eq!(after, before, "nothing moved");
    let recovered = OpenOptions::new().trust_owner(m).recover(&path, 2).unwrap();
    let aside = recovered.moved_to.expect("moved aside");
    assert_eq!(fs::read(&aside).unwrap(), b"garbage");
    assert_eq!(mode_of(&path), 0o664);
    assert_eq!(mode_of(&tmp.join("r.json.lock")), 0o660);
    assert_eq!(fs::metadata(&path).unwrap().uid(), 0);
    assert_eq!(recovered.semaphore.capacity().unwrap(), 2);
}

// ----------------------------------------------------------------- child processes

fn set_umask() {
    let umask = u32::from_str_radix(&arg("UMASK"), 8).unwrap();
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
}

fn quick() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durable(false).mode(0o664);
    o
}

/// Takes a slot on the group semaphore (capacity 2) as `ID`, says `held`, releases when told.
fn hold() {
    set_umask();
    let sem = quick().open(arg("PATH"), 2).unwrap();
    let permit = sem.try_acquire(arg("ID").as_str()).unwrap();
    say("held");
    common::wait_for_parent();
    permit.release().unwrap();
    say("released");
}

/// Reaps, takes a slot as `ID`, releases; says `used ID slot N, reaped [IDS]`.
fn use_once() {
    set_umask();
    let sem = quick().open(arg("PATH"), 2).unwrap();
    let reaped: Vec<String> = sem.reap().unwrap().into_iter().map(|r| r.id).collect();
    let id = arg("ID");
    let permit = sem.try_acquire(id.as_str()).unwrap();
    say(format!(
        "used {id} slot {}, reaped {reaped:?}",
        permit.slot()
    ));
    permit.release().unwrap();
}

/// Creates the marker of `slot` with O_EXCL; a marker already there means two holders on
/// one slot, recorded as a `violation-*` file.
fn mark(slot: u32) -> PathBuf {
    let markers = PathBuf::from(arg("MARKERS"));
    let marker = markers.join(format!("slot-{slot}"));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let v = markers.join(format!("violation-{}-{slot}", std::process::id()));
            fs::write(v, b"").unwrap();
        }
        Err(e) => panic!("marker: {e}"),
    }
    marker
}

/// Like `filesem run`: takes a slot of the group semaphore (capacity 2) as `ID`, starts a
/// command that inherits the witness and marks the slot, says `running PID SLOT` and
/// `marked`, and waits to be SIGKILLed (if its parent goes first, it leaves the hold to the
/// command, as a killed `run` does).
#[allow(clippy::zombie_processes)] // Reviewed: the command outlives this process on purpose.
fn run() {
    set_umask();
    let sem = quick().open(arg("PATH"), 2).unwrap();
    let permit = sem.try_acquire(arg("ID").as_str()).unwrap();
    let fd = permit.inherit_witness().unwrap().expect("a witness");
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(exe)
        .args([
            "child_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(common::ROLE_VAR, "command")
        .env("FILESEM_TEST_MARKERS", arg("MARKERS"))
        .env("FILESEM_TEST_SLOT", permit.slot().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(fd);
    // Relayed, so that the parent sees it after `running` (one pipe, one order).
    let out = std::io::BufReader::new(command.stdout.take().unwrap());
    let marked = std::io::BufRead::lines(out).any(|l| l.is_ok_and(|l| l.ends_with("marked")));
    assert!(marked, "the command ended before marking its slot");
    say(format!("running {} {}", command.id(), permit.slot()));
    say("marked");
    common::wait_for_parent();
    std::mem::forget(permit);
}

/// The command of [`run`]: marks its slot, says `marked`, and lives until killed (at most a
/// minute, so that a failed test leaves nothing running).
fn command() {
    mark(arg("SLOT").parse().unwrap());
    say("marked");
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Judges every holder (`verdict ID NAME`), reaps (`reaped [IDS]` or the error), and tries
/// to take a slot as `ID` (`acquire slot N`, `acquire no capacity`, or the error).
fn contend() {
    set_umask();
    let sem = quick().open_existing(arg("PATH")).unwrap();
    for h in sem.holders().unwrap() {
        say(format!("verdict {} {}", h.id, h.liveness.name()));
    }
    match sem.reap() {
        Ok(r) => say(format!(
            "reaped {:?}",
            r.into_iter().map(|r| r.id).collect::<Vec<_>>()
        )),
        Err(e) => say(format!("reaped {e}")),
    }
    match sem.try_acquire(arg("ID").as_str()) {
        Ok(permit) => {
            let marker = mark(permit.slot());
            say(format!("acquire slot {}", permit.slot()));
            fs::remove_file(marker).unwrap();
            permit.release().unwrap();
        }
        Err(Error::NoCapacity { .. }) => say("acquire no capacity"),
        Err(e) => say(format!("acquire {e}")),
    }
}

/// A user who may only read: tries to open the lock file and a witness (`open lock
/// denied`...), judges the holders, tries to acquire.
fn read_only() {
    let path = PathBuf::from(arg("PATH"));
    let mut lock = path.clone().into_os_string();
    lock.push(".lock");
    for (what, file) in [
        ("lock", PathBuf::from(lock)),
        ("witness", PathBuf::from(arg("WITNESS"))),
    ] {
        match fs::File::open(&file) {
            Err(e) if e.kind() == ErrorKind::PermissionDenied => say(format!("open {what} denied")),
            other => say(format!("open {what} {other:?}")),
        }
    }
    let sem = Semaphore::open_existing(&path).unwrap();
    for h in sem.holders().unwrap() {
        say(format!("verdict {} {}", h.id, h.liveness.name()));
    }
    match sem.try_acquire("reader") {
        Ok(_) => say("acquire granted"),
        Err(e) => say(format!("acquire {e}")),
    }
}

/// One acquire as `ID`; says `acquire ok` or the error.
fn acquire_once() {
    let sem = OpenOptions::new().open_existing(arg("PATH")).unwrap();
    match sem.try_acquire(arg("ID").as_str()) {
        Ok(p) => {
            say("acquire ok");
            p.release().unwrap();
        }
        Err(e) => say(format!("acquire {e}")),
    }
}

#[test]
#[ignore = "a child-process role, started by the other tests in this file"]
fn child_process() {
    // Not a test of its own: the body of the processes the tests above start.
    match common::role().as_deref() {
        Some("hold") => hold(),
        Some("use") => use_once(),
        Some("run") => run(),
        Some("command") => command(),
        Some("contend") => contend(),
        Some("read_only") => read_only(),
        Some("acquire_once") => acquire_once(),
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}
