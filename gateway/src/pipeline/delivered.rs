//! Dedup marks of this gateway's own successful deliveries, remembered until they expire:
//! a repeat of such an action is answered `Deduplicated` without a backend call.
//!
//! Why this is exact: once a delivery succeeded, its mark lives in the backend until its
//! TTL from when it was set; only the dispatch that set it may remove it, and it removes it
//! only when its delivery fails. So until then the backend would answer `Deduplicated`
//! too; and if the backend lost the mark (wiped, failed over), the action was still
//! delivered within the TTL, which is what deduplication promises. Only a dispatch whose
//! first gate is the remembered mark is answered here: a stopped dispatch applies nothing,
//! so its answer is the same as the backend's.
//!
//! Bounded (`--dedup-cache-entries`, least useful entries evicted first) and off for the
//! memory backend, where the marks are in process anyway.

use std::time::Duration;

use quick_cache::sync::Cache;

/// Marks (backend key) → when they expire (Unix ms).
#[derive(Default)]
pub struct DeliveredMarks {
    cache: Option<Cache<String, u64>>,
}

impl DeliveredMarks {
    /// Remembers up to `entries` marks; 0 remembers none.
    pub fn new(entries: usize) -> DeliveredMarks {
        DeliveredMarks {
            cache: (entries > 0).then(|| Cache::new(entries)),
        }
    }

    /// Whether the mark `key` is one of ours that still lives at `now_ms`.
    pub fn holds(&self, key: &str, now_ms: u64) -> bool {
        let Some(cache) = &self.cache else {
            return false;
        };
        match cache.get(key) {
            Some(until) if until > now_ms => true,
            Some(_) => {
                cache.remove(key);
                false
            }
            None => false,
        }
    }

    /// A delivery under the mark `key`, set at `set_ms` for `ttl`, succeeded.
    pub fn remember(&self, key: &str, set_ms: u64, ttl: Duration) {
        if let Some(cache) = &self.cache {
            let until = set_ms.saturating_add(ttl.as_millis() as u64);
            cache.insert(key.to_owned(), until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_the_mark_expires_and_only_when_enabled() {
        let marks = DeliveredMarks::new(16);
        marks.remember("k", 1_000, Duration::from_secs(2));
        assert!(marks.holds("k", 2_999));
        assert!(!marks.holds("k", 3_000), "expired");
        assert!(!marks.holds("k", 1_500), "an expired entry is dropped");
        assert!(!marks.holds("other", 1_500));
        let off = DeliveredMarks::default();
        off.remember("k", 1_000, Duration::from_secs(2));
        assert!(!off.holds("k", 1_500));
    }

    #[test]
    fn bounded() {
        let marks = DeliveredMarks::new(100);
        for i in 0..10_000 {
            marks.remember(&format!("k{i}"), 0, Duration::from_secs(60));
        }
        let held = (0..10_000)
            .filter(|i| marks.holds(&format!("k{i}"), 1))
            .count();
        assert!(held <= 200, "{held} held");
    }
}
