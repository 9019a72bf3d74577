//! The BSON shapes of Herald's documents (see the module docs of [`super`]), written and read
//! by hand so that every field's type is fixed here and a document that does not fit is reported
//! with its collection, id and field.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use herald_core::backend::{ArchivedEvent, SettledDelivery};
use herald_core::model::{Attempt, DeliveryStatus, Event, Owner, Subscription};
use herald_core::StoreError;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, DateTime as BsonDateTime, Document};
use thiserror::Error;

/// A stored document that does not have the shape this version writes.
#[derive(Debug, Error)]
#[error("the {collection} document {id:?} does not fit: field {field} {problem}")]
pub struct DecodeError {
    collection: &'static str,
    id: String,
    field: String,
    problem: &'static str,
}

impl From<DecodeError> for StoreError {
    fn from(e: DecodeError) -> Self {
        StoreError::backend_by("reading a MongoDB document", e)
    }
}

type Decoded<T> = Result<T, DecodeError>;

/// The `_id` of a settled delivery. The webhook id is length-prefixed so that no two
/// (webhook, subscription) pairs share a key, whatever characters the ids hold.
pub fn delivery_id(webhook_id: &str, subscription_id: &str) -> String {
    format!("{}:{webhook_id}/{subscription_id}", webhook_id.len())
}

/// The `_id` of an attempt: its delivery's key and its number (the last `/`-separated part,
/// which holds no `/`, so the key stays unambiguous).
pub fn attempt_id(webhook_id: &str, subscription_id: &str, attempt: u32) -> String {
    format!("{}/{attempt}", delivery_id(webhook_id, subscription_id))
}

pub fn date(t: DateTime<Utc>) -> BsonDateTime {
    BsonDateTime::from_millis(t.timestamp_millis())
}

fn opt_date(t: Option<DateTime<Utc>>) -> Bson {
    t.map_or(Bson::Null, |t| Bson::DateTime(date(t)))
}

fn opt_str(s: &Option<String>) -> Bson {
    s.as_ref().map_or(Bson::Null, |s| Bson::String(s.clone()))
}

