//! Candidate selection: rules indexed by their equality constraints on namespace, tenant,
//! provider and action type, so a dispatch looks at the rules that can match it instead of
//! scanning them all.
//!
//! A rule whose condition requires `action.tenant == "a"` and `action.action_type == "b"`
//! (directly or through `all:`, or `inList` of strings) is filed under the combination
//! {tenant, action_type} with key ("a", "b"). A dispatch computes one key per combination
//! in use (at most 16) and merges the buckets it hits. Buckets only narrow the search: the
//! full condition still runs, so a hash collision costs time, never correctness.

use std::hash::{BuildHasher, Hasher};

use acteon_api::field::FieldPath;
use foldhash::HashMap;
use foldhash::fast::FixedState;
use serde_json::Value;
use smallvec::SmallVec;

use super::condition::{Cond, Op};
use crate::action::Action;

/// Indexed fields, in bit order.
const FIELDS: [FieldPath; 4] = [
    FieldPath::Namespace,
    FieldPath::Tenant,
    FieldPath::Provider,
    FieldPath::ActionType,
];

/// Above this many value combinations a rule is filed under fewer fields.
const MAX_COMBINATIONS: usize = 64;

/// Rule positions, in priority order, that may match an action.
pub type Candidates = SmallVec<[u32; 32]>;

#[derive(Default)]
pub struct RuleIndex {
    /// Rules with no usable equality constraint.
    always: Vec<u32>,
    /// Field combinations (bit masks over [`FIELDS`]) that have at least one rule.
    masks: Vec<u8>,
    buckets: HashMap<u64, Vec<u32>>,
}

/// Allowed values per indexed field; `None` = unconstrained.
pub type Constraints = [Option<Vec<String>>; 4];

fn field_slot(path: &FieldPath) -> Option<usize> {
    FIELDS.iter().position(|f| f == path)
}

/// Reads the equality constraints a condition imposes on the indexed fields.
pub fn constraints_of(cond: Option<&Cond>, namespace: Option<&str>) -> Constraints {
    let mut out: Constraints = Default::default();
    if let Some(ns) = namespace {
        out[0] = Some(vec![ns.to_owned()]);
    }
    if let Some(c) = cond {
        collect(c, &mut out);
    }
    out
}

fn collect(cond: &Cond, out: &mut Constraints) {
    match cond {
        Cond::All(items) => items.iter().for_each(|c| collect(c, out)),
        Cond::Check { path, op, .. } => {
            let Some(slot) = field_slot(path) else { return };
            let values: Option<Vec<String>> = match op {
                Op::Eq(Value::String(s)) => Some(vec![s.clone()]),
                Op::InList(items) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                _ => None,
            };
            // Keep the first constraint per field; a second one only narrows further,
            // which the full condition enforces anyway.
            if out[slot].is_none() {
                out[slot] = values;
            }
        }
        _ => {}
    }
}

fn hash_key(mask: u8, values: &[&str; 4]) -> u64 {
    let mut h = FixedState::with_seed(0x5eed).build_hasher();
    h.write_u8(mask);
    for (slot, v) in values.iter().enumerate() {
        if mask & (1 << slot) != 0 {
            h.write(v.as_bytes());
            h.write_u8(0xff);
        }
    }
    h.finish()
}

/// Every combination of allowed values of the fields in `mask`.
fn combinations(c: &Constraints, mask: u8) -> Vec<[&str; 4]> {
    let mut combos: Vec<[&str; 4]> = vec![[""; 4]];
    for (slot, allowed) in c.iter().enumerate() {
        if mask & (1 << slot) == 0 {
            continue;
        }
        let allowed = allowed.as_deref().unwrap_or_default();
        combos = combos
            .into_iter()
            .flat_map(|combo| {
                allowed.iter().map(move |v| {
                    let mut next = combo;
                    next[slot] = v.as_str();
                    next
                })
            })
            .collect();
    }
    combos
}

impl RuleIndex {
    /// Builds the index; `rules[i]` holds rule i's constraints, rules in priority order.
    pub fn build(rules: &[Constraints]) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (pos, c) in rules.iter().enumerate() {
            let pos = pos as u32;
            let mut mask: u8 = (0..4)
                .filter(|s| c[*s].as_ref().is_some_and(|v| !v.is_empty()))
                .fold(0, |m, s| m | 1 << s);
            // Drop the widest fields until the number of combinations is reasonable.
            while mask != 0 && combinations_len(c, mask) > MAX_COMBINATIONS {
                let widest = (0..4)
                    .filter(|s| mask & (1 << s) != 0)
                    .max_by_key(|s| c[*s].as_ref().map_or(0, Vec::len))
                    .unwrap_or(0);
                mask &= !(1 << widest);
            }
            if mask == 0 {
                index.always.push(pos);
                continue;
            }
            if !index.masks.contains(&mask) {
                index.masks.push(mask);
            }
            for combo in combinations(c, mask) {
                index
                    .buckets
                    .entry(hash_key(mask, &combo))
                    .or_default()
                    .push(pos);
            }
        }
        index
    }

    /// Rules that may match `action`, in priority order, without duplicates.
    pub fn candidates(&self, action: &Action) -> Candidates {
        let values = [
            action.namespace.as_str(),
            action.tenant.as_str(),
            action.provider.as_str(),
            action.action_type.as_str(),
        ];
        let mut out: Candidates = self.always.iter().copied().collect();
        let mut sources = 0;
        for mask in &self.masks {
            if let Some(bucket) = self.buckets.get(&hash_key(*mask, &values)) {
                out.extend_from_slice(bucket);
                sources += 1;
            }
        }
        if sources > 1 || (sources == 1 && !self.always.is_empty()) {
            out.sort_unstable();
            out.dedup();
        }
        out
    }

    /// Number of rules that every dispatch must look at.
    pub fn unindexed(&self) -> usize {
        self.always.len()
    }
}

fn combinations_len(c: &Constraints, mask: u8) -> usize {
    (0..4)
        .filter(|s| mask & (1 << s) != 0)
        .map(|s| c[s].as_ref().map_or(1, Vec::len))
        .fold(1usize, |acc, n| acc.saturating_mul(n))
}
