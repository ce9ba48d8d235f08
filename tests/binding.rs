//! A handle stays bound to the directory it opened: neither a change of the working
//! directory nor a renamed or repointed path component changes which files a handle, its
//! permits or its waits act on; a removed directory is an error, never a reason to act
//! elsewhere. Processes are real where the process matters (the working directory is
//! per process); every wait has a deadline.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ChildSpec, Group, arg, say, snapshot};
use filesem::{AcquireOptions, Error, OpenOptions, Semaphore};

fn quick() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durable(false).lock_timeout(Duration::from_secs(5));
    o
}

/// A semaphore of capacity 1 at `dir/sem.json` whose slot is held by a detached `job`.
fn detached_job(dir: &Path) -> Semaphore {
    fs::create_dir_all(dir).unwrap();
    let sem = quick().open(dir.join("sem.json"), 1).unwrap();
    let opts = AcquireOptions::new().detached(true);
    let permit = sem.try_acquire_with("job", &opts).unwrap();
    assert_eq!(permit.token(), 1);
    drop(permit);
    sem
}

fn ids(sem: &Semaphore) -> Vec<String> {
    sem.holders().unwrap().into_iter().map(|h| h.id).collect()
}

#[test]
fn a_relative_path_stays_bound_after_chdir() {
    // The reproduction of the bug: `a/` and `b/` each hold `job` with token 1; a process that
    // opened `sem.json` in `a/` and then changed to `../b` releases a's entry, and b's file
    // stays byte for byte; its queries, drop and later acquires all act on `a/`.
    let root = common::tmpfs_dir();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    fs::create_dir(&a).unwrap();
    detached_job(&b);
    let b_before = snapshot(&b);
    let mut group = Group::new();
    let idx = group.spawn(ChildSpec::new("chdir", "child_process", "chdir").arg("A", a.display()));
    let finished = group.finish(common::deadline(60));
    let child = &finished[idx];
    assert!(child.status.success(), "{:?}", child.lines);
    assert_eq!(
        child.lines,
        [
            "acquired job 1",
            "after chdir: count 1, holders [\"job\"]",
            "released",
            "dropped a second permit",
            "count 0",
        ]
    );
    assert_eq!(snapshot(&b), b_before, "b/ untouched");
    let sem_a = Semaphore::open_existing(a.join("sem.json")).unwrap();
    assert_eq!(sem_a.count().unwrap(), 0, "a's entries were released");
    let sem_b = Semaphore::open_existing(b.join("sem.json")).unwrap();
    assert_eq!(ids(&sem_b), ["job"]);
}

/// The child of [`a_relative_path_stays_bound_after_chdir`].
fn chdir() {
    std::env::set_current_dir(arg("A")).unwrap();
    let sem = quick().open("sem.json", 1).unwrap();
    assert!(sem.resolved_path().is_absolute());
    assert_eq!(sem.path(), Path::new("sem.json"));
    let permit = sem.try_acquire("job").unwrap();
    say(format!("acquired {} {}", permit.id(), permit.token()));
    std::env::set_current_dir("../b").unwrap();
    say(format!(
        "after chdir: count {}, holders {:?}",
        sem.count().unwrap(),
        ids(&sem)
    ));
    permit.release().unwrap();
    say("released");
    let second = sem.try_acquire("job").unwrap();
    drop(second);
    say("dropped a second permit");
    say(format!("count {}", sem.count().unwrap()));
}

/// `root/current` pointing at `root/a`, and semaphores in `a/` and `b/` (b's slot held by a
/// detached `job`).
fn two_targets(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (a, b) = (root.join("a"), root.join("b"));
    fs::create_dir(&a).unwrap();
    quick().open(a.join("sem.json"), 1).unwrap();
    detached_job(&b);
    let link = root.join("current");
    symlink(&a, &link).unwrap();
    (a, b, link)
}

fn repoint(link: &Path, to: &Path) {
    // As deploy tools do: a new link renamed over the old one.
    let next = link.with_extension("next");
    symlink(to, &next).unwrap();
    fs::rename(&next, link).unwrap();
}

