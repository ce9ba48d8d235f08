//! Commands for the hints whose way out is the user's own command, changed: again with
//! `--trust-owner UID`, again as it was, or at a new semaphore path. Each argument is quoted
//! for the shell ([`shell_quote`]), so that the hint works when pasted.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::escape::shell_quote;

/// The arguments `filesem` was started with, without the program name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    args: Vec<OsString>,
}

impl Invocation {
    /// This process's arguments.
    pub fn current() -> Invocation {
        Invocation::new(std::env::args_os().skip(1))
    }

    /// The arguments `args` (after the program name).
    pub fn new<I, S>(args: I) -> Invocation
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Invocation {
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// The subcommand (`run`, `status`, ...): always the first argument, since `filesem` has
    /// no options of its own besides `--help` and `--version`.
    fn subcommand(&self) -> Option<&OsStr> {
        self.args.first().map(OsString::as_os_str)
    }

    /// Whether the command line gives a holder ID with `--id` (before any `--`): `run`
    /// without one takes the ID of an enclosing `run` from `FILESEM_ID`.
    pub fn gives_id(&self) -> bool {
        self.args
            .iter()
            .skip(1)
            .take_while(|a| a.as_os_str() != "--")
            .any(|a| a == "--id" || a.as_bytes().starts_with(b"--id="))
    }

    /// Whether the subcommand creates a semaphore that is not there (`run`, `acquire`).
    pub fn creates(&self) -> bool {
        matches!(self.subcommand(), Some(s) if s == "run" || s == "acquire")
    }

    /// `filesem ARGS...`: the same command again.
    pub fn again(&self) -> Option<String> {
        self.subcommand()?;
        Some(render(self.args.iter().map(OsString::as_os_str)))
    }

    /// The same command with `--trust-owner UID` after the subcommand (where every
    /// subcommand takes its options).
    pub fn trusting(&self, uid: u32) -> Option<String> {
        let (subcommand, rest) = self.args.split_first()?;
        let uid = OsString::from(uid.to_string());
        let option = OsStr::new("--trust-owner");
        Some(render(
            [subcommand.as_os_str(), option, uid.as_os_str()]
                .into_iter()
                .chain(rest.iter().map(OsString::as_os_str)),
        ))
    }

    /// The same command on the semaphore `new` instead of `old` (the first argument equal to
    /// `old`, which is the state file's path as given: no option value comes before it in
    /// the commands that can need this), with `-c capacity` after the subcommand if the
    /// command gives no capacity of its own, so that the new semaphore gets the old one's.
    /// `None` if `old` is not among the arguments.
    pub fn at(&self, old: &Path, new: &Path, capacity: Option<u32>) -> Option<String> {
        let (subcommand, rest) = self.args.split_first()?;
        let at = rest.iter().position(|a| a.as_os_str() == old.as_os_str())?;
        let mut args: Vec<OsString> = vec![subcommand.clone()];
        if let (Some(capacity), false) = (capacity, gives_capacity(&rest[..at])) {
            args.push("-c".into());
            args.push(capacity.to_string().into());
        }
        args.extend(rest[..at].iter().cloned());
        args.push(new.as_os_str().to_os_string());
        args.extend(rest[at + 1..].iter().cloned());
        Some(render(args.iter().map(OsString::as_os_str)))
    }
}

/// Whether `options` (the arguments before the state file) give a capacity: `-c N`, `-cN`,
/// `--capacity N`, `--capacity=N`, or `c` in a cluster of short flags (`-qc N`). After the
/// state file only `run`'s command follows, or options `run` and `acquire` also accept
/// before it; a capacity given there is missed and the hint's `-c` is refused by clap as
/// given twice, which is why the state file is searched first.
fn gives_capacity(options: &[OsString]) -> bool {
    /// Short flags of `run` and `acquire` that take no value, so a cluster may go on after
    /// them.
    const FLAGS: &[u8] = b"nqvo";
    options.iter().any(|arg| {
        let arg = arg.as_bytes();
        if arg == b"--capacity" || arg.starts_with(b"--capacity=") {
            return true;
        }
        match arg.strip_prefix(b"-") {
            Some(cluster) if !cluster.starts_with(b"-") => {
                let flags = cluster.iter().take_while(|b| FLAGS.contains(b)).count();
                cluster.get(flags) == Some(&b'c')
            }
            _ => false,
        }
    })
}

/// `filesem ARG...`, each argument quoted for the shell.
fn render<'a>(args: impl Iterator<Item = &'a OsStr>) -> String {
    let mut command = String::from("filesem");
    for arg in args {
        command.push(' ');
        command.push_str(&shell_quote(arg));
    }
    command
}

