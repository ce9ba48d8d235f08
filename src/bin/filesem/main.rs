//! `filesem`: limit concurrent jobs from shell scripts, inspect and clean up holders.
//!
//! Built with `--features cli`; it uses only the public API of the `filesem` library, on the
//! same semaphore files. See docs/cli.md for recipes, the exit codes and the `status --json`
//! schema.

// First: the `out!` and `err!` macros are used by every module after it.
#[macro_use]
mod output;

mod acquire;
mod admin;
mod duration;
mod escape;
mod exit;
mod hint;
mod mode;
mod open;
mod run;
mod signals;
mod status;
mod store;
mod trust;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::exit::NO_SLOT;
use crate::store::StoreArgs;

/// A counting semaphore for shell scripts: at most N named holders at once, across
/// processes, in a JSON state file that `filesem status` shows and `filesem reap` cleans up.
///
/// SEMFILE is a state file, or a semaphore in a Redis key shared across machines:
/// redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]/KEY (port 6379 and database 0 by default;
/// `rediss://` is refused: no TLS). Any SEMFILE that starts with redis:// or rediss:// is a
/// URL; write a file of such a name as ./redis://... A URL without a password takes it from
/// the environment variable REDISCLI_AUTH, as redis-cli does; filesem never prints a
/// password (it shows ***) and never puts one in a command's environment. On Redis every
/// hold has a lease (--lease, default 30 s); --mode and --trust-owner are refused there, and
/// --connect-timeout, --response-timeout and --replica-ack apply only there.
///
/// Exit codes: 0 success; 1 no slot could be had (-n, or -w ran out, also when the state
/// lock stayed busy until then, or other clients changed the Redis key at every attempt; -E
/// changes it) or `release` of an ID that holds none; 2 usage; 125 filesem's own failure
/// (I/O, corrupt state, Redis unreachable, timed out, credentials refused, replicas not
/// confirming); 126 the command cannot be run; 127 the command was not found; otherwise `run`
/// exits with the command's code, or 128 + the signal that killed it.
#[derive(Debug, Parser)]
#[command(name = "filesem", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Take a slot (waiting for one by default), run a command, release the slot when it ends.
    ///
    /// The command inherits the hold: if `filesem run` is killed (even with SIGKILL), the
    /// slot stays taken until the command (and any process it started that kept the
    /// inherited descriptor) has ended; -o turns this off. The command gets FILESEM_PATH (the
    /// state file's absolute path, its directory resolved when `run` opened it: a path, which
    /// names something else if that directory is renamed later), FILESEM_ID, FILESEM_TOKEN
    /// and FILESEM_SLOT in its environment. The slot is released when the command ends,
    /// waiting at most the 10 s lock timeout for the state lock. Signals sent to `filesem run` are
    /// forwarded to it once; a terminal's Ctrl-C reaches it directly and is not forwarded
    /// again.
    ///
    /// On a Redis URL there is no witness to inherit: the hold has a lease (--lease, default
    /// 30 s) that `run` renews while the command runs, so if `run` is killed the slot comes
    /// back when the lease runs out, even if the command lives on. FILESEM_PATH is then the
    /// URL without its password, so nothing in the command's environment holds a password
    /// that filesem put there; a nested `filesem run "$FILESEM_PATH"` reaches the same
    /// semaphore with the password in REDISCLI_AUTH (exported by you).
    ///
    /// Nested in the command of a `run` on the same semaphore, `run` without --id uses the
    /// outer hold's ID and so fails at once with exit code 1 (already held) instead of
    /// waiting for its own parent; with another --id it competes for a slot like anyone.
    #[command(mut_arg("lease", |a| a.help(
        "Give the hold a lease (at least 1 s): it ends by itself this long after it was taken \
         unless renewed; `run` renews it in the background while the command runs"
    )))]
    Run(RunArgs),
    /// Take a detached slot that outlives this process (a session), until `release`.
    ///
    /// Waits for a slot by default; `filesem release SEMFILE ID` ends the hold. On a Redis
    /// URL the hold has a lease (--lease, default 30 s) that nothing renews: it also ends
    /// when that runs out.
    #[command(mut_arg("lease", |a| a.help(
        "Give the hold a lease (at least 1 s): nothing renews a detached hold's lease, so the \
         hold ends by itself this long after it was taken, unless released before"
    )))]
    Acquire(AcquireArgs),
    /// End the hold of an ID (taken with `acquire`, or by any program).
    Release {
        /// The semaphore's state file, or a redis:// URL (see `filesem --help`).
        semfile: PathBuf,
        /// The holder ID; it may start with a dash (`-job`).
        #[arg(allow_hyphen_values = true)]
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove the entries of these IDs, whoever holds them (cleanup after a crash).
    ///
    /// Idempotent: IDs that are not on file are not an error. Prints each removed ID.
    Remove {
        /// The semaphore's state file, or a redis:// URL (see `filesem --help`).
        semfile: PathBuf,
        /// The holder IDs (put `--` before them if one starts with a dash: `-- -job`).
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove the entries of holders that are provably dead or whose lease ran out.
    ///
    /// Prints each removed entry with the evidence on stdout, or "nothing to reap" on stderr
    /// (unless -q). Entries that cannot be judged (written by Go or another machine, detached
    /// holds without a lease) are never removed by guess.
    Reap {
        /// The semaphore's state file, or a redis:// URL (see `filesem --help`).
        semfile: PathBuf,
        /// Print nothing when nothing was stale (instead of "nothing to reap" on stderr).
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Change the number of slots.
    ///
    /// Lowering it evicts nobody: new holders wait until enough holders have left.
    SetCapacity {
        /// The semaphore's state file, or a redis:// URL (see `filesem --help`).
        semfile: PathBuf,
        /// The new capacity, in holders.
        #[arg(value_parser = capacity_range())]
        capacity: u32,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Start afresh after the state file became corrupt (stop all holders first).
    ///
    /// Keeps the corrupt file as SEMFILE.corrupt-<time> and replaces it by an empty semaphore
    /// with CAPACITY slots; SEMFILE is never missing meanwhile, and a recovery that fails
    /// changes nothing. Does nothing to a valid file (exit 0), not even change its capacity:
    /// a hint then names `filesem set-capacity`.
    Recover {
        /// The semaphore's state file, or a redis:// URL (see `filesem --help`).
        semfile: PathBuf,
        /// The capacity of the fresh semaphore, in holders.
        #[arg(short, long, value_parser = capacity_range())]
        capacity: u32,
        /// Permission bits, in octal (664, 0664, 0o664), of the state file if there is none
        /// yet (default 644; the lock and witness files follow, as `run --help` says). A
        /// corrupt file's replacement keeps the corrupt file's read and write bits, without
        /// world-write.
        #[arg(long, value_name = "OCTAL", value_parser = mode::parse)]
        mode: Option<u32>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show the capacity, the holders (slot, age, owner, liveness) and the queue.
    Status {
        /// The semaphore's state file, or a redis:// URL (see `filesem --help`).
        semfile: PathBuf,
        /// Print one JSON document (schema in docs/cli.md) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Options shared by `run` and `acquire`: how to open the semaphore and how to wait.
#[derive(Debug, Args)]
struct SlotArgs {
    /// The semaphore's state file (the lock file is SEMFILE.lock beside it), or a Redis
    /// key as redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]/KEY (see `filesem --help`).
    semfile: PathBuf,
    /// The capacity, in holders: needed only to create the semaphore (default 1 then);
    /// if given for an existing one, it must match.
    #[arg(short, long, value_parser = capacity_range())]
    capacity: Option<u32>,
    /// Wait at most this long for a slot: seconds (10, 0.5, 1e3) or 250ms, 30s, 5m, 1h30m;
    /// a value past what the clock can count means no limit. This bounds the whole acquire
    /// from the start of the command, waits for the state lock SEMFILE.lock and creating the
    /// semaphore included: if a process stopped inside its critical section holds that lock
    /// until then, exit 1 (-E) saying so.
    #[arg(
        short = 'w',
        long = "timeout",
        value_name = "DURATION",
        value_parser = duration::parse,
        allow_hyphen_values = true
    )]
    timeout: Option<Duration>,
    /// Do not wait: fail at once if no slot is free (exit 1, or -E). Waits at most 1 s for
    /// the state lock SEMFILE.lock (creating the semaphore included), which a working process
    /// holds only for an instant; if a process stopped inside its critical section holds it
    /// longer, exit 1 (-E) saying so.
    #[arg(short = 'n', long = "nonblock", conflicts_with = "timeout")]
    nonblock: bool,
    /// The exit code when no slot could be had.
    #[arg(short = 'E', long = "conflict-exit-code", value_name = "CODE", default_value_t = NO_SLOT)]
    conflict_exit_code: u8,
    /// Give the hold a lease (each subcommand says who renews it).
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = duration::parse_lease,
        allow_hyphen_values = true
    )]
    lease: Option<Duration>,
    /// Permission bits, in octal (664, 0664, 0o664), of the state file if this command
    /// creates the semaphore (default 644); the lock and witness files get read and write
    /// for each class that may write the state (664: owner and group; see docs/how-it-works.md on
    /// sharing a semaphore with a group). An existing semaphore keeps its modes. Must
    /// include 600; execute, setuid, setgid and sticky bits are refused.
    #[arg(long, value_name = "OCTAL", value_parser = mode::parse)]
    mode: Option<u32>,
    #[command(flatten)]
    store: StoreArgs,
    /// Queue priority while waiting: higher is served first, first come first served within
    /// a priority (default 0; negative values queue behind).
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    priority: Option<i32>,
    /// Attach KEY=VALUE to the hold, shown by `status` (repeatable).
    #[arg(
        long = "meta",
        value_name = "KEY=VALUE",
        value_parser = parse_meta,
        allow_hyphen_values = true
    )]
    meta: Vec<(String, String)>,
    /// Print nothing when there is no slot or while waiting.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// Print the slot, token and time waited once the slot is taken.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    slot: SlotArgs,
    /// The holder ID (default: run-<hostname>-<pid>, or the outer hold's ID when nested); it
    /// may start with a dash (`--id -job`).
    #[arg(long, allow_hyphen_values = true)]
    id: Option<String>,
    /// Do not let the command inherit the hold: it ends when `filesem run` ends, even if
    /// the command lives on (as `flock -o`).
    #[arg(short = 'o', long = "close")]
    close: bool,
    /// If the hold is lost while the command runs (lease not renewed in time, or removed by
    /// someone), send the command SIGTERM; without this, `run` only warns.
    #[arg(long)]
    kill_on_lost: bool,
    /// The command and its arguments (put `--` before it if it starts with `-`).
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct AcquireArgs {
    #[command(flatten)]
    slot: SlotArgs,
    /// The holder ID, used later to `release` the hold; it may start with a dash
    /// (`--id -job`).
    #[arg(long, allow_hyphen_values = true)]
    id: String,
}

/// Capacities `1..=`[`filesem::MAX_CAPACITY`], so that `-c 0` is told the real range.
fn capacity_range() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(filesem::MAX_CAPACITY))
}

