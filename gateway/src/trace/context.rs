//! The W3C Trace Context (`traceparent`, `tracestate`): strict parsing, formatting, ids.
//!
//! Parsing never fails loudly: a header that is not exactly right is ignored (the caller
//! starts a new trace), as the W3C recommendation asks of a receiver. Every input is
//! bounded before it is looked at.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest `traceparent` looked at. Version 00 is 55 bytes; later versions may append
/// fields, but nothing legitimate needs more than this.
pub const MAX_TRACEPARENT: usize = 256;
/// Longest `tracestate` kept (all header lines together), the size W3C asks a vendor to
/// be able to propagate. A longer one is dropped whole (the `traceparent` is still used).
pub const MAX_TRACESTATE: usize = 512;
/// Most `tracestate` list members (W3C's limit).
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The header names, parsed once (a `&str` name is checked on every lookup).
pub static TRACEPARENT: reqwest::header::HeaderName =
    reqwest::header::HeaderName::from_static("traceparent");
pub static TRACESTATE: reqwest::header::HeaderName =
    reqwest::header::HeaderName::from_static("tracestate");

/// The `sampled` flag.
pub const SAMPLED: u8 = 0x01;
/// Flags understood and passed on (`sampled`, and level 2's `random`); others are zeroed
/// when propagating, as W3C asks.
const KNOWN_FLAGS: u8 = 0x03;

/// A position in a trace: the trace id, the span that work under this context is a child
/// of, the flags, and the vendors' `tracestate` (passed on unchanged).
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    pub state: Option<Box<str>>,
}

impl std::fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.traceparent())
    }
}

impl TraceContext {
    /// A new trace with random ids, asking downstream to record it (`sampled`): the
    /// gateway's own spans are only recorded when an exporter is configured, and a peer
    /// that traces should not lose its part because of that.
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: fastrand::u128(1..).to_be_bytes(),
            span_id: new_span_id(),
            flags: SAMPLED,
            state: None,
        }
    }

    /// The same trace, a new random span id (a child of this one).
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: new_span_id(),
            flags: self.flags,
            state: self.state.clone(),
        }
    }

    /// Parses `traceparent` (and, only when that is valid, `tracestate`) from request
    /// headers; `None` when absent or invalid.
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Option<TraceContext> {
        let mut parents = headers.get_all(&TRACEPARENT).iter();
        let parent = parents.next()?;
        // Two `traceparent` lines cannot be told apart: neither is trusted.
        if parents.next().is_some() {
            return None;
        }
        let (trace_id, span_id, flags) = parse_traceparent(parent.as_bytes())?;
        let state = parse_tracestate(headers.get_all(&TRACESTATE).iter().map(|v| v.as_bytes()));
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
            state,
        })
    }

    /// The `traceparent` value of this context (version 00).
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    /// The trace id in lowercase hex (logs, tests).
    pub fn trace_id_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        push_hex(&mut out, &self.trace_id);
        out
    }
}

fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
}

/// `version-traceid-parentid-flags`, lowercase hex only. Version `ff` is invalid; a
/// version above 00 is read as 00 for its first four fields (what follows must start with
/// `-`); all-zero ids are invalid. Unknown flags are dropped.
pub fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if value.len() < 55 || value.len() > MAX_TRACEPARENT {
        return None;
    }
    let version = hex_bytes::<1>(&value[0..2])?[0];
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex_bytes::<16>(&value[3..35])?;
    let span_id = hex_bytes::<8>(&value[36..52])?;
    let flags = hex_bytes::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, flags & KNOWN_FLAGS))
}

/// `N` bytes from `2N` lowercase hex digits.
fn hex_bytes<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The `tracestate` list of all header lines, checked member by member and rebuilt
/// without optional whitespace; `None` when absent, empty, too long or malformed (a
/// malformed list is dropped whole: passing on part of it could misattribute a vendor's
/// state).
pub fn parse_tracestate<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Box<str>> {
    let mut out = String::new();
    let mut keys: Vec<&str> = Vec::new();
    let mut seen_bytes = 0usize;
    for value in values {
        seen_bytes += value.len() + 1;
        if seen_bytes > MAX_TRACESTATE + 1 {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?;
        for member in text.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            let (key, val) = member.split_once('=')?;
            if !valid_key(key) || !valid_value(val) || keys.contains(&key) {
                return None;
            }
            if keys.len() == MAX_TRACESTATE_MEMBERS {
                return None;
            }
            keys.push(key);
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(member);
        }
    }
    (!out.is_empty()).then(|| out.into_boxed_str())
}

