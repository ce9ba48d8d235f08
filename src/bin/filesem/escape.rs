//! Escaping text from the state file (IDs, metadata, host names) and from errors before it
//! reaches a terminal.

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

/// `text` quoted for a POSIX shell when it needs quoting, for commands shown in hints.
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./-+:,@%=".contains(&b));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::{escape, shell_quote};

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
}
