//! The reconciler against a mocked API server (tower-test), for the paths that are hard to
//! provoke on a real one, checking each request it makes and answering as the server would.
//! The store is the production one (FerretDB + Redis of `scripts/testenv.sh`), with a database
//! and key prefix of each test's own.

use std::sync::Arc;
use std::time::Duration;

use herald_core::backend::Backend;
use herald_core::cache::SubscriptionCache;
use herald_core::model::Owner;
use herald_core::spec::SubscriptionSpec;
use herald_core::ssrf::TargetGuard;
use herald_core::subscriptions::Subscriptions;
use herald_operator::controller::{self, Context, FINALIZER};
use herald_operator::crd::{SecretKeyRef, WebhookSubscription, WebhookSubscriptionSpec};
use herald_operator::policy::EventTypePolicy;
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
    _scratch: herald_testenv::Scratch,
}

/// A fixture, or `None` outside `scripts/testenv.sh` (a failure in CI).
async fn fixture() -> Option<Fixture> {
    let scratch = herald_testenv::Scratch::new(
        herald_testenv::mongo_uri()?,
        herald_testenv::redis_url()?,
        "mocked",
    );
    let backend = herald_backends::open_production(
        &scratch.mongo_uri,
        Some(&scratch.database),
        &scratch.redis_url,
        &scratch.prefix,
    )
    .await
    .expect("open the production store");
    let cache = Arc::new(SubscriptionCache::for_backend(&backend));
    let subs = Arc::new(Subscriptions::new(
        cache,
        backend.intake.clone(),
        TargetGuard::new(vec![]),
    ));
    let (service, server) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Arc::new(Context::new(client, subs, "herald-operator-test".into()));
    Some(Fixture {
        ctx,
        server,
        backend,
        _scratch: scratch,
    })
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

/// Answers an Event creation, or the patch of a repeated Event (the recorder counts repeats
/// of one reason into a series), and returns the body sent.
async fn expect_event_or_repeat(server: &mut Handle) -> Value {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), server.next_request())
        .await
        .expect("an Event request")
        .expect("the client is alive");
    assert!(
        req.uri()
            .path()
            .starts_with("/apis/events.k8s.io/v1/namespaces/default/events"),
        "{}",
        req.uri()
    );
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let ev: Value = serde_json::from_slice(&bytes).unwrap();
    respond(send, StatusCode::OK, ev.clone());
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
    let Some(Fixture {
        ctx,
        mut server,
        backend,
        _scratch,
    }) = fixture().await
    else {
        return;
    };
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

const SECRETS: &str = "/api/v1/namespaces/default/secrets";

fn with_secret_ref(w: WebhookSubscription) -> WebhookSubscription {
    let mut w = w;
    w.spec.secret_ref = Some(SecretKeyRef {
        name: "orders-webhook".into(),
        key: "secret".into(),
    });
    w
}

/// Answers the operator's read of the referenced Secret, which must be a list filtered by its
/// name and the opt-in label (so the server never returns a Secret that did not opt in).
async fn answer_secret_read(server: &mut Handle, status: StatusCode, body: Value) {
    let (uri, _, send) = next(server, Method::GET, SECRETS).await;
    assert!(
        uri.contains("fieldSelector=metadata.name%3Dorders-webhook")
            && uri.contains("labelSelector=herald.dev%2Fwebhook-secret%3Dtrue"),
        "a list filtered by name and label: {uri}"
    );
    respond(send, status, body);
}

fn secret_list(items: Value) -> Value {
    json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": items})
}

fn labelled_secret(data: Value) -> Value {
    json!({"metadata": {"name": "orders-webhook", "namespace": "default",
                        "labels": {"herald.dev/webhook-secret": "true"}},
           "data": data})
}

