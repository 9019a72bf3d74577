//! [`AttemptLog`] on the `attempts` collection.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use herald_core::backend::{AttemptLog, Result};
use herald_core::model::Attempt;
use herald_core::StoreError;
use mongodb::bson::{doc, Document};
use mongodb::{Collection, Database};

use super::documents::{attempt_doc, attempt_from, date};
use super::{convert, duplicates_of_insert_many};

pub struct Attempts {
    coll: Collection<Document>,
}

impl Attempts {
    pub fn new(db: &Database) -> Self {
        Self {
            coll: db.collection("attempts"),
        }
    }

    async fn find(&self, filter: Document, sort: Document, limit: i64) -> Result<Vec<Attempt>> {
        let docs: Vec<Document> = self
            .coll
            .find(filter)
            .sort(sort)
            .limit(limit)
            .await
            .map_err(|e| convert("reading attempts", e))?
            .try_collect()
            .await
            .map_err(|e| convert("reading attempts", e))?;
        docs.iter()
            .map(|d| attempt_from(d).map_err(StoreError::from))
            .collect()
    }
}

#[async_trait]
impl AttemptLog for Attempts {
    /// One unordered `insert_many`: an attempt whose `_id` (webhook, subscription, number) is
    /// stored already fails alone on the `_id` index, which keeps the first record.
    async fn record(&self, attempts: Vec<Attempt>) -> Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        let docs: Vec<Document> = attempts.iter().map(attempt_doc).collect();
        match self.coll.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) => duplicates_of_insert_many(e)
                .map(drop)
                .map_err(|e| convert("logging attempts", e)),
        }
    }

    async fn by_subscription(&self, subscription_id: &str, limit: usize) -> Result<Vec<Attempt>> {
        // A limit of 0 means "no limit" to the server.
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.find(
            doc! { "subscription_id": subscription_id },
            doc! { "attempted_at": -1, "attempt": -1 },
            i64::try_from(limit).unwrap_or(i64::MAX),
        )
        .await
    }

    async fn by_webhook(&self, webhook_id: &str) -> Result<Vec<Attempt>> {
        self.find(
            doc! { "webhook_id": webhook_id },
            doc! { "attempted_at": 1, "attempt": 1 },
            0,
        )
        .await
    }

    /// One query (`$in`, served by the `webhook_id` index), not one per webhook.
    async fn by_webhooks(&self, webhook_ids: &[String]) -> Result<Vec<Attempt>> {
        if webhook_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.find(
            doc! { "webhook_id": { "$in": webhook_ids } },
            doc! { "webhook_id": 1, "attempted_at": 1, "attempt": 1 },
            0,
        )
        .await
    }

    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let done = self
            .coll
            .delete_many(doc! { "attempted_at": { "$lt": date(cutoff) } })
            .await
            .map_err(|e| convert("deleting old attempts", e))?;
        Ok(done.deleted_count)
    }
}
