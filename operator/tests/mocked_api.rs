//! The reconciler against a mocked API server (tower-test), for the paths that are hard to
//! provoke on a real one, checking each request it makes and answering as the server would.
//! The store is a real SQLite file.

use std::sync::Arc;
use std::time::Duration;

use herald_core::backend::Backend;
use herald_core::cache::SubscriptionCache;
use herald_core::model::{Owner, SubscriptionSpec};
use herald_core::sqlite::{Sqlite, Sync};
use herald_core::ssrf::TargetGuard;
use herald_core::subscriptions::Subscriptions;
use herald_operator::controller::{self, Context, FINALIZER};
use herald_operator::crd::{SecretKeyRef, WebhookSubscription, WebhookSubscriptionSpec};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const BASE: &str = "/apis/herald.dev/v1alpha1/namespaces/default/webhooksubscriptions";

struct Fixture {
    ctx: Arc<Context>,
    server: Handle,
    backend: Backend,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let backend = Sqlite::open(&dir.path().join("mocked.db"), Sync::Normal)
        .unwrap()
        .backend();
    let cache = Arc::new(SubscriptionCache::for_backend(&backend));
    let subs = Arc::new(Subscriptions::new(
        cache,
        backend.queue.clone(),
        TargetGuard::new(vec![]),
    ));
    let (service, server) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Arc::new(Context::new(client, subs, "herald-operator-test".into()));
    Fixture {
        ctx,
        server,
        backend,
        _dir: dir,
    }
}

fn resource(name: &str) -> WebhookSubscription {
    let mut w = WebhookSubscription::new(
        name,
        WebhookSubscriptionSpec {
            target_url: "https://receiver.example/hook".into(),
            event_types: vec!["order.created".into()],
            secret_ref: None,
            headers: Default::default(),
            delivery: None,
            paused: false,
        },
    );
    w.meta_mut().namespace = Some("default".into());
    w.meta_mut().generation = Some(3);
    w.meta_mut().uid = Some("0b7a5f2e-1111-2222-3333-444455556666".into());
    w
}

fn finalized(mut w: WebhookSubscription) -> WebhookSubscription {
    w.finalizers_mut().push(FINALIZER.into());
    w
}

fn deleted(mut w: WebhookSubscription) -> WebhookSubscription {
    w.meta_mut().deletion_timestamp = Some(Time("2026-01-02T03:04:05Z".parse().unwrap()));
    w
}

fn owner(name: &str) -> Owner {
    Owner {
        kind: "kubernetes".into(),
        namespace: "default".into(),
        name: name.into(),
    }
}

/// Takes the next request, checks its method and path (the query string is not compared), and
/// returns it as JSON with the responder.
async fn next(
    server: &mut Handle,
    method: Method,
    path: &str,
) -> (
    String,
    Value,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), server.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
        .expect("the client is alive");
    assert_eq!(req.method(), method, "{}", req.uri());
    assert_eq!(req.uri().path(), path);
    let uri = req.uri().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (uri, body, send)
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, status: StatusCode, body: Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

/// Answers an Event creation and returns the Event.
async fn expect_event(server: &mut Handle) -> Value {
    let (_, ev, send) = next(
        server,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/default/events",
    )
    .await;
    respond(send, StatusCode::CREATED, ev.clone());
    ev
}

/// Answers a status apply with the resource carrying that status; returns the status sent.
async fn expect_status(server: &mut Handle, w: &WebhookSubscription) -> Value {
    let path = format!("{BASE}/{}/status", w.name_any());
    let (uri, body, send) = next(server, Method::PATCH, &path).await;
    assert!(
        uri.contains("fieldManager=herald-operator") && uri.contains("force=true"),
        "server-side apply, forced: {uri}"
    );
    let mut answer = serde_json::to_value(w).unwrap();
    answer["status"] = body["status"].clone();
    respond(send, StatusCode::OK, answer);
    body["status"].clone()
}

