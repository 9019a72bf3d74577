//! MongoDB: subscriptions, the attempt log, and the archive of events and settled deliveries.
//!
//! Everything here stays within what both MongoDB 6/7 and FerretDB 1.24 accept: no
//! transactions, TTL indexes, change streams or partial indexes, and no document key that comes
//! from user input (headers are an array of pairs, payloads are binary). Every write is one
//! document-level atomic step, and repeating it after a crash changes nothing.
//!
//! ## Collections
//!
//! | collection | `_id` | document |
//! |---|---|---|
//! | `subscriptions` | the subscription id | `target_url`, `event_types` (array), `secret`, `headers` (array of `{name, value}`, names in their own case), `max_attempts`, `timeout_ms`, `retry_schedule_ms` (array), `paused`, `owner` (`{kind, namespace, name}` or null), `created_at`, `updated_at`, `disabled_at`, `disabled_reason`, `failing_since`, `previous_secret`, `previous_secret_expires_at`, `version` (moved on by every replace; health writes `$set` only their fields) |
//! | `events` | the webhook id | `payload` (BSON binary: the exact bytes received), `event_type`, `received_at`, `subscription_ids` (array); `payload_omitted` (why) when the whole event was refused for good and is kept without its payload |
//! | `deliveries` | `<len(webhook_id)>:<webhook_id>/<subscription_id>` | a delivery that ended other than by a terminal attempt (which alone tells the usual end, see `herald_backends::split`): `webhook_id`, `subscription_id`, `status` (`succeeded` / `failed`), `attempts`, `last_error`, `settled_at` |
//! | `attempts` | `<len(webhook_id)>:<webhook_id>/<subscription_id>/<attempt>` | `webhook_id`, `subscription_id`, `attempt` (1 for the first), `event_type`, `target_url`, `attempted_at`, `outcome` (`Success` / `FailedAttempt` / `Failure`), `http_status`, `error`, `duration_ms`, `response_excerpt` |
//!
//! Times are BSON dates (milliseconds). A subscription's times also keep their sub-millisecond
//! nanoseconds in a sibling `<field>_ns` integer, so a subscription reads back exactly as it was
//! written. Absent optional values are stored as null, except in `events` and `attempts`, the
//! documents written for every event and attempt, which leave them out (every field costs the
//! server work on each insert); reads take a missing field and a null alike. The `_id`s of
//! deliveries and attempts are derived from what identifies them, so inserting one twice hits
//! the `_id` index instead of making a copy (the webhook id is length-prefixed, so no pair of
//! ids can make the same key).
//!
//! ## Indexes
//!
//! All are created at [`open`], idempotently (same name, same keys: a no-op when present).
//!
//! | collection | index | why |
//! |---|---|---|
//! | `subscriptions` | `owner_namespace_name`: `owner.namespace`, `owner.name` | the operator finds the subscription of a `WebhookSubscription` by its namespace and name (`find_by_owner`). Not unique: unowned subscriptions all have a null owner and partial indexes are out; one subscription per owner is kept by the operator, whose leader reconciles each resource one at a time and looks up before it inserts |
//! | `attempts` | `subscription_newest`: `subscription_id`, `attempted_at` -1, `attempt` -1 | a subscription's recent attempts, newest first, read from the index with no sort in memory |
//! | `attempts` | `webhook_oldest`: `webhook_id`, `attempted_at`, `attempt` | every attempt of one webhook, oldest first; its terminal attempts are the usual ends of its deliveries (`GET /webhooks/{id}`, replay, redelivered jobs) |
//! | `attempts` | `attempted_at` | the retention sweep deletes attempts older than the cutoff without a collection scan |
//! | `events` | `received_at` | the retention sweep deletes events received before the cutoff |
//! | `deliveries` | `settled_at` | the retention sweep deletes deliveries settled before the cutoff |
//! | `deliveries` | `webhook_id` | the settled deliveries of one webhook (`GET /webhooks/{id}`, replay) |
//!
//! Lookups by `_id` (a subscription, an event, [`Archive::settled_among`]) use the built-in
//! `_id` index.

mod archive;
mod attempts;
mod documents;
mod indexes;
mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use herald_core::backend::{Archive, AttemptLog, Result, SubscriptionStore};
use herald_core::StoreError;
use mongodb::bson::doc;
use mongodb::error::{Error as DriverError, ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

pub use indexes::INDEXES;

/// The database used when neither the caller nor the URI names one.
pub const DEFAULT_DATABASE: &str = "herald";

/// How long an operation waits for a reachable server before it fails. Short, so that a wrong
/// address or a server that is down fails `open` (and later calls) promptly instead of hanging.
pub const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The MongoDB parts of a production backend.
pub struct MongoParts {
    pub subscriptions: Arc<dyn SubscriptionStore>,
    pub attempts: Arc<dyn AttemptLog>,
    pub archive: Arc<dyn Archive>,
}

/// Connects, checks the server answers, and creates the indexes.
///
/// The database is `database` when given, else the URI's default database, else
/// [`DEFAULT_DATABASE`].
pub async fn open(uri: &str, database: Option<&str>) -> Result<MongoParts> {
    let db = connect(uri, database).await?;
    ping(&db).await?;
    indexes::create(&db).await?;
    Ok(MongoParts {
        subscriptions: Arc::new(subscriptions::Subscriptions::new(&db)),
        attempts: Arc::new(attempts::Attempts::new(&db)),
        archive: Arc::new(archive::MongoArchive::new(&db)),
    })
}

async fn connect(uri: &str, database: Option<&str>) -> Result<Database> {
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| StoreError::backend_by("the MongoDB URI is not valid", e))?;
    if options.server_selection_timeout.is_none() {
        options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
    }
    if options.connect_timeout.is_none() {
        options.connect_timeout = Some(SERVER_SELECTION_TIMEOUT);
    }
    if options.app_name.is_none() {
        options.app_name = Some("herald".into());
    }
    let name = database
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .or_else(|| options.default_database.clone())
        .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
    let client = Client::with_options(options)
        .map_err(|e| StoreError::backend_by("the MongoDB client options are not valid", e))?;
    Ok(client.database(&name))
}

