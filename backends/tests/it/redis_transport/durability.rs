//! Connections and durability: clear failures without a server or with a wrong password,
//! outages, restarts and lost AOF tails, each on a Redis of the test's own.

use super::*;

use herald_testenv::{free_port, process};

#[tokio::test]
async fn a_wrong_password_or_no_server_fails_open_clearly_and_in_time() {
    let url = redis_or_skip!();
    let user = herald_testenv::unique_name("herald-user");
    let mut conn = raw(&url).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">right-password")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .unwrap();
    let hostport = url.trim_start_matches("redis://").trim_end_matches('/');
    let wrong = format!("redis://{user}:wrong-password@{hostport}/");
    let started = Instant::now();
    let err = open(&wrong, "herald-test").await.err().expect("refused");
    assert!(started.elapsed() < Duration::from_secs(3));
    let msg = err.chain();
    assert!(matches!(err, StoreError::Unavailable(..)), "{msg}");
    assert!(msg.contains("refused the credentials"), "{msg}");
    assert!(
        !msg.contains("wrong-password"),
        "the password stays out of messages: {msg}"
    );
    let right = format!("redis://{user}:right-password@{hostport}/");
    let parts = open(&right, &herald_testenv::unique_name("herald-test"))
        .await
        .unwrap();
    parts.transport.ping().await.unwrap();
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut conn)
        .await
        .unwrap();

    let port = free_port();
    let started = Instant::now();
    let err = open(&format!("redis://127.0.0.1:{port}/"), "herald-test")
        .await
        .err()
        .expect("no server");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, StoreError::Unavailable(..)),
        "{}",
        err.chain()
    );
}

/// A Redis of the test's own, with the test server's settings (AOF) but another port and
/// directory.
struct OwnRedis {
    conf: PathBuf,
    url: String,
    child: Option<process::Child>,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start(fsync: Option<&str>) -> Option<Self> {
        let base = herald_testenv::redis_conf()?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf: String = std::fs::read_to_string(base)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("port ") && !l.starts_with("dir "))
            .filter(|l| fsync.is_none() || !l.starts_with("appendfsync "))
            .map(|l| format!("{l}\n"))
            .collect();
        conf.push_str(&format!("port {port}\ndir {}\n", dir.path().display()));
        if let Some(f) = fsync {
            conf.push_str(&format!("appendfsync {f}\n"));
        }
        assert!(
            conf.contains("appendonly yes"),
            "the test server runs with AOF"
        );
        let path = dir.path().join("redis.conf");
        std::fs::write(&path, conf).unwrap();
        let mut r = Self {
            conf: path,
            url: format!("redis://127.0.0.1:{port}/"),
            child: None,
            _dir: dir,
        };
        r.run();
        Some(r)
    }

    fn run(&mut self) {
        self.child = Some(process::Child::spawn(
            Command::new("redis-server")
                .arg(&self.conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "redis-server",
        ));
        herald_testenv::wait_until_blocking("own Redis to start", Duration::from_secs(10), || {
            Command::new("redis-cli")
                .args(["-u", &self.url, "ping"])
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
                .then_some(())
        });
    }

    fn shutdown(&mut self) {
        let out = Command::new("redis-cli")
            .args(["-u", &self.url, "shutdown"])
            .output()
            .expect("redis-cli");
        // A successful SHUTDOWN closes the connection without a reply.
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        self.wait_exit();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Sends a signal (`STOP`, `CONT`) to the server.
    fn signal(&self, sig: &str) {
        process::signal(self.child.as_ref().expect("running"), sig);
    }

    fn wait_exit(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.wait_exit(Duration::from_secs(10));
        }
    }
}

/// How a test's own Redis goes down.
#[derive(Clone, Copy)]
enum Stop {
    /// `redis-cli shutdown`: the AOF is flushed.
    Shutdown,
    /// SIGKILL: only what was fsynced survives.
    Kill,
}