/// Stored as Int64: every count and duration Herald keeps fits, and one type keeps reads simple.
fn int(n: u64) -> Bson {
    Bson::Int64(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Sets `key` to the time as a BSON date (milliseconds) and `key_ns` to the nanoseconds below
/// the millisecond when there are any, so that the time reads back exactly.
fn put_exact_time(d: &mut Document, key: &str, t: Option<DateTime<Utc>>) {
    d.insert(key, opt_date(t));
    let ns = t.map_or(0, |t| t.timestamp_subsec_nanos() % 1_000_000);
    if ns != 0 {
        d.insert(format!("{key}_ns"), Bson::Int32(ns as i32));
    }
}

/// The fields a `$set` writes for a time kept as [`put_exact_time`] keeps it (a null time
/// leaves a stale `_ns` behind, which reads ignore).
pub fn exact_time_fields(key: &str, t: Option<DateTime<Utc>>) -> Document {
    let mut d = Document::new();
    put_exact_time(&mut d, key, t);
    if !d.contains_key(format!("{key}_ns")) {
        d.insert(format!("{key}_ns"), Bson::Int32(0));
    }
    d
}

/// Reads the fields of one stored document, naming it in errors.
struct Fields<'a> {
    doc: &'a Document,
    collection: &'static str,
}

impl<'a> Fields<'a> {
    fn new(doc: &'a Document, collection: &'static str) -> Self {
        Self { doc, collection }
    }

    fn err(&self, field: &str, problem: &'static str) -> DecodeError {
        let id = match self.doc.get("_id") {
            Some(Bson::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "(no _id)".into(),
        };
        DecodeError {
            collection: self.collection,
            id,
            field: field.into(),
            problem,
        }
    }

    /// The value, or `None` when the field is absent or null.
    fn value(&self, field: &str) -> Option<&'a Bson> {
        self.doc.get(field).filter(|v| !matches!(v, Bson::Null))
    }

    fn opt_string(&self, field: &str) -> Decoded<Option<String>> {
        match self.value(field) {
            None => Ok(None),
            Some(Bson::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(field, "is not a string")),
        }
    }

    fn string(&self, field: &str) -> Decoded<String> {
        self.opt_string(field)?
            .ok_or_else(|| self.err(field, "is missing"))
    }

    fn opt_i64(&self, field: &str) -> Decoded<Option<i64>> {
        match self.value(field) {
            None => Ok(None),
            Some(Bson::Int64(n)) => Ok(Some(*n)),
            Some(Bson::Int32(n)) => Ok(Some(i64::from(*n))),
            Some(_) => Err(self.err(field, "is not an integer")),
        }
    }

    fn opt_unsigned<T: TryFrom<i64>>(&self, field: &str) -> Decoded<Option<T>> {
        self.opt_i64(field)?
            .map(|n| T::try_from(n).map_err(|_| self.err(field, "is out of range")))
            .transpose()
    }

    fn unsigned<T: TryFrom<i64>>(&self, field: &str) -> Decoded<T> {
        self.opt_unsigned(field)?
            .ok_or_else(|| self.err(field, "is missing"))
    }

    fn bool(&self, field: &str) -> Decoded<bool> {
        match self.value(field) {
            Some(Bson::Boolean(b)) => Ok(*b),
            None => Err(self.err(field, "is missing")),
            Some(_) => Err(self.err(field, "is not a boolean")),
        }
    }

    fn opt_time(&self, field: &str) -> Decoded<Option<DateTime<Utc>>> {
        let ms = match self.value(field) {
            None => return Ok(None),
            Some(Bson::DateTime(d)) => d.timestamp_millis(),
            Some(_) => return Err(self.err(field, "is not a date")),
        };
        let ns_field = format!("{field}_ns");
        let ns = match self.opt_i64(&ns_field)? {
            None => 0,
            Some(n @ 0..=999_999) => n,
            Some(_) => return Err(self.err(&ns_field, "is out of range")),
        };
        DateTime::from_timestamp_millis(ms)
            .map(|t| Some(t + chrono::Duration::nanoseconds(ns)))
            .ok_or_else(|| self.err(field, "is out of range"))
    }

    fn time(&self, field: &str) -> Decoded<DateTime<Utc>> {
        self.opt_time(field)?
            .ok_or_else(|| self.err(field, "is missing"))
    }

    fn opt_array(&self, field: &str) -> Decoded<Option<&'a Vec<Bson>>> {
        match self.value(field) {
            None => Ok(None),
            Some(Bson::Array(a)) => Ok(Some(a)),
            Some(_) => Err(self.err(field, "is not an array")),
        }
    }

    fn strings(&self, field: &str) -> Decoded<Vec<String>> {
        self.opt_array(field)?
            .ok_or_else(|| self.err(field, "is missing"))?
            .iter()
            .map(|v| match v {
                Bson::String(s) => Ok(s.clone()),
                _ => Err(self.err(field, "holds something other than strings")),
            })
            .collect()
    }

    fn opt_document(&self, field: &str) -> Decoded<Option<Fields<'a>>> {
        match self.value(field) {
            None => Ok(None),
            Some(Bson::Document(d)) => Ok(Some(Fields::new(d, self.collection))),
            Some(_) => Err(self.err(field, "is not a document")),
        }
    }
}

pub fn subscription_doc(s: &Subscription) -> Document {
    let headers: Vec<Bson> = s
        .headers
        .iter()
        .map(|(name, value)| Bson::Document(doc! { "name": name, "value": value }))
        .collect();
    let owner = s.owner.as_ref().map_or(Bson::Null, |o| {
        Bson::Document(doc! { "kind": &o.kind, "namespace": &o.namespace, "name": &o.name })
    });
    let mut d = doc! {
        "_id": s.id.as_str(),
        "target_url": &s.target_url,
        "event_types": &s.event_types,
        "secret": opt_str(&s.secret),
        "headers": headers,
        "max_attempts": s.max_attempts.map_or(Bson::Null, |n| int(n.into())),
        "timeout_ms": s.timeout_ms.map_or(Bson::Null, int),
        "retry_schedule_ms": s.retry_schedule_ms.as_ref().map_or(Bson::Null, |v| {
            Bson::Array(v.iter().map(|&n| int(n)).collect())
        }),
        "paused": s.paused,
        "owner": owner,
        "disabled_reason": opt_str(&s.disabled_reason),
        "previous_secret": opt_str(&s.previous_secret),
        "version": int(s.version),
    };
    put_exact_time(&mut d, "created_at", Some(s.created_at));
    put_exact_time(&mut d, "updated_at", Some(s.updated_at));
    put_exact_time(&mut d, "disabled_at", s.disabled_at);
    put_exact_time(&mut d, "failing_since", s.failing_since);
    put_exact_time(
        &mut d,
        "previous_secret_expires_at",
        s.previous_secret_expires_at,
    );
    d
}

