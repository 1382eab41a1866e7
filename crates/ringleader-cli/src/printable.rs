//! Strings from elsewhere (peers' names and addresses, request paths) made
//! safe to print: bounded in length and free of control characters, so a
//! peer cannot flood a terminal or a log, or drive a terminal with escape
//! sequences.

/// `text` with every control character (C0, DEL, C1: ESC among them)
/// replaced by U+FFFD, cut at a character boundary to at most `max_bytes`
/// bytes of the original, with `…` marking a cut.
pub fn clean(text: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes) + 3);
    for (at, c) in text.char_indices() {
        if at + c.len_utf8() > max_bytes {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '\u{fffd}' } else { c });
    }
    out
}

/// Longest peer-provided string printed as is, in bytes (the library bounds
/// names and addresses to this too).
pub const MAX_PRINTED: usize = 255;

/// Longest line `dev` prints for one event, in bytes.
pub const MAX_LINE: usize = 1000;

/// [`clean`] at [`MAX_PRINTED`] bytes, for names and addresses.
pub fn printable(text: &str) -> String {
    clean(text, MAX_PRINTED)
}

/// A JSON string field made printable, or `default` if it is not a string.
pub fn field(value: &serde_json::Value, default: &str) -> String {
    value
        .as_str()
        .map_or_else(|| default.to_string(), printable)
}

/// [`clean`] at 64 bytes, for echoing bad input back in an error.
pub fn bounded(text: &str) -> String {
    clean(text, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_replaced_and_length_is_bounded() {
        assert_eq!(clean("node-1", 255), "node-1");
        assert_eq!(
            clean("a\u{1b}[2Jb\n\r\u{7f}\u{9b}", 255),
            "a\u{fffd}[2Jb\u{fffd}\u{fffd}\u{fffd}\u{fffd}"
        );
        let long = "x".repeat(10_000);
        assert_eq!(clean(&long, 255), format!("{}…", "x".repeat(255)));
        // Never splits a character.
        let wide = "é".repeat(200);
        let cut = clean(&wide, 5);
        assert_eq!(cut, "éé…");
        assert_eq!(bounded("+5"), "+5");
        assert_eq!(
            printable(&"y".repeat(300)).len(),
            MAX_PRINTED + '…'.len_utf8()
        );
        assert_eq!(field(&serde_json::json!("a\u{1b}b"), "?"), "a\u{fffd}b");
        assert_eq!(field(&serde_json::json!(7), "?"), "?");
    }
}
