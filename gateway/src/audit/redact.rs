//! Redaction of configured field paths (`--audit-redact payload.password,payload.card.number`)
//! before a record is queued: the secret never reaches the queue, memory or the database.
//!
//! A path starts with `payload.` or `metadata.` (a path without either is relative to the
//! payload). Keys match case-insensitively; `*` matches any key; arrays are traversed
//! (`payload.cards.number` redacts the `number` of every element of `cards`). A matched
//! value, whatever it is (object included), becomes the string `"[REDACTED]"`.

use std::collections::HashMap;

use serde_json::Value;

pub const REDACTED: &str = "[REDACTED]";

/// Most paths accepted, and most segments per path: every size is bounded.
const MAX_PATHS: usize = 256;
const MAX_SEGMENTS: usize = 32;

/// The compiled paths.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Lowercased segments under the payload.
    payload: Vec<Vec<String>>,
    /// Lowercased metadata keys (metadata is flat).
    metadata: Vec<String>,
}

impl Redactor {
    pub fn new(paths: &[String]) -> Result<Redactor, String> {
        let paths: Vec<&str> = paths
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .collect();
        if paths.len() > MAX_PATHS {
            return Err(format!("more than {MAX_PATHS} redacted paths"));
        }
        let mut r = Redactor::default();
        for path in paths {
            let segments: Vec<String> = path.split('.').map(str::to_lowercase).collect();
            if segments.len() > MAX_SEGMENTS || segments.iter().any(String::is_empty) {
                return Err(format!(
                    "`{path}`: expected dotted keys (at most {MAX_SEGMENTS})"
                ));
            }
            match segments.split_first() {
                Some((root, rest)) if root == "metadata" => match rest {
                    [key] => r.metadata.push(key.clone()),
                    _ => {
                        return Err(format!(
                            "`{path}`: metadata is flat: expected metadata.<key>"
                        ));
                    }
                },
                Some((root, rest)) if root == "payload" => {
                    if rest.is_empty() {
                        return Err(format!("`{path}`: name a field under the payload"));
                    }
                    r.payload.push(rest.to_vec());
                }
                _ => r.payload.push(segments),
            }
        }
        Ok(r)
    }

    pub fn is_empty(&self) -> bool {
        self.payload.is_empty() && self.metadata.is_empty()
    }

    pub fn payload(&self, value: &mut Value) {
        for path in &self.payload {
            redact_path(value, path);
        }
    }

    pub fn metadata(&self, metadata: &mut HashMap<String, String>) {
        if self.metadata.is_empty() {
            return;
        }
        for (k, v) in metadata.iter_mut() {
            if self.metadata.iter().any(|m| m == "*" || same_key(k, m)) {
                *v = REDACTED.to_owned();
            }
        }
    }
}

/// `key` equal to the lowercased `want`, ignoring case, without allocating.
fn same_key(key: &str, want: &str) -> bool {
    key.chars().flat_map(char::to_lowercase).eq(want.chars())
}

fn redact_path(value: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if first == "*" || same_key(k, first) {
                    if rest.is_empty() {
                        *v = Value::String(REDACTED.to_owned());
                    } else {
                        redact_path(v, rest);
                    }
                }
            }
        }
        // Arrays are transparent; depth is bounded by serde_json's recursion limit.
        Value::Array(items) => {
            for item in items {
                redact_path(item, path);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redactor(paths: &[&str]) -> Redactor {
        Redactor::new(&paths.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn paths_case_insensitive_nested_and_arrays() {
        let r = redactor(&[
            "payload.password",
            "payload.Card.NUMBER",
            "payload.cards.cvv",
            "token",
            "metadata.Api-Key",
        ]);
        let mut p = json!({
            "PassWord": "hunter2",
            "card": {"number": "4111", "name": "A"},
            "cards": [{"cvv": "123", "x": 1}, {"cvv": {"nested": true}}, 5],
            "token": ["a", "b"],
            "keep": {"password": "not at root"}
        });
        r.payload(&mut p);
        assert_eq!(
            p,
            json!({
                "PassWord": REDACTED,
                "card": {"number": REDACTED, "name": "A"},
                "cards": [{"cvv": REDACTED, "x": 1}, {"cvv": REDACTED}, 5],
                "token": REDACTED,
                "keep": {"password": "not at root"}
            })
        );
        let mut m = HashMap::from([
            ("API-KEY".to_owned(), "s3cret".to_owned()),
            ("other".to_owned(), "v".to_owned()),
        ]);
        r.metadata(&mut m);
        assert_eq!(m["API-KEY"], REDACTED);
        assert_eq!(m["other"], "v");
    }

    #[test]
    fn wildcard_and_non_objects() {
        let r = redactor(&["payload.*.secret"]);
        let mut p = json!({"a": {"secret": 1}, "b": {"secret": 2, "c": 3}, "d": "x"});
        r.payload(&mut p);
        assert_eq!(
            p,
            json!({"a": {"secret": REDACTED}, "b": {"secret": REDACTED, "c": 3}, "d": "x"})
        );
        let mut scalar = json!("secret");
        r.payload(&mut scalar);
        assert_eq!(scalar, json!("secret"));
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in ["payload", "payload..x", "metadata.a.b", "metadata"] {
            assert!(Redactor::new(&[bad.to_owned()]).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..300).map(|i| format!("f{i}")).collect();
        assert!(Redactor::new(&many).is_err());
        assert!(Redactor::new(&[" ".into()]).unwrap().is_empty());
    }
}
