//! The in-process store (standalone, or a Redis deployment without `--audit-postgres-url`):
//! a map ordered by `(dispatched_at, id)`, capped; past the cap the oldest records go.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::{AuditError, AuditPage, AuditQuery, AuditRecord, AuditStore, MAX_PER_ACTION};
use super::{MAX_LIMIT, Retention};

type Key = (DateTime<Utc>, String);

pub struct MemoryAuditStore {
    capacity: usize,
    // A sync lock: every method runs to completion without awaiting. Boxed records: the
    // tree's nodes shift pointers, not ~300-byte records, as it inserts and evicts.
    records: Mutex<BTreeMap<Key, Box<AuditRecord>>>,
}

impl MemoryAuditStore {
    pub fn new(capacity: usize) -> MemoryAuditStore {
        MemoryAuditStore {
            capacity: capacity.max(1),
            records: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds the records, then evicts the oldest past the capacity.
    fn keep(&self, records: impl Iterator<Item = AuditRecord>) {
        let mut map = self.records.lock();
        for r in records {
            map.insert((r.dispatched_at, r.id.clone()), Box::new(r));
        }
        while map.len() > self.capacity {
            map.pop_first();
        }
    }

    pub fn len(&self) -> usize {
        self.records.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait::async_trait]
impl AuditStore for MemoryAuditStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn shared(&self) -> bool {
        false
    }

    async fn write_batch(&self, records: &[AuditRecord]) -> Result<(), AuditError> {
        self.keep(records.iter().cloned());
        Ok(())
    }

    async fn write_owned(&self, records: &mut Vec<AuditRecord>) -> Result<(), AuditError> {
        self.keep(records.drain(..));
        Ok(())
    }

    async fn query(&self, query: &AuditQuery) -> Result<AuditPage, AuditError> {
        let limit = query.limit.clamp(1, MAX_LIMIT);
        let map = self.records.lock();
        let range = match &query.cursor {
            Some(c) => map.range(..(c.at, c.id.clone())),
            None => map.range(..),
        };
        let records: Vec<AuditRecord> = range
            .rev()
            .map(|(_, r)| r)
            .filter(|r| query.matches(r))
            .take(limit + 1)
            .map(|r| AuditRecord::clone(r))
            .collect();
        Ok(AuditPage::of(records, limit))
    }

    async fn get(&self, action_id: &str) -> Result<Vec<AuditRecord>, AuditError> {
        let map = self.records.lock();
        Ok(map
            .values()
            .rev()
            .filter(|r| r.action_id == action_id)
            .take(MAX_PER_ACTION)
            .map(|r| AuditRecord::clone(r))
            .collect())
    }

    async fn sweep(&self, now: DateTime<Utc>, retention: &Retention) -> Result<u64, AuditError> {
        let mut map = self.records.lock();
        let before = map.len();
        map.retain(|(at, _), r| *at >= retention.cutoff(&r.namespace, now));
        Ok((before - map.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: i64, ns: &str) -> AuditRecord {
        AuditRecord {
            action_id: format!("a-{i}"),
            namespace: ns.into(),
            // Several records share a timestamp: the id breaks ties.
            dispatched_at: DateTime::from_timestamp_micros(1_000_000 + i / 3).unwrap(),
            duration_ms: 1,
            ..crate::audit::test_record()
        }
    }

    #[tokio::test]
    async fn pages_cover_every_match_once_and_cap_evicts_oldest() {
        let store = MemoryAuditStore::new(1000);
        let records: Vec<_> = (0..40)
            .map(|i| record(i, if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        store.write_batch(&records).await.unwrap();
        let mut seen = Vec::new();
        let mut query = AuditQuery {
            namespace: Some("a".into()),
            limit: 7,
            ..Default::default()
        };
        loop {
            let page = store.query(&query).await.unwrap();
            seen.extend(page.records.iter().map(|r| r.action_id.clone()));
            match page.next_cursor {
                Some(c) => query.cursor = Some(crate::audit::Cursor::decode(&c.encode()).unwrap()),
                None => break,
            }
        }
        let want: Vec<String> = (0..40)
            .rev()
            .filter(|i| i % 2 == 0)
            .map(|i| format!("a-{i}"))
            .collect();
        assert_eq!(seen, want);

        let small = MemoryAuditStore::new(5);
        small.write_batch(&records).await.unwrap();
        assert_eq!(small.len(), 5);
        assert_eq!(small.get("a-0").await.unwrap(), vec![]);
        assert_eq!(small.get("a-39").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn sweep_applies_namespace_retention() {
        let store = MemoryAuditStore::new(100);
        let mut old = record(1, "short");
        old.dispatched_at = Utc::now() - chrono::Duration::days(10);
        let mut kept = record(2, "long");
        kept.dispatched_at = Utc::now() - chrono::Duration::days(10);
        store.write_batch(&[old, kept]).await.unwrap();
        let r = Retention::parse(30, &["short=7".into()]).unwrap();
        assert_eq!(store.sweep(Utc::now(), &r).await.unwrap(), 1);
        assert_eq!(store.get("a-2").await.unwrap().len(), 1);
    }
}