pub(crate) async fn ping(db: &Database) -> Result<()> {
    db.run_command(doc! { "ping": 1 })
        .await
        .map(|_| ())
        .map_err(|e| convert(&format!("pinging MongoDB database {}", db.name()), e))
}

/// The duplicate-key error code, for `_id` and unique indexes.
pub(crate) const DUPLICATE_KEY: i32 = 11000;

/// Server codes of a node that cannot take the operation now but may soon: not the primary
/// (any more), recovering, shutting down, or a network failure it saw itself.
const TRANSIENT_CODES: [i32; 14] = [
    10107, 13435, 10058, // not writable primary
    11600, 11602, 13436, 189, 91, // recovering, shutting down
    6, 7, 89, 9001, // host unreachable / not found, network timeout, socket exception
    262, 134, // exceeded time limit, read concern majority not available
];

/// Whether the server could not be reached or cannot serve the operation for now, so a retry
/// may succeed.
pub(crate) fn is_transient(e: &DriverError) -> bool {
    let kind_says = match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. } => true,
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => TRANSIENT_CODES.contains(&w.code),
        ErrorKind::InsertMany(m) => m
            .write_concern_error
            .as_ref()
            .is_some_and(|w| TRANSIENT_CODES.contains(&w.code)),
        _ => false,
    };
    kind_says
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<DriverError>())
            .is_some_and(is_transient)
}

/// Server codes of a write refused for what it holds, which the same write gets again every
/// time: BadValue (2, also FerretDB's answer to a key with `.` or `$`), TypeMismatch (14),
/// DocumentValidationFailure (121), BSONObjectTooLarge (10334) and the "document too large"
/// codes of inserts and updates (17419, 17420).
const REJECTED_CODES: [i32; 6] = [2, 14, 121, 10334, 17419, 17420];

/// Whether the write was refused for good (see [`StoreError::Rejected`]): the driver would not
/// send it (a document over the server's `maxBsonObjectSize`, which it checks itself, or one
/// it cannot encode), or the server refused it with one of [`REJECTED_CODES`]. A batch counts
/// when every document that failed was refused so or was a duplicate, and one was refused.
pub(crate) fn is_rejected(e: &DriverError) -> bool {
    match e.kind.as_ref() {
        ErrorKind::InvalidArgument { .. } | ErrorKind::BsonSerialization(_) => true,
        ErrorKind::Write(WriteFailure::WriteError(w)) => REJECTED_CODES.contains(&w.code),
        ErrorKind::Command(c) => REJECTED_CODES.contains(&c.code),
        ErrorKind::InsertMany(m) => {
            let errors = m.write_errors.as_deref().unwrap_or_default();
            m.write_concern_error.is_none()
                && errors.iter().any(|w| REJECTED_CODES.contains(&w.code))
                && errors
                    .iter()
                    .all(|w| w.code == DUPLICATE_KEY || REJECTED_CODES.contains(&w.code))
        }
        _ => false,
    }
}

/// Whether a single-document write failed on a duplicate key.
pub(crate) fn is_duplicate_key(e: &DriverError) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// Converts a driver error, keeping it as the source: `Unavailable` when a retry may succeed,
/// `Rejected` when the same write can never succeed, `Backend` otherwise. `doing` says what failed ("storing events").
pub(crate) fn convert(doing: &str, e: DriverError) -> StoreError {
    if is_transient(&e) {
        StoreError::unavailable_by(format!("MongoDB is unavailable: {doing}"), e)
    } else if is_rejected(&e) {
        StoreError::rejected_by(format!("MongoDB refused the write: {doing}"), e)
    } else if matches!(e.kind.as_ref(), ErrorKind::Authentication { .. }) {
        StoreError::backend_by(
            format!("MongoDB refused the credentials of MONGO_URI: {doing}"),
            e,
        )
    } else {
        StoreError::backend_by(format!("MongoDB failed: {doing}"), e)
    }
}

/// For unordered `insert_many` calls: `Ok(indexes)` of the documents that were not inserted
/// because their `_id` exists already (the batch's other documents are in), the error itself
/// when anything else failed.
pub(crate) fn duplicates_of_insert_many(
    e: DriverError,
) -> std::result::Result<Vec<usize>, DriverError> {
    if let ErrorKind::InsertMany(m) = e.kind.as_ref() {
        if m.write_concern_error.is_none() {
            if let Some(errors) = &m.write_errors {
                if !errors.is_empty() && errors.iter().all(|w| w.code == DUPLICATE_KEY) {
                    return Ok(errors.iter().map(|w| w.index).collect());
                }
            }
        }
    }
    Err(e)
}
