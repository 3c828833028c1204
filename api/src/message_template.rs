//! Provider message templates (`spec.templates`): the one MiniJinja environment that both
//! validation and delivery compile them in, so that what validates is what runs.
//!
//! Sandbox and bounds: the environment has no loader (MiniJinja has no I/O of its own and
//! no includes or macros are compiled in), runs on a fuel budget (instructions and
//! allocations), and a template may name only the action's fields at its top level.
//! Undefined values are chainable and render empty (`{{ payload.labels.team }}` on an
//! action without labels is ``), so a missing field never loses a notification; use
//! `| default("…")` for a fallback. Output bounds are the renderer's (the gateway).

use std::collections::BTreeMap;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::crd::provider::MessageTemplates;

/// Names a template may use at its top level: the action's fields.
pub const CONTEXT: &[&str] = &[
    "payload",
    "metadata",
    "namespace",
    "tenant",
    "provider",
    "action_type",
    "id",
    "dedup_key",
    "fingerprint",
    "status",
    "created_at",
];
/// Templates per Provider, at most.
pub const MAX_TEMPLATES: usize = 32;
/// Length of one template's source, in bytes, at most.
pub const MAX_SOURCE: usize = 16 * 1024;
/// Length of a payload field name, in bytes, at most.
pub const MAX_FIELD_NAME: usize = 128;
/// What one template may render, in bytes, at most.
pub const MAX_RENDERED: usize = 64 * 1024;
/// Fuel of one render: MiniJinja charges about one unit per instruction and one per 64
/// bytes allocated, so this bounds a render to some milliseconds and a few MiB. A loop
/// over a full group (1000 events) with a few lookups each fits easily.
pub const FUEL: u64 = 200_000;
/// Nesting of loops, conditions and calls, at most.
const RECURSION_LIMIT: usize = 64;

const FIELDS: &str = "spec.templates.fields.";
const JSON_FIELDS: &str = "spec.templates.jsonFields.";

/// One template of a Provider: the payload field it renders and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The payload field it sets.
    pub key: String,
    /// It renders JSON (`jsonFields`), not text.
    pub json: bool,
    /// Its name in the environment, which is also the spec field it comes from
    /// (`spec.templates.fields.text`), so errors name it.
    pub name: String,
}

/// A compiled set of templates.
pub struct Compiled {
    pub env: Environment<'static>,
    pub fields: Vec<Field>,
}

/// A problem with a template: the spec field and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateProblem {
    pub field: String,
    pub message: String,
}

/// The environment templates compile and render in.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    // JSON fields write each value as JSON, so a quote or a newline in the payload can
    // neither break the document nor add to it; text fields write values as they are.
    env.set_auto_escape_callback(|name| {
        if name.starts_with(JSON_FIELDS) {
            AutoEscape::Json
        } else {
            AutoEscape::None
        }
    });
    env
}

/// Compiles `t`, or names the first template that is wrong: too many or too long, a
/// syntax error, or a top-level name that is not one of the action's fields.
pub fn compile(t: &MessageTemplates) -> Result<Compiled, TemplateProblem> {
    let problem = |field: &str, message: String| TemplateProblem {
        field: field.to_owned(),
        message,
    };
    if t.fields.len() + t.json_fields.len() > MAX_TEMPLATES {
        return Err(problem(
            "spec.templates",
            format!("at most {MAX_TEMPLATES} templates"),
        ));
    }
    if let Some(key) = t.fields.keys().find(|k| t.json_fields.contains_key(*k)) {
        return Err(problem(
            &format!("{JSON_FIELDS}{key}"),
            format!("`{key}` is also in spec.templates.fields"),
        ));
    }
    let mut env = environment();
    let mut fields = Vec::with_capacity(t.fields.len() + t.json_fields.len());
    for (map, prefix, json) in [
        (&t.fields, FIELDS, false),
        (&t.json_fields, JSON_FIELDS, true),
    ] {
        add(&mut env, &mut fields, map, prefix, json)?;
    }
    Ok(Compiled { env, fields })
}