#[test]
fn a_permit_held_through_a_repointed_symlink_releases_in_the_original_directory() {
    // `current -> a` is switched to `b` while a permit taken through it is held: the release
    // (and the handle's queries) act on `a`, and `b` stays byte for byte.
    let root = common::tmpfs_dir();
    let (a, b, link) = two_targets(root.path());
    let sem = quick().open_existing(link.join("sem.json")).unwrap();
    assert_eq!(
        sem.resolved_path(),
        a.canonicalize().unwrap().join("sem.json")
    );
    let permit = sem.try_acquire("job").unwrap();
    let b_before = snapshot(&b);
    repoint(&link, &b);
    assert_eq!(ids(&sem), ["job"]);
    assert_eq!(sem.available().unwrap(), 0);
    permit.release().unwrap();
    assert_eq!(sem.count().unwrap(), 0);
    assert_eq!(snapshot(&b), b_before, "b/ untouched");
    assert_eq!(
        Semaphore::open_existing(a.join("sem.json"))
            .unwrap()
            .count()
            .unwrap(),
        0
    );
}

#[test]
fn a_wait_through_a_repointed_symlink_is_granted_in_the_original_directory() {
    // A waiter in another process queued through `current -> a`; the link is switched to `b`;
    // the release in `a` hands the slot to that waiter in `a`, and `b` stays byte for byte.
    let root = common::tmpfs_dir();
    let (a, b, link) = two_targets(root.path());
    let sem_a = quick().open_existing(a.join("sem.json")).unwrap();
    let first = sem_a.try_acquire("first").unwrap();
    let mut group = Group::new();
    let waiter = group.spawn(
        ChildSpec::new("waiter", "child_process", "wait")
            .arg("PATH", link.join("sem.json").display())
            .arg("ID", "waiter"),
    );
    group.expect(waiter, "queued", common::deadline(60));
    let ticket = common::entry_on_file(&a.join("sem.json"), "waiters", "waiter").ticket;
    let b_before = snapshot(&b);
    repoint(&link, &b);
    first.release().unwrap();
    let acquired = group.expect(waiter, "acquired", common::deadline(60));
    let held = common::entry_on_file(&a.join("sem.json"), "holders", "waiter");
    assert_eq!(held.ticket, ticket, "served from its queue entry in a/");
    assert_eq!(acquired, format!("acquired {}", held.token.unwrap()));
    assert_eq!(ids(&sem_a), ["waiter"]);
    group.send_all("release");
    group.expect(waiter, "released", common::deadline(60));
    group.finish(common::deadline(60));
    assert_eq!(sem_a.count().unwrap(), 0);
    assert_eq!(snapshot(&b), b_before, "b/ untouched");
}

/// A waiter: queues for `ID` on `PATH`, says `queued AHEAD` and `acquired TOKEN`, releases
/// when told.
fn wait() {
    let sem = quick().open_existing(arg("PATH")).unwrap();
    let opts = AcquireOptions::new().on_wait(|s| say(format!("queued {}", s.ahead)));
    let permit = sem.acquire_with(arg("ID").as_str(), &opts).unwrap();
    say(format!("acquired {}", permit.token()));
    common::wait_for_parent();
    permit.release().unwrap();
    say("released");
}

#[test]
fn a_renamed_directory_keeps_its_handles_and_permits_and_nothing_is_made_at_the_old_name() {
    // The handle follows its directory, as an open file follows its inode.
    let root = common::tmpfs_dir();
    let dir = root.path().join("d");
    fs::create_dir(&dir).unwrap();
    let sem = quick().open(dir.join("sem.json"), 2).unwrap();
    let resolved = sem.resolved_path().to_path_buf();
    let permit = sem.try_acquire("one").unwrap();
    let moved = root.path().join("moved");
    fs::rename(&dir, &moved).unwrap();
    let two = sem.try_acquire("two").unwrap();
    assert_eq!(ids(&sem), ["one", "two"]);
    permit.release().unwrap();
    drop(two);
    sem.set_capacity(3).unwrap();
    assert!(sem.reap().unwrap().is_empty());
    let in_moved = Semaphore::open_existing(moved.join("sem.json")).unwrap();
    assert_eq!(in_moved.capacity().unwrap(), 3);
    assert_eq!(in_moved.count().unwrap(), 0);
    assert!(!dir.exists(), "nothing was created at the old name");
    assert_eq!(sem.resolved_path(), resolved, "the path it was opened at");
}

