//! The `email` provider: SMTP through `lettre`.
//!
//! Payload mapping: `to` and `cc` (an address or a list; else the Provider's), `subject`
//! (else `summary`, else the Provider's, else `Acteon: <action type>`), `text` (else
//! `summary`, else the payload as pretty JSON), `html` (with `text`, a
//! multipart/alternative message).
//!
//! Replying to an earlier message (`messageMode: thread`): `In-Reply-To` and `References`
//! name the first message's `Message-ID` (ours: every mail gets one), which mail clients
//! use to show the conversation as one thread.
//!
//! One pooled transport per provider, built on the first delivery (its pool runs a task on
//! the tokio runtime, which a configuration build may not be on). Replies: permanent (5xx)
//! fail at once, transient (4xx), timeouts and connection errors are retried with backoff.
//! The SMTP user name and password are never shown: messages quote the server's reply,
//! bounded, with both cut out.

use std::time::Duration;

use acteon_api::crd::ProviderSpec;
use acteon_api::crd::provider::EmailProvider as EmailSpec;
use async_trait::async_trait;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransport, PoolConfig};
use lettre::{AsyncTransport, Message, Tokio1Executor};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tracing::Instrument;

use super::http::{Attempt, bounded, with_retries};
use super::response::MAX_EXCERPT;
use super::{Follow, MessageRef, Provider, ProviderError, Retry};
use crate::action::Action;
use crate::outcome::ProviderResponse;

/// Recipients (to + cc) of one message at most.
const MAX_RECIPIENTS: usize = 100;
/// Longest generated body (the payload as JSON), in characters.
const MAX_GENERATED_BODY: usize = 64 * 1024;
/// The trace context header on messages.
const TRACEPARENT: HeaderName = HeaderName::new_from_ascii_str("Traceparent");
/// Connections kept per provider.
const POOL_SIZE: u32 = 4;
/// Longest `Message-ID` referred to (ours are ~50 characters).
const MAX_MESSAGE_ID: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    None,
    StartTls,
    Implicit,
}

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// The pooled transport. lettre's pool spawns a task when it is dropped, which panics off a
/// tokio runtime: one dropped there (a process exiting) is leaked instead, with its sockets.
struct Pooled(Option<Transport>);

impl Drop for Pooled {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err()
            && let Some(t) = self.0.take()
        {
            std::mem::forget(t);
        }
    }
}

pub struct EmailProvider {
    host: String,
    port: u16,
    tls: TlsMode,
    ca_certs: Vec<Certificate>,
    credentials: Option<(String, String)>,
    from: Mailbox,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    subject: Option<String>,
    timeout: Duration,
    retry: Retry,
    transport: OnceCell<Pooled>,
}

