//! The operator against the real test control plane (`scripts/testenv.sh`: etcd +
//! kube-apiserver) and the production store (FerretDB + Redis), in-process: the CRD is applied,
//! then the example manifest, and every step is checked both in Kubernetes and in the store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_core::backend::Backend;
use herald_core::cache::SubscriptionCache;
use herald_core::model::{Owner, Subscription};
use herald_core::ssrf::TargetGuard;
use herald_core::subscriptions::Subscriptions;
use herald_operator::crd::WebhookSubscription;
use herald_operator::policy::EventTypePolicy;
use herald_operator::{LeaseOptions, Options};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::Reporter;
use kube::{Client, Config, CustomResourceExt, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const EXAMPLE: &str = include_str!("../../../examples/webhooksubscription.yaml");
const MANAGER: &str = "herald-operator-test";

async fn client() -> Option<Client> {
    let path = herald_testenv::kubeconfig()?;
    let kubeconfig = Kubeconfig::read_from(&path).expect("read the test kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a client config from the test kubeconfig");
    Some(Client::try_from(config).expect("a kube client"))
}

/// The production store on FerretDB + Redis, in a database and key prefix of its own.
async fn store() -> Option<Backend> {
    let mongo = herald_testenv::mongo_uri()?;
    let redis = herald_testenv::redis_url()?;
    let name = herald_testenv::unique_name("operator").replace('-', "_");
    Some(
        herald_backends::open_production(&mongo, Some(&name), &redis, &name)
            .await
            .expect("open the production store"),
    )
}

fn service(backend: &Backend) -> Arc<Subscriptions> {
    let cache = Arc::new(SubscriptionCache::for_backend(backend));
    // The example's receiver is on the loopback, which the SSRF guard refuses unless allowed.
    let guard = TargetGuard::new(TargetGuard::parse_allow_list("127.0.0.0/8").unwrap());
    Arc::new(
        Subscriptions::new(cache, backend.intake.clone(), guard)
            .with_secret_overlap(Duration::from_secs(60)),
    )
}

/// Polls `check` every 100 ms (each check asks the API server) until it gives a value, for at
/// most `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    herald_testenv::wait_until_every(what, limit, Duration::from_millis(100), check).await
}

async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = WebhookSubscription::crd();
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the API server accepts the CRD");
    let served: Api<WebhookSubscription> = Api::all(client.clone());
    eventually(
        "the CRD to be established",
        Duration::from_secs(30),
        || async {
            let c = crds.get("webhooksubscriptions.herald.dev").await.ok()?;
            let established = c
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            // An established CRD takes a moment more to be served.
            (established && served.list(&ListParams::default().limit(1)).await.is_ok())
                .then_some(())
        },
    )
    .await;
}

async fn namespace(client: &Client) -> String {
    let name = herald_testenv::unique_name("whs");
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
    name
}

struct Operator {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    addr: std::net::SocketAddr,
}

impl Operator {
    async fn start(client: &Client, backend: &Backend, ns: &str, identity: &str) -> Self {
        Self::with_policy(client, backend, ns, identity, EventTypePolicy::default()).await
    }

    async fn with_policy(
        client: &Client,
        backend: &Backend,
        ns: &str,
        identity: &str,
        policy: EventTypePolicy,
    ) -> Self {
        Self::watching(client, backend, ns, &[ns], identity, policy).await
    }

