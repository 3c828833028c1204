//! The audit trail: one record per dispatch and per background delivery (group flush,
//! schedule fire), kept in a store that can be queried (`/v1/audit`) and replayed from.
//!
//! Records are built on the dispatch path, redacted there (so a secret never sits in the
//! queue, in memory or in the database), and handed to a bounded queue; one task per process
//! ([`writer::AuditSink`]) writes them in batches. A full queue or a store that is down never
//! fails nor slows a dispatch under the default `drop` policy: the records are counted as
//! dropped instead.

pub mod memory;
mod pg_copy;
pub mod postgres;
pub mod redact;
pub mod writer;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use writer::{AuditOptions, AuditSink, WhenFull};

/// Who made a request, as the authentication middleware established it (a ServiceAccount,
/// an API token's name). Handlers read it as an optional request extension: without
/// authentication there is none and the record's `caller` is null.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerIdentity(pub String);

/// What produced a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditSource {
    /// `POST /v1/dispatch`, a batch item or an audit replay.
    Dispatch,
    /// A group's notification sent by the worker.
    Group,
    /// A scheduled action fired by the worker.
    Schedule,
    /// A state machine's timeout notification.
    StateTimeout,
    /// A chain step's provider call.
    Chain,
}

impl AuditSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditSource::Dispatch => "dispatch",
            AuditSource::Group => "group",
            AuditSource::Schedule => "schedule",
            AuditSource::StateTimeout => "state_timeout",
            AuditSource::Chain => "chain",
        }
    }

    /// The source of a parked action released by the worker (`Gateway::resume`'s kind).
    pub fn of_release(kind: &str) -> AuditSource {
        match kind {
            "group" => AuditSource::Group,
            "schedule" => AuditSource::Schedule,
            "state_timeout" => AuditSource::StateTimeout,
            "chain" => AuditSource::Chain,
            _ => AuditSource::Dispatch,
        }
    }
}

/// One audit record. Field names follow the request (`/v1/audit` answers them as is).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// UUIDv7 (time-ordered) of this record.
    pub id: String,
    pub action_id: String,
    pub namespace: String,
    pub tenant: String,
    pub provider: String,
    pub action_type: String,
    /// Acteon's snake_case verdict (`allow`, `suppress`, `deny`, `reroute`, `throttle`, …);
    /// `none` when the action did not reach the rules (unknown provider).
    pub verdict: String,
    pub matched_rule: Option<String>,
    /// `ActionOutcome::label()`: executed, suppressed, failed, …
    pub outcome: String,
    pub error: Option<String>,
    pub caller: Option<String>,
    /// dispatch, group, schedule, state_timeout or chain.
    pub source: String,
    /// Microsecond precision (what Postgres keeps), so cursors compare equal everywhere.
    pub dispatched_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// The action's payload as received (before `modify` rules), redacted; only with
    /// `--audit-store-payload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
}

/// Most records one query answers.
pub const MAX_LIMIT: usize = 1000;
/// Records a query answers by default.
pub const DEFAULT_LIMIT: usize = 50;
/// Most records `get` returns for one action id (replays and re-deliveries are few).
pub const MAX_PER_ACTION: usize = 1000;

/// Filters of `GET /v1/audit`. `from` is inclusive, `to` exclusive.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub namespace: Option<String>,
    pub tenant: Option<String>,
    pub provider: Option<String>,
    pub action_type: Option<String>,
    pub outcome: Option<String>,
    pub matched_rule: Option<String>,
    pub caller: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: usize,
    /// Only records strictly older (in `(dispatched_at, id)` order) than this one.
    pub cursor: Option<Cursor>,
}

impl AuditQuery {
    /// Whether `r` passes the filters (the cursor excepted).
    pub fn matches(&self, r: &AuditRecord) -> bool {
        fn eq(want: &Option<String>, have: &str) -> bool {
            want.as_deref().is_none_or(|w| w == have)
        }
        eq(&self.namespace, &r.namespace)
            && eq(&self.tenant, &r.tenant)
            && eq(&self.provider, &r.provider)
            && eq(&self.action_type, &r.action_type)
            && eq(&self.outcome, &r.outcome)
            && self
                .matched_rule
                .as_deref()
                .is_none_or(|w| r.matched_rule.as_deref() == Some(w))
            && self
                .caller
                .as_deref()
                .is_none_or(|w| r.caller.as_deref() == Some(w))
            && self.from.is_none_or(|f| r.dispatched_at >= f)
            && self.to.is_none_or(|t| r.dispatched_at < t)
    }
}

