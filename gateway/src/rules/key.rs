//! Backend state keys: `prefix:part:part…`, every part escaped and bounded.
//!
//! Escaping makes the split unambiguous: `:` (the separator), `%` (the escape), `#` (the
//! digest marker) and control characters (NUL is not storable in Postgres text) are written
//! `%XX`, so namespace `a:b` / tenant `c` and namespace `a` / tenant `b:c` give different
//! keys on every backend. A part longer than [`MAX_PART_BYTES`] once escaped is replaced by
//! `#` + the hex SHA-256 of its raw bytes: backend keys stay bounded whatever the input, and
//! since a literal part never contains `#` a digest never equals a literal part.

use sha2::{Digest, Sha256};

/// Longest part stored as text; longer parts are stored as their digest.
pub const MAX_PART_BYTES: usize = 128;

/// `#` + 64 hex digits.
const DIGEST_PART_BYTES: usize = 1 + 64;

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn needs_escape(b: u8) -> bool {
    matches!(b, b':' | b'%' | b'#') || b < 0x20 || b == 0x7f
}

fn escaped_len(part: &str) -> usize {
    part.len() + 2 * part.bytes().filter(|b| needs_escape(*b)).count()
}

fn encoded_len(part: &str) -> usize {
    match escaped_len(part) {
        n if n > MAX_PART_BYTES => DIGEST_PART_BYTES,
        n => n,
    }
}

/// Builds `prefix:p1:p2…` with one allocation. `prefix` is a fixed tag of this crate; the
/// parts may come from requests and are escaped and bounded.
pub fn state_key(prefix: &'static str, parts: &[&str]) -> String {
    let len = prefix.len() + parts.iter().map(|p| 1 + encoded_len(p)).sum::<usize>();
    let mut key = String::with_capacity(len);
    key.push_str(prefix);
    for part in parts {
        key.push(':');
        push_part(&mut key, part);
    }
    debug_assert_eq!(key.len(), len, "capacity computed exactly");
    key
}

fn push_part(out: &mut String, part: &str) {
    let escaped = escaped_len(part);
    if escaped > MAX_PART_BYTES {
        push_digest(out, part);
    } else if escaped == part.len() {
        out.push_str(part);
    } else {
        for c in part.chars() {
            if c.is_ascii() && needs_escape(c as u8) {
                push_hex_byte(out, b'%', c as u8);
            } else {
                out.push(c);
            }
        }
    }
}

fn push_hex_byte(out: &mut String, lead: u8, b: u8) {
    out.push(char::from(lead));
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

fn push_digest(out: &mut String, part: &str) {
    out.push('#');
    for b in Sha256::digest(part.as_bytes()).iter() {
        out.push(char::from(HEX[usize::from(b >> 4)].to_ascii_lowercase()));
        out.push(char::from(HEX[usize::from(b & 0xf)].to_ascii_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_that_differ_give_keys_that_differ() {
        // The example, and its tenant/key variant.
        assert_ne!(
            state_key("d", &["a:b", "c", "K"]),
            state_key("d", &["a", "b", "c:K"])
        );
        assert_ne!(
            state_key("d", &["a", "b:c", "K"]),
            state_key("d", &["a", "b", "c:K"])
        );
        // An escape sequence written literally is not the character it escapes.
        assert_ne!(
            state_key("d", &["a%3Ab", "c", "K"]),
            state_key("d", &["a:b", "c", "K"])
        );
        assert_eq!(state_key("d", &["a:b", "c", "K"]), "d:a%3Ab:c:K");
        assert_eq!(state_key("d", &["ns", "t", "k"]), "d:ns:t:k");
    }

    #[test]
    fn control_characters_are_escaped() {
        let key = state_key("d", &["ns", "t\0x", "k\n"]);
        assert_eq!(key, "d:ns:t%00x:k%0A");
        assert!(!key.chars().any(char::is_control));
    }

    #[test]
    fn long_parts_become_bounded_digests() {
        let long = "k".repeat(1_000_000);
        let key = state_key("d", &["ns", "t", &long]);
        assert_eq!(key.len(), "d:ns:t:".len() + DIGEST_PART_BYTES);
        assert!(key.starts_with("d:ns:t:#"));
        // Deterministic, and different inputs give different digests.
        assert_eq!(key, state_key("d", &["ns", "t", &long]));
        assert_ne!(key, state_key("d", &["ns", "t", &"k".repeat(999_999)]));
        // The boundary: 128 bytes stay text, 129 become a digest.
        let at = "x".repeat(MAX_PART_BYTES);
        assert_eq!(state_key("d", &[&at]), format!("d:{at}"));
        let over = "x".repeat(MAX_PART_BYTES + 1);
        assert_eq!(state_key("d", &[&over]).len(), 2 + DIGEST_PART_BYTES);
        // Escaping counts toward the bound: 43 `:` are 129 escaped bytes.
        assert!(state_key("d", &[&":".repeat(43)]).starts_with("d:#"));
    }

    #[test]
    fn a_digest_never_equals_a_literal_part() {
        let long = "y".repeat(500);
        let digest_key = state_key("d", &[&long]);
        let digest_part = &digest_key[2..];
        // Sending the digest text itself as a key gives an escaped, different key.
        assert_ne!(state_key("d", &[digest_part]), digest_key);
        assert!(state_key("d", &[digest_part]).starts_with("d:%23"));
    }

    #[test]
    fn multibyte_text_is_kept_and_counted_in_bytes() {
        assert_eq!(state_key("d", &["é:ü"]), "d:é%3Aü");
        let wide = "é".repeat(65); // 130 bytes
        assert!(state_key("d", &[&wide]).starts_with("d:#"));
    }
}
