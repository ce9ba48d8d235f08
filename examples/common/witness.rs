//! An independent checker of mutual exclusion, kept apart from the semaphore's own state.
//! (The code calls it `Witness`; it has nothing to do with the library's liveness witness
//! files under `PATH.witness/`. Output shown to users calls it the "checker".)
//!
//! Whoever got a slot from the semaphore calls [`Witness::enter`] right after acquiring and
//! [`Witness::leave`] right before releasing. The checker counts how many are inside in its
//! own counter file (under its own flock on `<dir>/checker.lock`, never the semaphore's lock)
//! and creates a marker file `<dir>/slot-<slot>` with `O_EXCL` for every slot in use, so two
//! holders of one slot collide on the file system. Anything impossible (more inside than the
//! capacity, a slot outside `0..capacity`, a slot used twice, a leave without an enter) is
//! recorded as a violation in `<dir>/violations.log`; every grant is logged in
//! `<dir>/grants.log` so that fencing tokens can be checked for uniqueness afterwards.
//!
//! Shared by `examples/workers.rs` and the tests (`#[path]`-included), so one witness judges
//! every multi-process run. It uses only std and nix, not `filesem`.

#![allow(dead_code)] // Each includer uses a different part.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The longest the witness waits for its own lock. It is held for microseconds, so running
/// into this means a process stopped inside it; the operation then fails instead of hanging.
const LOCK_DEADLINE: Duration = Duration::from_secs(20);

/// A witness directory for one semaphore of `capacity` slots.
#[derive(Clone, Debug)]
pub struct Witness {
    dir: PathBuf,
    capacity: u32,
}

/// What [`Witness::enter`] saw.
#[derive(Clone, Debug)]
pub struct Entered {
    /// How many were inside right after this entry, this one included.
    pub inside: u32,
    /// Violations this entry revealed (empty when all is well).
    pub violations: Vec<String>,
}

/// The witness's verdict on a whole run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// How many are inside now (0 after a clean run).
    pub inside: u32,
    /// The most that were ever inside at once.
    pub max_inside: u32,
    /// How many entries there were (grants seen).
    pub grants: u64,
    /// Every violation recorded, in order.
    pub violations: Vec<String>,
    /// The fencing tokens of all grants, in the order they entered.
    pub tokens: Vec<u64>,
}

impl Report {
    /// Fencing tokens that were handed out more than once.
    pub fn duplicate_tokens(&self) -> Vec<u64> {
        let mut sorted = self.tokens.clone();
        sorted.sort_unstable();
        let mut dups: Vec<u64> = sorted
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        dups.dedup();
        dups
    }
}

