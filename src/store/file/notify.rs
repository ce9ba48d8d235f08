//! Change notification for waiters on Linux: inotify on the semaphore's directory, on its
//! witness directory, and on the waiter's own witness file.
//!
//! The state file is replaced by `rename`, so a watch on the file itself would follow the old
//! inode and go quiet after one write; the directory watch sees every replacement as an
//! `IN_MOVED_TO` naming the state file. Events for other names in the directory (the lock
//! file, temp files, other semaphores) wake the poll but are filtered out here. Reads of the
//! state file (`IN_CLOSE_NOWRITE`) are not watched, so waiters looking at the file never wake
//! each other.
//!
//! A second watch on the witness directory (`PATH.witness`) wakes waiters when a holder or
//! waiter dies: its witness file, which it keeps open for writing, closes
//! (`IN_CLOSE_WRITE`). Judges probe witness files read-only, so probing raises no event
//! there either. Such a wake-up is a [death](Events::Died): the waiter judges the entries
//! again.
//!
//! A waiter with a witness file also watches that file for `IN_ATTRIB`: a writer that grants
//! it a slot, removes its entry or makes it the head of the queue sets the file's times
//! ([`super::witness::touch`]). Such a waiter watches the directory only while it is at the
//! head of the queue ([`Notifier::set_head`]): every change that concerns a waiter further
//! back comes with a touch from a writer of this crate, and only the head can be served by a
//! change that another writer (the Go package, which knows no queue) makes. So a write wakes
//! at most the waiters it concerns and the head, not every waiter.
//!
//! All watches are added through `/proc/self/fd/N` of a descriptor of the directory or file,
//! so they are on the objects the handle is bound to (see [`super::dir`]), whatever the path
//! names now: a renamed directory keeps its watch, a repointed symlink does not move it.
//!
//! Everything here is an optimisation: the waiter also polls on a timer, and falls back to
//! polling alone when inotify is unavailable (instance or watch limits) or when the
//! directory is on a network filesystem, where other machines' writes raise no events.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Mutex, mpsc};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::statfs;

use super::dir::Files;

/// An inotify instance watching one semaphore's directory.
pub(crate) struct Notifier {
    /// `None` only while dropping (see the `Drop` impl).
    inotify: Option<Inotify>,
    state_name: OsString,
    /// `/proc/self/fd/N` of the bound directory, to watch it again.
    dir_path: String,
    /// The watch on the directory, while there is one.
    dir_wd: Option<WatchDescriptor>,
    /// The watch on the witness directory, if it existed when the wait started.
    witness_wd: Option<WatchDescriptor>,
    /// The watch on the waiter's own witness file, if it has one.
    own_wd: Option<WatchDescriptor>,
    /// Whether the directory is on a filesystem where writes by other machines may happen
    /// without events (NFS, SMB/CIFS, FUSE, Ceph, 9p).
    remote: bool,
    /// The process that made it: a forked child shares the instance, and must not use it.
    pid: u32,
}

/// What one drain of the event queue found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Events {
    /// Nothing about the state file (other names in the directory).
    Unrelated,
    /// The state file was replaced, written or deleted, a writer touched the waiter's witness,
    /// or events were lost: look again.
    Changed,
    /// A witness file was closed by its writer (a holder or waiter may have died): look again
    /// and judge the entries.
    Died,
    /// The watch is gone (the directory was removed or moved) or reading failed: stop
    /// relying on this notifier.
    Broken,
}