    /// An operator whose Lease is in `ns`, reconciling the resources of `watched`.
    async fn watching(
        client: &Client,
        backend: &Backend,
        ns: &str,
        watched: &[&str],
        identity: &str,
        policy: EventTypePolicy,
    ) -> Self {
        let stop = CancellationToken::new();
        let opts = Options {
            addr: "127.0.0.1:0".parse().unwrap(),
            lease: Some(LeaseOptions {
                name: "herald-operator".into(),
                namespace: ns.into(),
                identity: identity.into(),
            }),
            watch_namespaces: watched.iter().map(|w| w.to_string()).collect(),
            policy,
            reporter: Reporter {
                controller: "herald-operator".into(),
                instance: Some(identity.into()),
            },
        };
        let running = herald_operator::start(
            opts,
            client.clone(),
            service(backend),
            backend.subscriptions.clone(),
            stop.clone(),
        )
        .await
        .expect("the operator starts");
        Self {
            stop,
            task: running.task,
            addr: running.addr,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the operator stops within 20 s")
            .unwrap()
            .unwrap();
    }
}

fn example() -> (Secret, WebhookSubscription) {
    let mut docs = serde_yaml::Deserializer::from_str(EXAMPLE);
    let secret = serde::Deserialize::deserialize(docs.next().unwrap()).unwrap();
    let whs = serde::Deserialize::deserialize(docs.next().unwrap()).unwrap();
    (secret, whs)
}

fn owner(ns: &str, name: &str) -> Owner {
    Owner {
        kind: "kubernetes".into(),
        namespace: ns.into(),
        name: name.into(),
    }
}

async fn stored(backend: &Backend, ns: &str, name: &str) -> Option<Subscription> {
    backend
        .subscriptions
        .find_by_owner(&owner(ns, name))
        .await
        .unwrap()
}

fn ready(w: &WebhookSubscription) -> Option<(String, String)> {
    let c = w
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

async fn apply<K>(api: &Api<K>, obj: &K)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(
        &obj.meta().name.clone().unwrap(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_is_reconciled_updated_refused_and_deleted() {
    let Some(client) = client().await else { return };
    let Some(backend) = store().await else { return };
    install_crd(&client).await;
    let ns = namespace(&client).await;
    let op = Operator::start(&client, &backend, &ns, "replica-a").await;
    let whs_api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // The example manifest: Ready=True with a subscription id, and the record in the store.
    let (secret, whs) = example();
    apply(&secrets, &secret).await;
    apply(&whs_api, &whs).await;
    let id = eventually("orders to be Ready", Duration::from_secs(20), || async {
        let w = whs_api.get("orders").await.ok()?;
        let id = w.status.as_ref()?.subscription_id.clone()?;
        (ready(&w)? == ("True".into(), "Synced".into())).then_some(id)
    })
    .await;
    let sub = stored(&backend, &ns, "orders").await.expect("the record");
    assert_eq!(sub.id, id);
    assert_eq!(sub.event_types, vec!["order.created", "order.paid"]);
    assert_eq!(
        sub.secret.as_deref(),
        Some("change-me-to-a-long-random-secret")
    );
    assert_eq!(sub.headers.get("X-Team").map(String::as_str), Some("shop"));
    assert_eq!(sub.max_attempts, Some(6));
    assert_eq!(sub.timeout_ms, Some(10_000));
    assert_eq!(
        sub.retry_schedule_ms,
        Some(vec![10_000, 30_000, 60_000, 300_000, 900_000])
    );
    let w = whs_api.get("orders").await.unwrap();
    assert!(w
        .finalizers()
        .iter()
        .any(|f| f == "herald.dev/subscription"));
    let status = w.status.clone().unwrap();
    assert_eq!(status.observed_generation, w.metadata.generation);
    let first_transition = status.conditions[0].last_transition_time.clone();

    // kubectl shows the printer columns.
    let out = std::process::Command::new("kubectl")
        .args(["get", "webhooksubscriptions", "-n", &ns])
        .output()
        .expect("kubectl runs (on PATH under scripts/testenv.sh)");
    let table = String::from_utf8_lossy(&out.stdout);
    let header: Vec<_> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "URL", "EVENTS", "READY", "SUBSCRIPTION", "AGE"],
        "{table}"
    );
    assert!(table.contains(&id), "{table}");

    // Changing the event types updates the record in place.
    let mut changed = whs.clone();
    changed.spec.event_types = vec!["order.refunded".into()];
    apply(&whs_api, &changed).await;
    eventually(
        "the new event types in the store",
        Duration::from_secs(20),
        || async {
            let s = stored(&backend, &ns, "orders").await?;
            (s.event_types == vec!["order.refunded"]).then_some(())
        },
    )
    .await;
    let w = eventually(
        "observedGeneration to follow",
        Duration::from_secs(20),
        || async {
            let w = whs_api.get("orders").await.ok()?;
            (w.status.as_ref()?.observed_generation == w.metadata.generation).then_some(w)
        },
    )
    .await;
    assert_eq!(
        w.status.as_ref().unwrap().subscription_id.as_deref(),
        Some(id.as_str())
    );
    // Ready stayed True, so its transition time stayed too.
    assert_eq!(
        w.status.unwrap().conditions[0].last_transition_time,
        first_transition
    );

    // Rotating the Secret reaches the record; the old secret stays valid for the overlap.
    let mut rotated = secret.clone();
    rotated.string_data = Some(
        [(
            "secret".to_string(),
            "the-rotated-secret-0123456789".to_string(),
        )]
        .into(),
    );
    apply(&secrets, &rotated).await;
    let s = eventually(
        "the rotated secret in the store",
        Duration::from_secs(20),
        || async {
            let s = stored(&backend, &ns, "orders").await?;
            (s.secret.as_deref() == Some("the-rotated-secret-0123456789")).then_some(s)
        },
    )
    .await;
    assert_eq!(
        s.previous_secret.as_deref(),
        Some("change-me-to-a-long-random-secret")
    );
    assert_eq!(s.id, id);

    // Pausing and resuming.
    let mut paused = changed.clone();
    paused.spec.paused = true;
    apply(&whs_api, &paused).await;
    eventually(
        "the record to be paused",
        Duration::from_secs(20),
        || async { stored(&backend, &ns, "orders").await?.paused.then_some(()) },
    )
    .await;
    apply(&whs_api, &changed).await;
    eventually(
        "the record to be resumed",
        Duration::from_secs(20),
        || async { (!stored(&backend, &ns, "orders").await?.paused).then_some(()) },
    )
    .await;

    // Invalid specs are refused by the API server, with messages naming the rule.
    for (patch, expect) in [
        (
            json!({"targetUrl": "ftp://receiver.example/"}),
            "must be an absolute http:// or https:// URL",
        ),
        (
            json!({"targetUrl": "not a url"}),
            "must be an absolute http:// or https:// URL",
        ),
        (json!({"delivery": {"maxAttempts": 0}}), "maxAttempts"),
        (
            json!({"delivery": {"timeoutSeconds": 121}}),
            "timeoutSeconds",
        ),
        (json!({"delivery": {"backoff": ["soon"]}}), "backoff"),
        (
            json!({"headers": {"bad header": "x"}}),
            "header names must be HTTP tokens",
        ),
    ] {
        let mut bad = serde_json::to_value(&changed).unwrap();
        let spec = bad["spec"].as_object_mut().unwrap();
        for (k, v) in patch.as_object().unwrap() {
            spec.insert(k.clone(), v.clone());
        }
        let err = whs_api
            .patch(
                "orders",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&bad),
            )
            .await
            .expect_err(&format!("the API server refuses {patch}"));
        let kube::Error::Api(status) = &err else {
            panic!("{patch}: not an API error: {err}")
        };
        assert_eq!(status.code, 422, "{patch}: {status:?}");
        assert!(
            status.message.contains(expect),
            "{patch}: {}",
            status.message
        );
    }

    // Deleting: the finalizer removes the record, then the resource goes.
    whs_api
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the resource to disappear",
        Duration::from_secs(20),
        || async {
            whs_api
                .get_opt("orders")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(stored(&backend, &ns, "orders").await.is_none());
    assert!(backend
        .subscriptions
        .get(&herald_core::ids::SubscriptionId::from(&id))
        .await
        .unwrap()
        .is_none());

    // The health listener answers.
    let body = http_get(op.addr, "/readyz").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let metrics = http_get(op.addr, "/metrics").await;
    assert!(
        metrics.contains("herald_operator_reconciles_total"),
        "{metrics}"
    );
    op.stop().await;
}

fn condition(w: &WebhookSubscription) -> Option<(String, String, String)> {
    let c = w
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// A Secret must opt in (the label `herald.dev/webhook-secret: "true"`) to be used; until it
/// does, the status says the same thing whether it is missing, unlabelled or lacks the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_used_only_once_it_opts_in_and_the_status_reveals_nothing_before() {
    let Some(client) = client().await else { return };
    let Some(backend) = store().await else { return };
    install_crd(&client).await;
    let ns = namespace(&client).await;
    let op = Operator::start(&client, &backend, &ns, "replica-a").await;
    let whs_api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let (labelled, whs) = example();
    let mut unlabelled = labelled.clone();
    unlabelled.metadata.labels = None;
    assert_eq!(
        labelled
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("herald.dev/webhook-secret"))
            .map(String::as_str),
        Some("true"),
        "the example opts in"
    );

    // No Secret at all.
    apply(&whs_api, &whs).await;
    let missing = eventually(
        "Ready=False SecretUnavailable",
        Duration::from_secs(20),
        || async {
            let (status, reason, message) = condition(&whs_api.get("orders").await.ok()?)?;
            (status == "False" && reason == "SecretUnavailable").then_some(message)
        },
    )
    .await;
    assert!(missing.contains("not found or not permitted"), "{missing}");
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
    eventually(
        "a SecretUnavailable Event",
        Duration::from_secs(20),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("SecretUnavailable")
                        && e.type_.as_deref() == Some("Warning")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("orders")
                })
                .then_some(())
        },
    )
    .await;

    // The Secret exists with the right key but without the label: not used, and the status is
    // word for word what it was without the Secret. The operator retries with backoff (2 s,
    // 4 s, ...), so after 8 s it has read the unlabelled Secret at least once.
    apply(&secrets, &unlabelled).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let w = whs_api.get("orders").await.unwrap();
    assert_eq!(
        condition(&w).unwrap(),
        ("False".into(), "SecretUnavailable".into(), missing.clone())
    );
    assert!(stored(&backend, &ns, "orders").await.is_none());

    // Labelled but without the key: the same words again.
    let mut wrong_key = labelled.clone();
    wrong_key.string_data = Some([("other".to_string(), "x".repeat(20))].into());
    secrets
        .delete(&labelled.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    apply(&secrets, &wrong_key).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let w = whs_api.get("orders").await.unwrap();
    assert_eq!(condition(&w).unwrap().2, missing);
    assert!(stored(&backend, &ns, "orders").await.is_none());

    // Opting in (the label's arrival wakes the resource: opted-in Secrets are watched).
    secrets
        .delete(&labelled.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    apply(&secrets, &labelled).await;
    eventually(
        "Ready=True once the Secret opts in",
        Duration::from_secs(20),
        || async {
            let w = whs_api.get("orders").await.ok()?;
            (ready(&w)?.0 == "True").then_some(())
        },
    )
    .await;
    let sub = stored(&backend, &ns, "orders").await.unwrap();
    assert_eq!(
        sub.secret.as_deref(),
        Some("change-me-to-a-long-random-secret")
    );
    // The id is the one derived from the resource's UID.
    let w = whs_api.get("orders").await.unwrap();
    assert_eq!(sub.id, herald_operator::controller::owned_id(&w).unwrap());

    whs_api
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the resource to disappear",
        Duration::from_secs(20),
        || async {
            whs_api
                .get_opt("orders")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    op.stop().await;
}

/// An operator watching a list of namespaces (the chart's `watchNamespaces`) reconciles the
/// resources of each, and leaves those of other namespaces alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watching_two_namespaces_reconciles_both_and_no_other() {
    let Some(client) = client().await else { return };
    let Some(backend) = store().await else { return };
    install_crd(&client).await;
    let (a, b, other) = (
        namespace(&client).await,
        namespace(&client).await,
        namespace(&client).await,
    );
    let op = Operator::watching(
        &client,
        &backend,
        &a,
        &[&a, &b],
        "replica-a",
        EventTypePolicy::default(),
    )
    .await;
    let (secret, whs) = example();
    for ns in [&a, &b, &other] {
        apply(&Api::<Secret>::namespaced(client.clone(), ns), &secret).await;
        apply(
            &Api::<WebhookSubscription>::namespaced(client.clone(), ns),
            &whs,
        )
        .await;
    }
    for ns in [&a, &b] {
        let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), ns);
        eventually(
            &format!("{ns}/orders Ready"),
            Duration::from_secs(20),
            || async { (ready(&api.get("orders").await.ok()?)?.0 == "True").then_some(()) },
        )
        .await;
        assert!(stored(&backend, ns, "orders").await.is_some());
    }
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &other);
    let w = api.get("orders").await.unwrap();
    assert!(w.status.is_none() && w.finalizers().is_empty(), "{w:?}");
    assert!(stored(&backend, &other, "orders").await.is_none());
    for ns in [&a, &b, &other] {
        let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), ns);
        api.delete("orders", &DeleteParams::default())
            .await
            .unwrap();
    }
    for ns in [&a, &b] {
        let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), ns);
        eventually(
            "the resource to disappear",
            Duration::from_secs(20),
            || async { api.get_opt("orders").await.unwrap().is_none().then_some(()) },
        )
        .await;
    }
    op.stop().await;
}