/// Stops `redis`; calls during the outage fail as `Unavailable`, with the driver's error, within
/// 2 s; once Redis is back the same transport works again (within a bounded time).
async fn outage_then_recovery(t: &Arc<dyn Transport>, redis: &mut OwnRedis, stop: Stop) {
    match stop {
        Stop::Shutdown => redis.shutdown(),
        Stop::Kill => redis.kill(),
    }
    let bound = Duration::from_millis(2100);
    for _ in 0..3 {
        let started = Instant::now();
        let err = t
            .publish(publish("msg_during", &["sub_a"], b"{}"))
            .await
            .unwrap_err();
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
        assert!(
            matches!(err, StoreError::Unavailable(..)),
            "{}",
            err.chain()
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the driver's error is kept"
        );
        let started = Instant::now();
        let err = t.lease(&claim_request("w", 1, LEASE)).await.unwrap_err();
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
        assert!(
            matches!(err, StoreError::Unavailable(..)),
            "{}",
            err.chain()
        );
        let started = Instant::now();
        assert!(t.stats().await.is_err());
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    }
    redis.run();
    herald_testenv::wait_ok(
        "the transport to reconnect",
        Duration::from_secs(10),
        || t.ping(),
    )
    .await;
}

/// Announces `id` until the follower hears it (within 6 s); whether a reset came first.
async fn announce_until_heard(
    feed: &Arc<dyn herald_core::backend::ChangeFeed>,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
    id: &str,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut reset = false;
    loop {
        assert!(Instant::now() < deadline, "{id} never reached the follower");
        // Fails while Redis is still coming back; the next round tries again.
        let _ = feed.announce(id).await;
        while let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            match got.as_deref() {
                None => reset = true,
                Some(g) if g == id => return reset,
                Some(_) => {}
            }
        }
    }
}