#[tokio::test]
async fn a_missing_secret_gives_ready_false_an_event_and_a_backoff() {
    let Some(Fixture {
        ctx,
        mut server,
        backend,
        _scratch,
    }) = fixture().await
    else {
        return;
    };
    let w = with_secret_ref(finalized(resource("orders")));
    let sent = w.clone();
    let api = tokio::spawn(async move {
        answer_secret_read(&mut server, StatusCode::OK, secret_list(json!([]))).await;
        let status = expect_status(&mut server, &sent).await;
        let ev = expect_event(&mut server).await;
        (status, ev, server)
    });
    let err = controller::reconcile(Arc::new(w.clone()), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "SecretUnavailable");
    let (status, ev, _server) = api.await.unwrap();
    let cond = &status["conditions"][0];
    assert_eq!(cond["type"], "Ready");
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "SecretUnavailable");
    assert!(cond["message"]
        .as_str()
        .unwrap()
        .contains("Secret default/orders-webhook key \"secret\": not found or not permitted"));
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(ev["reason"], "SecretUnavailable");
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

/// Whoever may create a WebhookSubscription learns nothing about a Secret they may not read:
/// forbidden, not opted in (the server's filtered list is empty), opted in without the key,
/// with a value that is not UTF-8, or with a value too short all read the same.
#[tokio::test]
async fn every_unusable_secret_reads_the_same_not_found_or_not_permitted() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "secrets is forbidden: User cannot list resource secrets",
        "reason": "Forbidden", "code": 403});
    let cases = [
        ("forbidden", StatusCode::FORBIDDEN, forbidden),
        ("not opted in", StatusCode::OK, secret_list(json!([]))),
        (
            "no such key",
            StatusCode::OK,
            secret_list(json!([labelled_secret(json!({"other": b64(&[b'x'; 32])}))])),
        ),
        (
            "not UTF-8",
            StatusCode::OK,
            secret_list(json!([labelled_secret(
                json!({"secret": b64(&[0xff; 32])})
            )])),
        ),
        (
            "too short",
            StatusCode::OK,
            secret_list(json!([labelled_secret(json!({"secret": b64(b"short")}))])),
        ),
    ];
    let mut seen = Vec::new();
    for (what, code, body) in cases {
        let Some(Fixture {
            ctx,
            mut server,
            backend,
            _scratch,
        }) = fixture().await
        else {
            return;
        };
        let w = with_secret_ref(finalized(resource("orders")));
        let sent = w.clone();
        let api = tokio::spawn(async move {
            answer_secret_read(&mut server, code, body).await;
            let status = expect_status(&mut server, &sent).await;
            let ev = expect_event(&mut server).await;
            (status, ev)
        });
        let err = controller::reconcile(Arc::new(w), ctx).await.unwrap_err();
        assert_eq!(err.metric_label(), "SecretUnavailable", "{what}");
        let (status, ev) = api.await.unwrap();
        let cond = &status["conditions"][0];
        assert_eq!(cond["reason"], "SecretUnavailable", "{what}");
        assert!(backend.subscriptions.list_all().await.unwrap().is_empty());
        seen.push((
            what,
            cond["message"].as_str().unwrap().to_string(),
            ev["note"].as_str().unwrap().to_string(),
        ));
    }
    let (_, message, note) = &seen[0];
    assert!(message.contains("not found or not permitted"), "{message}");
    for (what, m, n) in &seen {
        assert_eq!(m, message, "{what} reads like the others");
        assert_eq!(n, note, "{what}: the Event too");
        for leak in [
            "forbidden",
            "\"other\"",
            "short",
            "403",
            "no such key",
            "not UTF-8",
        ] {
            assert!(!m.contains(leak), "{what}: {m} reveals {leak:?}");
        }
    }
}

