//! The reference floor, `benches/floor.c`: built with the system C compiler (`cc -O2`) into
//! cargo's target directory when a benchmark starts, and run as a subprocess.
//!
//! `floor.c` is the project's shared reference floor, copied unmodified from
//! `/work/shared/bench/floor.c` (see its README there): the tightest form of the protocol
//! against the system calls. The lock file and the directory stay open, the state is read
//! with one `pread`, a minimal "parse" finds the holder IDs, and the new state goes to a temp
//! file renamed over the state file. Modes: `b` no fsync, `c` fsync of the temp file, `d`
//! `c` plus fsync of the directory; with a process count P > 1 it forks P workers on a
//! semaphore of capacity 2 that retry a refused acquire at once. It prints cycles per second
//! (an acquire plus a release: two locked steps), summed over the workers.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The built floor program.
#[derive(Debug)]
pub struct CFloor {
    exe: PathBuf,
}

/// What one run of the floor measured.
#[derive(Clone, Copy, Debug)]
pub struct FloorRun {
    /// Seconds per cycle (the inverse of the cycles per second it printed).
    pub per_cycle: f64,
    /// CPU time (user + system) of the floor and its workers per cycle, in seconds; `None`
    /// where `/proc/self/stat` cannot tell.
    pub cpu_per_cycle: Option<f64>,
}

impl CFloor {
    /// Builds `benches/floor.c` into `out_dir` with `cc -O2`; `Err` says why it cannot (no
    /// `cc`, a failed build), for the benchmark to print before it skips the floor's rows.
    pub fn build(out_dir: &Path) -> Result<CFloor, String> {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/floor.c");
        let exe = out_dir.join("filesem-floor");
        let output = Command::new("cc")
            .arg("-O2")
            .arg("-o")
            .arg(&exe)
            .arg(&source)
            .output();
        match output {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err("no C compiler `cc` on the PATH".to_string())
            }
            Err(e) => Err(format!("cannot run cc: {e}")),
            Ok(out) if !out.status.success() => Err(format!(
                "cc -O2 {} failed: {}",
                source.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(_) => Ok(CFloor { exe }),
        }
    }

    /// Runs `floor MODE DIR CYCLES [PROCS]` in `dir` (a directory of its own: the floor
    /// removes and recreates `S`, `S.lock` and `S.tmp` there).
    pub fn run(&self, mode: char, dir: &Path, cycles: usize, procs: usize) -> io::Result<FloorRun> {
        let mut command = Command::new(&self.exe);
        command
            .arg(mode.to_string())
            .arg(dir)
            .arg(cycles.max(1).to_string());
        if procs > 1 {
            command.arg(procs.to_string());
        }
        let cpu_before = children_cpu();
        let out = command.output()?;
        let cpu = match (cpu_before, children_cpu()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "floor {mode} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let rate: f64 = text
            .split_whitespace()
            .next()
            .and_then(|r| r.parse().ok())
            .filter(|&r: &f64| r > 0.0)
            .ok_or_else(|| io::Error::other(format!("floor printed {text:?}")))?;
        let total = (cycles.max(1) * procs.max(1)) as f64;
        Ok(FloorRun {
            per_cycle: 1.0 / rate,
            cpu_per_cycle: cpu.map(|c| c.as_secs_f64() / total),
        })
    }
}

/// The CPU time (user + system) of this process's children that it has waited for, and of
/// theirs (`cutime` and `cstime` of `/proc/self/stat`, in ticks of 10 ms).
pub fn children_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may contain spaces:
    // cutime and cstime are fields 16 and 17 of the line, 14 and 15 after the name.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(13)?.parse::<u64>().ok()? + fields.get(14)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}
