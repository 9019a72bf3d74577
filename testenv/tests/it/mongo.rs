//! The MongoDB test server (FerretDB) is real: insert, find, and a unique index
//! that rejects a duplicate.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};

#[tokio::test]
async fn insert_find_and_unique_index() {
    let Some(uri) = herald_testenv::mongo_uri() else {
        return;
    };
    let client = Client::with_uri_str(&uri)
        .await
        .expect("connect to the MongoDB test server");
    let db = client.database(&herald_testenv::unique_name("herald_testenv").replace('-', "_"));
    let coll = db.collection::<Document>("subscriptions");

    coll.insert_one(
        doc! { "_id": "sub-1", "url": "https://example.test/hook", "events": ["a", "b"] },
    )
    .await
    .expect("insert_one");
    coll.insert_many([
        doc! { "_id": "sub-2", "url": "https://example.test/other", "events": ["a"] },
        doc! { "_id": "sub-3", "url": "https://example.test/third", "events": [] },
    ])
    .await
    .expect("insert_many");

    let found = coll
        .find_one(doc! { "_id": "sub-1" })
        .await
        .expect("find_one")
        .expect("the inserted document");
    assert_eq!(found.get_str("url").unwrap(), "https://example.test/hook");

    let with_a: Vec<Document> = coll
        .find(doc! { "events": "a" })
        .sort(doc! { "_id": 1 })
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("cursor");
    let ids: Vec<&str> = with_a.iter().map(|d| d.get_str("_id").unwrap()).collect();
    assert_eq!(ids, ["sub-1", "sub-2"]);

    let index = IndexModel::builder()
        .keys(doc! { "url": 1 })
        .options(
            IndexOptions::builder()
                .unique(true)
                .name("url_unique".to_string())
                .build(),
        )
        .build();
    let created = coll
        .create_index(index)
        .await
        .expect("create a unique index");
    assert_eq!(created.index_name, "url_unique");

    let dup = coll
        .insert_one(doc! { "_id": "sub-4", "url": "https://example.test/hook" })
        .await
        .expect_err("a duplicate url must be rejected by the unique index");
    match *dup.kind {
        ErrorKind::Write(WriteFailure::WriteError(ref e)) => assert_eq!(e.code, 11000, "{e:?}"),
        ref other => panic!("expected a duplicate-key write error, got {other:?}"),
    }

    let names = coll.list_index_names().await.expect("list indexes");
    assert!(names.contains(&"url_unique".to_string()), "{names:?}");

    db.drop().await.expect("drop the test database");
}
