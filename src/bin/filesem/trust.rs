//! `--trust-owner UID|USER`: the users whose files filesem may use in a world-writable or
//! sticky directory, passed to [`OpenOptions::trust_owner`].
//!
//! In such a directory (`/tmp`, mode 1777) the library refuses a semaphore's files and
//! directories owned by anyone but the caller, root and the directory's owner
//! ([`filesem::Error::Untrusted`]): another user could have planted them. A semaphore shared
//! there on purpose names its other users with this option, on every command that opens it.

use clap::Args;
use filesem::OpenOptions;
use nix::unistd::{Uid, User};

/// The `--trust-owner` option, shared by every subcommand (each opens a semaphore).
#[derive(Clone, Debug, Default, Args)]
pub struct TrustArgs {
    /// Use the semaphore's files owned by this user too (a uid or a user name; repeatable):
    /// in a world-writable or sticky directory such as /tmp, files of anyone but you, root
    /// and the directory's owner are refused otherwise, since that user could have planted
    /// them.
    #[arg(long = "trust-owner", value_name = "UID|USER", value_parser = parse)]
    pub owners: Vec<u32>,
}

impl TrustArgs {
    /// Library options that trust [`owners`](TrustArgs::owners), otherwise the defaults.
    pub fn options(&self) -> OpenOptions {
        let mut options = OpenOptions::new();
        for &uid in &self.owners {
            options.trust_owner(uid);
        }
        options
    }
}

/// A uid written in decimal (`1001`), or the name of a user in the user database
/// (`alice`, looked up as `id -u alice` would).
pub fn parse(text: &str) -> Result<u32, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u32>().map_err(|_| {
            format!(
                "uid `{text}` is out of range: uids go from 0 to {}",
                u32::MAX
            )
        });
    }
    if text.is_empty() {
        return Err("expected a uid or a user name, got an empty string".to_string());
    }
    match User::from_name(text) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(format!(
            "no user named `{text}` (give a uid, such as 1001, for a user without a name)"
        )),
        Err(e) => Err(format!("failed to look up user `{text}`: {e}")),
    }
}

/// `uid 1001 (alice)`, or `uid 1001` for a uid without a name in the user database.
pub fn describe(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("uid {uid} ({})", user.name),
        _ => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_and_user_names_parse_to_uids() {
        // A number is taken as it is (even without a name); a name is looked up.
        assert_eq!(parse("61301"), Ok(61301));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("4294967295"), Ok(u32::MAX));
        assert_eq!(parse("root"), Ok(0));
    }

    #[test]
    fn unknown_names_and_bad_numbers_are_refused_with_the_reason() {
        // A typo must not silently trust nobody, or somebody else.
        let unknown = parse("no-such-user-filesem").unwrap_err();
        assert!(
            unknown.contains("no user named `no-such-user-filesem`"),
            "{unknown}"
        );
        let big = parse("4294967296").unwrap_err();
        assert!(big.contains("out of range"), "{big}");
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("-1").unwrap_err().contains("no user named `-1`"));
    }

    #[test]
    fn a_uid_is_described_with_its_name_when_it_has_one() {
        // Messages name the user as `id` would show it.
        assert_eq!(describe(0), "uid 0 (root)");
        assert_eq!(describe(61399), "uid 61399");
    }

    #[test]
    fn the_options_trust_every_owner_given() {
        // Each --trust-owner reaches the library (checked through a refusal that it lifts).
        let trust = TrustArgs {
            owners: vec![61301, 61302],
        };
        let dir = tempfile::tempdir().unwrap();
        let sticky = dir.path().join("tmp");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(
            &sticky,
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        let path = sticky.join("s.json");
        std::fs::write(&path, br#"{"capacity": 2, "holders": []}"#).unwrap();
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED: planting a file of another owner needs root");
            return;
        }
        for uid in [61301, 61302] {
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid)).unwrap();
            let refused = OpenOptions::new().open_existing(&path).unwrap_err();
            assert!(
                matches!(refused, filesem::Error::Untrusted { owner: Some(o), .. } if o == uid),
                "{refused:?}"
            );
            let sem = trust.options().open_existing(&path).unwrap();
            assert_eq!(sem.capacity().unwrap(), 2);
        }
    }
}
