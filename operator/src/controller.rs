//! The reconciler: each `WebhookSubscription` becomes one Herald subscription, owned by the
//! resource's namespace and name.
//!
//! - Apply: read the referenced Secret's key, then `Subscriptions::apply_owned` (idempotent: a
//!   retried reconcile finds the subscription by its owner), then status by server-side apply.
//! - Delete: kube-runtime's `finalizer` helper runs `delete_owned` before the finalizer goes, so
//!   a resource never disappears while its subscription still receives events.
//! - A missing Secret or key, or a spec core refuses, gives `Ready=False` with a reason and a
//!   Warning Event; the first two are retried with backoff (the Secret may appear), a refused
//!   spec waits for the next change of the resource.
//! - Secrets are watched, so a rotated Secret reaches the subscription (and the deliveries, via
//!   the cache invalidation `apply_owned` does) without waiting for the periodic resync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_core::error::Error as CoreError;
use herald_core::model::Owner;
use herald_core::subscriptions::Subscriptions;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use thiserror::Error;

use crate::crd::{WebhookSubscription, WebhookSubscriptionStatus, OWNER_KIND};

/// Removed only after the subscription is deleted from the store.
pub const FINALIZER: &str = "herald.dev/subscription";
/// The field manager of the status the operator applies.
pub const FIELD_MANAGER: &str = "herald-operator";
/// How often an unchanged resource is reconciled anyway, which repairs a record changed or
/// removed behind the operator's back.
pub const RESYNC: Duration = Duration::from_secs(300);

pub const RECONCILES: &str = "herald_operator_reconciles_total";
pub const RECONCILE_FAILURES: &str = "herald_operator_reconcile_failures_total";
pub const RECONCILE_DURATION: &str = "herald_operator_reconcile_duration_seconds";

#[derive(Debug, Error)]
pub enum Error {
    /// The resource cannot be reconciled until something outside it changes (a Secret), so it
    /// is retried with backoff; status and an Event say why.
    #[error("{reason}: {message}")]
    NotReady {
        reason: &'static str,
        message: String,
    },
    #[error("the subscription store failed: {0}")]
    Store(#[source] CoreError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the resource has no namespace")]
    NoNamespace,
}

impl Error {
    /// A short label for the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NotReady { reason, .. } => reason,
            Error::Store(_) => "Store",
            Error::Kube(_) => "Kube",
            Error::Finalizer(e) => match &**e {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.metric_label(),
                _ => "Finalizer",
            },
            Error::NoNamespace => "NoNamespace",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub subscriptions: Arc<Subscriptions>,
    pub recorder: Recorder,
    /// Consecutive failures per resource, for the error policy's backoff.
    failures: Mutex<HashMap<ObjectRef<WebhookSubscription>, u32>>,
}

impl Context {
    pub fn new(client: Client, subscriptions: Arc<Subscriptions>, reporter: Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            subscriptions,
            failures: Mutex::default(),
        }
    }

    fn failed(&self, obj: &WebhookSubscription) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ObjectRef::from_obj(obj)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, obj: &WebhookSubscription) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ObjectRef::from_obj(obj));
    }
}

/// 2 s after the first failure, doubling up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let secs = 2u64.saturating_mul(1u64 << failures.saturating_sub(1).min(8));
    Duration::from_secs(secs.min(300))
}

pub fn owner_of(obj: &WebhookSubscription) -> Result<Owner, Error> {
    Ok(Owner {
        kind: OWNER_KIND.into(),
        namespace: obj.namespace().ok_or(Error::NoNamespace)?,
        name: obj.name_any(),
    })
}