#[tokio::test]
async fn a_resource_without_the_finalizer_gets_it_first() {
    let Fixture {
        ctx,
        mut server,
        backend,
        _dir,
    } = fixture();
    let w = resource("orders");
    let expected = finalized(w.clone());
    let api = tokio::spawn(async move {
        let (_, patch, send) = next(&mut server, Method::PATCH, &format!("{BASE}/orders")).await;
        assert_eq!(
            patch,
            json!([
                { "op": "test", "path": "/metadata/finalizers", "value": null },
                { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }
            ])
        );
        respond(
            send,
            StatusCode::OK,
            serde_json::to_value(&expected).unwrap(),
        );
        server
    });
    let action = controller::reconcile(Arc::new(w), ctx).await.unwrap();
    // The finalizer's own patch triggers the next reconcile; nothing is stored before it.
    assert_eq!(action, Action::await_change());
    api.await.unwrap();
    assert!(backend
        .subscriptions
        .find_by_owner(&owner("orders"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_missing_secret_gives_ready_false_an_event_and_a_backoff() {
    let Fixture {
        ctx,
        mut server,
        backend,
        _dir,
    } = fixture();
    let mut w = finalized(resource("orders"));
    w.spec.secret_ref = Some(SecretKeyRef {
        name: "orders-webhook".into(),
        key: "secret".into(),
    });
    let sent = w.clone();
    let api = tokio::spawn(async move {
        let (_, _, send) = next(
            &mut server,
            Method::GET,
            "/api/v1/namespaces/default/secrets/orders-webhook",
        )
        .await;
        respond(
            send,
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": "secrets \"orders-webhook\" not found",
                   "reason": "NotFound", "code": 404}),
        );
        let status = expect_status(&mut server, &sent).await;
        let ev = expect_event(&mut server).await;
        (status, ev, server)
    });
    let err = controller::reconcile(Arc::new(w.clone()), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "SecretNotFound");
    let (status, ev, _server) = api.await.unwrap();
    let cond = &status["conditions"][0];
    assert_eq!(cond["type"], "Ready");
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "SecretNotFound");
    assert!(cond["message"]
        .as_str()
        .unwrap()
        .contains("default/orders-webhook"));
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(ev["reason"], "SecretNotFound");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["regarding"]["name"], "orders");
    assert!(backend
        .subscriptions
        .find_by_owner(&owner("orders"))
        .await
        .unwrap()
        .is_none());
    // Repeated failures back off, up to a cap.
    let w = Arc::new(w);
    let first = controller::error_policy(w.clone(), &err, ctx.clone());
    let second = controller::error_policy(w.clone(), &err, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(2)));
    assert_eq!(second, Action::requeue(Duration::from_secs(4)));
    for _ in 0..20 {
        controller::error_policy(w.clone(), &err, ctx.clone());
    }
    assert_eq!(
        controller::error_policy(w, &err, ctx),
        Action::requeue(Duration::from_secs(300))
    );
}

#[tokio::test]
async fn a_forbidden_secret_is_named_in_the_status() {
    let Fixture {
        ctx,
        mut server,
        backend: _backend,
        _dir,
    } = fixture();
    let mut w = finalized(resource("orders"));
    w.spec.secret_ref = Some(SecretKeyRef {
        name: "orders-webhook".into(),
        key: "secret".into(),
    });
    let sent = w.clone();
    let api = tokio::spawn(async move {
        let (_, _, send) = next(
            &mut server,
            Method::GET,
            "/api/v1/namespaces/default/secrets/orders-webhook",
        )
        .await;
        respond(
            send,
            StatusCode::FORBIDDEN,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": "secrets \"orders-webhook\" is forbidden",
                   "reason": "Forbidden", "code": 403}),
        );
        let status = expect_status(&mut server, &sent).await;
        let ev = expect_event(&mut server).await;
        (status, ev)
    });
    let err = controller::reconcile(Arc::new(w), ctx).await.unwrap_err();
    assert_eq!(err.metric_label(), "SecretForbidden");
    let (status, ev) = api.await.unwrap();
    assert_eq!(status["conditions"][0]["reason"], "SecretForbidden");
    assert!(status["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .contains("is forbidden"));
    assert_eq!(ev["reason"], "SecretForbidden");
}

#[tokio::test]
async fn a_finalized_resource_is_stored_and_gets_ready_true() {
    let Fixture {
        ctx,
        mut server,
        backend,
        _dir,
    } = fixture();
    let w = finalized(resource("orders"));
    let sent = w.clone();
    let api = tokio::spawn(async move {
        let status = expect_status(&mut server, &sent).await;
        let ev = expect_event(&mut server).await;
        (status, ev)
    });
    let action = controller::reconcile(Arc::new(w), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(controller::RESYNC));
    let (status, ev) = api.await.unwrap();
    let sub = backend
        .subscriptions
        .find_by_owner(&owner("orders"))
        .await
        .unwrap()
        .expect("the record");
    assert_eq!(status["subscriptionId"], sub.id.as_str());
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][0]["reason"], "Synced");
    assert_eq!(ev["reason"], "Synced");
    assert_eq!(ev["type"], "Normal");
}

