//! The reconciler: each `WebhookSubscription` becomes one Herald subscription, owned by the
//! resource's namespace and name.
//!
//! - Apply: check the namespace's event-type policy, read the referenced Secret's key, then
//!   `Subscriptions::apply_owned` (idempotent: a retried reconcile finds the subscription by its
//!   owner; a new one's id is derived from the resource's UID, so two leaders for a moment
//!   insert one record), then status by server-side apply.
//! - Delete: kube-runtime's `finalizer` helper runs `delete_owned` before the finalizer goes, so
//!   a resource never disappears while its subscription still receives events.
//! - A Secret that is missing, not readable, not opted in (the label [`SECRET_LABEL`]), without
//!   the key, or whose value core refuses gives `Ready=False`, reason `SecretUnavailable`, with
//!   one message for all of these: whoever may create a resource learns nothing about Secrets
//!   they may not read (whether one exists, its keys, its length). The operator's log says
//!   which it was. Retried with backoff (the Secret may appear or opt in).
//! - Event types the namespace may not subscribe to (`EventTypePolicy`) give `Ready=False`,
//!   reason `EventTypesNotAllowed`, and disable a subscription the resource already has.
//! - A spec core refuses gives `Ready=False`, reason `InvalidSpec`, and waits for the next
//!   change of the resource.
//! - Opted-in Secrets are watched (metadata only, by label), so a rotated Secret reaches the
//!   subscription (and the deliveries, via the cache invalidation `apply_owned` does) without
//!   waiting for the periodic resync. The operator never lists or caches other Secrets' data:
//!   it reads the one a resource names, by a list filtered on name and label, so the API server
//!   returns nothing for a Secret that did not opt in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_core::error::chain;
use herald_core::error::Error as CoreError;
use herald_core::model::Owner;
use herald_core::subscriptions::Subscriptions;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::crd::{WebhookSubscription, WebhookSubscriptionStatus, OWNER_KIND};
use crate::policy::EventTypePolicy;

/// The label a Secret must carry, with the value `"true"`, for the operator to use it as a
/// signing secret. Without the opt-in, anyone allowed to create a `WebhookSubscription` could
/// point one at any Secret of the namespace and have Herald sign with it (an HMAC oracle).
pub const SECRET_LABEL: &str = "herald.dev/webhook-secret";
/// The label selector of opted-in Secrets.
pub const SECRET_SELECTOR: &str = "herald.dev/webhook-secret=true";
/// The status reason of every way a referenced Secret can fail.
pub const SECRET_UNAVAILABLE: &str = "SecretUnavailable";
/// The status reason of a resource whose event types its namespace may not subscribe to.
pub const EVENT_TYPES_NOT_ALLOWED: &str = "EventTypesNotAllowed";

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
    #[error("the resource has no uid")]
    NoUid,
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
            Error::NoUid => "NoUid",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub subscriptions: Arc<Subscriptions>,
    pub recorder: Recorder,
    /// The event types each namespace may subscribe to.
    pub policy: EventTypePolicy,
    /// Consecutive failures per resource, for the error policy's backoff.
    failures: Mutex<HashMap<ObjectRef<WebhookSubscription>, u32>>,
}