impl Witness {
    /// Creates (or reuses) the witness directory `dir` for a semaphore of `capacity` slots.
    pub fn create(dir: impl Into<PathBuf>, capacity: u32) -> io::Result<Witness> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let w = Witness { dir, capacity };
        for name in ["counter", "grants.log", "violations.log"] {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(w.dir.join(name))?;
        }
        Ok(w)
    }

    /// The witness directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records that `id` entered `slot` with fencing `token`. Call right after acquiring.
    pub fn enter(&self, slot: u32, id: &str, token: u64) -> io::Result<Entered> {
        self.locked(|counter| {
            let mut c = counter.load()?;
            c.inside += 1;
            c.grants += 1;
            c.max_inside = c.max_inside.max(c.inside);
            let mut violations = Vec::new();
            if c.inside > self.capacity {
                violations.push(format!(
                    "{} inside a semaphore of capacity {} when {id} (token {token}) entered",
                    c.inside, self.capacity
                ));
            }
            if slot >= self.capacity {
                violations.push(format!(
                    "{id} (token {token}) got slot {slot}, outside 0..{}",
                    self.capacity
                ));
            }
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.marker(slot))
            {
                Ok(mut f) => f.write_all(format!("{id} {token}\n").as_bytes())?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let other = fs::read_to_string(self.marker(slot)).unwrap_or_default();
                    violations.push(format!(
                        "{id} (token {token}) entered slot {slot}, already used by {}",
                        other.trim()
                    ));
                }
                Err(e) => return Err(e),
            }
            self.append("grants.log", &format!("{token} {slot} {id}\n"))?;
            for v in &violations {
                self.append("violations.log", &format!("{v}\n"))?;
            }
            counter.store(&c)?;
            Ok(Entered {
                inside: c.inside,
                violations,
            })
        })
    }

    /// Records that `id` left `slot`. Call right before releasing. Returns how many are
    /// inside after it left, and the violations this revealed.
    pub fn leave(&self, slot: u32, id: &str, token: u64) -> io::Result<(u32, Vec<String>)> {
        self.locked(|counter| self.record_leave(counter, slot, id, token))
    }

    /// Kills a holder that is inside `slot` and records that it left, both under the witness
    /// lock, so nobody can enter in between and be counted next to the dead one. `kill` must
    /// not return before the process is gone. Returns `None` (and kills nobody) if `id` with
    /// `token` is no longer inside `slot`.
    pub fn kill_inside(
        &self,
        slot: u32,
        id: &str,
        token: u64,
        kill: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<Option<(u32, Vec<String>)>> {
        self.locked(|counter| {
            if fs::read_to_string(self.marker(slot)).ok() != Some(format!("{id} {token}\n")) {
                return Ok(None);
            }
            kill()?;
            self.record_leave(counter, slot, id, token).map(Some)
        })
    }

    fn record_leave(
        &self,
        counter: &mut CounterFile,
        slot: u32,
        id: &str,
        token: u64,
    ) -> io::Result<(u32, Vec<String>)> {
        let mut c = counter.load()?;
        let mut violations = Vec::new();
        if c.inside == 0 {
            violations.push(format!("{id} (token {token}) left, but nobody was inside"));
        } else {
            c.inside -= 1;
        }
        let marker = self.marker(slot);
        match fs::read_to_string(&marker) {
            Ok(text) if text == format!("{id} {token}\n") => fs::remove_file(&marker)?,
            Ok(text) => violations.push(format!(
                "{id} (token {token}) left slot {slot}, which is marked as {}",
                text.trim()
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => violations.push(format!(
                "{id} (token {token}) left slot {slot}, which had no marker"
            )),
            Err(e) => return Err(e),
        }
        for v in &violations {
            self.append("violations.log", &format!("{v}\n"))?;
        }
        counter.store(&c)?;
        Ok((c.inside, violations))
    }

    /// Reads the verdict so far.
    pub fn report(&self) -> io::Result<Report> {
        self.locked(|counter| {
            let c = counter.load()?;
            let violations = fs::read_to_string(self.dir.join("violations.log"))?
                .lines()
                .map(str::to_string)
                .collect();
            let tokens = fs::read_to_string(self.dir.join("grants.log"))?
                .lines()
                .filter_map(|l| l.split(' ').next()?.parse().ok())
                .collect();
            Ok(Report {
                inside: c.inside,
                max_inside: c.max_inside,
                grants: c.grants,
                violations,
                tokens,
            })
        })
    }

    fn marker(&self, slot: u32) -> PathBuf {
        self.dir.join(format!("slot-{slot}"))
    }

    fn append(&self, name: &str, text: &str) -> io::Result<()> {
        OpenOptions::new()
            .append(true)
            .open(self.dir.join(name))?
            .write_all(text.as_bytes())
    }

    fn locked<R>(&self, f: impl FnOnce(&mut CounterFile) -> io::Result<R>) -> io::Result<R> {
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join("checker.lock"))?;
        let start = Instant::now();
        let mut file = lock;
        let _guard = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(guard) => break guard,
                Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => file = f,
                Err((_, errno)) => return Err(io::Error::from(errno)),
            }
            if start.elapsed() > LOCK_DEADLINE {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("checker lock in {} held too long", self.dir.display()),
                ));
            }
            std::thread::sleep(Duration::from_micros(50 + fastrand::u64(..100)));
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join("counter"))?;
        f(&mut CounterFile(file))
    }
}

/// The counter file: `inside max_inside grants`, one line.
struct CounterFile(File);

#[derive(Default)]
struct Counter {
    inside: u32,
    max_inside: u32,
    grants: u64,
}

impl CounterFile {
    fn load(&mut self) -> io::Result<Counter> {
        let mut text = String::new();
        self.0.seek(SeekFrom::Start(0))?;
        self.0.read_to_string(&mut text)?;
        let mut n = text.split_whitespace().map(|w| w.parse::<u64>());
        let mut next = || -> io::Result<u64> {
            match n.next() {
                None => Ok(0),
                Some(Ok(v)) => Ok(v),
                Some(Err(e)) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        };
        Ok(Counter {
            inside: next()? as u32,
            max_inside: next()? as u32,
            grants: next()?,
        })
    }

    fn store(&mut self, c: &Counter) -> io::Result<()> {
        let text = format!("{} {} {}\n", c.inside, c.max_inside, c.grants);
        self.0.seek(SeekFrom::Start(0))?;
        self.0.set_len(0)?;
        self.0.write_all(text.as_bytes())
    }
}