async fn publish_many(t: &Arc<dyn Transport>, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("msg_{i:04}");
        let subs = [format!("sub_{}", i % 3)];
        let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
        assert_eq!(
            t.publish(publish(&id, &subs, b"{}")).await.unwrap(),
            PublishOutcome::Accepted
        );
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn acknowledged_publishes_survive_a_redis_restart() {
    let Some(mut redis) = OwnRedis::start(None) else {
        return;
    };
    let (p, _) = parts(&redis.url).await;
    let t = p.transport.clone();
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    let feed = p.changes.clone();
    let follow = tokio::spawn(async move {
        feed.follow(Box::new(move |id| {
            let _ = tx.send(id.map(str::to_string));
        }))
        .await
    });
    // Subscribed (and everything the feed said so far read) before Redis goes down.
    announce_until_heard(&p.changes, &mut changes, "sub_before").await;
    let ids = publish_many(&t, 300).await;
    // One delivery in flight before the restart stays leased to its worker.
    let held = lease(&t, &claim_request("w_before", 1, LEASE))
        .await
        .jobs
        .remove(0);
    outage_then_recovery(&t, &mut redis, Stop::Shutdown).await;

    // The change feed resubscribed by itself: its follower was told to forget its cache, and
    // announcements reach it again (the listener backs off 2 s at most between tries).
    let reset = announce_until_heard(&p.changes, &mut changes, "sub_after").await;
    assert!(reset, "after the restart the follower forgets its cache");
    follow.abort();

    let mut expect: Vec<String> = ids.into_iter().filter(|i| *i != held.webhook_id).collect();
    expect.sort();
    assert_eq!(
        lease_all(&t).await,
        expect,
        "every queued delivery is still leasable"
    );
    assert_eq!(
        t.held(&[held.receipt.to_string()]).await.unwrap(),
        vec![true]
    );
    assert_eq!(
        t.settle(&[settle(&held, Disposition::Delivered)])
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn with_fsync_always_acknowledged_publishes_survive_a_kill() {
    let Some(mut redis) = OwnRedis::start(Some("always")) else {
        return;
    };
    let (p, _) = parts(&redis.url).await;
    let t = p.transport.clone();
    let mut ids = publish_many(&t, 200).await;
    outage_then_recovery(&t, &mut redis, Stop::Kill).await;
    ids.sort();
    assert_eq!(lease_all(&t).await, ids);
}

#[tokio::test]
async fn a_redis_that_stops_answering_fails_calls_in_time() {
    let Some(redis) = OwnRedis::start(None) else {
        return;
    };
    let (p, _) = parts(&redis.url).await;
    let t = p.transport.clone();
    publish_many(&t, 3).await;
    // Stopped, the server still accepts connections (the kernel does) but answers nothing.
    redis.signal("STOP");
    let bound = Duration::from_millis(2100);
    for _ in 0..2 {
        let started = Instant::now();
        let err = t
            .publish(publish("msg_stopped", &["sub_a"], b"{}"))
            .await
            .unwrap_err();
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
        assert!(
            matches!(err, StoreError::Unavailable(..)),
            "{}",
            err.chain()
        );
        let started = Instant::now();
        let err = t.lease(&claim_request("w", 10, LEASE)).await.unwrap_err();
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
        assert!(
            matches!(err, StoreError::Unavailable(..)),
            "{}",
            err.chain()
        );
    }
    let started = Instant::now();
    p.changes.announce("sub_a").await.unwrap_err();
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    redis.signal("CONT");
    herald_testenv::wait_ok("the transport to recover", Duration::from_secs(10), || {
        t.ping()
    })
    .await;
    // A publish that timed out may still apply once the server resumes (it had the command):
    // an Unavailable publish is not known to be lost, which is why clients retry with their
    // idempotency key. The ones acknowledged before are all there.
    let got = lease_all(&t).await;
    assert!(got.len() >= 3, "{got:?}");
    for id in ["msg_0000", "msg_0001", "msg_0002"] {
        assert!(got.iter().any(|g| g == id), "{id} in {got:?}");
    }
}

/// The incremental AOF file of a Redis 7 (multi-part AOF) in `dir`.
fn incremental_aof(dir: &std::path::Path) -> PathBuf {
    let aof_dir = dir.join("appendonlydir");
    std::fs::read_dir(&aof_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", aof_dir.display()))
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .expect("an incremental AOF file")
}

#[tokio::test]
async fn lease_tokens_keep_rising_after_a_restart_that_lost_the_aofs_tail() {
    let Some(mut redis) = OwnRedis::start(Some("always")) else {
        return;
    };
    let (p, _) = parts(&redis.url).await;
    let t = p.transport.clone();
    t.publish(publish("msg_fenced", &["sub_a"], b"{}"))
        .await
        .unwrap();
    // Everything up to here is in the AOF (fsync always); what the lease writes is the tail
    // that a crash with `appendfsync everysec` may lose.
    let aof = incremental_aof(redis._dir.path());
    let before_lease = std::fs::metadata(&aof).unwrap().len();
    let first = lease(&t, &claim_request("w_old", 1, LEASE)).await.jobs;
    assert_eq!(first.len(), 1);
    assert!(std::fs::metadata(&aof).unwrap().len() > before_lease);
    redis.kill();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&aof)
        .unwrap()
        .set_len(before_lease)
        .unwrap();
    redis.run();
    herald_testenv::wait_ok(
        "the transport to reconnect",
        Duration::from_secs(10),
        || t.ping(),
    )
    .await;

    // The lease is gone with the tail, so the delivery is leased again: under a new token, never
    // the one the old holder (still sending, as far as it knows) has.
    let second = lease(&t, &claim_request("w_new", 1, LEASE)).await.jobs;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].webhook_id, "msg_fenced");
    let token = |j: &Job| {
        j.receipt
            .rsplit('|')
            .next()
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    assert!(
        token(&second[0]) > token(&first[0]),
        "{} after {}",
        second[0].receipt,
        first[0].receipt
    );
    // The old holder's settle is stale and changes nothing; the new holder's counts.
    assert_eq!(
        t.settle(&[settle(&first[0], Disposition::Delivered)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        t.held(&[second[0].receipt.to_string()]).await.unwrap(),
        vec![true]
    );
    assert_eq!(
        t.settle(&[settle(&second[0], Disposition::Delivered)])
            .await
            .unwrap(),
        0
    );
}
