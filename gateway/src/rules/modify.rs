//! `modify`: a JSON merge patch (RFC 7386) on the payload; evaluation continues.

use std::borrow::Cow;

use serde_json::Value;

/// Applies `changes` to the payload, copying it on first change only.
pub fn apply(payload: &mut Cow<'_, Value>, changes: &Value) {
    json_patch::merge(payload.to_mut(), changes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_semantics() {
        let original = json!({"a": 1, "b": {"c": 2, "d": 3}});
        let mut p = Cow::Borrowed(&original);
        apply(&mut p, &json!({"a": null, "b": {"c": 5}, "e": "x"}));
        assert_eq!(*p, json!({"b": {"c": 5, "d": 3}, "e": "x"}));
        assert_eq!(original["a"], 1, "the request's payload is not touched");
    }
}
