//! [`SubscriptionStore`] on the `subscriptions` collection.

use async_trait::async_trait;
use futures::TryStreamExt;
use herald_core::backend::{HealthChange, ReplaceHealth, Result, SubscriptionStore};
use herald_core::ids::SubscriptionId;
use herald_core::model::{Owner, Subscription};
use herald_core::StoreError;
use mongodb::bson::{doc, Bson, Document};
use mongodb::{Collection, Database};

use super::documents::{
    exact_time_fields, subscription_doc, subscription_from, subscription_set_doc,
};
use super::{convert, is_duplicate_key};

pub struct Subscriptions {
    db: Database,
    coll: Collection<Document>,
}

impl Subscriptions {
    pub fn new(db: &Database) -> Self {
        Self {
            db: db.clone(),
            coll: db.collection("subscriptions"),
        }
    }

    async fn find(&self, filter: Document, limit: Option<i64>) -> Result<Vec<Subscription>> {
        let docs: Vec<Document> = self
            .coll
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(limit.unwrap_or(0))
            .await
            .map_err(|e| convert("listing subscriptions", e))?
            .try_collect()
            .await
            .map_err(|e| convert("listing subscriptions", e))?;
        docs.iter()
            .map(|d| subscription_from(d).map_err(StoreError::from))
            .collect()
    }
}

#[async_trait]
impl SubscriptionStore for Subscriptions {
    async fn insert(&self, sub: &Subscription) -> Result<()> {
        match self.coll.insert_one(subscription_doc(sub)).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(StoreError::Conflict(format!(
                "subscription {} exists",
                sub.id
            ))),
            Err(e) => Err(convert("storing a subscription", e)),
        }
    }

    async fn get(&self, id: &SubscriptionId) -> Result<Option<Subscription>> {
        let found = self
            .coll
            .find_one(doc! { "_id": id.as_str() })
            .await
            .map_err(|e| convert("reading a subscription", e))?;
        Ok(found.as_ref().map(subscription_from).transpose()?)
    }

    async fn find_by_owner(&self, owner: &Owner) -> Result<Option<Subscription>> {
        // Served by the `owner_namespace_name` index; the kind narrows the few matches.
        let found = self
            .find(
                doc! {
                    "owner.namespace": &owner.namespace,
                    "owner.name": &owner.name,
                    "owner.kind": &owner.kind,
                },
                Some(1),
            )
            .await?;
        Ok(found.into_iter().next())
    }

    async fn list(&self, limit: usize, after: Option<&str>) -> Result<Vec<Subscription>> {
        // A limit of 0 means "no limit" to the server.
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = match after {
            Some(after) => doc! { "_id": { "$gt": after } },
            None => doc! {},
        };
        self.find(filter, Some(i64::try_from(limit).unwrap_or(i64::MAX)))
            .await
    }

    async fn list_all(&self) -> Result<Vec<Subscription>> {
        self.find(doc! {}, None).await
    }

    /// One write filtered on `_id` and the version read, so the check and the write are one
    /// document-level atomic step: `replace_one` of the whole document when the health is
    /// written too, else `update_one` with `$set` of every other field (the stored health
    /// stays). A record written before versions existed has no `version` field: it counts as
    /// version 0 (`null` matches a missing field).
    async fn replace(&self, sub: &Subscription, health: ReplaceHealth) -> Result<()> {
        let expected = i64::try_from(sub.version).unwrap_or(i64::MAX);
        let filter = if expected == 0 {
            doc! { "_id": sub.id.as_str(), "version": { "$in": [0_i64, Bson::Null] } }
        } else {
            doc! { "_id": sub.id.as_str(), "version": expected }
        };
        let mut next = sub.clone();
        next.version = sub.version + 1;
        let matched = match health {
            ReplaceHealth::Write => {
                self.coll
                    .replace_one(filter, subscription_doc(&next))
                    .await
                    .map_err(|e| convert("replacing a subscription", e))?
                    .matched_count
            }
            ReplaceHealth::Keep => {
                self.coll
                    .update_one(filter, doc! { "$set": subscription_set_doc(&next) })
                    .await
                    .map_err(|e| convert("replacing a subscription", e))?
                    .matched_count
            }
        };
        if matched == 0 {
            return match self.get(&sub.id).await? {
                Some(_) => Err(StoreError::Conflict(format!(
                    "subscription {} changed since it was read (version {})",
                    sub.id, sub.version
                ))),
                None => Err(StoreError::NotFound),
            };
        }
        Ok(())
    }

    /// One `update_one` with `$set` on the health fields only: the rest of the record and its
    /// version are never written, so a concurrent replace is neither reverted nor made to
    /// redo its change.
    async fn record_health(&self, id: &SubscriptionId, change: &HealthChange) -> Result<bool> {
        let (filter, set) = match change {
            HealthChange::FailingSince(since) => (
                doc! { "_id": id.as_str() },
                exact_time_fields("failing_since", *since),
            ),
            HealthChange::Disable { at, reason } => {
                let mut set = exact_time_fields("disabled_at", Some(*at));
                set.insert("disabled_reason", reason.as_str());
                // Only an enabled record: one disable is recorded (and counted) once.
                (doc! { "_id": id.as_str(), "disabled_at": Bson::Null }, set)
            }
        };
        let done = self
            .coll
            .update_one(filter, doc! { "$set": set })
            .await
            .map_err(|e| convert("recording a subscription's health", e))?;
        Ok(done.matched_count > 0)
    }

    async fn remove(&self, id: &SubscriptionId) -> Result<bool> {
        let done = self
            .coll
            .delete_one(doc! { "_id": id.as_str() })
            .await
            .map_err(|e| convert("deleting a subscription", e))?;
        Ok(done.deleted_count > 0)
    }

    async fn ping(&self) -> Result<()> {
        super::ping(&self.db).await
    }
}