/// An operator-level policy limits the event types a namespace's resources may subscribe to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_policy_refuses_event_types_it_does_not_allow() {
    let Some(client) = client().await else { return };
    let Some(backend) = store().await else { return };
    install_crd(&client).await;
    let ns = namespace(&client).await;
    let policy: EventTypePolicy = format!("{ns}=order.*").parse().unwrap();
    let op = Operator::with_policy(&client, &backend, &ns, "replica-a", policy).await;
    let whs_api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let (secret, whs) = example();
    apply(&secrets, &secret).await;

    // Every event type (no eventTypes) is refused.
    let mut all = whs.clone();
    all.spec.event_types = vec![];
    apply(&whs_api, &all).await;
    let message = eventually(
        "Ready=False EventTypesNotAllowed",
        Duration::from_secs(20),
        || async {
            let (status, reason, message) = condition(&whs_api.get("orders").await.ok()?)?;
            (status == "False" && reason == "EventTypesNotAllowed").then_some(message)
        },
    )
    .await;
    assert!(message.contains("every event type"), "{message}");
    assert!(message.contains("order.*"), "{message}");
    assert!(stored(&backend, &ns, "orders").await.is_none());

    // A type outside the patterns is refused too.
    let mut other = whs.clone();
    other.spec.event_types = vec!["order.created".into(), "user.deleted".into()];
    apply(&whs_api, &other).await;
    eventually(
        "the refusal to name user.deleted",
        Duration::from_secs(20),
        || async {
            let (_, reason, message) = condition(&whs_api.get("orders").await.ok()?)?;
            (reason == "EventTypesNotAllowed" && message.contains("user.deleted")).then_some(())
        },
    )
    .await;
    assert!(stored(&backend, &ns, "orders").await.is_none());

    // The example's types conform.
    apply(&whs_api, &whs).await;
    eventually("orders to be Ready", Duration::from_secs(20), || async {
        let w = whs_api.get("orders").await.ok()?;
        (ready(&w)?.0 == "True").then_some(())
    })
    .await;
    assert_eq!(
        stored(&backend, &ns, "orders").await.unwrap().event_types,
        vec!["order.created", "order.paid"]
    );
    whs_api
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the resource to disappear",
        Duration::from_secs(20),
        || async {
            whs_api
                .get_opt("orders")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let Some(client) = client().await else { return };
    let Some(backend) = store().await else { return };
    install_crd(&client).await;
    let ns = namespace(&client).await;
    let whs_api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let (secret, whs) = example();
    apply(&secrets, &secret).await;

    let a = Operator::start(&client, &backend, &ns, "replica-a").await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    eventually(
        "replica-a to hold the lease",
        Duration::from_secs(20),
        || async {
            let l = leases.get_opt("herald-operator").await.ok()??;
            (l.spec?.holder_identity.as_deref() == Some("replica-a")).then_some(())
        },
    )
    .await;
    let b = Operator::start(&client, &backend, &ns, "replica-b").await;
    apply(&whs_api, &whs).await;
    eventually("orders to be Ready", Duration::from_secs(20), || async {
        let w = whs_api.get("orders").await.ok()?;
        (ready(&w)?.0 == "True").then_some(())
    })
    .await;
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
    let reporters = |list: Vec<K8sEvent>| -> Vec<String> {
        list.into_iter()
            .filter_map(|e| e.reporting_instance)
            .collect()
    };
    let seen = reporters(events.list(&ListParams::default()).await.unwrap().items);
    assert!(
        !seen.is_empty() && seen.iter().all(|r| r == "replica-a"),
        "{seen:?}"
    );

    // The leader stops (releasing the lease); the standby takes over within seconds.
    a.stop().await;
    eventually(
        "replica-b to hold the lease",
        Duration::from_secs(30),
        || async {
            let l = leases.get_opt("herald-operator").await.ok()??;
            (l.spec?.holder_identity.as_deref() == Some("replica-b")).then_some(())
        },
    )
    .await;
    let mut second = whs.clone();
    second.metadata.name = Some("refunds".into());
    apply(&whs_api, &second).await;
    eventually(
        "refunds to be Ready, by replica-b",
        Duration::from_secs(30),
        || async {
            let w = whs_api.get("refunds").await.ok()?;
            (ready(&w)?.0 == "True").then_some(())
        },
    )
    .await;
    let seen = reporters(events.list(&ListParams::default()).await.unwrap().items);
    assert!(seen.iter().any(|r| r == "replica-b"), "{seen:?}");
    for name in ["orders", "refunds"] {
        whs_api
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually(
        "both resources to disappear",
        Duration::from_secs(20),
        || async {
            let list = whs_api.list(&ListParams::default()).await.ok()?;
            list.items.is_empty().then_some(())
        },
    )
    .await;
    assert!(stored(&backend, &ns, "orders").await.is_none());
    b.stop().await;
}

/// One plain HTTP/1.1 GET on the loopback; the whole answer as text.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}