/// What a watch on the directory reports.
fn dir_mask() -> AddWatchFlags {
    AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

impl Notifier {
    /// Watches the bound directory of `files`, its witness directory, and `own`, the waiter's
    /// witness file, if given; `None` when inotify cannot be used (the caller then polls).
    pub fn new(files: &Files, own: Option<BorrowedFd<'_>>) -> Option<Notifier> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| tracing::debug!(%e, "inotify unavailable; polling"))
            .ok()?;
        let dir_path = fd_path(files.dir());
        let dir_wd = inotify
            .add_watch(dir_path.as_str(), dir_mask())
            .map_err(|e| tracing::debug!(dir = %files.resolved.display(), %e, "inotify watch failed; polling"))
            .ok()?;
        let remote = statfs::fstatfs(files.dir())
            .map(|s| is_remote(s.filesystem_type()))
            .unwrap_or(true);
        let mut notifier = Notifier {
            inotify: Some(inotify),
            state_name: files.state_name.clone(),
            dir_path,
            dir_wd: Some(dir_wd),
            witness_wd: None,
            own_wd: None,
            remote,
            pid: std::process::id(),
        };
        notifier.arm(files, own);
        Some(notifier)
    }

    /// Watches the witness directory (as it is now: it may have been made, or made anew,
    /// since the last wait) and `own`, the waiter's witness file.
    fn arm(&mut self, files: &Files, own: Option<BorrowedFd<'_>>) {
        let Some(inotify) = &self.inotify else { return };
        self.witness_wd = super::witness::open_dir_for_probe(files)
            .ok()
            .flatten()
            .and_then(|dir| {
                let mask = AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_ONLYDIR;
                inotify.add_watch(fd_path(dir.as_fd()).as_str(), mask).ok()
            });
        // Without the witness directory's watch a touch would come, but no death: then the
        // directory stays watched.
        self.own_wd = own.filter(|_| self.witness_wd.is_some()).and_then(|fd| {
            inotify
                .add_watch(fd_path(fd).as_str(), AddWatchFlags::IN_ATTRIB)
                .ok()
        });
    }

    /// Makes a notifier whose waiter is done fit for the next waiter of the same handle (see
    /// [`Kept`]): no watch on that waiter's witness, the directory watched, nothing queued.
    /// `false` if it is not fit (made by another process, the directory gone, reading
    /// failed): then it is closed.
    fn reset(&mut self) -> bool {
        if self.pid != std::process::id() {
            return false;
        }
        let Some(inotify) = &self.inotify else {
            return false;
        };
        if let Some(wd) = self.own_wd.take() {
            // Fails only if the file's watch went already (the file is gone).
            let _ = inotify.rm_watch(wd);
        }
        if self.dir_wd.is_none() {
            match inotify.add_watch(self.dir_path.as_str(), dir_mask()) {
                Ok(wd) => self.dir_wd = Some(wd),
                Err(_) => return false,
            }
        }
        // What was queued concerns the waiter that is done; a gone directory makes it unfit.
        self.drain() != Events::Broken
    }
    /// The descriptor to poll for readability.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(AsFd::as_fd)
    }

    /// Whether events can be missed because other machines may write the directory.
    pub fn remote(&self) -> bool {
        self.remote
    }

    /// Whether the waiter is at the head of the queue: a waiter told of its own changes by
    /// touches watches the directory only then (see the [module docs](self)). Returns whether
    /// the directory is watched anew, in which case the caller must look once more: a change
    /// made before the watch raised no event.
    pub fn set_head(&mut self, head: bool) -> bool {
        let Some(inotify) = self.inotify.as_ref().filter(|_| self.own_wd.is_some()) else {
            return false;
        };
        match (head, self.dir_wd) {
            (true, None) => match inotify.add_watch(self.dir_path.as_str(), dir_mask()) {
                Ok(wd) => {
                    self.dir_wd = Some(wd);
                    true
                }
                Err(e) => {
                    // Without it, a change by another writer is seen by the timer only.
                    tracing::debug!(%e, "inotify watch failed");
                    false
                }
            },
            (false, Some(wd)) => {
                self.dir_wd = None;
                if let Err(e) = inotify.rm_watch(wd) {
                    tracing::debug!(%e, "removing an inotify watch failed");
                }
                false
            }
            _ => false,
        }
    }

    /// Reads every queued event and says whether any concerns this waiter.
    pub fn drain(&self) -> Events {
        let mut seen = Events::Unrelated;
        let Some(inotify) = &self.inotify else {
            return Events::Broken;
        };
        loop {
            match inotify.read_events() {
                Ok(events) if events.is_empty() => return seen,
                Ok(events) => {
                    for e in events {
                        let verdict = if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                            // Events were lost, a death among them perhaps.
                            Events::Died
                        } else if Some(e.wd) == self.own_wd {
                            // A writer touched our witness (or the watch went away): look.
                            Events::Changed
                        } else if Some(e.wd) == self.witness_wd {
                            // A witness closed by its writer (a death or a release); or the
                            // watch went away (IN_IGNORED): look and judge either way.
                            Events::Died
                        } else if Some(e.wd) == self.dir_wd {
                            classify(e.mask, e.name.as_deref(), &self.state_name)
                        } else {
                            // A watch removed by set_head reports IN_IGNORED, and events
                            // queued before its removal: neither concerns us now.
                            Events::Unrelated
                        };
                        seen = seen.max(verdict);
                    }
                }
                Err(Errno::EAGAIN) => return seen,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::debug!(%e, "reading inotify events failed; polling");
                    return Events::Broken;
                }
            }
        }
    }
}

