//! Shared access (capacity 3), the seed's shared example: `cargo run --example shared [PATH]`.
//!
//! Without PATH the semaphore lives in a fresh temporary directory. Four workers try to get
//! in; three do, each in its own slot, the fourth is refused. Then the queries, a kept hold
//! cleaned up with `remove`, and the releases. Exits non-zero if anything behaves otherwise.

use std::error::Error as StdError;
use std::path::PathBuf;

use filesem::{AcquireOptions, Error, Semaphore};

fn main() -> Result<(), Box<dyn StdError>> {
    let temp = tempfile::tempdir()?;
    let path = match std::env::args_os().nth(1) {
        Some(p) => PathBuf::from(p),
        None => temp.path().join("shared.json"),
    };

    // Create a semaphore with capacity 3.
    let sem = Semaphore::open(&path, 3)?;
    println!(
        "semaphore at {} (capacity {})",
        path.display(),
        sem.capacity()?
    );

    // Multiple holders can acquire up to capacity.
    let mut permits = Vec::new();
    for i in 0..4 {
        let id = format!("worker-{i}");
        let options = AcquireOptions::new().metadata("started-by", "examples/shared.rs");
        match sem.try_acquire_with(id.as_str(), &options) {
            Ok(permit) => {
                println!("{id} got slot {} (token {})", permit.slot(), permit.token());
                permits.push(permit);
            }
            Err(e @ Error::NoCapacity { .. }) => println!("{id} failed to acquire: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    if permits.len() != 3 {
        return Err(format!("{} holders in a capacity-3 semaphore", permits.len()).into());
    }

    // Query operations.
    let ids: Vec<String> = sem.holders()?.into_iter().map(|h| h.id).collect();
    println!("holders: {ids:?}");
    println!("count: {}, available: {}", sem.count()?, sem.available()?);

    // A hold kept past its permit (say, by a process that crashed) is cleaned up by ID.
    let last = permits.pop().ok_or("no permit")?;
    let stale_id = last.id().to_string();
    last.keep().map_err(|e| e.error)?;
    let removed = sem.remove([stale_id.as_str(), "never-was-here"])?;
    println!("removed {removed:?} (unknown IDs are ignored)");

    // Release the rest.
    for permit in permits {
        let id = permit.id().to_string();
        permit.release()?;
        println!("{id} released");
    }
    if sem.count()? != 0 || sem.available()? != 3 {
        return Err("the semaphore is not empty at the end".into());
    }
    println!("done: count 0, available 3");
    Ok(())
}
