//! The library configurations whose cost is measured. Shared by the benchmarks and
//! `examples/contention.rs`.

use filesem::{AcquireOptions, OpenOptions};

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