impl Drop for Notifier {
    /// Closing an inotify instance that had watches waits for an RCU grace period in the
    /// kernel (measured here: 10-20 ms). A waiter that got its slot must not pay that on its
    /// way out, so the instance is handed to a background thread, which closes it.
    fn drop(&mut self) {
        if let Some(inotify) = self.inotify.take() {
            close_later(inotify);
        }
    }
}

/// The notifiers a handle keeps for its next waits: closing an inotify instance waits for an
/// RCU grace period in the kernel (10-20 ms), so one instance per wait piles up instances
/// waiting to be closed under a fast queue (8 processes each waiting every few hundred
/// microseconds had more than 100), against a limit of 128 per user
/// (`fs.inotify.max_user_instances`) shared with every other program; a waiter that finds
/// none polls.
#[derive(Default)]
pub(crate) struct Kept {
    free: Mutex<Vec<Notifier>>,
}

/// How many notifiers a handle keeps: enough for threads that wait at once now and then.
const KEPT: usize = 2;

impl Kept {
    /// A notifier for a waiter whose witness is `own`: a kept one of this process, armed
    /// for it, else a new one ([`Notifier::new`]).
    pub fn take(&self, files: &Files, own: Option<BorrowedFd<'_>>) -> Option<Notifier> {
        let kept = super::cache(&self.free).and_then(|mut free| free.pop());
        match kept {
            Some(mut n) if n.pid == std::process::id() => {
                n.arm(files, own);
                Some(n)
            }
            // A forked child's copy of its parent's: closed (the parent's stays open).
            _ => Notifier::new(files, own),
        }
    }

    /// Keeps the notifier of a waiter that is done, if it is fit ([`Notifier::reset`]) and
    /// fewer than [`KEPT`] are kept; otherwise it is closed.
    pub fn give_back(&self, mut notifier: Notifier) {
        if !notifier.reset() {
            return;
        }
        if let Some(mut free) = super::cache(&self.free)
            && free.len() < KEPT
        {
            free.push(notifier);
        }
    }
}

/// Closes `inotify` on a background thread (one per process, started on first use and again
/// in a forked child); closes it here if that thread cannot be started.
fn close_later(inotify: Inotify) {
    static CLOSER: Mutex<Option<(u32, mpsc::Sender<Inotify>)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut closer = CLOSER.lock().unwrap_or_else(|p| p.into_inner());
    if !matches!(&*closer, Some((owner, _)) if *owner == pid) {
        let (tx, rx) = mpsc::channel::<Inotify>();
        let started = std::thread::Builder::new()
            .name("filesem-notify-close".into())
            .spawn(move || rx.into_iter().for_each(drop));
        *closer = started.ok().map(|_| (pid, tx));
    }
    let unsent = match &*closer {
        Some((_, tx)) => tx.send(inotify).err().map(|e| e.0),
        None => Some(inotify),
    };
    drop(closer);
    drop(unsent);
}