fn add(
    env: &mut Environment<'static>,
    fields: &mut Vec<Field>,
    map: &BTreeMap<String, String>,
    prefix: &str,
    json: bool,
) -> Result<(), TemplateProblem> {
    for (key, source) in map {
        let name = format!("{prefix}{key}");
        let problem = |message: String| TemplateProblem {
            field: name.clone(),
            message,
        };
        if key.is_empty() || key.len() > MAX_FIELD_NAME || key.chars().any(char::is_control) {
            return Err(problem(format!(
                "a payload field name of 1 to {MAX_FIELD_NAME} bytes without control characters"
            )));
        }
        if source.len() > MAX_SOURCE {
            return Err(problem(format!("longer than {} KiB", MAX_SOURCE / 1024)));
        }
        env.add_template_owned(name.clone(), source.clone())
            .map_err(|e| problem(describe(&e)))?;
        let template = env.get_template(&name).map_err(|e| problem(describe(&e)))?;
        let mut unknown: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| !CONTEXT.contains(&v.as_str()) && env.globals().all(|(g, _)| g != v))
            .collect();
        unknown.sort();
        if let Some(v) = unknown.first() {
            return Err(problem(format!(
                "`{v}` is not known: a template sees {}",
                CONTEXT.join(", ")
            )));
        }
        fields.push(Field {
            key: key.clone(),
            json,
            name,
        });
    }
    Ok(())
}

/// A MiniJinja error in one line: what, and where (the line of the template).
pub fn describe(e: &minijinja::Error) -> String {
    let what = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    match e.line() {
        Some(line) => format!("{what} (line {line})"),
        None => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates(fields: &[(&str, &str)], json: &[(&str, &str)]) -> MessageTemplates {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        MessageTemplates {
            fields: map(fields),
            json_fields: map(json),
        }
    }

    fn problem(t: MessageTemplates) -> Option<TemplateProblem> {
        compile(&t).err()
    }

    #[test]
    fn good_templates_compile_with_their_fields() {
        let c = compile(&templates(
            &[("text", "{{ payload.summary }} in {{ namespace }}{% for e in payload.events %}{{ loop.index }}{% endfor %}")],
            &[("blocks", "[{\"type\": \"section\", \"text\": {{ payload.summary }}}]")],
        ))
        .expect("compiles");
        let keys: Vec<_> = c.fields.iter().map(|f| (f.key.as_str(), f.json)).collect();
        assert_eq!(keys, [("text", false), ("blocks", true)]);
    }

    #[test]
    fn syntax_errors_and_unknown_names_name_the_field() {
        let p = problem(templates(&[("text", "{{ payload.summary ")], &[])).expect("syntax");
        assert_eq!(p.field, "spec.templates.fields.text");
        assert!(p.message.contains("syntax error"), "{}", p.message);
        let p = problem(templates(&[], &[("blocks", "{% for %}")])).expect("syntax");
        assert_eq!(p.field, "spec.templates.jsonFields.blocks");
        let p = problem(templates(&[("subject", "{{ paylod.summary }}")], &[])).expect("typo");
        assert_eq!(p.field, "spec.templates.fields.subject");
        assert!(p.message.contains("`paylod`"), "{}", p.message);
        // Globals (range, dict…) and names the template binds itself are fine.
        assert_eq!(
            problem(templates(
                &[(
                    "text",
                    "{% set n = 2 %}{% for i in range(n) %}{{ i }}{% endfor %}"
                )],
                &[]
            )),
            None
        );
        // No includes or macros: each template stands alone.
        assert!(problem(templates(&[("text", "{% include 'x' %}")], &[])).is_some());
        assert!(problem(templates(&[("text", "{% macro m() %}{% endmacro %}")], &[])).is_some());
    }

    #[test]
    fn sizes_and_names_are_bounded() {
        let long = "x".repeat(MAX_SOURCE + 1);
        assert_eq!(
            problem(templates(&[("text", &long)], &[]))
                .map(|p| p.field)
                .as_deref(),
            Some("spec.templates.fields.text")
        );
        let many: Vec<(String, String)> = (0..=MAX_TEMPLATES)
            .map(|i| (format!("f{i}"), "x".to_owned()))
            .collect();
        let many = MessageTemplates {
            fields: many.into_iter().collect(),
            json_fields: BTreeMap::new(),
        };
        assert_eq!(
            problem(many).map(|p| p.field).as_deref(),
            Some("spec.templates")
        );
        let both = templates(&[("text", "a")], &[("text", "\"a\"")]);
        assert_eq!(
            problem(both).map(|p| p.field).as_deref(),
            Some("spec.templates.jsonFields.text")
        );
        assert!(problem(templates(&[("", "a")], &[])).is_some());
    }
}
