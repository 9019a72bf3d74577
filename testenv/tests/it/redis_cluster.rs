//! The Redis Cluster test server is real: three masters share every slot, each with a replica,
//! and a node answers a key it does not own with a redirection.

use redis::aio::MultiplexedConnection;

async fn connect(node: &str) -> MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{node}/")).expect("valid node address");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to a cluster node")
}

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
}

#[tokio::test]
async fn three_masters_with_a_replica_each_serve_every_slot() {
    let Some(nodes) = herald_testenv::redis_cluster_nodes() else {
        return;
    };
    assert_eq!(nodes.len(), 6, "{nodes:?}");
    let mut masters = 0;
    for node in &nodes {
        assert!(node.starts_with("127.0.0.1:"), "loopback only: {node}");
        let mut con = connect(node).await;
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut con)
            .await
            .expect("CLUSTER INFO");
        assert_eq!(field(&info, "cluster_state"), Some("ok"), "{node}: {info}");
        assert_eq!(field(&info, "cluster_slots_ok"), Some("16384"), "{node}");
        assert_eq!(field(&info, "cluster_size"), Some("3"), "{node}");
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query_async(&mut con)
            .await
            .expect("ROLE");
        if matches!(role.first(), Some(redis::Value::BulkString(r)) if r.as_slice() == b"master") {
            masters += 1;
        }
    }
    assert_eq!(masters, 3);
}

#[tokio::test]
async fn a_key_on_another_node_is_redirected() {
    let Some(nodes) = herald_testenv::redis_cluster_nodes() else {
        return;
    };
    let key = herald_testenv::unique_name("herald-testenv-cluster");
    // Exactly one master owns the key's slot: the others (and the replicas, which redirect to
    // their master) answer MOVED.
    let mut owners = 0;
    let mut moved = 0;
    for node in &nodes {
        let mut con = connect(node).await;
        match redis::cmd("SET")
            .arg(&key)
            .arg("1")
            .query_async::<()>(&mut con)
            .await
        {
            Ok(()) => owners += 1,
            Err(e) => {
                assert_eq!(e.code(), Some("MOVED"), "{node}: {e}");
                moved += 1;
            }
        }
    }
    assert_eq!((owners, moved), (1, 5));
}