/// One page of a query, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Present when more records may follow.
    pub next_cursor: Option<Cursor>,
}

impl AuditPage {
    /// The page of `limit` records out of up to `limit + 1` read (the extra one only says
    /// that more follow).
    pub fn of(mut records: Vec<AuditRecord>, limit: usize) -> AuditPage {
        let next_cursor = if records.len() > limit {
            records.truncate(limit);
            records.last().map(Cursor::of)
        } else {
            None
        };
        AuditPage {
            records,
            next_cursor,
        }
    }
}

/// A keyset position: the `(dispatched_at, id)` of the last record of a page. Encoded
/// opaque (hex) so that clients treat it as a token, and checked on decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: String,
}

const CURSOR_VERSION: &str = "a1";

impl Cursor {
    pub fn of(r: &AuditRecord) -> Cursor {
        Cursor {
            at: r.dispatched_at,
            id: r.id.clone(),
        }
    }

    pub fn encode(&self) -> String {
        let plain = format!(
            "{CURSOR_VERSION}:{}:{}",
            self.at.timestamp_micros(),
            self.id
        );
        plain.bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// `None` for anything that is not a cursor this gateway made.
    pub fn decode(text: &str) -> Option<Cursor> {
        // A cursor is ~110 hex digits; anything much longer is not one.
        if text.len() > 256 || !text.len().is_multiple_of(2) {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect();
        let plain = String::from_utf8(bytes?).ok()?;
        let mut parts = plain.splitn(3, ':');
        if parts.next()? != CURSOR_VERSION {
            return None;
        }
        let micros: i64 = parts.next()?.parse().ok()?;
        let id = uuid::Uuid::parse_str(parts.next()?).ok()?;
        Some(Cursor {
            at: DateTime::from_timestamp_micros(micros)?,
            id: id.hyphenated().to_string(),
        })
    }
}

/// How long records are kept: a default and per-namespace overrides.
#[derive(Clone, Debug)]
pub struct Retention {
    pub default: Duration,
    pub namespaces: Vec<(String, Duration)>,
}

impl Retention {
    /// Parses `team-a=7,team-b=90` (days).
    pub fn parse(default_days: u32, overrides: &[String]) -> Result<Retention, String> {
        let day = |d: u32| Duration::from_secs(u64::from(d) * 86_400);
        let mut namespaces = Vec::new();
        for item in overrides.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let (ns, days) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}`: expected namespace=days"))?;
            let days: u32 = days
                .trim()
                .parse()
                .map_err(|_| format!("`{item}`: days must be a whole number"))?;
            crate::action::check_namespace(ns.trim()).map_err(|e| format!("`{item}`: {e}"))?;
            namespaces.push((ns.trim().to_owned(), day(days)));
        }
        if namespaces.len() > 1000 {
            return Err("more than 1000 namespace overrides".into());
        }
        Ok(Retention {
            default: day(default_days),
            namespaces,
        })
    }

    /// Records of `namespace` older than this are deleted.
    pub fn cutoff(&self, namespace: &str, now: DateTime<Utc>) -> DateTime<Utc> {
        let keep = self
            .namespaces
            .iter()
            .find(|(ns, _)| ns == namespace)
            .map_or(self.default, |(_, d)| *d);
        now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX)
    }
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
}

/// Where records are kept.
#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    /// `memory` or `postgres`.
    fn kind(&self) -> &'static str;
    /// Whether replicas share the store (then one replica sweeps at a time).
    fn shared(&self) -> bool;
    /// Writes the records (idempotent on `id`: a retried batch writes nothing twice).
    async fn write_batch(&self, records: &[AuditRecord]) -> Result<(), AuditError>;
    /// [`write_batch`](Self::write_batch) for a store that can keep the records as they are
    /// (the memory store moves them in rather than copying each): it may take them out of
    /// `records` once written; after an error they are all still there, for a retry.
    async fn write_owned(&self, records: &mut Vec<AuditRecord>) -> Result<(), AuditError> {
        self.write_batch(records).await
    }
    /// One page of matching records, newest first.
    async fn query(&self, query: &AuditQuery) -> Result<AuditPage, AuditError>;
    /// The records of one action id, newest first (at most [`MAX_PER_ACTION`]).
    async fn get(&self, action_id: &str) -> Result<Vec<AuditRecord>, AuditError>;
    /// Deletes what retention no longer keeps, in bounded batches; answers how many.
    async fn sweep(&self, now: DateTime<Utc>, retention: &Retention) -> Result<u64, AuditError>;
}

/// The current time at microsecond precision (what Postgres stores).
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// A record id: a UUIDv7 whose time is `at` to the microsecond (RFC 9562 §6.2, method 3:
/// the sub-millisecond fraction in the 12 `rand_a` bits), so ids sort as their dispatch
/// times do, and 62 random bits from a per-thread generator (no system call per record, as
/// `Uuid::now_v7` makes).
pub fn record_id(at: DateTime<Utc>) -> uuid::Uuid {
    let micros = u64::try_from(at.timestamp_micros()).unwrap_or(0);
    let millis = micros / 1000;
    // 0..=4091: distinct microseconds keep distinct, ordered fractions.
    let fraction = ((micros % 1000) * 4096 / 1000) as u16;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6..8].copy_from_slice(&(0x7000 | fraction).to_be_bytes());
    bytes[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes)
}

/// A plain executed-dispatch record for the unit tests of this module's stores and writer;
/// each test changes the fields it is about.
#[cfg(test)]
pub(crate) fn test_record() -> AuditRecord {
    AuditRecord {
        id: uuid::Uuid::now_v7().hyphenated().to_string(),
        action_id: "a".into(),
        namespace: "n".into(),
        tenant: "t".into(),
        provider: "p".into(),
        action_type: "x".into(),
        verdict: "allow".into(),
        matched_rule: None,
        outcome: "executed".into(),
        error: None,
        caller: None,
        source: "dispatch".into(),
        dispatched_at: now_micros(),
        duration_ms: 0,
        payload: None,
        metadata: HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_are_v7_and_sort_as_their_times() {
        let base = now_micros().timestamp_micros();
        let ids: Vec<uuid::Uuid> = (0..3000)
            .map(|i| record_id(DateTime::from_timestamp_micros(base + i).unwrap()))
            .collect();
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        }
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "one µs apart sorts apart"
        );
        let (secs, nanos) = ids[0].get_timestamp().unwrap().to_unix();
        assert_eq!(
            i64::try_from(secs).unwrap() * 1000 + i64::from(nanos / 1_000_000),
            base / 1000
        );
        let same = DateTime::from_timestamp_micros(base).unwrap();
        assert_ne!(record_id(same), record_id(same), "random bits differ");
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            at: now_micros(),
            id: uuid::Uuid::now_v7().hyphenated().to_string(),
        };
        let text = c.encode();
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(Cursor::decode(&text), Some(c.clone()));
        for bad in [
            "",
            "zz",
            "abc",
            &"0".repeat(1000),
            &text[..text.len() - 2],
            "6131",
            &Cursor {
                id: "not-a-uuid".into(),
                ..c.clone()
            }
            .encode(),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
        // Non-ASCII input: never panics on a char boundary.
        assert_eq!(Cursor::decode("éé"), None);
    }

    #[test]
    fn retention_overrides() {
        let r = Retention::parse(30, &["team-a=7".into(), " team-b = 90 ".into()]).unwrap();
        let now = Utc::now();
        assert_eq!(r.cutoff("team-a", now), now - chrono::Duration::days(7));
        assert_eq!(r.cutoff("team-b", now), now - chrono::Duration::days(90));
        assert_eq!(r.cutoff("other", now), now - chrono::Duration::days(30));
        assert!(Retention::parse(30, &["team-a".into()]).is_err());
        assert!(Retention::parse(30, &["team-a=x".into()]).is_err());
    }
}
