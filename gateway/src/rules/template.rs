//! Rendering key templates against an action.

use acteon_api::template::{KeyTemplate, TemplatePart};
use chrono_tz::Tz;

use super::EvalInput;
use super::field::resolve;

/// Renders `t`; `None` when a placeholder's field is missing (no key can be formed).
pub fn render(t: &KeyTemplate, input: &EvalInput<'_>, tz: Option<Tz>) -> Option<String> {
    let mut out = String::with_capacity(32);
    for part in &t.parts {
        match part {
            TemplatePart::Literal(s) => out.push_str(s),
            TemplatePart::Field(path) => out.push_str(&resolve(path, input, tz).to_key_text()?),
        }
    }
    Some(out)
}