#[tokio::test]
async fn an_opted_in_secret_signs_the_subscription() {
    use base64::Engine as _;
    let Some(Fixture {
        ctx,
        mut server,
        backend,
        _scratch,
    }) = fixture().await
    else {
        return;
    };
    let w = with_secret_ref(finalized(resource("orders")));
    let sent = w.clone();
    let value = base64::engine::general_purpose::STANDARD.encode("a-long-enough-secret-0123");
    let api = tokio::spawn(async move {
        answer_secret_read(
            &mut server,
            StatusCode::OK,
            secret_list(json!([labelled_secret(json!({"secret": value}))])),
        )
        .await;
        let status = expect_status(&mut server, &sent).await;
        expect_event(&mut server).await;
        status
    });
    controller::reconcile(Arc::new(w.clone()), ctx)
        .await
        .unwrap();
    let status = api.await.unwrap();
    assert_eq!(status["conditions"][0]["reason"], "Synced");
    let sub = backend
        .subscriptions
        .find_by_owner(&owner("orders"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sub.secret.as_deref(), Some("a-long-enough-secret-0123"));
    // The id is the one derived from the resource's UID.
    assert_eq!(sub.id, controller::owned_id(&w).unwrap());
}

#[tokio::test]
async fn event_types_outside_the_namespace_policy_are_refused_and_disable_the_subscription() {
    let Some(f) = fixture().await else {
        return;
    };
    let policy: EventTypePolicy = "default=order.*;*=*".parse().unwrap();
    let ctx = Arc::new(
        Context::new(
            f.ctx.client.clone(),
            f.ctx.subscriptions.clone(),
            "herald-operator-test".into(),
        )
        .with_policy(policy),
    );
    let Fixture {
        mut server,
        backend,
        _scratch,
        ..
    } = f;
    // A subscription the resource got before the policy: every event type.
    let mut w = finalized(resource("orders"));
    w.spec.event_types = vec![];
    let before = ctx
        .subscriptions
        .apply_owned(
            &owner("orders"),
            &controller::owned_id(&w).unwrap(),
            &w.spec.to_subscription_spec(None),
        )
        .await
        .unwrap();
    for (types, expect) in [
        (vec![], "eventTypes is empty, which means every event type"),
        (
            vec!["order.paid".to_string(), "user.created".to_string()],
            "event types user.created are not allowed in namespace default",
        ),
    ] {
        w.spec.event_types = types;
        let sent = w.clone();
        let api = tokio::spawn(async move {
            let status = expect_status(&mut server, &sent).await;
            let ev = expect_event_or_repeat(&mut server).await;
            (status, ev, server)
        });
        let action = controller::reconcile(Arc::new(w.clone()), ctx.clone())
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
        let (status, ev, back) = api.await.unwrap();
        server = back;
        let cond = &status["conditions"][0];
        assert_eq!(cond["status"], "False");
        assert_eq!(cond["reason"], "EventTypesNotAllowed");
        let message = cond["message"].as_str().unwrap();
        assert!(message.contains(expect), "{message}");
        assert!(
            message.ends_with("may subscribe only to: order.*"),
            "{message}"
        );
        assert!(ev.to_string().contains("EventTypesNotAllowed"), "{ev}");
        // Nothing is changed but the old subscription stopped receiving events.
        let stored = backend
            .subscriptions
            .get(&before.id)
            .await
            .unwrap()
            .unwrap();
        assert!(stored.is_disabled(), "disabled");
        assert!(stored.event_types.is_empty());
        assert_eq!(backend.subscriptions.list_all().await.unwrap().len(), 1);
    }
    // A conforming spec is applied, and re-enables the subscription.
    w.spec.event_types = vec!["order.paid".into()];
    let sent = w.clone();
    let api = tokio::spawn(async move {
        let status = expect_status(&mut server, &sent).await;
        expect_event(&mut server).await;
        status
    });
    controller::reconcile(Arc::new(w), ctx).await.unwrap();
    assert_eq!(api.await.unwrap()["conditions"][0]["reason"], "Synced");
    let stored = backend
        .subscriptions
        .get(&before.id)
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.is_disabled());
    assert_eq!(stored.event_types, vec!["order.paid"]);
}

