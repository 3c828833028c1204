//! Message templates around any provider: a Provider's `spec.templates` are rendered from
//! the action into payload fields, then the provider it wraps maps the payload as usual.
//! One wrapper for every type, so a template works the same for Slack, Teams, email…
//!
//! Templates are compiled once, when the registry is built, in the environment of
//! [`acteon_api::message_template`] (the one validation uses). A render that fails — a
//! runtime error, fuel exhausted, more than 64 KiB of output, a JSON field that is not
//! JSON — fails the delivery with `TEMPLATE_ERROR` naming the field, before the provider
//! is called, and is not retried: the same action would fail the same way.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use acteon_api::message_template::{self, Compiled, Field, MAX_RENDERED};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use minijinja::value::{Serde, Value as TemplateValue};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Provider, ProviderError};
use crate::action::Action;
use crate::outcome::ProviderResponse;

/// Longest render error quoted in a failure message, in characters.
const MAX_ERROR: usize = 256;

/// A provider whose actions get their templated payload fields first.
pub struct TemplatedProvider {
    inner: Arc<dyn Provider>,
    compiled: Compiled,
}

/// What a template sees: the action's fields, borrowed.
#[derive(Serialize)]
struct Context<'a> {
    payload: &'a Value,
    metadata: &'a HashMap<String, String>,
    namespace: &'a str,
    tenant: &'a str,
    provider: &'a str,
    action_type: &'a str,
    id: &'a str,
    dedup_key: Option<&'a str>,
    fingerprint: Option<&'a str>,
    status: Option<&'a str>,
    created_at: Option<&'a DateTime<Utc>>,
}

impl TemplatedProvider {
    /// Wraps `inner`; `compiled` are the Provider's templates.
    pub fn new(inner: Arc<dyn Provider>, compiled: Compiled) -> TemplatedProvider {
        TemplatedProvider { inner, compiled }
    }

    /// `a` with its templated fields rendered into its payload.
    pub fn render(&self, a: &Action) -> Result<Action, ProviderError> {
        let context = TemplateValue::from(Serde(&Context {
            payload: &a.payload,
            metadata: &a.metadata,
            namespace: &a.namespace,
            tenant: &a.tenant,
            provider: &a.provider,
            action_type: &a.action_type,
            id: &a.id,
            dedup_key: a.dedup_key.as_deref(),
            fingerprint: a.fingerprint.as_deref(),
            status: a.status.as_deref(),
            created_at: a.created_at.as_ref(),
        }));
        let mut rendered = Map::with_capacity(self.compiled.fields.len());
        for field in &self.compiled.fields {
            let value = self.render_field(field, &context)?;
            rendered.insert(field.key.clone(), value);
        }
        let mut out = a.clone();
        match &mut out.payload {
            Value::Object(p) => p.extend(rendered),
            // A payload that is not an object (still `payload` in the templates) gives way
            // to the rendered fields: a provider maps objects.
            other => *other = Value::Object(rendered),
        }
        Ok(out)
    }

    fn render_field(&self, field: &Field, context: &TemplateValue) -> Result<Value, ProviderError> {
        let fail = |what: String| {
            ProviderError::new(
                "TEMPLATE_ERROR",
                format!(
                    "template {}: {}",
                    field.name,
                    super::http::bounded(&what, MAX_ERROR)
                ),
                false,
                0,
            )
        };
        let template = self
            .compiled
            .env
            .get_template(&field.name)
            .map_err(|e| fail(message_template::describe(&e)))?;
        let mut out = Bounded::default();
        if let Err(e) = template.render_captured_to(context.clone(), &mut out) {
            return Err(fail(if out.over {
                format!("renders more than {} KiB", MAX_RENDERED / 1024)
            } else {
                message_template::describe(&e)
            }));
        }
        let text = String::from_utf8(out.bytes)
            .map_err(|_| fail("renders text that is not UTF-8".into()))?;
        if !field.json {
            return Ok(Value::String(text));
        }
        serde_json::from_str(&text).map_err(|e| fail(format!("does not render JSON: {e}")))
    }
}

/// A sink that takes at most [`MAX_RENDERED`] bytes and then refuses, ending the render.
#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
    over: bool,
}

