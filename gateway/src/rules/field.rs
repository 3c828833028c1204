//! Reading a field path out of an action (and the evaluation time).

use std::borrow::Cow;

use acteon_api::field::{FieldPath, TimeField};
use chrono::{DateTime, Datelike, Timelike};
use chrono_tz::Tz;
use serde_json::Value;

use super::EvalInput;

/// A resolved field: borrowed where possible.
#[derive(Debug, PartialEq)]
pub enum FieldValue<'a> {
    Str(Cow<'a, str>),
    Json(&'a Value),
    Int(i64),
    Missing,
}

impl FieldValue<'_> {
    /// The value as text, for keys and group labels.
    pub fn to_key_text(&self) -> Option<Cow<'_, str>> {
        match self {
            FieldValue::Str(s) => Some(Cow::Borrowed(s.as_ref())),
            FieldValue::Json(Value::String(s)) => Some(Cow::Borrowed(s)),
            FieldValue::Json(Value::Null) | FieldValue::Missing => None,
            FieldValue::Json(v) => Some(Cow::Owned(v.to_string())),
            FieldValue::Int(i) => Some(Cow::Owned(i.to_string())),
        }
    }
}

fn opt(s: &Option<String>) -> FieldValue<'_> {
    s.as_deref()
        .map_or(FieldValue::Missing, |s| FieldValue::Str(Cow::Borrowed(s)))
}

/// Walks object keys (and numeric array indexes) into a JSON value.
pub fn walk<'a>(mut v: &'a Value, keys: &[String]) -> Option<&'a Value> {
    for k in keys {
        v = match v {
            Value::Object(map) => map.get(k)?,
            Value::Array(items) => items.get(k.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Resolves `path` against the input.
pub fn resolve<'a>(path: &FieldPath, input: &'a EvalInput<'a>, tz: Option<Tz>) -> FieldValue<'a> {
    let a = input.action;
    match path {
        FieldPath::Namespace => FieldValue::Str(Cow::Borrowed(&a.namespace)),
        FieldPath::Tenant => FieldValue::Str(Cow::Borrowed(&a.tenant)),
        FieldPath::Provider => FieldValue::Str(Cow::Borrowed(&a.provider)),
        FieldPath::ActionType => FieldValue::Str(Cow::Borrowed(&a.action_type)),
        FieldPath::Id => FieldValue::Str(Cow::Borrowed(&a.id)),
        FieldPath::Status => opt(&a.status),
        FieldPath::Fingerprint => opt(&a.fingerprint),
        FieldPath::DedupKey => opt(&a.dedup_key),
        FieldPath::Payload(keys) => {
            walk(input.payload, keys).map_or(FieldValue::Missing, FieldValue::Json)
        }
        FieldPath::Metadata(k) => a
            .metadata
            .get(k)
            .map_or(FieldValue::Missing, |s| FieldValue::Str(Cow::Borrowed(s))),
        FieldPath::Time(t) => time_field(*t, input, tz),
    }
}

fn time_field<'a>(field: TimeField, input: &EvalInput<'_>, tz: Option<Tz>) -> FieldValue<'a> {
    let now: DateTime<Tz> = input.now.with_timezone(&tz.unwrap_or(Tz::UTC));
    match field {
        TimeField::Hour => FieldValue::Int(i64::from(now.hour())),
        TimeField::Minute => FieldValue::Int(i64::from(now.minute())),
        TimeField::Second => FieldValue::Int(i64::from(now.second())),
        TimeField::Weekday => FieldValue::Str(Cow::Borrowed(weekday_name(now.weekday()))),
        TimeField::WeekdayNum => FieldValue::Int(i64::from(now.weekday().number_from_monday())),
        TimeField::Day => FieldValue::Int(i64::from(now.day())),
        TimeField::Month => FieldValue::Int(i64::from(now.month())),
        TimeField::Year => FieldValue::Int(i64::from(now.year())),
        TimeField::Date => FieldValue::Str(Cow::Owned(now.format("%Y-%m-%d").to_string())),
        TimeField::Timestamp => FieldValue::Int(now.timestamp()),
    }
}

fn weekday_name(w: chrono::Weekday) -> &'static str {
    match w {
        chrono::Weekday::Mon => "Monday",
        chrono::Weekday::Tue => "Tuesday",
        chrono::Weekday::Wed => "Wednesday",
        chrono::Weekday::Thu => "Thursday",
        chrono::Weekday::Fri => "Friday",
        chrono::Weekday::Sat => "Saturday",
        chrono::Weekday::Sun => "Sunday",
    }
}