#[tokio::test]
async fn a_finalized_resource_is_stored_and_gets_ready_true() {
    let Some(Fixture {
        ctx,
        mut server,
        backend,
        _scratch,
    }) = fixture().await
    else {
        return;
    };
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
    let Some(Fixture {
        ctx,
        mut server,
        backend,
        _scratch,
    }) = fixture().await
    else {
        return;
    };
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
    let Some(Fixture {
        ctx,
        mut server,
        backend: _backend,
        _scratch,
    }) = fixture().await
    else {
        return;
    };
    let w = finalized(resource("orders"));
    let spec = w.spec.to_subscription_spec(None);
    let sub = ctx
        .subscriptions
        .apply_owned(&owner("orders"), &controller::owned_id(&w).unwrap(), &spec)
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
    let Some(Fixture {
        ctx,
        mut server,
        backend,
        _scratch,
    }) = fixture().await
    else {
        return;
    };
    let sub = ctx
        .subscriptions
        .apply_owned(
            &owner("orders"),
            &controller::owned_id(&resource("orders")).unwrap(),
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
        _: &herald_core::ids::SubscriptionId,
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
    async fn remove(
        &self,
        _: &herald_core::ids::SubscriptionId,
    ) -> herald_core::backend::Result<bool> {
        Err(herald_core::StoreError::unavailable("down"))
    }
    async fn record_health(
        &self,
        _: &herald_core::ids::SubscriptionId,
        _: &herald_core::backend::HealthChange,
    ) -> herald_core::backend::Result<bool> {
        Err(herald_core::StoreError::unavailable("down"))
    }
    async fn ping(&self) -> herald_core::backend::Result<()> {
        Err(herald_core::StoreError::unavailable("down"))
    }
}

async fn fixture_with_the_store_down() -> Option<Fixture> {
    let f = fixture().await?;
    let cache = Arc::new(SubscriptionCache::new(
        Arc::new(Down),
        Duration::from_secs(1),
    ));
    let subs = Arc::new(Subscriptions::new(
        cache,
        f.backend.intake.clone(),
        TargetGuard::new(vec![]),
    ));
    let client = f.ctx.client.clone();
    Some(Fixture {
        ctx: Arc::new(Context::new(client, subs, "herald-operator-test".into())),
        ..f
    })
}

#[tokio::test]
async fn a_store_outage_gives_ready_false_and_an_error_to_retry() {
    let Some(Fixture {
        ctx,
        mut server,
        backend: _backend,
        _scratch,
    }) = fixture_with_the_store_down().await
    else {
        return;
    };
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
    let Some(Fixture {
        ctx,
        mut server,
        backend: _backend,
        _scratch,
    }) = fixture_with_the_store_down().await
    else {
        return;
    };
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

/// The Secret watch asks the API server for opted-in Secrets' metadata only, so the operator
/// never lists, receives or caches other Secrets (nor any Secret's data): a cluster full of
/// Helm release Secrets costs it nothing.
#[tokio::test]
async fn the_secret_watch_asks_for_opted_in_metadata_only() {
    let Some(Fixture {
        ctx,
        mut server,
        backend: _backend,
        _scratch,
    }) = fixture().await
    else {
        return;
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let scopes = controller::scopes(&ctx.client, &["default".to_string()]);
    let run = tokio::spawn(controller::run(scopes, ctx, stop.clone(), || {}));
    // The controller's first requests: the resources' list and the Secrets' list, in any order.
    let mut secrets = None;
    for _ in 0..2 {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), server.next_request())
            .await
            .expect("a request")
            .expect("the client is alive");
        let accept = req
            .headers()
            .get(http::header::ACCEPT)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        if req.uri().path() == SECRETS {
            secrets = Some((req.uri().to_string(), accept));
        } else {
            assert_eq!(req.uri().path(), BASE, "{}", req.uri());
        }
        // Unanswered: the watchers back off; what they asked is what this test checks.
        drop(send);
    }
    let (uri, accept) = secrets.expect("a list of the namespace's Secrets");
    assert!(
        uri.contains("labelSelector=herald.dev%2Fwebhook-secret%3Dtrue"),
        "only opted-in Secrets: {uri}"
    );
    assert!(
        accept.contains("as=PartialObjectMetadataList"),
        "metadata only: {accept}"
    );
    stop.cancel();
    run.abort();
}
