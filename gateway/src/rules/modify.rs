//! `modify`: a JSON merge patch (RFC 7386) on the payload; evaluation continues.

use std::borrow::Cow;

use serde_json::Value;

/// A compiled `modify` rule.
#[derive(Debug)]
pub struct Modify {
    pub changes: Value,
}

impl Modify {
    /// Applies the changes to the payload, copying it on first change only.
    pub fn apply(&self, payload: &mut Cow<'_, Value>) {
        json_patch::merge(payload.to_mut(), &self.changes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_semantics() {
        let original = json!({"a": 1, "b": {"c": 2, "d": 3}});
        let mut p = Cow::Borrowed(&original);
        let m = Modify {
            changes: json!({"a": null, "b": {"c": 5}, "e": "x"}),
        };
        m.apply(&mut p);
        assert_eq!(*p, json!({"b": {"c": 5, "d": 3}, "e": "x"}));
        assert_eq!(original["a"], 1, "the request's payload is not touched");
    }
}
