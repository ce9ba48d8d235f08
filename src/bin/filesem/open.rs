//! Opening the semaphore for `run` and `acquire`: `-c` and `--mode` only where needed, a note
//! when a new semaphore is created, and a capacity mismatch that says how to change the
//! capacity.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use filesem::{Error, Semaphore};

use crate::SlotArgs;
use crate::escape::{escape_path, shell_quote};
use crate::exit::{Exit, Fail};

/// The capacity of a semaphore created without `-c`.
pub const DEFAULT_CAPACITY: u32 = 1;

/// Opens the semaphore at `args.semfile`. An existing one is opened with its stored capacity
/// (`-c`, if given, must match it); an absent one is created with `-c` (default
/// [`DEFAULT_CAPACITY`]) and `--mode` (the library's default without it) and, unless `-q`, a
/// note on stderr says so, since a mistyped path would otherwise silently make a second
/// semaphore. `--mode` on an existing semaphore whose state file has other permission bits
/// changes nothing; a note says so (unless `-q`).
///
/// # Errors
///
/// A [`Fail`] with [`Exit::Usage`] for a capacity mismatch, or the library's error.
pub fn open(args: &SlotArgs) -> Result<Semaphore, Fail> {
    let path = args.semfile.as_path();
    let existing_options = args.trust.options();
    match existing_options.open_existing(path) {
        Ok(sem) => existing(sem, args),
        Err(Error::NotFound { .. }) => {
            let requested = args.capacity.unwrap_or(DEFAULT_CAPACITY);
            let mut options = args.trust.options();
            options.create_new(true);
            if let Some(mode) = args.mode {
                options.mode(mode);
            }
            match options.open(path, requested) {
                Ok(sem) => {
                    if !args.quiet {
                        err!(
                            "filesem: created a new semaphore at {} with capacity {requested}",
                            escape_path(path)
                        );
                    }
                    Ok(sem)
                }
                // Someone else created it since we looked.
                Err(Error::AlreadyExists { .. }) => {
                    existing(existing_options.open_existing(path)?, args)
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// `sem`, if its capacity is `-c` (when given); notes a `--mode` that does not apply.
fn existing(sem: Semaphore, args: &SlotArgs) -> Result<Semaphore, Fail> {
    if let Some(requested) = args.capacity {
        let on_file = sem.capacity()?;
        if on_file != requested {
            return Err(mismatch(sem.path(), requested, on_file));
        }
    }
    if let (Some(requested), false) = (args.mode, args.quiet) {
        note_other_mode(sem.path(), requested);
    }
    Ok(sem)
}

/// Says on stderr that `--mode requested` did not apply, if the state file at `path` has
/// other permission bits. Display only (the library decides the modes): a failed look-up
/// shows nothing.
pub fn note_other_mode(path: &Path, requested: u32) {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let on_file = meta.permissions().mode() & 0o7777;
        if on_file != requested {
            err!(
                "filesem: note: {} exists with mode {on_file:04o}; --mode {requested:04o} \
                 applies only to a state file this command creates",
                escape_path(path)
            );
        }
    }
}

fn mismatch(path: &Path, requested: u32, on_file: u32) -> Fail {
    Fail::new(
        Exit::Usage,
        format!(
            "semaphore `{}` has capacity {on_file}, not the {requested} given with -c",
            path.display()
        ),
    )
    .hint(format!(
        "leave out -c to use the capacity on file, or change it with \
         `filesem set-capacity {} {requested}`",
        shell_quote(path)
    ))
}