#[test]
fn a_removed_directory_fails_every_operation_and_nothing_is_created_anywhere() {
    // Once the directory is gone, every operation of the handle and its permit is
    // DirectoryGone naming the path; nothing is created in the removed directory, at its
    // old path (even when a new directory appears there) or anywhere else.
    let root = common::tmpfs_dir();
    let dir = root.path().join("d");
    fs::create_dir(&dir).unwrap();
    let path = dir.join("sem.json");
    let sem = quick().open(&path, 2).unwrap();
    let permit = sem.try_acquire("held").unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let gone = |what: &str, r: Result<(), Error>| match r {
        Err(e @ Error::DirectoryGone { .. }) => {
            assert_eq!(e.path(), path, "{what}");
            assert!(e.to_string().contains("was removed"), "{what}: {e}");
        }
        other => panic!("{what}: expected DirectoryGone, got {other:?}"),
    };
    let check_all = |sem: &Semaphore| {
        gone("count", sem.count().map(drop));
        gone("holders", sem.holders().map(drop));
        gone("available", sem.available().map(drop));
        gone("capacity", sem.capacity().map(drop));
        gone("try_acquire", sem.try_acquire("new").map(drop));
        gone(
            "acquire_timeout",
            sem.acquire_timeout("new", Duration::from_millis(50))
                .map(drop),
        );
        gone("release", sem.release("held"));
        gone("remove", sem.remove(["held"]).map(drop));
        gone("reap", sem.reap().map(drop));
        gone("set_capacity", sem.set_capacity(3));
    };
    check_all(&sem);
    let root_before = snapshot(root.path());
    assert!(root_before.is_empty(), "{root_before:?}");
    // A new directory at the old path is not the semaphore's: nothing is made in it either.
    fs::create_dir(&dir).unwrap();
    check_all(&sem);
    gone("is_held", permit.is_held().map(drop));
    gone("renew", permit.renew().map(drop));
    gone("permit release", permit.release());
    assert!(
        snapshot(&dir).is_empty(),
        "nothing made in the new directory"
    );
    // Only a new open creates a semaphore there.
    drop(quick().open(&path, 2).unwrap());
    let names: Vec<String> = snapshot(&dir).into_keys().collect();
    assert_eq!(names, ["sem.json", "sem.json.lock"]);
}

#[test]
fn a_keep_alive_reports_a_removed_directory_as_a_lost_hold() {
    // The entry went with the directory, which never comes back: the keep-alive stops and
    // reports the hold lost (so `filesem run --kill-on-lost` stops its command) instead of
    // retrying for ever; the permit's release says why.
    let root = common::tmpfs_dir();
    let dir = root.path().join("d");
    fs::create_dir(&dir).unwrap();
    let path = dir.join("sem.json");
    let sem = quick().open(&path, 1).unwrap();
    let opts = AcquireOptions::new().lease(filesem::MIN_LEASE);
    let mut permit = sem.try_acquire_with("held", &opts).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    permit
        .keep_alive_with(move |e| {
            let gone = matches!(e, Error::DirectoryGone { .. });
            tx.send((gone, e.path().to_path_buf())).unwrap();
        })
        .unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let (gone, reported) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the keep-alive reported the hold lost before the deadline");
    assert!(gone, "reported as DirectoryGone");
    assert_eq!(reported, path);
    assert!(permit.is_lost());
    match permit.release() {
        Err(Error::DirectoryGone { path: p }) => assert_eq!(p, path),
        other => panic!("expected DirectoryGone, got {other:?}"),
    }
    assert!(snapshot(root.path()).is_empty(), "nothing created anywhere");
}

#[test]
#[ignore = "a child-process role, started by the other tests in this file"]
fn child_process() {
    // Not a test of its own: the body of the processes the tests above start.
    match common::role().as_deref() {
        Some("chdir") => chdir(),
        Some("wait") => wait(),
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
}
