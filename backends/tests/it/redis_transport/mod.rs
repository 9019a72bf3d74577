//! The Redis transport and change feed against a real Redis (`scripts/testenv.sh -- cargo test
//! -p herald-backends --test it redis_transport::`). Each test works under its own key prefix; the
//! restart tests run a Redis of their own from the test server's config, so that stopping it
//! disturbs no other test. One module per concern; the helpers here are what they share.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use herald_backends::redis::{open, RedisParts};
use herald_core::backend::{ArchivedEvent, Transport};
use herald_core::model::{
    ClaimRequest, DeliveryState, DeliveryStatus, Disposition, IdempotencyKey, Job, PublishOutcome,
    QueueStats, Settlement,
};
use herald_core::testkit::{claim_request, publish};
use herald_core::StoreError;

const LEASE: Duration = Duration::from_secs(60);

/// Held by the tests that time pub/sub: one of them kills every pub/sub connection of the
/// shared server, whose resubscription wakes waiting workers early.
static PUBSUB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn parts(url: &str) -> (RedisParts, String) {
    let prefix = herald_testenv::unique_name("herald-test");
    let parts = open(url, &prefix).await.expect("open Redis");
    (parts, prefix)
}

macro_rules! redis_or_skip {
    () => {
        match herald_testenv::redis_url() {
            Some(url) => url,
            None => return,
        }
    };
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn lease(t: &Arc<dyn Transport>, req: &ClaimRequest) -> herald_core::backend::Leased {
    t.lease(req).await.expect("lease")
}

/// The counts of a [`QueueStats`], its age left out (it depends on timing).
fn counts(s: QueueStats) -> QueueStats {
    QueueStats {
        oldest_ready_age_ms: 0,
        ..s
    }
}

fn settle(job: &Job, disposition: Disposition) -> Settlement {
    Settlement {
        attempt: None,
        webhook_id: job.webhook_id.clone(),
        subscription_id: job.subscription_id.clone(),
        receipt: job.receipt.clone(),
        attempts_made: job.attempt_no,
        disposition,
        last_error: None,
    }
}

/// Leases everything due, however long the intake (a lease fans out one batch of it).
async fn lease_all(t: &Arc<dyn Transport>) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let jobs = lease(t, &claim_request("w_after", 10_000, LEASE))
            .await
            .jobs;
        if jobs.is_empty() {
            break;
        }
        got.extend(jobs.into_iter().map(|j| j.webhook_id.into_string()));
    }
    got.sort();
    got
}

mod counts;
mod durability;
mod fencing;
mod lease;
mod liveness;
mod publish;
mod wakeups;