/// A path beside `path` for a new semaphore, where nothing of a semaphore is yet: `s-2.json`
/// for `s.json` (`s-3.json`, ... if taken; `sem-2` for `sem`), such that no state file,
/// lock file or witness directory of that name exists. `None` if none of 98 candidates is
/// free or the directory cannot be looked at.
pub fn new_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.as_bytes();
    let (stem, extension) = match name.iter().rposition(|&b| b == b'.') {
        Some(dot) if dot > 0 => name.split_at(dot),
        _ => (name, &b""[..]),
    };
    (2..100).find_map(|n| {
        let mut candidate = stem.to_vec();
        candidate.extend_from_slice(format!("-{n}").as_bytes());
        candidate.extend_from_slice(extension);
        let candidate = path.with_file_name(OsStr::from_bytes(&candidate));
        let taken = ["", ".lock", ".witness"].iter().any(|suffix| {
            let mut p = candidate.as_os_str().to_os_string();
            p.push(suffix);
            // Anything but "no such file" counts as taken: never point at a path whose
            // state cannot be told.
            !matches!(
                std::fs::symlink_metadata(&p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound
            )
        });
        (!taken).then_some(candidate)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusting_puts_the_option_after_the_subcommand_and_quotes_every_argument() {
        // The hint must be the user's own command, pasteable, with only the option added.
        let run = Invocation::new(["run", "-n", "/tmp/it's.json", "--", "sh", "-c", "echo $X"]);
        assert_eq!(
            run.trusting(61301).unwrap(),
            r"filesem run --trust-owner 61301 -n '/tmp/it'\''s.json' -- sh -c 'echo $X'"
        );
        assert_eq!(
            Invocation::new(["status", "/tmp/s.json"])
                .trusting(0)
                .unwrap(),
            "filesem status --trust-owner 0 /tmp/s.json"
        );
        assert_eq!(Invocation::default().trusting(1), None);
    }

    #[test]
    fn again_is_the_same_command_and_only_run_and_acquire_create() {
        // Running the same command again helps only where it creates the semaphore.
        let acquire = Invocation::new(["acquire", "/d/s.json", "--id", "-job"]);
        assert_eq!(
            acquire.again().unwrap(),
            "filesem acquire /d/s.json --id -job"
        );
        assert!(acquire.creates());
        assert!(Invocation::new(["run", "s", "true"]).creates());
        assert!(!Invocation::new(["release", "s", "run"]).creates());
        assert_eq!(Invocation::default().again(), None);
    }

    #[test]
    fn at_swaps_the_state_file_and_adds_the_capacity_unless_given() {
        // The new semaphore gets the old one's capacity, and -c is never given twice.
        let old = Path::new("/d/s.json");
        let new = Path::new("/d/s-2.json");
        let plain = Invocation::new(["run", "-n", "/d/s.json", "--", "cat", "/d/s.json"]);
        assert_eq!(
            plain.at(old, new, Some(3)).unwrap(),
            "filesem run -c 3 -n /d/s-2.json -- cat /d/s.json"
        );
        for given in [
            &["-c", "3"][..],
            &["-c3"],
            &["--capacity", "3"],
            &["--capacity=3"],
            &["-qc", "3"],
        ] {
            let args: Vec<&str> = ["acquire"]
                .iter()
                .chain(given)
                .chain(&["/d/s.json", "--id", "a"])
                .copied()
                .collect();
            assert_eq!(
                Invocation::new(args).at(old, new, Some(3)).unwrap(),
                format!("filesem acquire {} /d/s-2.json --id a", given.join(" "))
            );
        }
        // -w takes a value: a `c` after it is part of that value, not a capacity.
        let waiting = Invocation::new(["acquire", "-qw5", "/d/s.json", "--id", "a"]);
        assert_eq!(
            waiting.at(old, new, Some(2)).unwrap(),
            "filesem acquire -c 2 -qw5 /d/s-2.json --id a"
        );
        assert_eq!(
            Invocation::new(["status", "/other.json"]).at(old, new, None),
            None
        );
    }

    #[test]
    fn new_paths_skip_every_name_a_semaphore_already_uses() {
        // The hinted path must be free: no state, lock or witness of that name.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        assert_eq!(new_path(&path).unwrap(), dir.path().join("s-2.json"));
        std::fs::write(dir.path().join("s-2.json.lock"), b"").unwrap();
        std::os::unix::fs::symlink("nowhere", dir.path().join("s-3.json")).unwrap();
        std::fs::create_dir(dir.path().join("s-4.json.witness")).unwrap();
        assert_eq!(new_path(&path).unwrap(), dir.path().join("s-5.json"));
        assert_eq!(
            new_path(&dir.path().join("sem")).unwrap(),
            dir.path().join("sem-2")
        );
        assert_eq!(
            new_path(&dir.path().join(".hidden")).unwrap(),
            dir.path().join(".hidden-2")
        );
    }
}
