//! Key templates: text with `{{ path }}` placeholders, e.g.
//! `"{{action.payload.service}}:{{action.payload.alert_key}}"`.
//!
//! Keys only ever substitute field values, so a template is parsed once into literal
//! and field parts; rendering is a single pass with no interpreter.

use crate::field::{FieldPath, FieldPathError};

/// A parsed key template.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyTemplate {
    pub parts: Vec<TemplatePart>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TemplatePart {
    Literal(String),
    Field(FieldPath),
}

impl KeyTemplate {
    /// Parses `src`; errors name the bad placeholder.
    pub fn parse(src: &str) -> Result<KeyTemplate, FieldPathError> {
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(TemplatePart::Literal(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| FieldPathError(format!("unclosed `{{{{` in template `{src}`")))?;
            parts.push(TemplatePart::Field(FieldPath::parse(after[..end].trim())?));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(FieldPathError(format!(
                "`}}}}` without `{{{{` in template `{src}`"
            )));
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Literal(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err(FieldPathError("empty template".to_owned()));
        }
        Ok(KeyTemplate { parts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_literals_and_fields() {
        let t = KeyTemplate::parse("{{action.payload.service}}:{{ action.tenant }}!").unwrap();
        assert_eq!(
            t.parts,
            vec![
                TemplatePart::Field(FieldPath::Payload(vec!["service".into()])),
                TemplatePart::Literal(":".into()),
                TemplatePart::Field(FieldPath::Tenant),
                TemplatePart::Literal("!".into()),
            ]
        );
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(KeyTemplate::parse("{{action.nope}}").is_err());
        assert!(
            KeyTemplate::parse("{{action.tenant")
                .unwrap_err()
                .0
                .contains("unclosed")
        );
        assert!(KeyTemplate::parse("").is_err());
    }
}
