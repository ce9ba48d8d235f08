//! The physical floor of filesem's protocol: one locked read-modify-write of a state file,
//! written directly against the system calls with nothing the protocol does not need.
//!
//! The benchmarks (`benches/`) and the contention harness (`examples/contention.rs`) both
//! include this file, so the library is always compared with the same floor.
//!
//! One [`Floor::step`] makes exactly these system calls (check with
//! `strace -f -e trace=%file,%desc,flock,fsync,fdatasync,rename`):
//!
//! ```text
//! openat(PATH.lock, O_RDWR|O_CREAT|O_CLOEXEC, 0644)          the lock file, opened per step
//! flock(lock, LOCK_EX)                                       blocks until the lock is ours
//! openat(PATH, O_RDONLY|O_CLOEXEC)
//! read(state, buffer) -> n; read(state) -> 0                 the whole state, not parsed
//! close(state)
//! openat(DIR/.NAME.<16 hex>.floor-tmp, O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0644)
//! write(temp, n bytes)                                       the same bytes back
//! fdatasync(temp)                                            durable only
//! close(temp)
//! rename(temp, PATH)
//! openat(DIR, O_RDONLY|O_CLOEXEC); fsync(dir); close(dir)    durable only
//! flock(lock, LOCK_UN)
//! close(lock)
//! ```
//!
//! A cycle (acquire + release) is two steps, as in the library. The floor parses nothing
//! and decides nothing: it writes back what it read, so its state stays the size of a small
//! semaphore's. It waits for the lock in the kernel (blocking `flock`), which is the cheapest
//! way to wait but has no deadline; the library must bound every wait.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// A state file of the size the library writes for a semaphore with one holder, used as the
/// floor's initial state.
pub const SAMPLE_STATE: &[u8] = br#"{
  "capacity": 2,
  "holders": [
    {
      "id": "worker-1",
      "acquired_at": "2026-01-01T10:00:00.123456789Z",
      "token": 17,
      "slot": 0
    }
  ],
  "version": 1,
  "next_token": 18
}
"#;

/// The floor's handle on one state file.
#[derive(Debug)]
pub struct Floor {
    path: PathBuf,
    lock_path: PathBuf,
    dir: PathBuf,
    temp_prefix: String,
    durable: bool,
    buffer: Vec<u8>,
}

impl Floor {
    /// Creates the state file at `path` with [`SAMPLE_STATE`] (replacing any file there) and
    /// returns a handle on it.
    pub fn create(path: &Path, durable: bool) -> io::Result<Floor> {
        Floor::create_with(path, durable, SAMPLE_STATE)
    }

    /// Creates the state file at `path` with `state` (for example a copy of a large
    /// semaphore's file) and returns a handle on it.
    pub fn create_with(path: &Path, durable: bool, state: &[u8]) -> io::Result<Floor> {
        fs::write(path, state)?;
        let mut floor = Floor::open(path, durable)?;
        floor
            .buffer
            .resize(floor.buffer.len().max(2 * state.len()), 0);
        Ok(floor)
    }

    /// A handle on an existing state file at `path` (created by [`Floor::create`]).
    pub fn open(path: &Path, durable: bool) -> io::Result<Floor> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other(format!("no file name in {}", path.display())))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut lock_path = path.as_os_str().to_os_string();
        lock_path.push(".lock");
        Ok(Floor {
            path: path.to_path_buf(),
            lock_path: PathBuf::from(lock_path),
            dir,
            temp_prefix: format!(".{name}."),
            durable,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// One locked read-modify-write (the system calls listed in the module docs).
    pub fn step(&mut self) -> io::Result<()> {
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&self.lock_path)?;
        let lock =
            Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;

        let mut state = File::open(&self.path)?;
        let mut len = 0;
        loop {
            match state.read(&mut self.buffer[len..])? {
                0 => break,
                n => len += n,
            }
            if len == self.buffer.len() {
                return Err(io::Error::other("floor state is larger than its buffer"));
            }
        }
        drop(state);

        let temp_path = self.dir.join(format!(
            "{}{:016x}.floor-tmp",
            self.temp_prefix,
            fastrand::u64(..)
        ));
        let mut temp = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp_path)?;
        temp.write_all(&self.buffer[..len])?;
        if self.durable {
            temp.sync_data()?;
        }
        drop(temp);
        fs::rename(&temp_path, &self.path)?;
        if self.durable {
            File::open(&self.dir)?.sync_all()?;
        }

        let lock = lock.unlock().map_err(|(_, e)| io::Error::from(e))?;
        drop(lock);
        Ok(())
    }

    /// One acquire + release: two [`step`](Floor::step)s.
    pub fn cycle(&mut self) -> io::Result<()> {
        self.step()?;
        self.step()
    }
}
