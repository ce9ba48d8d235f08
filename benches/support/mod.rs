//! Setup shared by the benchmark targets: where they run ([`place`]), the raw-syscall floor
//! ([`floor`]), the library configurations ([`config`]) and the semaphores they measure.

// Each benchmark target uses a different part of this module.
#![allow(dead_code)]

pub mod cfloor;
pub mod config;
pub mod floor;
pub mod place;

use std::path::Path;

use filesem::{AcquireOptions, Error, Semaphore};

pub use config::Config;
pub use place::Place;

/// Both durabilities, the cheaper first: `false` skips both fsyncs, `true` does them.
pub const DURABILITIES: [bool; 2] = [false, true];

/// `plain` (no fsync) or `durable` (fsync of the temp file and of the directory).
pub fn durability_name(durable: bool) -> &'static str {
    if durable { "durable" } else { "plain" }
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
