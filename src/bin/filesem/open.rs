//! Opening the semaphore for `run` and `acquire`: `-c` only where needed, a note when a new
//! semaphore is created, and a capacity mismatch that says how to change the capacity.

use std::path::Path;

use filesem::{Error, OpenOptions, Semaphore};

use crate::escape::{escape, shell_quote};
use crate::exit::{Exit, Fail};

/// The capacity of a semaphore created without `-c`.
pub const DEFAULT_CAPACITY: u32 = 1;

/// Opens the semaphore at `path`. An existing one is opened with its stored capacity
/// (`capacity`, if given, must match it); an absent one is created with `capacity` (default
/// [`DEFAULT_CAPACITY`]) and, unless `quiet`, a note on stderr says so, since a mistyped path
/// would otherwise silently make a second semaphore.
///
/// # Errors
///
/// A [`Fail`] with [`Exit::Usage`] for a capacity mismatch, or the library's error.
pub fn open(path: &Path, capacity: Option<u32>, quiet: bool) -> Result<Semaphore, Fail> {
    match Semaphore::open_existing(path) {
        Ok(sem) => matching(sem, capacity),
        Err(Error::NotFound { .. }) => {
            let requested = capacity.unwrap_or(DEFAULT_CAPACITY);
            match OpenOptions::new().create_new(true).open(path, requested) {
                Ok(sem) => {
                    if !quiet {
                        eprintln!(
                            "filesem: created a new semaphore at {} with capacity {requested}",
                            escape(&path.display().to_string())
                        );
                    }
                    Ok(sem)
                }
                // Someone else created it since we looked.
                Err(Error::AlreadyExists { .. }) => {
                    matching(Semaphore::open_existing(path)?, capacity)
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// `sem`, if its capacity is `capacity` (when given).
fn matching(sem: Semaphore, capacity: Option<u32>) -> Result<Semaphore, Fail> {
    if let Some(requested) = capacity {
        let on_file = sem.capacity()?;
        if on_file != requested {
            return Err(mismatch(sem.path(), requested, on_file));
        }
    }
    Ok(sem)
}

fn mismatch(path: &Path, requested: u32, on_file: u32) -> Fail {
    let shown = path.display();
    Fail::new(
        Exit::Usage,
        format!("semaphore `{shown}` has capacity {on_file}, not the {requested} given with -c"),
    )
    .hint(format!(
        "leave out -c to use the capacity on file, or change it with \
         `filesem set-capacity {} {requested}`",
        shell_quote(&shown.to_string())
    ))
}