impl std::fmt::Debug for EmailProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailProvider")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("auth", &self.credentials.as_ref().map(|_| "***"))
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl EmailProvider {
    /// `credentials`: user name and password opened from their Secrets. Fails with a
    /// message naming the field, never a credential.
    pub fn new(
        e: &EmailSpec,
        spec: &ProviderSpec,
        credentials: Option<(&[u8], &[u8])>,
    ) -> Result<EmailProvider, (String, String)> {
        let fail = |field: &str, m: String| (format!("spec.email.{field}"), m);
        let tls = match e.tls.as_deref() {
            Some("none") => TlsMode::None,
            Some("tls") => TlsMode::Implicit,
            Some("starttls") | None => TlsMode::StartTls,
            Some(other) => {
                return Err(fail(
                    "tls",
                    format!("`{other}` is not one of none, starttls, tls"),
                ));
            }
        };
        let port = e.smtp_port.unwrap_or(match tls {
            TlsMode::None => 25,
            TlsMode::StartTls => 587,
            TlsMode::Implicit => 465,
        });
        let mut ca_certs = Vec::new();
        if let Some(pem) = &e.ca_cert {
            for block in pem_blocks(pem) {
                ca_certs.push(
                    Certificate::from_pem(block.as_bytes())
                        .map_err(|err| fail("caCert", format!("not a PEM certificate: {err}")))?,
                );
            }
            if ca_certs.is_empty() {
                return Err(fail("caCert", "holds no PEM certificate".into()));
            }
        }
        let credentials = match credentials {
            Some((user, password)) => {
                let text = |b: &[u8], field: &str| {
                    std::str::from_utf8(b.trim_ascii())
                        .map(str::to_owned)
                        .map_err(|_| fail(field, "the Secret's value is not UTF-8".into()))
                };
                Some((
                    text(user, "usernameSecretRef")?,
                    text(password, "passwordSecretRef")?,
                ))
            }
            None => None,
        };
        let parse_all = |field: &str, list: &[String]| {
            list.iter()
                .map(|a| {
                    a.parse::<Mailbox>()
                        .map_err(|_| fail(field, format!("`{a}` is not an email address")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(EmailProvider {
            host: e.smtp_host.clone(),
            port,
            tls,
            ca_certs,
            credentials,
            from: e
                .from
                .parse()
                .map_err(|_| fail("from", format!("`{}` is not an email address", e.from)))?,
            to: parse_all("to", &e.to)?,
            cc: parse_all("cc", &e.cc)?,
            subject: e.subject.clone(),
            timeout: Duration::from_secs(spec.timeout_seconds.unwrap_or(10)),
            retry: Retry::from_spec(spec),
            transport: OnceCell::new(),
        })
    }

    /// The pooled transport, built on first use.
    async fn transport(&self) -> Result<&Transport, Attempt> {
        let pooled = self
            .transport
            .get_or_try_init(|| async { self.build_transport().map(|t| Pooled(Some(t))) })
            .await?;
        pooled
            .0
            .as_ref()
            .ok_or_else(|| Attempt::new("CONNECTION", "smtp transport is gone", true))
    }

    fn build_transport(&self) -> Result<Transport, Attempt> {
        let tls = match self.tls {
            TlsMode::None => Tls::None,
            mode => {
                let mut params = TlsParameters::builder(self.host.clone());
                for c in &self.ca_certs {
                    params = params.add_root_certificate(c.clone());
                }
                let params = params.build_rustls().map_err(|e| {
                    Attempt::new("CONFIGURATION", format!("smtp TLS settings: {e}"), false)
                })?;
                if mode == TlsMode::Implicit {
                    Tls::Wrapper(params)
                } else {
                    // Required: a server that does not offer STARTTLS is refused rather
                    // than spoken to (and authenticated with) in clear.
                    Tls::Required(params)
                }
            }
        };
        let mut b = Transport::builder_dangerous(self.host.clone())
            .port(self.port)
            .tls(tls)
            .timeout(Some(self.timeout))
            .pool_config(PoolConfig::new().max_size(POOL_SIZE));
        if let Some((user, password)) = &self.credentials {
            b = b.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(b.build())
    }

    /// The message for `a` (carrying `trace`, replying to the `Message-ID` `reply_to`),
    /// or why there is none.
    fn message(
        &self,
        a: &Action,
        trace: Option<&crate::trace::TraceContext>,
        reply_to: Option<&str>,
    ) -> Result<(Message, String), ProviderError> {
        let p = &a.payload;
        let invalid = |m: String| ProviderError::new("INVALID_PAYLOAD", m, false, 0);
        let text_of = |key: &str| p.get(key).and_then(Value::as_str).map(str::to_owned);
        let addresses = |key: &str, default: &[Mailbox]| -> Result<Vec<Mailbox>, ProviderError> {
            let list: Vec<&str> = match p.get(key) {
                None | Some(Value::Null) => return Ok(default.to_vec()),
                Some(Value::String(s)) => vec![s.as_str()],
                Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
                Some(_) => {
                    return Err(invalid(format!(
                        "email: `{key}` is neither an address nor a list of addresses"
                    )));
                }
            };
            if list.len() > MAX_RECIPIENTS {
                return Err(invalid(format!(
                    "email: `{key}` has more than {MAX_RECIPIENTS} addresses"
                )));
            }
            list.into_iter()
                .map(|s| {
                    s.parse::<Mailbox>().map_err(|_| {
                        invalid(format!(
                            "email: `{}` in `{key}` is not an email address",
                            bounded(s, 128)
                        ))
                    })
                })
                .collect()
        };
        let to = addresses("to", &self.to)?;
        let cc = addresses("cc", &self.cc)?;
        if to.is_empty() && cc.is_empty() {
            return Err(invalid(
                "email: no recipient: the payload has no `to` and the Provider no `spec.email.to`"
                    .into(),
            ));
        }
        if to.len() + cc.len() > MAX_RECIPIENTS {
            return Err(invalid(format!(
                "email: more than {MAX_RECIPIENTS} recipients"
            )));
        }
        let subject = text_of("subject")
            .or_else(|| text_of("summary"))
            .or_else(|| self.subject.clone())
            .unwrap_or_else(|| format!("Acteon: {}", a.action_type));
        let text = text_of("text").or_else(|| text_of("summary"));
        let html = text_of("html");
        // Our own Message-ID, returned to the caller: a later message can refer to it
        // (`In-Reply-To`), and the receiving side can be matched with the action.
        let message_id = format!("<{}@{}>", uuid::Uuid::new_v4(), self.from.email.domain());
        let mut b = Message::builder()
            .from(self.from.clone())
            .message_id(Some(message_id.clone()))
            .subject(bounded(&subject, 998));
        if let Some(ctx) = trace {
            // Mail has no standard place for it; the HTTP header's name is the one tools
            // look for.
            b = b.raw_header(HeaderValue::new(TRACEPARENT, ctx.traceparent()));
        }
        if let Some(root) = reply_to {
            // The first message as the thread's root: clients thread on either header.
            b = b.in_reply_to(root.to_owned()).references(root.to_owned());
        }
        for m in to {
            b = b.to(m);
        }
        for m in cc {
            b = b.cc(m);
        }
        let built = match (text, html) {
            (Some(t), Some(h)) => b.multipart(MultiPart::alternative_plain_html(t, h)),
            (None, Some(h)) => b.singlepart(SinglePart::html(h)),
            (Some(t), None) => b.header(ContentType::TEXT_PLAIN).body(t),
            (None, None) => {
                let pretty = serde_json::to_string_pretty(p).unwrap_or_default();
                b.header(ContentType::TEXT_PLAIN)
                    .body(bounded(&pretty, MAX_GENERATED_BODY))
            }
        };
        built
            .map(|m| (m, message_id))
            .map_err(|e| invalid(format!("email: the message cannot be built: {e}")))
    }

    /// `text` with the credentials cut out (a server may echo what it was sent).
    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        if let Some((user, password)) = &self.credentials {
            for secret in [password, user] {
                if !secret.is_empty() {
                    text = text.replace(secret.as_str(), "***");
                }
            }
        }
        text
    }

    async fn attempt(
        &self,
        message: &Message,
        message_id: &str,
    ) -> Result<ProviderResponse, Attempt> {
        let target = format!("smtp {}:{}", self.host, self.port);
        let transport = self.transport().await?;
        // lettre's timeout is per command: bound the whole exchange too.
        let sent = tokio::time::timeout(
            self.timeout.saturating_mul(2),
            transport.send(message.clone()),
        )
        .await
        .map_err(|_| Attempt::new("TIMEOUT", format!("{target}: timed out"), true))?;
        match sent {
            Ok(reply) => {
                let said = reply.message().collect::<Vec<_>>().join(" ");
                Ok(ProviderResponse::success(json!({
                    "code": reply.code().to_string(),
                    "message_id": message_id,
                    "message": self.scrub(&bounded(&said, MAX_EXCERPT)),
                })))
            }
            Err(e) => {
                let text = self.scrub(&bounded(&e.to_string(), MAX_EXCERPT));
                let message = format!("{target}: {text}");
                Err(if e.is_permanent() {
                    Attempt::new("SMTP_PERMANENT", message, false)
                } else if e.is_transient() {
                    Attempt::new("SMTP_TRANSIENT", message, true)
                } else if e.is_timeout() {
                    Attempt::new("TIMEOUT", message, true)
                } else if e.is_client() {
                    Attempt::new("SMTP_CLIENT", message, false)
                } else {
                    // Connection, network, TLS, a server that went away: another
                    // attempt (on a new connection) may get through.
                    Attempt::new("CONNECTION", message, true)
                })
            }
        }
    }
}

/// The `-----BEGIN CERTIFICATE-----` blocks of `pem`.
fn pem_blocks(pem: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// Whether `id` can go in a header as a `Message-ID`: `<…>` without spaces or control
/// characters (a stored reference must not add header lines), bounded.
fn is_message_id(id: &str) -> bool {
    id.len() <= MAX_MESSAGE_ID
        && id.len() > 2
        && id.starts_with('<')
        && id.ends_with('>')
        && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[async_trait]
impl Provider for EmailProvider {
    async fn execute(&self, a: &Action) -> Result<ProviderResponse, ProviderError> {
        self.execute_with(a, Follow::New).await.map(|(r, _)| r)
    }

    async fn execute_with(
        &self,
        a: &Action,
        follow: Follow<'_>,
    ) -> Result<(ProviderResponse, Option<MessageRef>), ProviderError> {
        // A sent mail cannot be replaced (validation refuses `update`): only replies refer.
        let reply_to = match follow {
            Follow::Reply(root) if is_message_id(&root.id) => Some(root.id.as_str()),
            _ => None,
        };
        // One span (and `Traceparent` header) per message: the retries resend the same one.
        let outgoing = crate::trace::outgoing(a.trace.as_ref());
        let traceparent = outgoing.as_ref().and_then(|o| o.ctx.as_ref());
        let (message, message_id) = self.message(a, traceparent, reply_to)?;
        tracing::debug!(%message_id, "sending mail");
        let span = outgoing.map_or_else(tracing::Span::none, |o| o.span);
        let sent = with_retries(self.retry, || self.attempt(&message, &message_id))
            .instrument(span.clone())
            .await;
        if sent.is_err() {
            crate::trace::record_failure(&span);
        }
        let reference = MessageRef {
            channel: None,
            id: message_id,
        };
        sent.map(|response| (response, Some(reference)))
    }

    fn max_delivery_time(&self) -> Option<Duration> {
        Some(self.retry.worst_case(self.timeout.saturating_mul(2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_carries_the_trace_context_when_there_is_one() {
        let spec: ProviderSpec = serde_json::from_value(json!({"type": "email", "email": {
            "smtpHost": "127.0.0.1", "from": "gw@example.com", "to": ["a@example.com"],
            "tls": "none"}}))
        .expect("spec");
        let email = spec.email.as_ref().expect("email block");
        let provider = EmailProvider::new(email, &spec, None).expect("provider");
        let action: Action = serde_json::from_value(json!({"namespace": "ns", "tenant": "t",
            "provider": "mail", "action_type": "a", "payload": {"text": "hi"}}))
        .expect("action");
        let ctx = crate::trace::TraceContext::new_root();
        let (message, _) = provider
            .message(&action, Some(&ctx), None)
            .expect("message");
        let text = String::from_utf8(message.formatted()).expect("utf-8");
        assert!(
            text.contains(&format!("Traceparent: {}\r\n", ctx.traceparent())),
            "{text}"
        );
        let (message, _) = provider.message(&action, None, None).expect("message");
        let text = String::from_utf8(message.formatted()).expect("utf-8");
        assert!(!text.contains("Traceparent"), "{text}");
    }

    #[test]
    fn only_a_plain_message_id_is_replied_to() {
        assert!(is_message_id("<0190-ab@example.com>"));
        for bad in [
            "",
            "<>",
            "0190@example.com",
            "<a@b>\r\nBcc: x@y",
            "<a b@c>",
            &format!("<{}@x>", "a".repeat(300)),
        ] {
            assert!(!is_message_id(bad), "{bad:?}");
        }
    }
}
