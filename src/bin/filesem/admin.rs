//! The maintenance subcommands: `release`, `remove`, `reap`, `set-capacity`, `recover`.

use std::path::Path;

use crate::escape::{escape, escape_path};
use crate::exit::{Exit, Fail};
use crate::open;
use crate::store::{self, StoreArgs, Target};

/// Opens the existing semaphore `semfile` names (a file or a Redis URL).
///
/// # Errors
///
/// [`Exit::Usage`](crate::exit::Exit::Usage) for options that do not apply to it; the
/// library's errors.
pub fn open_existing(semfile: &Path, store: &StoreArgs) -> Result<filesem::Semaphore, Fail> {
    let target = Target::of(semfile);
    let options = target.options(store, None)?;
    Ok(target.open_existing(&options)?)
}

/// `filesem release SEMFILE ID`.
///
/// # Errors
///
/// [`Exit::NotHeld`] if `id` holds no slot; the library's errors.
pub fn release(path: &Path, id: &str, store: &StoreArgs) -> Result<Exit, Fail> {
    open_existing(path, store)?.release(id)?;
    Ok(Exit::Success)
}

/// `filesem remove SEMFILE ID...`: prints `removed ID` for each ID that was on file.
///
/// # Errors
///
/// The library's errors.
pub fn remove(path: &Path, ids: &[String], store: &StoreArgs) -> Result<Exit, Fail> {
    for id in open_existing(path, store)?.remove(ids)? {
        out!("removed {}", escape(&id));
    }
    Ok(Exit::Success)
}

/// `filesem reap SEMFILE`: prints `reaped ID (slot S, token T): EVIDENCE` for each entry
/// removed (`waiter` instead of the slot for a queued waiter), and, unless `quiet`, a note on
/// stderr when there was nothing to remove (stdout stays the list of what was reaped).
///
/// # Errors
///
/// The library's errors.
pub fn reap(path: &Path, quiet: bool, store: &StoreArgs) -> Result<Exit, Fail> {
    let sem = open_existing(path, store)?;
    let all = sem.reap()?;
    if all.is_empty() && !quiet {
        err!(
            "filesem: nothing to reap in {}: no holder or waiter is provably dead or expired",
            store::shown(path, sem.path())
        );
    }
    for reaped in all {
        let mut what = Vec::new();
        if reaped.waiter {
            what.push("waiter".to_string());
        } else if let Some(slot) = reaped.slot {
            what.push(format!("slot {slot}"));
        }
        if let Some(token) = reaped.token {
            what.push(format!("token {token}"));
        }
        let what = if what.is_empty() {
            String::new()
        } else {
            format!(" ({})", what.join(", "))
        };
        out!(
            "reaped {}{what}: {} ({})",
            escape(&reaped.id),
            reaped.liveness.name(),
            escape(reaped.liveness.evidence())
        );
    }
    Ok(Exit::Success)
}

/// `filesem set-capacity SEMFILE N`.
///
/// # Errors
///
/// The library's errors.
pub fn set_capacity(path: &Path, capacity: u32, store: &StoreArgs) -> Result<Exit, Fail> {
    open_existing(path, store)?.set_capacity(capacity)?;
    Ok(Exit::Success)
}

/// `filesem recover SEMFILE -c N [--mode OCTAL]`: says on stdout what it did. A valid file
/// is left alone (exit 0); if its capacity is not `N`, a hint on stderr says how to change
/// it. `mode` is that of a state file created where there was none.
///
/// # Errors
///
/// The library's errors.
pub fn recover(
    path: &Path,
    capacity: u32,
    mode: Option<u32>,
    store: &StoreArgs,
) -> Result<Exit, Fail> {
    let target = Target::of(path);
    let options = target.options(store, mode)?;
    let existed = match &target {
        Target::File(path) => path.exists(),
        // Display only: whether the key was there a moment before.
        Target::Redis(_) => !matches!(
            target.open_existing(&options),
            Err(filesem::Error::NotFound { .. })
        ),
    };
    let recovered = target.recover(&options, capacity)?;
    let sem = &recovered.semaphore;
    let shown = store::shown(path, sem.path());
    if let (Some(requested), true) = (mode, existed) {
        open::note_other_mode(path, requested);
    }
    if existed && recovered.moved_to.is_none() {
        let on_file = sem.capacity()?;
        if on_file != capacity {
            err!(
                "filesem: hint: its capacity stays {on_file}, not the {capacity} given with -c; \
                 `filesem set-capacity {} {capacity}` changes it{}",
                store::command_arg(sem.path()),
                store::password_note(sem.path())
            );
        }
    }
    let line = match (&recovered.moved_to, existed) {
        (Some(aside), _) => format!(
            "moved the corrupt state to {}; {shown} starts afresh with capacity {capacity}",
            escape_path(aside)
        ),
        (None, true) => format!("{shown} is valid; nothing changed"),
        (None, false) => {
            format!("created a new semaphore at {shown} with capacity {capacity}")
        }
    };
    out!("{line}");
    Ok(Exit::Success)
}
