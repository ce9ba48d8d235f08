//! The layer rules of the crate (see [`crate::store`]'s "Architecture"), checked on its
//! sources: the core does no I/O, reads no clock, looks up no identity and uses nothing above
//! it; the stores use nothing of the blocking API above them.
//!
//! The check reads the source files (`src/core/**`, `src/store/**`) and looks at every line
//! that is not a comment, so that it covers files added later too. It is a line scan, not a
//! compiler: it catches what a reviewer would grep for.

use std::path::{Path, PathBuf};

/// What no core file may name: I/O, clocks, processes, identity lookups, logging.
const NOT_IN_CORE: &[&str] = &[
    "std::fs",
    "std::io::",
    "std::net",
    "std::env",
    "std::process",
    "std::thread",
    "std::os::",
    "nix::",
    "libc::",
    "Utc::now",
    "Local::now",
    "Instant::now",
    "SystemTime",
    "gethostname",
    "tracing::",
    "fastrand::",
    "tempfile::",
    "File::",
];

/// The modules of the crate the core may use: itself, the error type, and the options (pure
/// values; its tests build requests from them).
const CORE_MAY_USE: &[&str] = &["crate::core", "crate::error", "crate::options"];

/// What no store file may name: the blocking API above it, and the settings types that
/// belong to it (a store gets the values it needs).
const NOT_IN_STORES: &[&str] = &[
    "crate::semaphore",
    "crate::permit",
    "crate::wait",
    "crate::sleeper",
    "crate::options",
    "crate::holder",
    "crate::Semaphore",
    "crate::Permit",
    "crate::OpenOptions",
    "crate::AcquireOptions",
];

/// The `.rs` files under `src/DIR`, recursively, sorted.
fn sources(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir),
        &mut out,
    );
    out.sort();
    out
}

/// The code of a line: `None` for comments (docs may name anything).
fn code(line: &str) -> Option<&str> {
    let line = line.trim_start();
    (!line.starts_with("//")).then_some(line)
}

/// What a core line names that the core may not: a forbidden API, or a module of the crate
/// other than those in [`CORE_MAY_USE`].
fn core_violations(line: &str) -> Vec<String> {
    let Some(code) = code(line) else {
        return Vec::new();
    };
    let mut found: Vec<String> = NOT_IN_CORE
        .iter()
        .filter(|name| code.contains(*name))
        .map(|name| name.to_string())
        .collect();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let path = &rest[at..];
        if !CORE_MAY_USE.iter().any(|ok| path.starts_with(ok)) {
            let end = path
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(path.len());
            found.push(path[..end].to_string());
        }
        rest = &rest[at + "crate::".len()..];
    }
    found
}

/// What a store line names that a store may not (see [`NOT_IN_STORES`]).
fn store_violations(line: &str) -> Vec<String> {
    let Some(code) = code(line) else {
        return Vec::new();
    };
    NOT_IN_STORES
        .iter()
        .filter(|name| code.contains(*name))
        .map(|name| name.to_string())
        .collect()
}

/// Every violation in the files under `src/DIR`, as `file:line: name`; also how many files
/// were read.
fn scan(dir: &str, check: fn(&str) -> Vec<String>) -> (Vec<String>, usize) {
    let files = sources(dir);
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for name in check(line) {
                violations.push(format!("{}:{}: {name}", file.display(), n + 1));
            }
        }
    }
    (violations, files.len())
}

#[test]
fn the_core_does_no_io_and_uses_nothing_above_it() {
    // The core is pure: no files, clocks, processes or identity; it uses only itself, the
    // error type and option values.
    let (violations, files) = scan("core", core_violations);
    assert!(files >= 8, "only {files} core files found");
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_stores_use_nothing_of_the_api_above_them() {
    // Every dependency points down: a store uses the core, never the blocking API.
    let (violations, files) = scan("store", store_violations);
    assert!(files >= 15, "only {files} store files found");
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_layer_check_finds_what_it_forbids() {
    // The scan is not vacuous: it flags forbidden names in code and leaves comments alone.
    assert_eq!(
        core_violations("    let now = chrono::Utc::now();"),
        ["Utc::now"]
    );
    assert_eq!(
        core_violations("use crate::store::file::identity::Identity;"),
        ["crate::store::file::identity::Identity"]
    );
    assert_eq!(
        core_violations("use crate::core::doc::Document; use crate::semaphore::Semaphore;"),
        ["crate::semaphore::Semaphore"]
    );
    assert_eq!(
        core_violations("let f = std::fs::read(p)?; nix::unistd::getpid();"),
        ["std::fs", "nix::"]
    );
    assert!(core_violations("/// Not [`crate::Semaphore`], nor `Utc::now`.").is_empty());
    assert!(core_violations("use crate::error::Result;").is_empty());
    assert_eq!(
        store_violations("use crate::permit::Permit;"),
        ["crate::permit"]
    );
    assert!(store_violations("//! Used by [`crate::Semaphore`].").is_empty());
}
