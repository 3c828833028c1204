//! Provider validation: the block for the type, URLs, retry settings, fallbacks.

use super::{Parsed, Problem, Run};
use crate::compile::error::Kind;
use crate::crd::provider::MessageMode;
use crate::crd::provider::OpsgenieProvider;
use crate::crd::{ProviderSpec, ProviderType};
use crate::redact::redact_url;

fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/'))
}

/// `local@domain`, or `Name <local@domain>`, without spaces or line breaks in the address.
fn looks_like_address(a: &str) -> bool {
    let addr = match (a.rfind('<'), a.strip_suffix('>')) {
        (Some(i), Some(rest)) => &rest[i + 1..],
        _ => a,
    };
    match addr.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !addr.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

/// Which type blocks are set, by name.
fn blocks(spec: &ProviderSpec) -> Vec<&'static str> {
    [
        ("log", spec.log.is_some()),
        ("webhook", spec.webhook.is_some()),
        ("slack", spec.slack.is_some()),
        ("email", spec.email.is_some()),
        ("pagerduty", spec.pagerduty.is_some()),
        ("teams", spec.teams.is_some()),
        ("discord", spec.discord.is_some()),
        ("opsgenie", spec.opsgenie.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

pub(super) fn check(spec: &ProviderSpec) -> Result<(), Problem> {
    let ty = spec.provider_type.as_str();
    if let Some(other) = blocks(spec).into_iter().find(|b| *b != ty) {
        return Err(Problem::new(
            format!("spec.{other}"),
            "InvalidProvider",
            format!("`{other}` settings on a provider of type `{ty}`"),
        ));
    }
    let needs_block = !matches!(spec.provider_type, ProviderType::Log | ProviderType::Noop);
    if needs_block && blocks(spec).is_empty() {
        return Err(Problem::new(
            format!("spec.{ty}"),
            "InvalidProvider",
            format!("type `{ty}` needs a `{ty}` block"),
        ));
    }
    if let Some(w) = &spec.webhook {
        if !is_http_url(&w.url) {
            return Err(Problem::new(
                "spec.webhook.url",
                "InvalidProvider",
                format!("`{}` is not an http(s) URL", redact_url(&w.url)),
            ));
        }
        if let Some(m) = &w.method
            && !matches!(
                m.to_ascii_uppercase().as_str(),
                "POST" | "PUT" | "PATCH" | "GET" | "DELETE"
            )
        {
            return Err(Problem::new(
                "spec.webhook.method",
                "InvalidProvider",
                format!("`{m}` is not one of POST, PUT, PATCH, GET, DELETE"),
            ));
        }
    }
    if let Some(p) = &spec.pagerduty
        && let Some(url) = &p.api_url
        && !is_http_url(url)
    {
        return Err(Problem::new(
            "spec.pagerduty.apiUrl",
            "InvalidProvider",
            format!("`{}` is not an http(s) URL", redact_url(url)),
        ));
    }
    if let Some(p) = &spec.pagerduty
        && let Some(sev) = &p.severity
        && !matches!(sev.as_str(), "critical" | "error" | "warning" | "info")
    {
        return Err(Problem::new(
            "spec.pagerduty.severity",
            "InvalidProvider",
            format!("`{sev}` is not one of critical, error, warning, info"),
        ));
    }
    if let Some(s) = &spec.slack {
        match (&s.token_secret_ref, &s.webhook_url_secret_ref) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(Problem::new(
                    "spec.slack",
                    "InvalidProvider",
                    "needs exactly one of tokenSecretRef (Web API) and webhookUrlSecretRef",
                ));
            }
            (None, Some(_)) if s.api_url.is_some() => {
                return Err(Problem::new(
                    "spec.slack.apiUrl",
                    "InvalidProvider",
                    "only used with tokenSecretRef (an incoming webhook has its own URL)",
                ));
            }
            _ => {}
        }
        if let Some(url) = &s.api_url
            && !is_http_url(url)
        {
            return Err(Problem::new(
                "spec.slack.apiUrl",
                "InvalidProvider",
                format!("`{}` is not an http(s) URL", redact_url(url)),
            ));
        }
    }
    if let Some(e) = &spec.email {
        if let Some(tls) = &e.tls
            && !matches!(tls.as_str(), "none" | "starttls" | "tls")
        {
            return Err(Problem::new(
                "spec.email.tls",
                "InvalidProvider",
                format!("`{tls}` is not one of none, starttls, tls"),
            ));
        }
        if e.smtp_host.trim().is_empty() {
            return Err(Problem::new(
                "spec.email.smtpHost",
                "InvalidProvider",
                "must not be empty",
            ));
        }
        if e.tls.as_deref() == Some("none") && e.password_secret_ref.is_some() {
            return Err(Problem::new(
                "spec.email.tls",
                "InvalidProvider",
                "`none` with usernameSecretRef/passwordSecretRef would send the password in \
                 clear: use starttls or tls",
            ));
        }
        if e.username_secret_ref.is_some() != e.password_secret_ref.is_some() {
            return Err(Problem::new(
                "spec.email",
                "InvalidProvider",
                "usernameSecretRef and passwordSecretRef go together",
            ));
        }
        // A rough shape check; the gateway parses each address fully.
        let bad = std::iter::once(("spec.email.from", &e.from))
            .chain(e.to.iter().map(|a| ("spec.email.to", a)))
            .chain(e.cc.iter().map(|a| ("spec.email.cc", a)))
            .find(|(_, a)| !looks_like_address(a));
        if let Some((field, a)) = bad {
            return Err(Problem::new(
                field,
                "InvalidProvider",
                format!("`{a}` is not an email address"),
            ));
        }
    }
    if let Some(o) = &spec.opsgenie {
        check_opsgenie(o)?;
    }
    if let Some(t) = &spec.templates {
        // Compiled as the gateway compiles them: what validates is what runs.
        crate::message_template::compile(t)
            .map_err(|p| Problem::new(p.field, "InvalidTemplate", p.message))?;
    }
    if let Some(level) = spec.log.as_ref().and_then(|l| l.level.as_deref())
        && !matches!(level, "info" | "warn" | "debug")
    {
        return Err(Problem::new(
            "spec.log.level",
            "InvalidProvider",
            format!("`{level}` is not one of info, warn, debug"),
        ));
    }
    if spec.timeout_seconds == Some(0) {
        return Err(Problem::new(
            "spec.timeoutSeconds",
            "InvalidProvider",
            "must be at least 1",
        ));
    }
    if let Some(r) = &spec.retry {
        if r.max_attempts == Some(0) {
            return Err(Problem::new(
                "spec.retry.maxAttempts",
                "InvalidProvider",
                "must be at least 1 (the first attempt counts)",
            ));
        }
        if let (Some(lo), Some(hi)) = (r.initial_backoff_ms, r.max_backoff_ms)
            && lo > hi
        {
            return Err(Problem::new(
                "spec.retry.initialBackoffMs",
                "InvalidProvider",
                "is larger than maxBackoffMs",
            ));
        }
    }
    if let Some(cb) = &spec.circuit_breaker
        && cb.failure_threshold == 0
    {
        return Err(Problem::new(
            "spec.circuitBreaker.failureThreshold",
            "InvalidProvider",
            "must be at least 1",
        ));
    }
    if spec
        .rate_limit
        .as_ref()
        .is_some_and(|r| r.max_per_second == 0)
    {
        return Err(Problem::new(
            "spec.rateLimit.maxPerSecond",
            "InvalidProvider",
            "must be at least 1",
        ));
    }
    if let Some(wait) = spec.rate_limit.as_ref().and_then(|r| r.max_wait_seconds)
        && !(1..=300).contains(&wait)
    {
        return Err(Problem::new(
            "spec.rateLimit.maxWaitSeconds",
            "InvalidProvider",
            "must be between 1 and 300",
        ));
    }
    check_message_mode(spec)
}

/// `messageMode` other than `new` only where the provider's protocol can refer to an
/// earlier message: the gateway would otherwise post new messages while the Provider
/// promises updates or threads.
fn check_message_mode(spec: &ProviderSpec) -> Result<(), Problem> {
    let mode = spec.message_mode.unwrap_or_default();
    let refused = match (spec.provider_type, mode) {
        (_, MessageMode::New) => return Ok(()),
        (ProviderType::Slack, _)
            if spec
                .slack
                .as_ref()
                .is_some_and(|s| s.token_secret_ref.is_none()) =>
        {
            "an incoming webhook answers no message id, so its messages cannot be updated or \
             threaded: use tokenSecretRef (the Web API)"
        }
        (ProviderType::Slack, _) => return Ok(()),
        (ProviderType::Discord, MessageMode::Update) => return Ok(()),
        (ProviderType::Discord, _) => {
            "a Discord webhook cannot start a thread on its own message (only a bot can): \
             use `update` or `new`"
        }
        (ProviderType::Email, MessageMode::Thread) => return Ok(()),
        (ProviderType::Email, _) => "a sent mail cannot be replaced: use `thread` or `new`",
        _ => "this provider type only supports `new`",
    };
    Err(Problem::new(
        "spec.messageMode",
        "InvalidProvider",
        format!(
            "`{}` is not supported by type `{}`: {refused}",
            mode.as_str(),
            spec.provider_type.as_str()
        ),
    ))
}

/// Opsgenie's own limits, so that a Provider it would refuse every alert of is refused
/// here instead.
fn check_opsgenie(o: &OpsgenieProvider) -> Result<(), Problem> {
    let bad = |field: &str, message: String| Err(Problem::new(field, "InvalidProvider", message));
    if let Some(url) = &o.api_url
        && !is_http_url(url)
    {
        return bad(
            "spec.opsgenie.apiUrl",
            format!("`{}` is not an http(s) URL", redact_url(url)),
        );
    }
    if let Some(p) = &o.priority
        && !matches!(p.as_str(), "P1" | "P2" | "P3" | "P4" | "P5")
    {
        return bad(
            "spec.opsgenie.priority",
            format!("`{p}` is not one of P1, P2, P3, P4, P5"),
        );
    }
    if o.tags.len() > 20 {
        return bad("spec.opsgenie.tags", "at most 20 tags".into());
    }
    if let Some(t) = o
        .tags
        .iter()
        .find(|t| t.trim().is_empty() || t.chars().count() > 50)
    {
        return bad(
            "spec.opsgenie.tags",
            format!("`{t}` is empty or longer than 50 characters"),
        );
    }
    if o.source.as_ref().is_some_and(|s| s.chars().count() > 100) {
        return bad("spec.opsgenie.source", "longer than 100 characters".into());
    }
    if o.responders.len() > 50 {
        return bad("spec.opsgenie.responders", "at most 50 responders".into());
    }
    for (i, r) in o.responders.iter().enumerate() {
        let field = format!("spec.opsgenie.responders[{i}]");
        let ty = r.responder_type.as_str();
        if !matches!(ty, "team" | "user" | "escalation" | "schedule") {
            return bad(
                &format!("{field}.type"),
                format!("`{ty}` is not one of team, user, escalation, schedule"),
            );
        }
        let given = [&r.id, &r.name, &r.username]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if given != 1 || (r.username.is_some() && ty != "user") {
            return bad(
                &field,
                "needs exactly one of id and name (or username, for a user)".into(),
            );
        }
    }
    Ok(())
}

/// A fallback provider must exist in scope and not be the provider itself.
pub(super) fn check_fallbacks<'d>(
    run: &mut Run<'_>,
    mut providers: Vec<Parsed<'d, ProviderSpec>>,
) -> Vec<Parsed<'d, ProviderSpec>> {
    // Until nothing changes: rejecting a provider can leave another one (checked
    // earlier) falling back to a provider that is no longer there.
    loop {
        let found = providers.iter().enumerate().find_map(|(i, p)| {
            let fallback = p
                .spec
                .circuit_breaker
                .as_ref()
                .and_then(|cb| cb.fallback_provider.as_deref())?;
            let problem = if fallback == p.doc.id.name {
                Problem::new(
                    "spec.circuitBreaker.fallbackProvider",
                    "InvalidProvider",
                    "a provider cannot be its own fallback",
                )
            } else if let Err(problem) = run.accepted.need(
                Kind::Provider,
                &p.scope,
                fallback,
                "spec.circuitBreaker.fallbackProvider",
                "ProviderNotFound",
            ) {
                problem
            } else {
                return None;
            };
            Some((i, problem))
        });
        let Some((i, problem)) = found else {
            return providers;
        };
        let p = providers.remove(i);
        run.accepted
            .remove(Kind::Provider, &p.scope, &p.doc.id.name);
        run.reject(p.doc, problem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status message of a bad URL names it without the credentials inside it.
    #[test]
    fn bad_url_messages_do_not_repeat_credentials() {
        let spec: ProviderSpec = serde_json::from_value(serde_json::json!({
            "type": "webhook",
            "webhook": {"url": "ftp://user:hunter2@host/p?api_key=k3y"}
        }))
        .expect("parses");
        let problem = check(&spec).expect_err("not http");
        assert_eq!(problem.field, "spec.webhook.url");
        assert!(
            problem.message.contains("ftp://***@host/p?api_key=***"),
            "{}",
            problem.message
        );
        assert!(!problem.message.contains("hunter2") && !problem.message.contains("k3y"));
    }

    fn problem(spec: serde_json::Value) -> Option<(String, String)> {
        let spec: ProviderSpec = serde_json::from_value(spec).expect("parses");
        check(&spec).err().map(|p| (p.field, p.message))
    }

    #[test]
    fn slack_email_and_pagerduty_blocks_are_checked() {
        let r = |name: &str| serde_json::json!({"name": name, "key": "k"});
        assert_eq!(
            problem(serde_json::json!({"type": "slack", "slack": {"tokenSecretRef": r("s")}})),
            None
        );
        let (field, _) =
            problem(serde_json::json!({"type": "slack", "slack": {}})).expect("neither");
        assert_eq!(field, "spec.slack");
        let both = serde_json::json!({"type": "slack", "slack": {"tokenSecretRef": r("s"), "webhookUrlSecretRef": r("w")}});
        assert_eq!(problem(both).expect("both").0, "spec.slack");
        let hook_with_api = serde_json::json!({"type": "slack", "slack": {"webhookUrlSecretRef": r("w"), "apiUrl": "http://x"}});
        assert_eq!(
            problem(hook_with_api).expect("apiUrl").0,
            "spec.slack.apiUrl"
        );
        let email = |extra: serde_json::Value| {
            let mut e = serde_json::json!({"smtpHost": "mail", "from": "Acteon <a@example.com>", "to": ["b@example.com"]});
            if let (Some(e), Some(x)) = (e.as_object_mut(), extra.as_object()) {
                e.extend(x.clone());
            }
            problem(serde_json::json!({"type": "email", "email": e}))
        };
        assert_eq!(email(serde_json::json!({})), None);
        assert_eq!(
            email(serde_json::json!({"tls": "ssl"})).expect("tls").0,
            "spec.email.tls"
        );
        assert_eq!(
            email(serde_json::json!({"to": ["nobody"]})).expect("to").0,
            "spec.email.to"
        );
        assert_eq!(
            email(serde_json::json!({"cc": ["a b@c"]})).expect("cc").0,
            "spec.email.cc"
        );
        assert_eq!(
            email(serde_json::json!({"usernameSecretRef": r("u")}))
                .expect("pair")
                .0,
            "spec.email"
        );
        let pd = serde_json::json!({"type": "pagerduty", "pagerduty": {"routingKeySecretRef": r("p"), "severity": "high"}});
        assert_eq!(problem(pd).expect("severity").0, "spec.pagerduty.severity");
    }

    #[test]
    fn a_bad_template_is_refused_naming_its_field() {
        let spec = |text: &str| serde_json::json!({"type": "log", "templates": {"fields": {"text": text}}});
        assert_eq!(problem(spec("{{ payload.summary }}")), None);
        let (field, message) = problem(spec("{{ payload.summary")).expect("syntax error");
        assert_eq!(field, "spec.templates.fields.text");
        assert!(message.contains("syntax error"), "{message}");
    }

    #[test]
    fn opsgenie_block_is_checked_field_by_field() {
        let og = |extra: serde_json::Value| {
            let mut o = serde_json::json!({"apiKeySecretRef": {"name": "og", "key": "k"}});
            if let (Some(o), Some(x)) = (o.as_object_mut(), extra.as_object()) {
                o.extend(x.clone());
            }
            problem(serde_json::json!({"type": "opsgenie", "opsgenie": o})).map(|p| p.0)
        };
        let good = serde_json::json!({
            "apiUrl": "https://api.eu.opsgenie.com", "priority": "P2", "tags": ["db"],
            "responders": [{"type": "team", "name": "ops"}, {"type": "user", "username": "a@b.c"}]
        });
        assert_eq!(og(good), None);
        let cases = [
            (
                serde_json::json!({"apiUrl": "api.opsgenie.com"}),
                "spec.opsgenie.apiUrl",
            ),
            (
                serde_json::json!({"priority": "P6"}),
                "spec.opsgenie.priority",
            ),
            (
                serde_json::json!({"tags": ["x".repeat(51)]}),
                "spec.opsgenie.tags",
            ),
            (
                serde_json::json!({"tags": vec!["t"; 21]}),
                "spec.opsgenie.tags",
            ),
            (
                serde_json::json!({"responders": [{"type": "group", "name": "x"}]}),
                "spec.opsgenie.responders[0].type",
            ),
            (
                serde_json::json!({"responders": [{"type": "team", "name": "x", "id": "y"}]}),
                "spec.opsgenie.responders[0]",
            ),
            (
                serde_json::json!({"responders": [{"type": "team", "username": "x"}]}),
                "spec.opsgenie.responders[0]",
            ),
        ];
        for (extra, field) in cases {
            assert_eq!(og(extra.clone()).as_deref(), Some(field), "{extra}");
        }
        let wrong_block = serde_json::json!({"type": "slack", "opsgenie": {"apiKeySecretRef": {"name": "og", "key": "k"}}});
        assert_eq!(
            problem(wrong_block).expect("wrong block").0,
            "spec.opsgenie"
        );
    }

    #[test]
    fn message_mode_is_refused_where_the_protocol_cannot_follow_a_message() {
        let r = |name: &str| serde_json::json!({"name": name, "key": "k"});
        let with_mode = |ty: &str, block: serde_json::Value, mode: &str| {
            let mut spec = serde_json::json!({"type": ty, "messageMode": mode});
            if !block.is_null() {
                spec[ty] = block;
            }
            problem(spec)
        };
        let slack_api = serde_json::json!({"tokenSecretRef": r("s")});
        let slack_hook = serde_json::json!({"webhookUrlSecretRef": r("w")});
        let discord = serde_json::json!({"webhookUrlSecretRef": r("d")});
        let email = serde_json::json!({"smtpHost": "mail", "from": "a@example.com"});
        let webhook = serde_json::json!({"url": "http://sink"});
        let pd = serde_json::json!({"routingKeySecretRef": r("p")});
        let accepted = [
            ("slack", &slack_api, "update"),
            ("slack", &slack_api, "thread"),
            ("slack", &slack_hook, "new"),
            ("discord", &discord, "update"),
            ("email", &email, "thread"),
            ("webhook", &webhook, "new"),
        ];
        for (ty, block, mode) in accepted {
            assert_eq!(with_mode(ty, block.clone(), mode), None, "{ty} {mode}");
        }
        let refused = [
            ("slack", &slack_hook, "update", "incoming webhook"),
            ("slack", &slack_hook, "thread", "incoming webhook"),
            ("discord", &discord, "thread", "cannot start a thread"),
            ("email", &email, "update", "cannot be replaced"),
            ("webhook", &webhook, "update", "only supports `new`"),
            ("pagerduty", &pd, "thread", "only supports `new`"),
            (
                "log",
                &serde_json::Value::Null,
                "update",
                "only supports `new`",
            ),
        ];
        for (ty, block, mode, why) in refused {
            let (field, message) =
                with_mode(ty, block.clone(), mode).unwrap_or_else(|| panic!("{ty} {mode}"));
            assert_eq!(field, "spec.messageMode", "{ty} {mode}");
            assert!(
                message.contains(&format!("`{mode}`")) && message.contains(why),
                "{message}"
            );
        }
        // Unknown modes are refused when the spec is read.
        let spec = serde_json::json!({"type": "slack", "slack": slack_api, "messageMode": "edit"});
        assert!(serde_json::from_value::<ProviderSpec>(spec).is_err());
    }
}
