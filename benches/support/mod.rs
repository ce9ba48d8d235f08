//! Setup shared by the benchmark targets: where they run ([`place`]), the raw-syscall floor
//! ([`floor`]), and the library configurations and semaphores they measure.

// Each benchmark target uses a different part of this module.
#![allow(dead_code)]

pub mod floor;
pub mod place;

use std::path::Path;

use filesem::{AcquireOptions, Error, OpenOptions, Semaphore};

pub use place::Place;

/// Both durabilities, the cheaper first: `false` skips both fsyncs, `true` does them.
pub const DURABILITIES: [bool; 2] = [false, true];

/// `plain` (no fsync) or `durable` (fsync of the temp file and of the directory).
pub fn durability_name(durable: bool) -> &'static str {
    if durable { "durable" } else { "plain" }
}

/// A configuration of the library whose cost is measured.
///
/// Each configuration that changes what a cycle writes or checks is a variant, with the
/// options it opens and acquires with; every table and benchmark group iterates
/// [`Config::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// The protocol alone: detached holds (no witness file, nothing to judge) and no
    /// automatic reaping, as the Go package does it.
    Bare,
    /// What `Semaphore::open` and `try_acquire` do by default: process-bound holds with an
    /// owner record and a witness file (created and locked on acquire, deleted on release),
    /// automatic reaping of provably dead holders.
    Default,
}

impl Config {
    /// Every configuration measured.
    pub const ALL: [Config; 2] = [Config::Bare, Config::Default];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Config::Bare => "bare",
            Config::Default => "default",
        }
    }

    /// The open options of this configuration.
    pub fn options(self, durable: bool) -> OpenOptions {
        let mut options = OpenOptions::new();
        options.durable(durable);
        if self == Config::Bare {
            options.auto_reap(false);
        }
        options
    }

    /// The acquire options of this configuration.
    pub fn acquire_options(self) -> AcquireOptions {
        AcquireOptions::new().detached(self == Config::Bare)
    }
}

/// The tmpfs and disk places available here (the disk one under cargo's target directory).
pub fn places() -> Vec<Place> {
    place::all(&[Path::new(env!("CARGO_TARGET_TMPDIR"))])
}

/// A semaphore to measure, with the acquire options of its configuration.
pub struct Subject {
    /// The semaphore.
    pub sem: Semaphore,
    acquire: AcquireOptions,
}

impl Subject {
    /// One cycle through the library: `try_acquire` + `release`.
    pub fn cycle(&self) {
        self.sem
            .try_acquire_with("bench", &self.acquire)
            .and_then(|p| p.release())
            .unwrap_or_else(|e| panic!("cycle on {}: {e}", self.sem.path().display()));
    }

    /// One refused `try_acquire` on a full semaphore.
    pub fn refusal(&self) {
        match self.sem.try_acquire_with("bench", &self.acquire) {
            Err(Error::NoCapacity { .. }) => {}
            Err(e) => panic!("refusal on {}: {e}", self.sem.path().display()),
            Ok(_) => panic!("{} was not full", self.sem.path().display()),
        }
    }
}

/// A new semaphore `NAME.json` in `dir` with `others` detached holders (kept with
/// [`filesem::Permit::keep`], so they hold no descriptor) and room for `free` more.
pub fn subject(
    dir: &Path,
    name: &str,
    config: Config,
    durable: bool,
    others: usize,
    free: usize,
) -> Subject {
    let capacity = u32::try_from(others + free).expect("capacity fits in u32");
    let path = dir.join(format!("{name}.json"));
    let sem = config
        .options(durable)
        .open(&path, capacity)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    for i in 0..others {
        let permit = sem
            .try_acquire(&format!("other-{i}"))
            .unwrap_or_else(|e| panic!("fill {}: {e}", path.display()));
        permit
            .keep()
            .unwrap_or_else(|e| panic!("keep in {}: {e}", path.display()));
    }
    assert_eq!(sem.count().expect("count"), others);
    Subject {
        sem,
        acquire: config.acquire_options(),
    }
}
