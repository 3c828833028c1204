//! Field paths that conditions, key templates and `groupBy` refer to.
//!
//! `action.payload.a.b`, `action.metadata.k`, `action.tenant`, … (the `action.` prefix may
//! be left out, as in Acteon's `groupBy: [payload.floor]`) and `time.hour`, `time.weekday`, ….

use std::fmt;

/// A parsed field path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FieldPath {
    Namespace,
    Tenant,
    Provider,
    ActionType,
    Id,
    Status,
    Fingerprint,
    DedupKey,
    /// `payload` followed by object keys (or array indexes written as numbers).
    Payload(Vec<String>),
    /// One metadata label.
    Metadata(String),
    Time(TimeField),
}

/// Parts of the evaluation time, in the rule's time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeField {
    Hour,
    Minute,
    Second,
    /// `Monday` … `Sunday`.
    Weekday,
    /// 1 (Monday) … 7 (Sunday).
    WeekdayNum,
    Day,
    Month,
    Year,
    /// `YYYY-MM-DD`.
    Date,
    /// Seconds since the Unix epoch.
    Timestamp,
}

/// A path that names no known field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPathError(pub String);

impl fmt::Display for FieldPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FieldPath {
    /// Parses a dotted path.
    pub fn parse(path: &str) -> Result<FieldPath, FieldPathError> {
        let path = path.trim();
        if let Some(rest) = path.strip_prefix("time.") {
            return TimeField::parse(rest).map(FieldPath::Time).ok_or_else(|| {
                FieldPathError(format!(
                    "unknown time field `{path}` (known: time.hour, time.minute, time.second, time.weekday, time.weekday_num, time.day, time.month, time.year, time.date, time.timestamp)"
                ))
            });
        }
        let rest = path.strip_prefix("action.").unwrap_or(path);
        let (head, tail) = match rest.split_once('.') {
            Some((h, t)) => (h, Some(t)),
            None => (rest, None),
        };
        let simple = |f: FieldPath| match tail {
            None => Ok(f),
            Some(_) => Err(FieldPathError(format!(
                "`{path}`: `{head}` is a string and has no sub-fields"
            ))),
        };
        match head {
            "namespace" => simple(FieldPath::Namespace),
            "tenant" => simple(FieldPath::Tenant),
            "provider" => simple(FieldPath::Provider),
            "action_type" => simple(FieldPath::ActionType),
            "id" => simple(FieldPath::Id),
            "status" => simple(FieldPath::Status),
            "fingerprint" => simple(FieldPath::Fingerprint),
            "dedup_key" => simple(FieldPath::DedupKey),
            "payload" => {
                let keys: Vec<String> = tail
                    .map(|t| t.split('.').map(str::to_owned).collect())
                    .unwrap_or_default();
                if keys.iter().any(String::is_empty) {
                    return Err(FieldPathError(format!(
                        "`{path}`: empty key in the path (e.g. action.payload.floor)"
                    )));
                }
                Ok(FieldPath::Payload(keys))
            }
            "metadata" => match tail {
                Some(key) if !key.is_empty() => Ok(FieldPath::Metadata(key.to_owned())),
                _ => Err(FieldPathError(format!(
                    "`{path}`: metadata needs a key, e.g. action.metadata.cluster"
                ))),
            },
            _ => Err(FieldPathError(format!(
                "unknown field path `{path}` (known: action.namespace, action.tenant, action.provider, action.action_type, action.id, action.status, action.fingerprint, action.dedup_key, action.payload.*, action.metadata.*, time.*)"
            ))),
        }
    }

    /// Whether the path reads the action (not the evaluation time): the paths that
    /// `groupBy` and `fingerprintFields` may use.
    pub fn is_action_field(&self) -> bool {
        !matches!(self, FieldPath::Time(_))
    }

    /// The fields a rule index can key on.
    pub fn is_indexable(&self) -> bool {
        matches!(
            self,
            FieldPath::Namespace | FieldPath::Tenant | FieldPath::Provider | FieldPath::ActionType
        )
    }
}

impl TimeField {
    fn parse(name: &str) -> Option<TimeField> {
        Some(match name {
            "hour" => TimeField::Hour,
            "minute" => TimeField::Minute,
            "second" => TimeField::Second,
            "weekday" => TimeField::Weekday,
            "weekday_num" => TimeField::WeekdayNum,
            "day" => TimeField::Day,
            "month" => TimeField::Month,
            "year" => TimeField::Year,
            "date" => TimeField::Date,
            "timestamp" => TimeField::Timestamp,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse() {
        assert_eq!(
            FieldPath::parse("action.tenant").unwrap(),
            FieldPath::Tenant
        );
        assert_eq!(
            FieldPath::parse("action_type").unwrap(),
            FieldPath::ActionType
        );
        assert_eq!(
            FieldPath::parse("action.payload.a.b").unwrap(),
            FieldPath::Payload(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            FieldPath::parse("payload.floor").unwrap(),
            FieldPath::Payload(vec!["floor".into()])
        );
        assert_eq!(
            FieldPath::parse("metadata.cluster").unwrap(),
            FieldPath::Metadata("cluster".into())
        );
        assert_eq!(
            FieldPath::parse("time.weekday").unwrap(),
            FieldPath::Time(TimeField::Weekday)
        );
        assert!(FieldPath::parse("action.tenant.x").is_err());
        assert!(
            FieldPath::parse("time.century")
                .unwrap_err()
                .0
                .contains("unknown time field")
        );
        assert!(
            FieldPath::parse("bogus")
                .unwrap_err()
                .0
                .contains("unknown field path `bogus`")
        );
        assert!(FieldPath::parse("action.metadata").is_err());
        for empty in ["payload.", "action.payload..floor", "payload.a."] {
            assert!(
                FieldPath::parse(empty).unwrap_err().0.contains("empty key"),
                "{empty}"
            );
        }
        assert_eq!(
            FieldPath::parse("action.payload").unwrap(),
            FieldPath::Payload(vec![])
        );
        assert!(!FieldPath::parse("time.hour").unwrap().is_action_field());
        assert!(FieldPath::parse("payload.floor").unwrap().is_action_field());
    }
}
