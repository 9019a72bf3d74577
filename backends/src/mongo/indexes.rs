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
/// keys is a no-op on the server, so this runs at every start. One `createIndexes` command per
/// index: FerretDB 1.24 drops the connection (a panic on its side) when one command lists
/// several indexes that all exist already.
pub async fn create(db: &Database) -> Result<()> {
    for &(collection, name) in INDEXES {
        let model = IndexModel::builder()
            .keys(keys(name))
            .options(IndexOptions::builder().name(name.to_string()).build())
            .build();
        db.collection::<Document>(collection)
            .create_index(model)
            .await
            .map_err(|e| super::convert(&format!("creating the index {collection}.{name}"), e))?;
    }
    Ok(())
}