/// `/proc/self/fd/N` for the descriptor `fd`: inotify follows that link to the directory
/// the descriptor is open on.
fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// What one event means for a waiter on the state file named `state_name`. A moved directory
/// is still the bound one (its watch stays); a removed one breaks the watch.
fn classify(mask: AddWatchFlags, name: Option<&OsStr>, state_name: &OsStr) -> Events {
    if mask.intersects(AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF) {
        return Events::Broken;
    }
    if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) || name == Some(state_name) {
        return Events::Changed;
    }
    Events::Unrelated
}

/// Filesystems on which another machine may change a file without a local event.
fn is_remote(fs: statfs::FsType) -> bool {
    const CIFS: i64 = 0xFF53_4D42;
    const SMB2: i64 = 0xFE53_4D42;
    const CEPH: i64 = 0x00C3_6400;
    const V9FS: i64 = 0x0102_1997;
    #[allow(clippy::unnecessary_cast)] // `fs_type_t` is not i64 on every target
    let magic = fs.0 as i64;
    fs == statfs::NFS_SUPER_MAGIC
        || fs == statfs::SMB_SUPER_MAGIC
        || fs == statfs::FUSE_SUPER_MAGIC
        || [CIFS, SMB2, CEPH, V9FS].contains(&magic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_readable(n: &Notifier, ms: u16) -> bool {
        use nix::poll::{PollFd, PollFlags, poll};
        let mut fds = [PollFd::new(n.fd().unwrap(), PollFlags::POLLIN)];
        loop {
            match poll(&mut fds, ms) {
                Ok(k) => return k > 0,
                Err(Errno::EINTR) => continue,
                Err(e) => panic!("poll: {e}"),
            }
        }
    }

    fn files(state: &std::path::Path) -> Files {
        Files::open(state, crate::store::file::dir::Trust::new(&[])).unwrap()
    }

    #[test]
    fn replacing_the_state_file_by_rename_is_seen_every_time() {
        // A watch on the directory keeps working across renames (a file watch would not).
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.json");
        std::fs::write(&state, b"{}").unwrap();
        let n = Notifier::new(&files(&state), None).expect("inotify on tmp");
        for round in 0..3 {
            let temp = dir.path().join(format!(".tmp{round}"));
            std::fs::write(&temp, b"{}").unwrap();
            // The temp file's close is unrelated.
            assert!(wait_readable(&n, 5000));
            assert_eq!(n.drain(), Events::Unrelated);
            std::fs::rename(&temp, &state).unwrap();
            assert!(wait_readable(&n, 5000));
            assert_eq!(n.drain(), Events::Changed, "round {round}");
        }
        // Reading the state file raises nothing we watch.
        let _ = std::fs::read(&state).unwrap();
        assert!(!wait_readable(&n, 20));
    }

    #[test]
    fn a_witness_closed_by_its_writer_is_seen_and_probes_are_not() {
        // A holder's death closes its witness for writing; a judge's read-only probe is silent.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.json");
        let witness_dir = crate::store::file::witness::dir_of(&state);
        std::fs::create_dir(&witness_dir).unwrap();
        let n = Notifier::new(&files(&state), None).expect("inotify on tmp");
        let file = witness_dir.join("7");
        std::fs::write(&file, b"").unwrap();
        assert!(wait_readable(&n, 5000));
        assert_eq!(n.drain(), Events::Died);
        let _ = std::fs::File::open(&file).unwrap();
        assert!(!wait_readable(&n, 20));
    }

    #[test]
    fn the_watches_stay_on_the_bound_directories_when_the_path_is_repointed_or_moved() {
        // A waiter opened through a symlinked parent is woken by changes in the directory it
        // is bound to, not by the one the link points to later; a moved directory keeps its
        // watch.
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join("s.json.witness")).unwrap();
        }
        let link = root.path().join("current");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let n = Notifier::new(&files(&link.join("s.json")), None).expect("inotify on tmp");
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&b, &link).unwrap();
        assert!(
            !wait_readable(&n, 20),
            "the link is outside the watched directory"
        );
        std::fs::write(b.join("s.json"), b"{}").unwrap();
        std::fs::write(b.join("s.json.witness/1"), b"").unwrap();
        assert!(!wait_readable(&n, 20), "b is not watched");
        std::fs::write(a.join("s.json"), b"{}").unwrap();
        assert!(wait_readable(&n, 5000));
        assert_eq!(n.drain(), Events::Changed);
        std::fs::write(a.join("s.json.witness/1"), b"").unwrap();
        assert!(wait_readable(&n, 5000));
        assert_eq!(n.drain(), Events::Died);
        let moved = root.path().join("moved");
        std::fs::rename(&a, &moved).unwrap();
        assert!(
            !wait_readable(&n, 20),
            "a move of the directory is no change to look at"
        );
        std::fs::write(moved.join("s.json"), b"{}").unwrap();
        assert!(wait_readable(&n, 5000));
        assert_eq!(n.drain(), Events::Changed);
    }

    #[test]
    fn other_names_lost_events_and_a_gone_directory_are_classified() {
        // Only the state file's own events wake a waiter; overflow means "look again".
        let name = OsStr::new("s.json");
        assert_eq!(
            classify(AddWatchFlags::IN_MOVED_TO, Some(OsStr::new("s.json")), name),
            Events::Changed
        );
        assert_eq!(
            classify(
                AddWatchFlags::IN_CLOSE_WRITE,
                Some(OsStr::new("s.json.lock")),
                name
            ),
            Events::Unrelated
        );
        assert_eq!(
            classify(AddWatchFlags::IN_Q_OVERFLOW, None, name),
            Events::Changed
        );
        assert_eq!(
            classify(AddWatchFlags::IN_IGNORED, None, name),
            Events::Broken
        );
        assert_eq!(
            classify(AddWatchFlags::IN_DELETE_SELF, None, name),
            Events::Broken
        );
        assert_eq!(
            classify(AddWatchFlags::IN_MOVE_SELF, None, name),
            Events::Unrelated
        );
        assert!(!is_remote(statfs::EXT4_SUPER_MAGIC));
        assert!(is_remote(statfs::NFS_SUPER_MAGIC));
    }

    #[test]
    fn a_waiter_behind_the_head_wakes_for_its_own_witness_not_for_every_write() {
        // Writes that do not concern a waiter further back leave it asleep; a writer's touch
        // of its witness wakes it. At the head it watches the directory again, and looks once
        // more for a change made before that watch.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.json");
        let witness_dir = crate::store::file::witness::dir_of(&state);
        std::fs::create_dir(&witness_dir).unwrap();
        let own = std::fs::File::create(witness_dir.join("5")).unwrap();
        let files = files(&state);
        let mut n = Notifier::new(&files, Some(own.as_fd())).expect("inotify on tmp");
        let replace = || {
            let temp = dir.path().join(".tmp");
            std::fs::write(&temp, b"{}").unwrap();
            std::fs::rename(&temp, &state).unwrap();
        };
        assert!(!n.set_head(false));
        // The removed watch reports IN_IGNORED, which concerns nobody.
        assert_eq!(n.drain(), Events::Unrelated);
        replace();
        assert!(!wait_readable(&n, 20), "a write that does not concern it");
        let wdir = super::super::witness::open_dir_for_probe(&files)
            .unwrap()
            .unwrap();
        super::super::witness::touch(wdir.as_fd(), 5);
        assert!(wait_readable(&n, 5000));
        assert_eq!(n.drain(), Events::Changed);
        assert!(
            n.set_head(true),
            "watching the directory again: the caller looks once more"
        );
        assert!(!n.set_head(true), "already watching");
        replace();
        assert!(wait_readable(&n, 5000));
        assert_eq!(n.drain(), Events::Changed);
        // Deaths wake every waiter.
        assert!(!n.set_head(false));
        std::fs::write(witness_dir.join("6"), b"").unwrap();
        assert!(wait_readable(&n, 5000));
        assert_eq!(n.drain(), Events::Died);
    }
}
