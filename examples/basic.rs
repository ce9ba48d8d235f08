//! Exclusive access (capacity 1), the seed's basic example: `cargo run --example basic [PATH]`.
//!
//! Without PATH the semaphore lives in a fresh temporary directory. A second holder is
//! refused while the first holds the slot; after the release it gets in. Exits non-zero if
//! anything behaves otherwise.

use std::error::Error as StdError;
use std::path::PathBuf;

use filesem::{Error, Holder, Semaphore};

/// The seed's `MyHolder`: anything with an ID can hold the semaphore.
struct MyHolder {
    id: String,
}

impl Holder for MyHolder {
    fn id(&self) -> &str {
        &self.id
    }
}

fn main() -> Result<(), Box<dyn StdError>> {
    let temp = tempfile::tempdir()?;
    let path = match std::env::args_os().nth(1) {
        Some(p) => PathBuf::from(p),
        None => temp.path().join("semaphore.json"),
    };

    // Create a semaphore with capacity 1 (exclusive access).
    let sem = Semaphore::open(&path, 1)?;
    println!(
        "semaphore at {} (capacity {})",
        path.display(),
        sem.capacity()?
    );

    // Acquire it. The permit releases the slot when dropped; bind it to a name.
    let holder = MyHolder {
        id: format!("process-{}", std::process::id()),
    };
    let permit = sem.try_acquire(&holder)?;
    println!(
        "{} holds slot {} with fencing token {}",
        permit.id(),
        permit.slot(),
        permit.token()
    );

    // Someone else is refused while we hold it: the seed's ErrNoCapacity.
    let other = MyHolder {
        id: "someone-else".to_string(),
    };
    match sem.try_acquire(&other) {
        Err(e @ Error::NoCapacity { .. }) => println!("{} is refused: {e}", other.id()),
        Ok(_) => return Err("a second holder got into a capacity-1 semaphore".into()),
        Err(e) => return Err(e.into()),
    }

    // Do work with exclusive access... then release when done.
    permit.release()?;
    println!("{} released; available: {}", holder.id(), sem.available()?);

    let second = sem.try_acquire(&other)?;
    println!(
        "{} now holds slot {} (token {})",
        second.id(),
        second.slot(),
        second.token()
    );
    drop(second);
    if sem.count()? != 0 {
        return Err("the semaphore is not empty at the end".into());
    }
    println!("done: count 0");
    Ok(())
}
