//! Tokio tasks sharing a semaphore file with another process:
//! `cargo run --features tokio --example async_workers [-- OPTIONS]`.
//!
//! ```text
//! --tasks N      tasks per process (default 8)
//! --capacity N   slots in the semaphore (default 2)
//! --cycles N     times each task takes a slot (default 3)
//! --path FILE    the semaphore's state file (default: a fresh file in the temp directory)
//! ```
//!
//! This program starts a second copy of itself (with a hidden `--second` argument), and
//! both run `--tasks` tokio tasks that each take a slot `--cycles` times: they wait in the
//! semaphore's queue without a thread each, hold the slot a few milliseconds, and release
//! it (every third by dropping the permit, which hands the release to the handle's thread).
//! Each line says which process and task got which slot with which fencing token, and how
//! long it waited. An independent checker (`examples/common/witness.rs`: its own counter
//! file and one marker file per slot in use) counts who is inside. Exits with status 1 if
//! the checker ever saw more than `capacity` inside or anything failed, 2 for bad arguments.

#[path = "common/witness.rs"]
mod witness;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use filesem::{AsyncSemaphore, OpenOptions};
use witness::Witness;

/// What `--help` prints.
const USAGE: &str = "\
Tokio tasks in two processes sharing one semaphore file, with an independent capacity checker.
usage: cargo run --features tokio --example async_workers [-- OPTIONS]
  --tasks N      tasks per process (default 8)
  --capacity N   slots in the semaphore (default 2)
  --cycles N     times each task takes a slot (default 3)
  --path FILE    the semaphore's state file (default: a fresh file in the temp directory)
  --help         this text";

struct Args {
    tasks: usize,
    capacity: u32,
    cycles: usize,
    path: Option<PathBuf>,
    second: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        tasks: 8,
        capacity: 2,
        cycles: 3,
        path: None,
        second: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--tasks" => args.tasks = value()?.parse().map_err(|e| format!("--tasks: {e}"))?,
            "--capacity" => {
                args.capacity = value()?.parse().map_err(|e| format!("--capacity: {e}"))?
            }
            "--cycles" => args.cycles = value()?.parse().map_err(|e| format!("--cycles: {e}"))?,
            "--path" => args.path = Some(PathBuf::from(value()?)),
            "--second" => args.second = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.capacity == 0 || args.tasks == 0 {
        return Err("--capacity and --tasks must be at least 1".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("async_workers: {e}");
            return ExitCode::from(2);
        }
    };
    let temp = tempfile::tempdir().expect("a temp directory");
    let path = args
        .path
        .clone()
        .unwrap_or_else(|| temp.path().join("async-workers.json"));
    let checker = path.with_extension("checker");
    let witness = match Witness::create(&checker, args.capacity) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            eprintln!("async_workers: checker at {}: {e}", checker.display());
            return ExitCode::FAILURE;
        }
    };
    let name = if args.second { "p2" } else { "p1" };
    // The first process starts the second on the same files.
    let second = match args.second {
        true => None,
        false => {
            let exe = std::env::current_exe().expect("this program's path");
            let child = Command::new(exe)
                .args(["--second", "--path"])
                .arg(&path)
                .args(["--tasks", &args.tasks.to_string()])
                .args(["--capacity", &args.capacity.to_string()])
                .args(["--cycles", &args.cycles.to_string()])
                .spawn();
            match child {
                Ok(child) => Some(child),
                Err(e) => {
                    eprintln!("async_workers: cannot start the second process: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let ok = runtime.block_on(run(name, &path, &args, witness.clone()));
    let mut ok = ok.map_err(|e| eprintln!("{name}: {e}")).is_ok();
    if let Some(mut child) = second {
        ok &= child.wait().is_ok_and(|s| s.success());
        match witness.report() {
            Ok(report) => {
                println!(
                    "checker: {} grants, at most {} inside (capacity {}), {} violations",
                    report.grants,
                    report.max_inside,
                    args.capacity,
                    report.violations.len()
                );
                ok &= report.violations.is_empty() && report.max_inside <= args.capacity;
            }
            Err(e) => {
                eprintln!("checker: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The tasks of one process.
async fn run(
    name: &'static str,
    path: &std::path::Path,
    args: &Args,
    witness: Arc<Witness>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut options = OpenOptions::new();
    options.durable(false);
    let sem = AsyncSemaphore::open_with(&options, path, args.capacity).await?;
    let mut tasks = Vec::new();
    for t in 0..args.tasks {
        let (sem, witness, cycles) = (sem.clone(), witness.clone(), args.cycles);
        tasks.push(tokio::spawn(async move {
            let id = format!("{name}-task-{t}");
            for cycle in 0..cycles {
                let asked = Instant::now();
                let permit = sem.acquire(&id).await?;
                let (slot, token) = (permit.slot(), permit.token());
                println!(
                    "{id}: slot {slot}, token {token}, waited {} ms",
                    asked.elapsed().as_millis()
                );
                // The checker's files are plain blocking I/O: off the runtime.
                let w = witness.clone();
                let id2 = id.clone();
                let violations = tokio::task::spawn_blocking(move || {
                    let mut v = w.enter(slot, &id2, token)?.violations;
                    std::thread::sleep(Duration::from_millis(5));
                    v.extend(w.leave(slot, &id2, token)?.1);
                    Ok::<_, std::io::Error>(v)
                })
                .await??;
                if !violations.is_empty() {
                    return Err(format!("{id}: {violations:?}").into());
                }
                match cycle % 3 {
                    // Dropping hands the release to the handle's thread and returns at once.
                    0 => drop(permit),
                    _ => permit.release().await?,
                }
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for task in tasks {
        task.await?.map_err(|e| e.to_string())?;
    }
    Ok(())
}
