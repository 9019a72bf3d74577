//! [`Archive`] on the `events` and `deliveries` collections.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use herald_core::backend::{Archive, ArchivedEvent, OpenEvents, Result, SettledDelivery};
use herald_core::model::DeliveryStatus;
use herald_core::StoreError;
use mongodb::bson::{doc, DateTime as BsonDateTime, Document};
use mongodb::{Collection, Database};

use super::documents::{date, delivery_doc, delivery_from, delivery_id, event_doc, event_from};
use super::{convert, duplicates_of_insert_many};

/// Old events looked at per page of the retention sweep, and so per question to the transport.
pub const PURGE_BATCH: usize = 1000;

pub struct MongoArchive {
    db: Database,
    events: Collection<Document>,
    deliveries: Collection<Document>,
}

impl MongoArchive {
    pub fn new(db: &Database) -> Self {
        Self {
            db: db.clone(),
            events: db.collection("events"),
            deliveries: db.collection("deliveries"),
        }
    }

    async fn find_deliveries(&self, filter: Document) -> Result<Vec<SettledDelivery>> {
        let docs: Vec<Document> = self
            .deliveries
            .find(filter)
            .sort(doc! { "webhook_id": 1, "subscription_id": 1 })
            .await
            .map_err(|e| convert("reading settled deliveries", e))?
            .try_collect()
            .await
            .map_err(|e| convert("reading settled deliveries", e))?;
        docs.iter()
            .map(|d| delivery_from(d).map_err(StoreError::from))
            .collect()
    }
}

#[async_trait]
impl Archive for MongoArchive {
    /// One unordered `insert_many`; an event stored already fails alone on the `_id` index.
    async fn store_events(&self, events: &[ArchivedEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let docs: Vec<Document> = events.iter().map(event_doc).collect();
        match self.events.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) => duplicates_of_insert_many(e)
                .map(drop)
                .map_err(|e| convert("storing events", e)),
        }
    }

    /// One unordered `insert_many` for the usual case (first settlement); the deliveries that
    /// were recorded before (a replayed delivery that ended again) are then replaced one by one.
    async fn record_settled(&self, deliveries: &[SettledDelivery]) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let docs: Vec<Document> = deliveries.iter().map(delivery_doc).collect();
        let again = match self
            .deliveries
            .insert_many(docs.clone())
            .ordered(false)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => {
                duplicates_of_insert_many(e).map_err(|e| convert("recording deliveries", e))?
            }
        };
        // In batch order, so that of two records of one delivery in the same batch the later
        // one stays.
        let mut again = again;
        again.sort_unstable();
        for i in again {
            let Some(d) = docs.get(i) else { continue };
            let id = d.get("_id").cloned().unwrap_or_default();
            self.deliveries
                .replace_one(doc! { "_id": id }, d.clone())
                .upsert(true)
                .await
                .map_err(|e| convert("recording a replayed delivery", e))?;
        }
        Ok(())
    }

    async fn event(&self, webhook_id: &str) -> Result<Option<ArchivedEvent>> {
        let found = self
            .events
            .find_one(doc! { "_id": webhook_id })
            .await
            .map_err(|e| convert("reading an event", e))?;
        Ok(found.as_ref().map(event_from).transpose()?)
    }

    async fn settled(&self, webhook_id: &str) -> Result<Vec<DeliveryStatus>> {
        Ok(self
            .find_deliveries(doc! { "webhook_id": webhook_id })
            .await?
            .into_iter()
            .map(|d| d.status)
            .collect())
    }

    async fn settled_among(&self, pairs: &[(String, String)]) -> Result<Vec<SettledDelivery>> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = pairs.iter().map(|(w, s)| delivery_id(w, s)).collect();
        self.find_deliveries(doc! { "_id": { "$in": ids } }).await
    }

    /// Events in pages of [`PURGE_BATCH`], oldest first on the `received_at` index: each page's
    /// ids go to `open` in one call, and the others are deleted with one `delete_many`. Paging
    /// goes on from the last page's time (the ids seen at that very millisecond left out), so
    /// kept events are not read again in this sweep.
    async fn purge(&self, cutoff: DateTime<Utc>, open: &dyn OpenEvents) -> Result<u64> {
        let before = date(cutoff);
        let mut deleted = 0;
        let mut after: Option<(BsonDateTime, Vec<String>)> = None;
        loop {
            let filter = match &after {
                None => doc! { "received_at": { "$lt": before } },
                Some((t, seen)) => doc! {
                    "received_at": { "$lt": before, "$gte": *t },
                    "_id": { "$nin": seen },
                },
            };
            let page: Vec<Document> = self
                .events
                .find(filter)
                .sort(doc! { "received_at": 1 })
                .projection(doc! { "_id": 1, "received_at": 1 })
                .limit(PURGE_BATCH as i64)
                .await
                .map_err(|e| convert("listing old events", e))?
                .try_collect()
                .await
                .map_err(|e| convert("listing old events", e))?;
            let mut ids = Vec::with_capacity(page.len());
            let mut last = None;
            for d in &page {
                let (Ok(id), Ok(t)) = (d.get_str("_id"), d.get_datetime("received_at")) else {
                    continue;
                };
                ids.push(id.to_string());
                last = Some(*t);
            }
            let gone: Vec<&String> = ids
                .iter()
                .zip(open.open_among(&ids).await?)
                .filter(|(_, open)| !open)
                .map(|(id, _)| id)
                .collect();
            if !gone.is_empty() {
                deleted += self
                    .events
                    .delete_many(doc! { "_id": { "$in": gone }, "received_at": { "$lt": before } })
                    .await
                    .map_err(|e| convert("purging old events", e))?
                    .deleted_count;
            }
            let (Some(last), true) = (last, page.len() == PURGE_BATCH) else {
                break;
            };
            let mut seen: Vec<String> = page
                .iter()
                .filter(|d| d.get_datetime("received_at").ok() == Some(&last))
                .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
                .collect();
            if let Some((t, before_seen)) = after.take() {
                if t == last {
                    seen.extend(before_seen);
                }
            }
            after = Some((last, seen));
        }
        let deliveries = self
            .deliveries
            .delete_many(doc! { "settled_at": { "$lt": before } })
            .await
            .map_err(|e| convert("purging old deliveries", e))?;
        Ok(deleted + deliveries.deleted_count)
    }

    async fn ping(&self) -> Result<()> {
        super::ping(&self.db).await
    }
}