pub async fn reconcile(obj: Arc<WebhookSubscription>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<WebhookSubscription> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, obj.clone(), |event| async {
        match event {
            Finalizer::Apply(o) => apply(&o, &ctx).await,
            Finalizer::Cleanup(o) => cleanup(&o, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    metrics::counter!(RECONCILES).increment(1);
    metrics::histogram!(RECONCILE_DURATION).record(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.succeeded(&obj);
    }
    result
}

/// Requeues with a per-resource exponential backoff; counts the failure.
pub fn error_policy(obj: Arc<WebhookSubscription>, error: &Error, ctx: Arc<Context>) -> Action {
    metrics::counter!(RECONCILE_FAILURES, "reason" => error.metric_label()).increment(1);
    let n = ctx.failed(&obj);
    let delay = backoff(n);
    tracing::warn!(
        resource = %ObjectRef::from_obj(&*obj),
        error = %error,
        failures = n,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

async fn apply(obj: &WebhookSubscription, ctx: &Context) -> Result<Action, Error> {
    let owner = owner_of(obj)?;
    let secret = match read_secret(obj, ctx).await {
        Ok(secret) => secret,
        Err(Error::NotReady { reason, message }) => {
            not_ready(obj, ctx, reason, &message).await?;
            return Err(Error::NotReady { reason, message });
        }
        Err(e) => return Err(e),
    };
    let spec = obj.spec.to_subscription_spec(secret);
    match ctx.subscriptions.apply_owned(&owner, &spec).await {
        Ok(sub) if sub.is_disabled() => {
            // Herald stopped delivering (410 Gone, or failing for HERALD_DISABLE_AFTER); an
            // unchanged spec leaves it so, a changed one re-enables it.
            let message =
                format!(
                "Herald stopped delivering to the endpoint ({}); change the spec to re-enable it",
                sub.disabled_reason.as_deref().unwrap_or("no reason recorded")
            );
            let changed = write_status(
                obj,
                ctx,
                Some(&sub.id),
                "False",
                "EndpointDisabled",
                &message,
            )
            .await?;
            if changed {
                publish(
                    obj,
                    ctx,
                    EventType::Warning,
                    "EndpointDisabled",
                    "Reconcile",
                    &message,
                )
                .await;
            }
            Ok(Action::requeue(RESYNC))
        }
        Ok(sub) => {
            let message = if sub.paused {
                "subscription is paused: deliveries wait until it is resumed".to_string()
            } else {
                format!("subscription {} matches the spec", sub.id)
            };
            let reason = if sub.paused { "Paused" } else { "Synced" };
            let changed = write_status(obj, ctx, Some(&sub.id), "True", reason, &message).await?;
            if changed {
                publish(obj, ctx, EventType::Normal, reason, "Reconcile", &message).await;
            }
            Ok(Action::requeue(RESYNC))
        }
        Err(CoreError::Invalid(v)) => {
            // Waiting helps nothing here: the next change of the resource reconciles again.
            not_ready(obj, ctx, "InvalidSpec", &v.to_string()).await?;
            Ok(Action::await_change())
        }
        Err(e) => {
            let message = format!("the subscription store failed: {e}");
            not_ready(obj, ctx, "StoreUnavailable", &message).await?;
            Err(Error::Store(e))
        }
    }
}

async fn cleanup(obj: &WebhookSubscription, ctx: &Context) -> Result<Action, Error> {
    let owner = owner_of(obj)?;
    let removed = ctx
        .subscriptions
        .delete_owned(&owner)
        .await
        .map_err(Error::Store)?;
    if removed {
        let id = obj
            .status
            .as_ref()
            .and_then(|s| s.subscription_id.clone())
            .unwrap_or_default();
        publish(
            obj,
            ctx,
            EventType::Normal,
            "Deleted",
            "Delete",
            &format!("subscription {id} deleted"),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// The secret `secretRef` names, as text; `NotReady` when the Secret or key is missing or the
/// value is not UTF-8.
async fn read_secret(obj: &WebhookSubscription, ctx: &Context) -> Result<Option<String>, Error> {
    let Some(r) = &obj.spec.secret_ref else {
        return Ok(None);
    };
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let found = match secrets.get_opt(&r.name).await {
        // RBAC (e.g. a namespaced install watching another namespace): say so in the status
        // rather than only in the operator's log.
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Err(Error::NotReady {
                reason: "SecretForbidden",
                message: format!(
                    "the operator may not read Secret {ns}/{}: {}",
                    r.name, s.message
                ),
            })
        }
        other => other?,
    };
    let Some(secret) = found else {
        return Err(Error::NotReady {
            reason: "SecretNotFound",
            message: format!("Secret {ns}/{} does not exist", r.name),
        });
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.clone().into_bytes())
        });
    let Some(bytes) = value else {
        return Err(Error::NotReady {
            reason: "SecretKeyNotFound",
            message: format!("Secret {ns}/{} has no key {:?}", r.name, r.key),
        });
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| Error::NotReady {
            reason: "SecretInvalid",
            message: format!(
                "key {:?} of Secret {ns}/{} is not UTF-8 text",
                r.key, r.name
            ),
        })
}

async fn not_ready(
    obj: &WebhookSubscription,
    ctx: &Context,
    reason: &'static str,
    message: &str,
) -> Result<(), Error> {
    let id = obj.status.as_ref().and_then(|s| s.subscription_id.clone());
    let changed = write_status(obj, ctx, id.as_deref(), "False", reason, message).await?;
    if changed {
        publish(obj, ctx, EventType::Warning, reason, "Reconcile", message).await;
    }
    Ok(())
}

/// The status the operator applies; `lastTransitionTime` is kept unless the condition's status
/// changes.
pub fn next_status(
    obj: &WebhookSubscription,
    subscription_id: Option<&str>,
    status: &str,
    reason: &str,
    message: &str,
    now: Time,
) -> WebhookSubscriptionStatus {
    let previous = obj
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now,
    };
    WebhookSubscriptionStatus {
        subscription_id: subscription_id.map(str::to_string),
        observed_generation: obj.metadata.generation,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time,
            observed_generation: obj.metadata.generation,
        }],
    }
}

/// Applies the status (server-side apply, forced: the operator owns it). Returns whether it
/// differs from what the resource showed, which is when an Event is worth sending.
async fn write_status(
    obj: &WebhookSubscription,
    ctx: &Context,
    subscription_id: Option<&str>,
    status: &str,
    reason: &str,
    message: &str,
) -> Result<bool, Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let next = next_status(obj, subscription_id, status, reason, message, now);
    if obj.status.as_ref() == Some(&next) {
        return Ok(false);
    }
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<WebhookSubscription> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = Patch::Apply(json!({
        "apiVersion": WebhookSubscription::api_version(&()),
        "kind": WebhookSubscription::kind(&()),
        "status": next,
    }));
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &patch,
    )
    .await?;
    Ok(true)
}

/// Publishes an Event; a failure is logged, not returned: Events are best effort and must not
/// fail (and so repeat) a reconcile whose real work is done.
async fn publish(
    obj: &WebhookSubscription,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(resource = %obj.name_any(), error = %e, "publishing an Event failed");
    }
}

/// The controller over `api`'s resources, also woken by changes of the Secrets they
/// reference. Runs until `shutdown` resolves, then finishes the reconciles in flight.
pub async fn run(
    api: Api<WebhookSubscription>,
    secrets: Api<Secret>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    synced: impl FnOnce() + Send + 'static,
) {
    let controller = Controller::new(api, watcher::Config::default());
    let store = controller.store();
    let ready = store.clone();
    tokio::spawn(async move {
        if ready.wait_until_ready().await.is_ok() {
            synced();
        }
    });
    controller
        .watches(
            secrets,
            watcher::Config::default(),
            move |secret: Secret| {
                let ns = secret.namespace();
                let name = secret.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|w| {
                        w.namespace() == ns
                            && w.spec.secret_ref.as_ref().is_some_and(|r| r.name == name)
                    })
                    .map(|w| ObjectRef::from_obj(&*w))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller");
            }
        })
        .await;
}
