//! JSON output that matches Go's `json.MarshalIndent(v, "", "    ")` byte for
//! byte, so runtimes that diff or cache our output see what the reference prints.

use serde::Serialize;

/// Pretty-print with a 4-space indent and Go's HTML-safe escaping.
pub fn to_go_pretty<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    // Serializing our own plain data types into a Vec cannot fail.
    if value.serialize(&mut ser).is_err() {
        return b"{}".to_vec();
    }
    go_escape(out)
}

/// Compact JSON with a trailing newline, as Go's `json.Encoder.Encode` writes.
pub fn to_go_compact_line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    out = go_escape(out);
    out.push(b'\n');
    out
}

/// Go escapes `<`, `>`, `&`, U+2028 and U+2029. Those characters can only
/// occur inside JSON strings, so a byte-level rewrite is exact.
fn go_escape(bytes: Vec<u8>) -> Vec<u8> {
    let needs = bytes
        .windows(3)
        .any(|w| w == "\u{2028}".as_bytes() || w == "\u{2029}".as_bytes())
        || bytes.iter().any(|b| matches!(b, b'<' | b'>' | b'&'));
    if !needs {
        return bytes;
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_matches_go_indent_and_escaping() {
        let v = serde_json::json!({"code": 7, "msg": "a<b>&c"});
        let out = String::from_utf8(to_go_pretty(&v)).expect("utf8");
        assert_eq!(
            out,
            "{\n    \"code\": 7,\n    \"msg\": \"a\\u003cb\\u003e\\u0026c\"\n}"
        );
    }

    #[test]
    fn compact_line_ends_with_newline() {
        let v = serde_json::json!({"a": 1});
        assert_eq!(to_go_compact_line(&v), b"{\"a\":1}\n");
    }
}