/// `simple-key` or `tenant@system`: lowercase letters, digits, `_ - * /`, starting with a
/// letter (a tenant may start with a digit).
fn valid_key(key: &str) -> bool {
    let ok_char = |c: u8| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/');
    let part_ok = |part: &str, max: usize, digit_first: bool| {
        let b = part.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && (b[0].is_ascii_lowercase() || (digit_first && b[0].is_ascii_digit()))
            && b.iter().all(|&c| ok_char(c))
    };
    match key.split_once('@') {
        None => part_ok(key, 256, false),
        Some((tenant, system)) => part_ok(tenant, 241, true) && part_ok(system, 14, false),
    }
}

/// Printable ASCII without `,` and `=`, not ending in a space, 1 to 256 characters.
fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b[b.len() - 1] != b' '
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}

/// Stored form: `{"traceparent": "00-…", "tracestate": "…"}`.
#[derive(Serialize, Deserialize)]
struct Stored {
    traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
}

impl Serialize for TraceContext {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Stored {
            traceparent: self.traceparent(),
            tracestate: self.state.as_deref().map(str::to_owned),
        }
        .serialize(s)
    }
}

/// Reads a stored trace context leniently: absent, malformed or invalid → `None`. A bad
/// stored context must never make the task (or action) that carries it unreadable.
pub fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TraceContext>, D::Error> {
    // Through a `Value`: a bad inner field must not leave the outer document half read.
    let Some(value) = Option::<serde_json::Value>::deserialize(d)? else {
        return Ok(None);
    };
    let Ok(stored) = serde_json::from_value::<Stored>(value) else {
        return Ok(None);
    };
    let Some((trace_id, span_id, flags)) = parse_traceparent(stored.traceparent.as_bytes()) else {
        return Ok(None);
    };
    let state = stored
        .tracestate
        .as_deref()
        .and_then(|s| parse_tracestate(std::iter::once(s.as_bytes())));
    Ok(Some(TraceContext {
        trace_id,
        span_id,
        flags,
        state,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(s: &str) -> Option<([u8; 16], [u8; 8], u8)> {
        parse_traceparent(s.as_bytes())
    }

    #[test]
    fn a_valid_traceparent_round_trips() {
        let (t, s, f) = parse(VALID).expect("valid");
        assert_eq!(t[0], 0x4b);
        assert_eq!(s[7], 0xb7);
        assert_eq!(f, SAMPLED);
        let ctx = TraceContext {
            trace_id: t,
            span_id: s,
            flags: f,
            state: None,
        };
        assert_eq!(ctx.traceparent(), VALID);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn versions() {
        assert!(
            parse(&VALID.replacen("00", "ff", 1)).is_none(),
            "ff is invalid"
        );
        assert!(parse(&VALID.replacen("00", "0g", 1)).is_none(), "not hex");
        assert!(parse(&VALID.replacen("00", "0A", 1)).is_none(), "uppercase");
        // A later version is read as 00, with or without more fields after a dash.
        let v1 = VALID.replacen("00", "01", 1);
        assert!(parse(&v1).is_some());
        assert!(parse(&format!("{v1}-more-fields")).is_some());
        assert!(
            parse(&format!("{v1}x")).is_none(),
            "no dash after the flags"
        );
        // Version 00 is exactly 55 bytes.
        assert!(parse(&format!("{VALID}-extra")).is_none());
    }

    #[test]
    fn zero_ids_are_invalid() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zero_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        assert!(parse(zero_trace).is_none());
        assert!(parse(zero_span).is_none());
    }

    #[test]
    fn bad_hex_lengths_and_separators() {
        for bad in [
            "",
            "00",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47360-0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        let huge = format!("01{}", "-".repeat(MAX_TRACEPARENT));
        assert!(parse(&huge).is_none());
        // Not UTF-8 at all: still just invalid.
        let mut bytes = VALID.as_bytes().to_vec();
        bytes[10] = 0xff;
        assert!(parse_traceparent(&bytes).is_none());
    }

    #[test]
    fn flags() {
        let with = |f: &str| parse(&format!("{}{f}", &VALID[..53])).map(|p| p.2);
        assert_eq!(with("00"), Some(0));
        assert_eq!(with("01"), Some(SAMPLED));
        assert_eq!(with("03"), Some(0x03));
        // Unknown flags are not passed on.
        assert_eq!(with("ff"), Some(0x03));
        assert_eq!(with("08"), Some(0));
        assert_eq!(with("FF"), None);
    }

    fn state(lines: &[&str]) -> Option<String> {
        parse_tracestate(lines.iter().map(|l| l.as_bytes())).map(String::from)
    }

    #[test]
    fn tracestate() {
        assert_eq!(
            state(&["congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"]).as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(
            state(&["a=1", "t1@sys=x y"]).as_deref(),
            Some("a=1,t1@sys=x y")
        );
        assert_eq!(state(&[]), None);
        // Spaces around members are optional whitespace, not part of the value.
        assert_eq!(state(&["a=x ,\tb=y"]).as_deref(), Some("a=x,b=y"));
        assert_eq!(state(&[" , "]), None);
        for bad in [
            "novalue", "Upper=1", "a=1,a=2", "a=", "a=b=c", "a=b,c", "1a=x", "a@=x", "a=\u{e9}",
        ] {
            assert_eq!(state(&[bad]), None, "{bad:?}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(state(&[&many.join(",")]), None, "33 members");
        assert!(state(&[&many[..32].join(",")]).is_some());
        let long = format!("a={}", "x".repeat(250));
        assert_eq!(
            state(&[
                &long,
                &long.replacen('a', "b", 1),
                &long.replacen('a', "c", 1)
            ]),
            None
        );
    }

    #[test]
    fn headers_and_multiple_traceparents() {
        let mut h = reqwest::header::HeaderMap::new();
        assert!(TraceContext::from_headers(&h).is_none());
        h.insert(
            "traceparent",
            reqwest::header::HeaderValue::from_static(VALID),
        );
        h.insert(
            "tracestate",
            reqwest::header::HeaderValue::from_static("k=v"),
        );
        let ctx = TraceContext::from_headers(&h).expect("valid");
        assert_eq!(ctx.state.as_deref(), Some("k=v"));
        h.append(
            "traceparent",
            reqwest::header::HeaderValue::from_static(VALID),
        );
        assert!(TraceContext::from_headers(&h).is_none());
    }

    #[test]
    fn new_ids_are_valid_and_children_keep_the_trace() {
        let root = TraceContext::new_root();
        assert!(parse(&root.traceparent()).is_some());
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_ne!(TraceContext::new_root().trace_id, root.trace_id);
    }

    #[test]
    fn stored_form_is_read_leniently() {
        #[derive(Deserialize)]
        struct Holder {
            #[serde(default, deserialize_with = "lenient")]
            trace: Option<TraceContext>,
        }
        let read = |json: &str| serde_json::from_str::<Holder>(json).expect("parses").trace;
        let root = TraceContext {
            state: Some("k=v".into()),
            ..TraceContext::new_root()
        };
        let json = format!(r#"{{"trace":{}}}"#, serde_json::to_string(&root).unwrap());
        assert_eq!(read(&json), Some(root));
        assert_eq!(read("{}"), None);
        assert_eq!(read(r#"{"trace":null}"#), None);
        assert_eq!(read(r#"{"trace":{"traceparent":"junk"}}"#), None);
        assert_eq!(read(r#"{"trace":42}"#), None);
        assert_eq!(read(r#"{"trace":{"traceparent":5},"x":1}"#), None);
    }
}