/// The health fields of a subscription document (Herald's own, see
/// `SubscriptionStore::record_health`), with their `_ns` siblings.
pub const HEALTH_FIELDS: [&str; 5] = [
    "failing_since",
    "failing_since_ns",
    "disabled_at",
    "disabled_at_ns",
    "disabled_reason",
];

/// A `$set` of every field of [`subscription_doc`] but `_id` and the health fields: what a
/// replace that keeps the stored health writes. Every time's `_ns` sibling is set (0 when the
/// time has none), so no stale one is left beside a new time.
pub fn subscription_set_doc(s: &Subscription) -> Document {
    let mut d = subscription_doc(s);
    d.remove("_id");
    for f in HEALTH_FIELDS {
        d.remove(f);
    }
    for key in ["created_at", "updated_at", "previous_secret_expires_at"] {
        let ns = format!("{key}_ns");
        if !d.contains_key(&ns) {
            d.insert(ns, Bson::Int32(0));
        }
    }
    d
}

pub fn subscription_from(d: &Document) -> Decoded<Subscription> {
    let f = Fields::new(d, "subscriptions");
    let mut headers = BTreeMap::new();
    for h in f.opt_array("headers")?.into_iter().flatten() {
        let Bson::Document(h) = h else {
            return Err(f.err("headers", "holds something other than {name, value}"));
        };
        let h = Fields::new(h, "subscriptions");
        headers.insert(
            h.string("name")
                .map_err(|_| f.err("headers", "has an entry without a name"))?,
            h.string("value")
                .map_err(|_| f.err("headers", "has an entry without a value"))?,
        );
    }
    let owner = match f.opt_document("owner")? {
        None => None,
        Some(o) => Some(Owner {
            kind: o
                .string("kind")
                .map_err(|_| f.err("owner", "has no kind"))?,
            namespace: o
                .string("namespace")
                .map_err(|_| f.err("owner", "has no namespace"))?,
            name: o
                .string("name")
                .map_err(|_| f.err("owner", "has no name"))?,
        }),
    };
    let retry_schedule_ms = match f.opt_array("retry_schedule_ms")? {
        None => None,
        Some(a) => Some(
            a.iter()
                .map(|v| match v {
                    Bson::Int64(n) => u64::try_from(*n).ok(),
                    Bson::Int32(n) => u64::try_from(*n).ok(),
                    _ => None,
                })
                .collect::<Option<Vec<u64>>>()
                .ok_or_else(|| f.err("retry_schedule_ms", "holds something other than delays"))?,
        ),
    };
    Ok(Subscription {
        id: f.string("_id")?.into(),
        target_url: f.string("target_url")?,
        event_types: f.strings("event_types")?,
        secret: f.opt_string("secret")?,
        headers,
        max_attempts: f.opt_unsigned("max_attempts")?,
        timeout_ms: f.opt_unsigned("timeout_ms")?,
        retry_schedule_ms,
        paused: f.bool("paused")?,
        owner,
        created_at: f.time("created_at")?,
        updated_at: f.time("updated_at")?,
        disabled_at: f.opt_time("disabled_at")?,
        disabled_reason: f.opt_string("disabled_reason")?,
        failing_since: f.opt_time("failing_since")?,
        previous_secret: f.opt_string("previous_secret")?,
        previous_secret_expires_at: f.opt_time("previous_secret_expires_at")?,
        // Records written before versions existed have none: version 0.
        version: f.opt_unsigned("version")?.unwrap_or(0),
    })
}

pub fn attempt_doc(a: &Attempt) -> Document {
    let mut d = doc! {
        "_id": attempt_id(&a.webhook_id, &a.subscription_id, a.attempt_no),
        "webhook_id": a.webhook_id.as_str(),
        "subscription_id": a.subscription_id.as_str(),
        "attempt": int(a.attempt_no.into()),
        "target_url": &a.target_url,
        "attempted_at": date(a.attempted_at),
        "outcome": a.outcome.as_str(),
        "duration_ms": int(a.duration_ms),
    };
    // Absent values are left out rather than stored as null: this is the one document written
    // per attempt, and every field costs the server work on each insert.
    put_some_str(&mut d, "event_type", &a.event_type);
    if let Some(s) = a.http_status {
        d.insert("http_status", Bson::Int32(s.into()));
    }
    put_some_str(&mut d, "error", &a.error);
    put_some_str(&mut d, "response_excerpt", &a.response_excerpt);
    d
}

