//! [`SubscriptionStore`] on the `subscriptions` collection.

use async_trait::async_trait;
use futures::TryStreamExt;
use herald_core::backend::{Result, SubscriptionStore};
use herald_core::model::{Owner, Subscription};
use herald_core::StoreError;
use mongodb::bson::{doc, Document};
use mongodb::{Collection, Database};

use super::documents::{subscription_doc, subscription_from};
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

    async fn get(&self, id: &str) -> Result<Option<Subscription>> {
        let found = self
            .coll
            .find_one(doc! { "_id": id })
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

    async fn replace(&self, sub: &Subscription) -> Result<()> {
        let done = self
            .coll
            .replace_one(doc! { "_id": &sub.id }, subscription_doc(sub))
            .await
            .map_err(|e| convert("replacing a subscription", e))?;
        if done.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<bool> {
        let done = self
            .coll
            .delete_one(doc! { "_id": id })
            .await
            .map_err(|e| convert("deleting a subscription", e))?;
        Ok(done.deleted_count > 0)
    }

    async fn ping(&self) -> Result<()> {
        super::ping(&self.db).await
    }
}
