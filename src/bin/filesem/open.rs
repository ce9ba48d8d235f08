//! Opening the semaphore for `run` and `acquire`: `-c` and `--mode` only where needed, a note
//! when a new semaphore is created, a capacity mismatch that says how to change the
//! capacity, and `-n` / `-w` bounding the creation too.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use filesem::{Error, Semaphore};

use crate::SlotArgs;
use crate::acquire::Wait;
use crate::escape::escape_path;
use crate::exit::{Exit, Fail};
use crate::store::{self, Target};

/// The capacity of a semaphore created without `-c`.
pub const DEFAULT_CAPACITY: u32 = 1;

/// The shortest wait for the state lock when creating a semaphore under a `-n` or `-w`
/// deadline that has (nearly) passed: one short try past another process's ordinary critical
/// section, as the library gives an acquire at its deadline.
const LAST_LOCK_WAIT: Duration = Duration::from_millis(5);

/// Opens the semaphore at `args.semfile` for a command that started at `start`. An existing
/// one is opened with its stored capacity (`-c`, if given, must match it); an absent one is
/// created with `-c` (default [`DEFAULT_CAPACITY`]) and `--mode` (the library's default
/// without it) and, unless `-q`, a note on stderr says so, since a mistyped path would
/// otherwise silently make a second semaphore. `--mode` on an existing semaphore whose state
/// file has other permission bits changes nothing; a note says so (unless `-q`).
///
/// Creating takes the state lock: with `-n` or `-w` it waits for it only until their
/// deadline (counted from `start`), and a lock still busy then is the library's
/// [`Error::LockBusy`], contention like a busy lock during the acquire (exit 1 or `-E`,
/// silenced by `-q`). Without them, at most the lock timeout, as every other wait for the
/// lock. The semaphore is then opened again with the default lock timeout, which bounds
/// every later step of the command (the release at the end of `run`).
///
/// # Errors
///
/// A [`Fail`] with [`Exit::Usage`] for a capacity mismatch, or the library's error.
pub fn open(args: &SlotArgs, start: Instant) -> Result<Semaphore, Fail> {
    let target = Target::of(&args.semfile);
    // Refuses what does not apply: `--mode` or `--trust-owner` on a Redis URL, a Redis
    // option on a file.
    target.options(&args.store, args.mode)?;
    let existing_options = target.options(&args.store, None)?;
    match target.open_existing(&existing_options) {
        Ok(sem) => existing(sem, args),
        Err(Error::NotFound { .. }) => {
            let requested = args.capacity.unwrap_or(DEFAULT_CAPACITY);
            let mut options = target.options(&args.store, args.mode)?;
            options.create_new(true);
            let limit = Wait::of(args).limit(start);
            if let Some(limit) = limit {
                let left = limit.saturating_sub(start.elapsed());
                options.lock_timeout(left.max(LAST_LOCK_WAIT));
            }
            match target.open(&options, requested) {
                Ok(sem) => {
                    if !args.quiet {
                        err!(
                            "filesem: created a new semaphore at {} with capacity {requested}",
                            store::shown(&args.semfile, sem.path())
                        );
                    }
                    match limit {
                        // The handle for the rest of the command waits for the lock as long
                        // as any other.
                        Some(_) => Ok(target.open_existing(&existing_options)?),
                        None => Ok(sem),
                    }
                }
                // Someone else created it since we looked.
                Err(Error::AlreadyExists { .. }) => {
                    existing(target.open_existing(&existing_options)?, args)
                }
                // The deadline of -n or -w passed while another process held the state lock.
                Err(Error::LockTimeout {
                    path,
                    lock_path,
                    holder,
                    ..
                }) if limit.is_some() => Err(Error::LockBusy {
                    path,
                    lock_path,
                    waited: start.elapsed(),
                    holder,
                }
                .into()),
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
         `filesem set-capacity {} {requested}`{}",
        store::command_arg(path),
        store::password_note(path)
    ))
}
