//! The SQL of the Postgres channel, and the names derived from the schema.

use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The statements, with the schema filled in once.
pub(super) struct Sql {
    pub(super) setup: String,
    pub(super) publish: Arc<str>,
    pub(super) head: Arc<str>,
    pub(super) fetch: Arc<str>,
    pub(super) report: Arc<str>,
    pub(super) gateways: Arc<str>,
}

impl Sql {
    pub(super) fn new(schema: &str) -> Sql {
        let s = format!("\"{schema}\"");
        let setup = format!(
            "SELECT pg_advisory_xact_lock(hashtextextended('acteon-channel:{schema}', 0));
             CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.config_snapshot (
                 id           boolean PRIMARY KEY DEFAULT true CHECK (id),
                 version      bigint NOT NULL,
                 digest       text NOT NULL,
                 body         bytea NOT NULL,
                 published_at timestamptz
             );
             INSERT INTO {s}.config_snapshot (id, version, digest, body)
                 VALUES (true, 0, '', '') ON CONFLICT (id) DO NOTHING;
             CREATE TABLE IF NOT EXISTS {s}.config_gateways (
                 gateway    text PRIMARY KEY,
                 report     jsonb NOT NULL,
                 expires_at timestamptz NOT NULL
             );"
        );
        // Under concurrent publishers the UPDATE re-checks its WHERE on the newest row
        // (READ COMMITTED), so versions never repeat; the fallback SELECT, though, reads the
        // statement's snapshot and may be older: see `PostgresChannel::publish`.
        // An upsert, so that a row lost with the backend's data (its tables emptied) is
        // written again, as version 1, instead of failing every publish.
        let publish = format!(
            "WITH up AS (
                 INSERT INTO {s}.config_snapshot AS c (id, version, digest, body, published_at)
                 VALUES (true, 1, $1, $2, clock_timestamp())
                 ON CONFLICT (id) DO UPDATE
                    SET version = c.version + 1, digest = EXCLUDED.digest, body = EXCLUDED.body,
                        published_at = EXCLUDED.published_at
                  WHERE c.version = 0 OR c.digest <> EXCLUDED.digest
              RETURNING c.version
             ), note AS (
                 SELECT pg_notify($3, version::text) FROM up
             )
             SELECT up.version, $1::text, true FROM up CROSS JOIN (SELECT count(*) FROM note) n
             UNION ALL
             SELECT version, digest, false FROM {s}.config_snapshot
              WHERE id AND NOT EXISTS (SELECT 1 FROM up)"
        );
        Sql {
            setup,
            publish: publish.into(),
            head: format!(
                "SELECT version, digest FROM {s}.config_snapshot WHERE id AND version > 0"
            )
            .into(),
            fetch: format!(
                "SELECT version, digest, body FROM {s}.config_snapshot WHERE id AND version > 0"
            )
            .into(),
            report: format!(
                "INSERT INTO {s}.config_gateways (gateway, report, expires_at)
                 VALUES ($1, $2::text::jsonb, clock_timestamp() + $3::bigint * interval '1 millisecond')
                 ON CONFLICT (gateway)
                 DO UPDATE SET report = EXCLUDED.report, expires_at = EXCLUDED.expires_at"
            )
            .into(),
            gateways: format!(
                "WITH now AS (SELECT clock_timestamp() AS t),
                 gone AS (DELETE FROM {s}.config_gateways g USING now WHERE g.expires_at <= now.t)
                 SELECT g.gateway, g.report::text FROM {s}.config_gateways g, now
                  WHERE g.expires_at > now.t"
            )
            .into(),
        }
    }
}

/// The notification channel of `schema`: `acteon_config_<schema>` when that is a plain
/// lowercase identifier of at most 63 bytes (Postgres truncates longer names), else a
/// sanitized, shortened form with a hash of the schema, so distinct schemas never share one.
pub fn notify_channel(schema: &str) -> String {
    const BASE: &str = "acteon_config_";
    let plain = schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain && BASE.len() + schema.len() <= 63 {
        return format!("{BASE}{schema}");
    }
    let sanitized: String = schema
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .take(63 - BASE.len() - 9)
        .collect();
    let hash = hex::encode(&Sha256::digest(schema.as_bytes())[..4]);
    format!("{BASE}{sanitized}_{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_channels_are_valid_and_distinct() {
        assert_eq!(notify_channel("acteon"), "acteon_config_acteon");
        let names = [
            notify_channel("team-a"),
            notify_channel("team_a"),
            notify_channel("Team_a"),
            notify_channel(&"x".repeat(63)),
            notify_channel(&format!("{}y", "x".repeat(62))),
        ];
        for (i, a) in names.iter().enumerate() {
            assert!(a.len() <= 63, "{a}");
            assert!(
                a.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