impl io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED {
            self.over = true;
            return Err(io::Error::other("rendered output too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Provider for TemplatedProvider {
    async fn execute(&self, a: &Action) -> Result<ProviderResponse, ProviderError> {
        let rendered = self.render(a)?;
        self.inner.execute(&rendered).await
    }

    // Forwarded, or a templated provider would lose its `messageMode`.
    async fn execute_with(
        &self,
        a: &Action,
        follow: super::Follow<'_>,
    ) -> Result<(ProviderResponse, Option<super::MessageRef>), ProviderError> {
        let rendered = self.render(a)?;
        self.inner.execute_with(&rendered, follow).await
    }

    fn max_delivery_time(&self) -> Option<Duration> {
        self.inner.max_delivery_time()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acteon_api::crd::provider::MessageTemplates;
    use serde_json::json;

    fn provider(fields: &[(&str, &str)], json_fields: &[(&str, &str)]) -> TemplatedProvider {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let compiled = message_template::compile(&MessageTemplates {
            fields: map(fields),
            json_fields: map(json_fields),
        })
        .expect("templates compile");
        TemplatedProvider::new(Arc::new(super::super::Noop), compiled)
    }

    fn action(payload: Value) -> Action {
        Action {
            id: "a-1".into(),
            namespace: "payments".into(),
            tenant: "acme".into(),
            provider: "chat".into(),
            action_type: "alert".into(),
            payload,
            created_at: None,
            metadata: [("team".to_owned(), "db".to_owned())].into(),
            dedup_key: None,
            status: None,
            fingerprint: None,
            trace: None,
        }
    }

    #[test]
    fn fields_render_from_the_action_and_keep_the_rest_of_the_payload() {
        let p = provider(
            &[(
                "text",
                "[{{ namespace }}/{{ tenant }}] {{ payload.summary | upper }} ({{ metadata.team }}, {{ action_type }} {{ id }})",
            )],
            &[(
                "blocks",
                r#"[{"type": "section", "text": {"type": "mrkdwn", "text": {{ payload.summary }}}}]"#,
            )],
        );
        let out = p
            .render(&action(
                json!({"summary": "disk \"full\"\nnow", "severity": "critical"}),
            ))
            .expect("renders");
        assert_eq!(
            out.payload["text"],
            "[payments/acme] DISK \"FULL\"\nNOW (db, alert a-1)"
        );
        assert_eq!(
            out.payload["blocks"][0]["text"]["text"], "disk \"full\"\nnow",
            "JSON fields write values as JSON: quotes and newlines cannot break out"
        );
        assert_eq!(out.payload["severity"], "critical");
        // `safe` writes raw text inside a JSON field.
        let raw = provider(&[], &[("card", r#"{"text": "{{ payload.s | safe }}!"}"#)]);
        let out = raw.render(&action(json!({"s": "ok"}))).expect("renders");
        assert_eq!(out.payload["card"], json!({"text": "ok!"}));
        // Not an object: the rendered fields make the payload.
        let out = p.render(&action(json!("just text"))).expect("renders");
        assert_eq!(out.payload["text"], "[payments/acme]  (db, alert a-1)");
    }

    #[test]
    fn a_group_notification_reaches_its_events() {
        let p = provider(
            &[(
                "text",
                "{{ payload.event_count }} alerts:{% for e in payload.events %} {{ e.payload.host }}{% endfor %}",
            )],
            &[],
        );
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({"action_type": "alert", "payload": {"host": format!("h{i}")}}))
            .collect();
        let out = p
            .render(&action(json!({"event_count": 1000, "events": events})))
            .expect("a full group renders within the fuel");
        let text = out.payload["text"].as_str().unwrap_or_default();
        assert!(text.starts_with("1000 alerts: h0 h1 h2"), "{text}");
        assert!(text.ends_with(" h999"), "{text}");
    }

    #[test]
    fn undefined_values_render_empty() {
        let p = provider(
            &[(
                "text",
                "<{{ payload.labels.team }}|{{ payload.x | default('none') }}>",
            )],
            &[],
        );
        let out = p.render(&action(json!({}))).expect("renders");
        assert_eq!(out.payload["text"], "<|none>");
    }

    #[test]
    fn render_errors_and_bounds_fail_with_template_error() {
        let check = |p: TemplatedProvider, field: &str, says: &str| {
            let e = p.render(&action(json!({"n": 1}))).expect_err("fails");
            assert_eq!((e.code.as_str(), e.retryable), ("TEMPLATE_ERROR", false));
            assert!(e.message.contains(field), "{}", e.message);
            assert!(e.message.contains(says), "{}", e.message);
            assert!(e.message.chars().count() < 400, "bounded: {}", e.message);
        };
        check(
            provider(&[("text", "{{ payload.n + 'x' }}")], &[]),
            "spec.templates.fields.text",
            "invalid operation",
        );
        check(
            provider(
                &[(
                    "text",
                    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                )],
                &[],
            ),
            "spec.templates.fields.text",
            "fuel",
        );
        check(
            provider(
                &[(
                    "body",
                    "{% for i in range(2000) %}{{ 'x' * 100 }}{% endfor %}",
                )],
                &[],
            ),
            "spec.templates.fields.body",
            "more than 64 KiB",
        );
        check(
            provider(&[], &[("blocks", "[{{ payload.n }},]")]),
            "spec.templates.jsonFields.blocks",
            "does not render JSON",
        );
    }
}