fn put_some_str(d: &mut Document, key: &str, s: &Option<String>) {
    if let Some(s) = s {
        d.insert(key, s.as_str());
    }
}

pub fn attempt_from(d: &Document) -> Decoded<Attempt> {
    let f = Fields::new(d, "attempts");
    let outcome = f
        .string("outcome")?
        .parse()
        .map_err(|_| f.err("outcome", "is not an outcome"))?;
    Ok(Attempt {
        webhook_id: f.string("webhook_id")?.into(),
        subscription_id: f.string("subscription_id")?.into(),
        event_type: f.opt_string("event_type")?,
        target_url: f.string("target_url")?,
        attempted_at: f.time("attempted_at")?,
        attempt_no: f.unsigned("attempt")?,
        outcome,
        http_status: f.opt_unsigned("http_status")?,
        error: f.opt_string("error")?,
        duration_ms: f.unsigned("duration_ms")?,
        response_excerpt: f.opt_string("response_excerpt")?,
    })
}

pub fn event_doc(e: &ArchivedEvent) -> Document {
    let mut d = doc! {
        "_id": e.event.webhook_id.as_str(),
        "payload": Binary { subtype: BinarySubtype::Generic, bytes: e.event.payload.to_vec() },
        "received_at": date(e.event.received_at),
        "subscription_ids": &e.subscription_ids,
    };
    put_some_str(&mut d, "event_type", &e.event.event_type);
    put_some_str(&mut d, "payload_omitted", &e.payload_omitted);
    d
}

pub fn event_from(d: &Document) -> Decoded<ArchivedEvent> {
    let f = Fields::new(d, "events");
    let payload = match f.value("payload") {
        Some(Bson::Binary(b)) if b.subtype == BinarySubtype::Generic => {
            Bytes::from(b.bytes.clone())
        }
        _ => return Err(f.err("payload", "is not generic binary")),
    };
    Ok(ArchivedEvent {
        event: Event {
            webhook_id: f.string("_id")?.into(),
            event_type: f.opt_string("event_type")?,
            payload,
            received_at: f.time("received_at")?,
        },
        subscription_ids: f.strings("subscription_ids")?,
        payload_omitted: f.opt_string("payload_omitted")?,
    })
}

pub fn delivery_doc(s: &SettledDelivery) -> Document {
    let d = &s.status;
    doc! {
        "_id": delivery_id(&s.webhook_id, &d.subscription_id),
        "webhook_id": &s.webhook_id,
        "subscription_id": d.subscription_id.as_str(),
        "status": d.status.as_str(),
        "attempts": int(d.attempts_made.into()),
        "last_error": opt_str(&d.last_error),
        "settled_at": date(s.settled_at),
    }
}

pub fn delivery_from(d: &Document) -> Decoded<SettledDelivery> {
    let f = Fields::new(d, "deliveries");
    let status = f
        .string("status")?
        .parse()
        .map_err(|_| f.err("status", "is not a delivery state"))?;
    Ok(SettledDelivery {
        webhook_id: f.string("webhook_id")?,
        status: DeliveryStatus {
            subscription_id: f.string("subscription_id")?.into(),
            status,
            attempts_made: f.unsigned("attempts")?,
            next_attempt_at: None,
            last_error: f.opt_string("last_error")?,
        },
        settled_at: f.time("settled_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn keys_are_unambiguous() {
        assert_ne!(delivery_id("a/b", "c"), delivery_id("a", "b/c"));
        assert_ne!(attempt_id("a", "b/1", 2), attempt_id("a", "b", 12));
        assert_eq!(attempt_id("msg_1", "sub_a", 3), "5:msg_1/sub_a/3");
    }

    #[test]
    fn times_keep_their_nanoseconds() {
        for t in [
            Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap(),
            Utc.timestamp_opt(-5, 999_999_999).unwrap(),
            Utc.timestamp_opt(0, 0).unwrap(),
        ] {
            let mut d = doc! { "_id": "x" };
            put_exact_time(&mut d, "t", Some(t));
            assert_eq!(Fields::new(&d, "c").time("t").unwrap(), t);
        }
        let d = doc! { "_id": "x", "t": Bson::Null };
        assert_eq!(Fields::new(&d, "c").opt_time("t").unwrap(), None);
    }

    #[test]
    fn misfits_name_their_document_and_field() {
        let d = doc! { "_id": "sub_1", "target_url": 3 };
        let e = subscription_from(&d).unwrap_err().to_string();
        assert!(e.contains("sub_1") && e.contains("target_url"), "{e}");
    }
}