#[tokio::test]
async fn a_spec_core_refuses_waits_for_a_change_without_retrying() {
    let Fixture {
        ctx,
        mut server,
        backend,
        _dir,
    } = fixture();
    // The schema lets a private address through; the SSRF guard does not.
    let mut w = finalized(resource("orders"));
    w.spec.target_url = "http://10.1.2.3/hook".into();
    let sent = w.clone();
    let api = tokio::spawn(async move {
        let status = expect_status(&mut server, &sent).await;
        let ev = expect_event(&mut server).await;
        (status, ev)
    });
    let action = controller::reconcile(Arc::new(w), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    let (status, ev) = api.await.unwrap();
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(status["conditions"][0]["reason"], "InvalidSpec");
    assert!(status["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .starts_with("target_url"));
    assert_eq!(ev["reason"], "InvalidSpec");
    assert!(backend.subscriptions.list_all().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_disabled_endpoint_shows_as_ready_false_until_the_spec_changes() {
    let Fixture {
        ctx,
        mut server,
        backend: _backend,
        _dir,
    } = fixture();
    let w = finalized(resource("orders"));
    let spec = w.spec.to_subscription_spec(None);
    let sub = ctx
        .subscriptions
        .apply_owned(&owner("orders"), &spec)
        .await
        .unwrap();
    assert!(ctx
        .subscriptions
        .disable(&sub.id, "the endpoint answered 410 Gone", "gone")
        .await
        .unwrap());
    let sent = w.clone();
    let api = tokio::spawn(async move {
        let status = expect_status(&mut server, &sent).await;
        let ev = expect_event(&mut server).await;
        (status, ev)
    });
    controller::reconcile(Arc::new(w), ctx.clone())
        .await
        .unwrap();
    let (status, ev) = api.await.unwrap();
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(status["conditions"][0]["reason"], "EndpointDisabled");
    assert!(status["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .contains("410 Gone"));
    assert_eq!(status["subscriptionId"], sub.id.as_str());
    assert_eq!(ev["type"], "Warning");
    assert!(ctx.subscriptions.get(&sub.id).await.unwrap().is_disabled());
}

#[tokio::test]
async fn deletion_removes_the_record_then_the_finalizer() {
    let Fixture {
        ctx,
        mut server,
        backend,
        _dir,
    } = fixture();
    let sub = ctx
        .subscriptions
        .apply_owned(
            &owner("orders"),
            &SubscriptionSpec {
                target_url: "https://receiver.example/hook".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let w = deleted(finalized(resource("orders")));
    let gone = w.clone();
    let api = tokio::spawn(async move {
        let ev = expect_event(&mut server).await;
        let (_, patch, send) = next(&mut server, Method::PATCH, &format!("{BASE}/orders")).await;
        assert_eq!(
            patch,
            json!([
                { "op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER },
                { "op": "remove", "path": "/metadata/finalizers/0" }
            ])
        );
        let mut answer = gone.clone();
        answer.finalizers_mut().clear();
        respond(send, StatusCode::OK, serde_json::to_value(&answer).unwrap());
        ev
    });
    let action = controller::reconcile(Arc::new(w), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    let ev = api.await.unwrap();
    assert_eq!(ev["reason"], "Deleted");
    assert!(backend.subscriptions.get(&sub.id).await.unwrap().is_none());
}

/// A store that cannot be reached: every call fails as `Unavailable`.
struct Down;

#[async_trait::async_trait]
impl herald_core::backend::SubscriptionStore for Down {
    async fn insert(
        &self,
        _: &herald_core::model::Subscription,
    ) -> herald_core::backend::Result<()> {
        Err(herald_core::StoreError::unavailable("down"))
    }
    async fn get(
        &self,
        _: &str,
    ) -> herald_core::backend::Result<Option<herald_core::model::Subscription>> {
        Err(herald_core::StoreError::unavailable("down"))
    }
    async fn find_by_owner(
        &self,
        _: &Owner,
    ) -> herald_core::backend::Result<Option<herald_core::model::Subscription>> {
        Err(herald_core::StoreError::unavailable("down"))
    }
    async fn list(
        &self,
        _: usize,
        _: Option<&str>,
    ) -> herald_core::backend::Result<Vec<herald_core::model::Subscription>> {
        Err(herald_core::StoreError::unavailable("down"))
    }
    async fn list_all(
        &self,
    ) -> herald_core::backend::Result<Vec<herald_core::model::Subscription>> {
        Err(herald_core::StoreError::unavailable("down"))
    }
    async fn replace(
        &self,
        _: &herald_core::model::Subscription,
        _: herald_core::backend::ReplaceHealth,
    ) -> herald_core::backend::Result<()> {
        Err(herald_core::StoreError::unavailable("down"))
    }
    async fn remove(&self, _: &str) -> herald_core::backend::Result<bool> {
        Err(herald_core::StoreError::unavailable("down"))
    }
    async fn record_health(
        &self,
        _: &str,
        _: &herald_core::backend::HealthChange,
    ) -> herald_core::backend::Result<bool> {
        Err(herald_core::StoreError::unavailable("down"))
    }
    async fn ping(&self) -> herald_core::backend::Result<()> {
        Err(herald_core::StoreError::unavailable("down"))
    }
}

fn fixture_with_the_store_down() -> Fixture {
    let f = fixture();
    let cache = Arc::new(SubscriptionCache::new(
        Arc::new(Down),
        Duration::from_secs(1),
    ));
    let subs = Arc::new(Subscriptions::new(
        cache,
        f.backend.queue.clone(),
        TargetGuard::new(vec![]),
    ));
    let client = f.ctx.client.clone();
    Fixture {
        ctx: Arc::new(Context::new(client, subs, "herald-operator-test".into())),
        ..f
    }
}

#[tokio::test]
async fn a_store_outage_gives_ready_false_and_an_error_to_retry() {
    let Fixture {
        ctx,
        mut server,
        backend: _backend,
        _dir,
    } = fixture_with_the_store_down();
    let w = finalized(resource("orders"));
    let sent = w.clone();
    let api = tokio::spawn(async move {
        let status = expect_status(&mut server, &sent).await;
        let ev = expect_event(&mut server).await;
        (status, ev)
    });
    let err = controller::reconcile(Arc::new(w), ctx).await.unwrap_err();
    assert_eq!(err.metric_label(), "Store");
    let (status, ev) = api.await.unwrap();
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(status["conditions"][0]["reason"], "StoreUnavailable");
    assert_eq!(ev["reason"], "StoreUnavailable");
}

#[tokio::test]
async fn a_deletion_during_a_store_outage_keeps_the_finalizer() {
    let Fixture {
        ctx,
        mut server,
        backend: _backend,
        _dir,
    } = fixture_with_the_store_down();
    let w = deleted(finalized(resource("orders")));
    // A request would go unanswered and stall the reconcile, so a timeout means one was sent.
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        controller::reconcile(Arc::new(w), ctx),
    )
    .await
    .expect("the reconcile sends no request: in particular no patch removing the finalizer")
    .unwrap_err();
    assert_eq!(err.metric_label(), "Store");
    let nothing = tokio::time::timeout(Duration::from_millis(300), server.next_request()).await;
    assert!(
        !matches!(nothing, Ok(Some(_))),
        "the reconciler sent a request"
    );
}

#[test]
fn the_transition_time_changes_only_with_the_condition_status() {
    let t = |s: &str| Time(s.parse().unwrap());
    let mut w = resource("orders");
    let first = controller::next_status(
        &w,
        Some("sub_1"),
        "True",
        "Synced",
        "ok",
        t("2026-01-01T00:00:00Z"),
    );
    assert_eq!(
        first.conditions[0].last_transition_time,
        t("2026-01-01T00:00:00Z")
    );
    w.status = Some(first);
    let same = controller::next_status(
        &w,
        Some("sub_1"),
        "True",
        "Paused",
        "paused",
        t("2026-01-02T00:00:00Z"),
    );
    assert_eq!(
        same.conditions[0].last_transition_time,
        t("2026-01-01T00:00:00Z")
    );
    assert_eq!(same.conditions[0].reason, "Paused");
    w.status = Some(same);
    let flipped = controller::next_status(
        &w,
        Some("sub_1"),
        "False",
        "SecretNotFound",
        "gone",
        t("2026-01-03T00:00:00Z"),
    );
    assert_eq!(
        flipped.conditions[0].last_transition_time,
        t("2026-01-03T00:00:00Z")
    );
    assert_eq!(flipped.observed_generation, Some(3));
    assert_eq!(flipped.conditions[0].observed_generation, Some(3));
}
