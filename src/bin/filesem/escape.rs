//! Escaping text from the state file (IDs, metadata, host names) and from errors before it
//! reaches a terminal, and quoting paths for the commands that hints show.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `text` with control characters, bidirectional-override characters and backslashes
/// written as Rust escapes (`\n`, `\u{1b}`, `\\`), so that an ID such as `"x\e[2J"` shows as
/// `x\u{1b}[2J` instead of clearing the screen, and two different IDs never print alike.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `path` escaped as [`escape`] does, with each byte that is not part of valid UTF-8 written
/// `\xNN` (two lowercase hex digits): every path, whatever its bytes, shows unambiguously and
/// can be turned back into its bytes (the `status --json` schema relies on it).
pub fn escape_path(path: &Path) -> String {
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(&escape(chunk.valid()));
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// `text` with control and bidirectional-override characters escaped as [`escape`] does,
/// but backslashes kept: for hints, whose commands (quoted by [`shell_quote`], which never
/// emits those characters) must work when pasted.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\\' && needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` quoted for a shell when it needs quoting, for commands shown in hints: as it is if
/// it has only plain characters; in single quotes if it is printable UTF-8; otherwise in
/// `$'...'` quotes (bash, zsh, ksh, POSIX.1-2024) with `\xNN` for each byte of a control or
/// bidirectional-override character and for each byte that is not UTF-8, so that the hint
/// is safe on a terminal and the command still names exactly this path.
pub fn shell_quote(text: impl AsRef<OsStr>) -> String {
    let bytes = text.as_ref().as_bytes();
    let plain = !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_./-+:,@%=".contains(b));
    if plain {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    if let Ok(text) = std::str::from_utf8(bytes)
        && !text.chars().any(|c| c != '\\' && needs_escape(c))
    {
        return format!("'{}'", text.replace('\'', r"'\''"));
    }
    let mut out = String::from("$'");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str(r"\\"),
                '\'' => out.push_str(r"\'"),
                c if needs_escape(c) => {
                    let mut buf = [0; 4];
                    for byte in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{byte:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out.push('\'');
    out
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::{escape, escape_path, shell_quote, terminal_safe};
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    #[test]
    fn control_characters_and_backslashes_are_escaped() {
        // A hostile ID must not reach the terminal raw, and escaped output is unambiguous.
        assert_eq!(escape("job-1"), "job-1");
        assert_eq!(escape("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(escape("x\u{1b}[2J"), "x\\u{1b}[2J");
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        assert_eq!(escape("\u{7f}\u{85}"), "\\u{7f}\\u{85}");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
    }

    #[test]
    fn shell_quote_leaves_plain_paths_and_quotes_the_rest() {
        // A command shown in a hint must work when pasted into a shell.
        assert_eq!(shell_quote("/var/lib/gpu.json"), "/var/lib/gpu.json");
        assert_eq!(shell_quote("/tmp/my sem.json"), "'/tmp/my sem.json'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn printable_unicode_is_kept() {
        // Non-ASCII names are common and harmless; only dangerous characters change.
        assert_eq!(escape("café-ジョブ"), "café-ジョブ");
    }

    #[test]
    fn paths_that_are_not_utf8_show_each_stray_byte_as_hex() {
        // No byte of a path is lost or replaced by U+FFFD; a backslash cannot fake an escape.
        let path = Path::new(OsStr::from_bytes(b"/tmp/caf\xe9/a\\x41\n\xff\xfe.json"));
        assert_eq!(escape_path(path), r"/tmp/caf\xe9/a\\x41\n\xff\xfe.json");
        assert_eq!(escape_path(Path::new("/tmp/café.json")), "/tmp/café.json");
    }

    #[test]
    fn hints_keep_backslashes_but_not_control_characters() {
        // A quoted command in a hint must paste as it is, and still not drive the terminal.
        assert_eq!(terminal_safe(r"run 'a\b'"), r"run 'a\b'");
        assert_eq!(terminal_safe("x\u{1b}[2J\u{202e}"), r"x\u{1b}[2J\u{202e}");
    }

    #[test]
    fn shell_quote_writes_control_characters_and_stray_bytes_as_hex_escapes() {
        // What a terminal must not see raw is given in $'...' form, which names the same bytes.
        assert_eq!(shell_quote(r"/tmp/a\b"), r"'/tmp/a\b'");
        assert_eq!(shell_quote("/tmp/a\nb's"), r"$'/tmp/a\x0ab\'s'");
        assert_eq!(
            shell_quote(OsStr::from_bytes(b"/tmp/caf\xe9\\\xe2\x80\xae")),
            r"$'/tmp/caf\xe9\\\xe2\x80\xae'"
        );
    }
}
