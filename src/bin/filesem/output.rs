//! Writing to stdout and stderr so that output errors never change what `filesem` does.
//!
//! Rust ignores SIGPIPE, so a write to a pipe whose reader has gone returns `EPIPE`, and
//! `println!` / `eprintln!` then panic (exit code 101): a `filesem run` whose stderr reader
//! had exited would die while reporting a lost hold, and never send its command SIGTERM. So
//! every line `filesem` prints goes through [`out!`] or [`err!`], which write it and go on
//! whatever happens: a reader gone (`EPIPE`), a closed descriptor (`EBADF`; Rust's runtime
//! also puts `/dev/null` on a closed 0, 1 or 2 at startup), a full disk behind a redirection
//! (`ENOSPC`). The exit code and every action (releases, signals, the command being run) are
//! those of a run with a working terminal. An output error cannot be reported anywhere
//! (stderr may be the broken stream) and must not turn a finished action into a failure, so
//! it is dropped here, and only here.

use std::fmt;
use std::io::{self, Write};

/// Prints one line to stdout (format arguments as `println!`); never panics, ignores
/// output errors (see the [module docs](self)).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::line($crate::output::Stream::Stdout, format_args!($($arg)*))
    };
}

/// Prints one line to stderr (format arguments as `eprintln!`); never panics, ignores
/// output errors (see the [module docs](self)).
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::output::line($crate::output::Stream::Stderr, format_args!($($arg)*))
    };
}

/// Which standard stream a line goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Results: what a script reads.
    Stdout,
    /// Errors, notes and hints.
    Stderr,
}

/// Writes `args` and a newline to `stream` in one `write_all` (so that lines of threads do
/// not interleave), flushed at once; an error is dropped (see the [module docs](self)).
pub fn line(stream: Stream, args: fmt::Arguments<'_>) {
    let mut text = args.to_string();
    text.push('\n');
    // Deliberately ignored: nowhere to report it, and it must not change the outcome.
    let _ = write_to(stream, text.as_bytes());
}

/// Writes `bytes` to `stream` and flushes it.
///
/// # Errors
///
/// The OS error of the write or the flush.
fn write_to(stream: Stream, bytes: &[u8]) -> io::Result<()> {
    match stream {
        Stream::Stdout => {
            let mut out = io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()
        }
        Stream::Stderr => {
            let mut err = io::stderr().lock();
            err.write_all(bytes)?;
            err.flush()
        }
    }
}

/// Prints clap's help, version or usage error and returns the exit code clap gives it
/// (0 for `--help` and `--version`, 2 for usage errors), whatever happens to the output.
pub fn clap_exit(error: &clap::Error) -> u8 {
    // Deliberately ignored, as in `line`: the exit code is clap's either way.
    let _ = error.print();
    let _ = io::stdout().lock().flush();
    u8::try_from(error.exit_code()).unwrap_or(2)
}