fn parse_meta(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

/// clap reports an unknown argument such as `-job` by its first short flag (`-j`) and tips
/// `-- -j`, which would pass another word: this names the whole argument as typed, in the
/// message and in the tip, so that the tip works (`filesem remove S -- -job`).
fn whole_argument(mut error: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::UnknownArgument {
        return error;
    }
    let flag = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(reported)) => match reported.strip_prefix('-') {
            Some(rest) if rest.chars().count() == 1 && rest != "-" => rest.to_string(),
            _ => return error,
        },
        _ => return error,
    };
    // The first cluster of short flags (before any `--`) that holds the reported one.
    let typed = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .filter_map(|a| a.into_string().ok())
        .find(|a| {
            a.len() > 2 && !a.starts_with("--") && a.starts_with('-') && a[1..].contains(&flag)
        });
    let Some(typed) = typed else {
        return error;
    };
    let tipped = matches!(
        error.get(ContextKind::Suggested),
        Some(ContextValue::StyledStrs(tips)) if tips.iter().any(|t| t.to_string().contains("as a value"))
    );
    if tipped {
        let tip = format!("to pass '{typed}' as a value, use '-- {typed}'");
        error.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![tip.into()]),
        );
    }
    error.insert(ContextKind::InvalidArg, ContextValue::String(typed));
    error
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version and usage errors: clap's text and exit code, whatever happens to
        // the output.
        Err(error) => return ExitCode::from(output::clap_exit(&whole_argument(error))),
    };
    let (conflict, quiet) = match &cli.command {
        Command::Run(a) => (a.slot.conflict_exit_code, a.slot.quiet),
        Command::Acquire(a) => (a.slot.conflict_exit_code, a.slot.quiet),
        _ => (NO_SLOT, false),
    };
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Acquire(args) => acquire::detached(args),
        Command::Release { semfile, id, store } => admin::release(&semfile, &id, &store),
        Command::Remove {
            semfile,
            ids,
            store,
        } => admin::remove(&semfile, &ids, &store),
        Command::Reap {
            semfile,
            quiet,
            store,
        } => admin::reap(&semfile, quiet, &store),
        Command::SetCapacity {
            semfile,
            capacity,
            store,
        } => admin::set_capacity(&semfile, capacity, &store),
        Command::Recover {
            semfile,
            capacity,
            mode,
            store,
        } => admin::recover(&semfile, capacity, mode, &store),
        Command::Status {
            semfile,
            json,
            store,
        } => status::status(&semfile, json, &store),
    };
    match result {
        Ok(exit) => exit.exit_code(conflict),
        Err(fail) => {
            if !(quiet && fail.is_no_slot()) {
                err!("{}", fail.report());
            }
            fail.exit.exit_code(conflict)
        }
    }
}
