//! Parsing `--mode OCTAL`: the permission bits of a state file that a command creates.

/// The bits `--mode` may have: read and write for owner, group and others. Execute bits have
/// no use on a state file (the witness directory gets its own from the read bits), and
/// setuid, setgid and sticky are never useful on these files, so both are refused rather
/// than passed on.
const ALLOWED: u32 = 0o666;

/// The bits `--mode` must have: the owner reads and writes. Without them the lock file
/// (whose mode follows the state file's write bits) could not be opened by its own creator.
const REQUIRED: u32 = 0o600;

/// Parses a mode written in octal, as `chmod` takes it: `664`, `0664` or `0o664`. It must
/// include `0600` and lie within `0666` (see [`ALLOWED`] and [`REQUIRED`]).
pub fn parse(text: &str) -> Result<u32, String> {
    let digits = text
        .strip_prefix("0o")
        .or_else(|| text.strip_prefix("0O"))
        .unwrap_or(text);
    let octal = !digits.is_empty()
        && digits.len() <= 11
        && digits.bytes().all(|b| matches!(b, b'0'..=b'7'));
    let mode = match u32::from_str_radix(digits, 8) {
        Ok(mode) if octal => mode,
        _ => {
            return Err(format!(
                "invalid mode `{text}`: expected octal permission bits such as 664, 0664 or 0o664"
            ));
        }
    };
    if mode & !ALLOWED != 0 {
        return Err(format!(
            "mode {mode:04o} has bits outside {ALLOWED:04o}: execute, setuid, setgid and sticky \
             bits have no use on a state file"
        ));
    }
    if mode & REQUIRED != REQUIRED {
        return Err(format!(
            "mode {mode:04o} does not let its owner read and write the state file (it needs \
             {REQUIRED:04o})"
        ));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn octal_modes_parse_with_or_without_a_prefix() {
        // The spellings of chmod(1) and of Rust and Python literals all mean the same bits.
        assert_eq!(parse("664"), Ok(0o664));
        assert_eq!(parse("0664"), Ok(0o664));
        assert_eq!(parse("0o664"), Ok(0o664));
        assert_eq!(parse("0O640"), Ok(0o640));
        assert_eq!(parse("600"), Ok(0o600));
        assert_eq!(parse("666"), Ok(0o666));
        assert_eq!(parse("000644"), Ok(0o644));
    }

    #[test]
    fn malformed_modes_are_refused_with_the_accepted_forms() {
        // A typo must be a usage error, never a file with unexpected permissions.
        for bad in [
            "",
            "0o",
            "8",
            "680",
            "rw-rw-r--",
            "u+rw",
            "0x1b4",
            "+664",
            "-664",
            " 664",
            "664 ",
            "0b110",
            "99999999999999999999",
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains("expected octal"), "{bad}: {error}");
        }
    }

    #[test]
    fn execute_setuid_setgid_and_sticky_bits_are_refused() {
        // Such bits are never useful on these files; passing them on would be a hazard.
        for bad in ["4664", "2664", "1664", "0o6777", "775", "0700", "764"] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains("outside 0666"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_mode_that_locks_out_its_owner_is_refused() {
        // The creator must be able to use the semaphore it creates.
        for bad in ["0", "444", "0o066", "400", "200", "0466"] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains("needs 0600"), "{bad}: {error}");
        }
    }
}