impl Context {
    pub fn new(client: Client, subscriptions: Arc<Subscriptions>, reporter: Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            subscriptions,
            policy: EventTypePolicy::default(),
            failures: Mutex::default(),
        }
    }

    pub fn with_policy(mut self, policy: EventTypePolicy) -> Self {
        self.policy = policy;
        self
    }

    fn failed(&self, obj: &WebhookSubscription) -> u32 {
        let mut map = self.failures.lock();
        let n = map.entry(ObjectRef::from_obj(obj)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, obj: &WebhookSubscription) {
        self.failures.lock().remove(&ObjectRef::from_obj(obj));
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

/// The id the resource's subscription gets when it is created: derived from the resource's UID
/// (unique for the cluster's life: a resource deleted and made again under the same name gets
/// a new one) and creation time, so that every operator replica computes the same id.
pub fn owned_id(obj: &WebhookSubscription) -> Result<String, Error> {
    let uid = obj.metadata.uid.as_deref().ok_or(Error::NoUid)?;
    let created_ms = obj
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| u64::try_from(t.0.as_millisecond()).unwrap_or(0))
        .unwrap_or(0);
    Ok(
        herald_core::ids::owned_subscription_id(created_ms, &format!("{OWNER_KIND}/{uid}"))
            .into_string(),
    )
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
        error = %chain(error),
        failures = n,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

async fn apply(obj: &WebhookSubscription, ctx: &Context) -> Result<Action, Error> {
    let owner = owner_of(obj)?;
    let new_id = owned_id(obj)?;
    if let Err(message) = ctx.policy.check(&owner.namespace, &obj.spec.event_types) {
        return refuse_event_types(obj, ctx, &owner, &message).await;
    }
    let secret = match read_secret(obj, ctx).await {
        Ok(secret) => secret,
        Err(Error::NotReady { reason, message }) => {
            not_ready(obj, ctx, reason, &message).await?;
            return Err(Error::NotReady { reason, message });
        }
        Err(e) => return Err(e),
    };
    let spec = obj.spec.to_subscription_spec(secret);
    match ctx.subscriptions.apply_owned(&owner, &new_id, &spec).await {
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
        // The Secret's value (its length): reported like every other Secret failure.
        Err(CoreError::Invalid(v)) if v.field == "secret" && obj.spec.secret_ref.is_some() => {
            let e = secret_unavailable(obj, &format!("its value is refused: {}", v.message))?;
            if let Error::NotReady { reason, message } = &e {
                not_ready(obj, ctx, reason, message).await?;
            }
            Err(e)
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

/// A resource whose event types its namespace may not subscribe to: `Ready=False`, and a
/// subscription it already has (made before the policy) is disabled, so it stops receiving
/// events; a changed spec that conforms re-enables it.
async fn refuse_event_types(
    obj: &WebhookSubscription,
    ctx: &Context,
    owner: &herald_core::model::Owner,
    message: &str,
) -> Result<Action, Error> {
    let store = ctx.subscriptions.cache().store();
    if let Some(sub) = store
        .find_by_owner(owner)
        .await
        .map_err(|e| Error::Store(e.into()))?
    {
        ctx.subscriptions
            .disable(&sub.id, message, "event_types_not_allowed")
            .await
            .map_err(Error::Store)?;
    }
    not_ready(obj, ctx, EVENT_TYPES_NOT_ALLOWED, message).await?;
    // Only a change of the resource (or a restart with another policy) can change the answer.
    Ok(Action::await_change())
}

/// The one answer for every way a referenced Secret can fail; `why` goes to the operator's log
/// only.
fn secret_unavailable(obj: &WebhookSubscription, why: &str) -> Result<Error, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let (name, key) = obj
        .spec
        .secret_ref
        .as_ref()
        .map(|r| (r.name.as_str(), r.key.as_str()))
        .unwrap_or_default();
    tracing::info!(
        resource = %ObjectRef::from_obj(obj),
        secret = %format!("{ns}/{name}"),
        key,
        why,
        "the referenced Secret is not usable"
    );
    Ok(Error::NotReady {
        reason: SECRET_UNAVAILABLE,
        message: format!(
            "Secret {ns}/{name} key {key:?}: not found or not permitted (a signing secret must \
             carry the label {SECRET_LABEL}: \"true\" and hold 16 to 256 bytes of UTF-8 text \
             under the key)"
        ),
    })
}

/// The secret `secretRef` names, as text; `NotReady` (`SecretUnavailable`) when the Secret is
/// missing, not readable, not opted in, has no such key or holds no UTF-8 text there.
///
/// The read is a list filtered by name and by the opt-in label, so the API server never sends
/// the operator the data of a Secret that did not opt in.
async fn read_secret(obj: &WebhookSubscription, ctx: &Context) -> Result<Option<String>, Error> {
    let Some(r) = &obj.spec.secret_ref else {
        return Ok(None);
    };
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let params = ListParams::default()
        .fields(&format!("metadata.name={}", r.name))
        .labels(SECRET_SELECTOR);
    let found = match secrets.list(&params).await {
        // RBAC (a namespace the operator is not granted): the same answer as a missing Secret.
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Err(secret_unavailable(
                obj,
                &format!("the operator may not read it: {}", s.message),
            )?)
        }
        other => other?,
    };
    let Some(secret) = found.items.into_iter().find(|s| s.name_any() == r.name) else {
        return Err(secret_unavailable(
            obj,
            "no Secret of that name carries the opt-in label",
        )?);
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
        return Err(secret_unavailable(obj, "the Secret has no such key")?);
    };
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Some(text)),
        Err(_) => Err(secret_unavailable(obj, "the value is not UTF-8 text")?),
    }
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
        tracing::warn!(resource = %obj.name_any(), error = %chain(&e), "publishing an Event failed");
    }
}

/// Where the controllers look: every namespace (`namespaces` empty), or each one listed (one
/// controller per namespace, so that namespaced Roles suffice).
pub fn scopes(
    client: &Client,
    namespaces: &[String],
) -> Vec<(Api<WebhookSubscription>, Api<PartialObjectMeta<Secret>>)> {
    if namespaces.is_empty() {
        return vec![(Api::all(client.clone()), Api::all(client.clone()))];
    }
    namespaces
        .iter()
        .map(|ns| {
            (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            )
        })
        .collect()
}

/// The controllers over `scopes`' resources, each also woken by changes of the opted-in
/// Secrets its resources reference (watched as metadata only, by label: no Secret data is
/// listed or cached). Runs until `shutdown` is cancelled, then finishes the reconciles in
/// flight; `synced` is called once every controller's cache has synced.
pub async fn run(
    scopes: Vec<(Api<WebhookSubscription>, Api<PartialObjectMeta<Secret>>)>,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    synced: impl FnOnce() + Send + 'static,
) {
    let mut stores = Vec::new();
    let mut controllers = Vec::new();
    for (api, secrets) in scopes {
        let controller = Controller::new(api, watcher::Config::default());
        let store = controller.store();
        stores.push(store.clone());
        let opted_in = watcher(secrets, watcher::Config::default().labels(SECRET_SELECTOR))
            .default_backoff()
            .filter_map(|event| async move {
                match event {
                    // A Secret that stops opting in leaves the selector: a Delete here.
                    Ok(
                        watcher::Event::Apply(s)
                        | watcher::Event::InitApply(s)
                        | watcher::Event::Delete(s),
                    ) => Some(Ok(s)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            });
        let stop = shutdown.clone();
        controllers.push(
            controller
                .watches_stream(opted_in, move |secret: PartialObjectMeta<Secret>| {
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
                })
                .graceful_shutdown_on(stop.cancelled_owned())
                .run(reconcile, error_policy, ctx.clone())
                .for_each(|res| async move {
                    if let Err(e) = res {
                        tracing::debug!(error = %chain(&e), "controller");
                    }
                }),
        );
    }
    tokio::spawn(async move {
        for store in stores {
            if store.wait_until_ready().await.is_err() {
                return;
            }
        }
        synced();
    });
    futures::future::join_all(controllers).await;
}
