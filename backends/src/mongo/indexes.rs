//! The indexes of every collection, created at open. The module docs of [`super`] say why each
//! one exists.

use herald_core::backend::Result;
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

/// (collection, index name) of every index [`create`] makes.
pub const INDEXES: &[(&str, &str)] = &[
    ("subscriptions", "owner_namespace_name"),
    ("attempts", "subscription_newest"),
    ("attempts", "webhook_oldest"),
    ("attempts", "attempted_at"),
    ("events", "received_at"),
    ("deliveries", "settled_at"),
    ("deliveries", "webhook_id"),
];

fn keys(name: &str) -> Document {
    match name {
        "owner_namespace_name" => doc! { "owner.namespace": 1, "owner.name": 1 },
        "subscription_newest" => doc! { "subscription_id": 1, "attempted_at": -1, "attempt": -1 },
        "webhook_oldest" => doc! { "webhook_id": 1, "attempted_at": 1, "attempt": 1 },
        "attempted_at" => doc! { "attempted_at": 1 },
        "received_at" => doc! { "received_at": 1 },
        "settled_at" => doc! { "settled_at": 1 },
        "webhook_id" => doc! { "webhook_id": 1 },
        other => unreachable!("no keys for index {other}"),
    }
}

/// Creates every index that is missing. Creating an index that exists with the same name and
/// keys is a no-op on the server, so this runs at every start.
pub async fn create(db: &Database) -> Result<()> {
    let mut by_collection: Vec<(&str, Vec<IndexModel>)> = Vec::new();
    for &(collection, name) in INDEXES {
        let model = IndexModel::builder()
            .keys(keys(name))
            .options(IndexOptions::builder().name(name.to_string()).build())
            .build();
        match by_collection.iter_mut().find(|(c, _)| *c == collection) {
            Some((_, models)) => models.push(model),
            None => by_collection.push((collection, vec![model])),
        }
    }
    for (collection, models) in by_collection {
        db.collection::<Document>(collection)
            .create_indexes(models)
            .await
            .map_err(|e| super::convert(&format!("creating the indexes of {collection}"), e))?;
    }
    Ok(())
}
