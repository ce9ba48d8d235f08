//! Setup shared by the benchmark targets: where they run ([`place`]), the raw-syscall floor
//! ([`floor`]), and the library configurations and semaphores they measure.

// Each benchmark target uses a different part of this module.
#![allow(dead_code)]

pub mod floor;
pub mod place;

use std::path::Path;

use filesem::{Error, OpenOptions, Semaphore};

pub use place::Place;

/// Both durabilities, the cheaper first: `false` skips both fsyncs, `true` does them.
pub const DURABILITIES: [bool; 2] = [false, true];

/// `plain` (no fsync) or `durable` (fsync of the temp file and of the directory).
pub fn durability_name(durable: bool) -> &'static str {
    if durable { "durable" } else { "plain" }
}

/// A configuration of the library whose cost is measured.
///
/// `Bare` is the semaphore with no per-holder liveness evidence (no owner, no witness): all
/// that exists so far. A configuration that changes what a cycle writes or checks (crash
/// resilience's default) is added as a variant with its [`OpenOptions`], and then appears in
/// every table and benchmark group that iterates [`Config::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// Nothing but the holder entries.
    Bare,
}

impl Config {
    /// Every configuration measured.
    pub const ALL: [Config; 1] = [Config::Bare];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Config::Bare => "bare",
        }
    }

    /// The open options of this configuration.
    pub fn options(self, durable: bool) -> OpenOptions {
        match self {
            Config::Bare => {
                let mut options = OpenOptions::new();
                options.durable(durable);
                options
            }
        }
    }
}

/// The tmpfs and disk places available here (the disk one under cargo's target directory).
pub fn places() -> Vec<Place> {
    place::all(&[Path::new(env!("CARGO_TARGET_TMPDIR"))])
}

/// A new semaphore `NAME.json` in `dir` with `others` detached holders (kept with
/// [`filesem::Permit::keep`], so they hold no descriptor) and room for `free` more.
pub fn semaphore(
    dir: &Path,
    name: &str,
    config: Config,
    durable: bool,
    others: usize,
    free: usize,
) -> Semaphore {
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
    sem
}

/// One cycle through the library: `try_acquire` + `release`.
pub fn cycle(sem: &Semaphore) {
    sem.try_acquire("bench")
        .and_then(|p| p.release())
        .unwrap_or_else(|e| panic!("cycle on {}: {e}", sem.path().display()));
}

/// One refused `try_acquire` on a full semaphore.
pub fn refusal(sem: &Semaphore) {
    match sem.try_acquire("bench") {
        Err(Error::NoCapacity { .. }) => {}
        Err(e) => panic!("refusal on {}: {e}", sem.path().display()),
        Ok(_) => panic!("{} was not full", sem.path().display()),
    }
}
