//! Provider validation: the block for the type, URLs, retry settings, fallbacks.

use super::{Parsed, Problem, Run};
use crate::compile::error::Kind;
use crate::crd::{ProviderSpec, ProviderType};
use crate::redact::redact_url;

fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/'))
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
}
