//! Connecting to the state backend, shared by this crate's channels and the gateway's state
//! stores (which connect to the same servers with the same URLs): schema name rules, the
//! Redis client settings, and keeping the URL's password out of error messages.

use std::time::Duration;

use redis::aio::ConnectionManagerConfig;

use crate::ChannelError;

/// Checks that `schema` is a plain name (letters, digits, `_`, `-`, `.`; 1 to 63 bytes), so
/// it can be double-quoted safely in SQL and in the `search_path` startup parameter.
pub fn check_schema(schema: &str) -> Result<(), String> {
    let plain = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "invalid postgres schema name {schema:?}: use 1 to 63 letters, digits, '_', '-' or '.'"
        ))
    }
}

/// The server's own message for database errors (no SQLSTATE noise), else the error.
pub fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

/// A Redis client for `url` with TCP_NODELAY: requests and answers are small, and Nagle's
/// algorithm would hold them back.
pub fn redis_client(url: &str) -> redis::RedisResult<redis::Client> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
}

/// Settings of a multiplexed, self-reconnecting connection whose every call is bounded by
/// `timeout`.
pub fn redis_manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

/// Removes the password of `url` (raw and percent-decoded) from `message`.
///
/// Driver errors may quote the connection string; the URL often comes from a Kubernetes
/// Secret, and errors end up in logs and in custom resource status.
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(url: &str) -> Redactor {
        let mut secrets = Vec::new();
        if let Some(raw) = url_password(url) {
            let decoded = percent_decode(&raw);
            if decoded != raw && !decoded.is_empty() {
                secrets.push(decoded);
            }
            secrets.push(raw);
        }
        Redactor { secrets }
    }

    pub fn clean(&self, message: impl Into<String>) -> String {
        let mut message = message.into();
        for secret in &self.secrets {
            message = message.replace(secret.as_str(), "***");
        }
        message
    }

    /// An [`ChannelError::Unavailable`] naming the backend and operation.
    pub(crate) fn unavailable(
        &self,
        backend: &str,
        op: &str,
        error: impl std::fmt::Display,
    ) -> ChannelError {
        ChannelError::Unavailable(self.clean(format!("{backend} {op}: {error}")))
    }
}

/// The password of a `scheme://user:password@host/…` URL, if any.
pub fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| {
            std::str::from_utf8(h)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        });
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let r = Redactor::new("redis://user:p%40ss@host:6379/0");
        assert_eq!(
            r.clean("auth p%40ss and p@ss failed"),
            "auth *** and *** failed"
        );
        let r = Redactor::new("postgres://me:s3cret@db/app?sslmode=require");
        assert_eq!(r.clean("password s3cret wrong"), "password *** wrong");
        for url in [
            "redis://host:6379",
            "postgres://me@db/app",
            "redis://:@h",
            "nonsense",
        ] {
            assert!(Redactor::new(url).secrets.is_empty(), "{url}");
        }
        let r = Redactor::new("redis://:only@h");
        assert_eq!(r.clean("only"), "***");
    }

    #[test]
    fn passwords_are_found_for_redaction() {
        let cases = [
            ("postgres://u:pw@h:5432/db", Some("pw")),
            ("postgres://u:p@ss@h/db?sslmode=disable", Some("p@ss")),
            ("postgres://u@h/db", None),
            ("postgres://h/db?user=a@b", None),
            ("postgres://u:@h/db", None),
        ];
        for (url, want) in cases {
            assert_eq!(url_password(url).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn schema_names() {
        for ok in ["acteon", "prod-eu.1", "A_b", "acteon-prod.v1"] {
            assert!(check_schema(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a\"b", "a b", "x;y", "a\\b", &"s".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad:?}");
        }
    }
}
