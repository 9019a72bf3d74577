//! The `WebhookSubscription` custom resource (`herald.dev/v1alpha1`) and its CRD.
//!
//! The schema carries every rule the API server can enforce by itself, so that `kubectl apply`
//! of an invalid resource fails at once with a message naming the field, instead of the
//! operator reporting `Ready=False` later. Rules the schema cannot say (a URL's scheme and
//! host, header names) are CEL `x-kubernetes-validations`. The operator still validates
//! everything again through core (which also applies the SSRF guard), so a rule missing here
//! can never let an invalid subscription through.

// Clippy reads the repeated `type_ = ...` of the printer columns as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use herald_core::spec::{SubscriptionSpec, MAX_ATTEMPTS_LIMIT, TIMEOUT_MS_LIMIT};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// The `Owner.kind` of subscriptions reconciled from these resources.
pub const OWNER_KIND: &str = "kubernetes";

/// A Herald subscription declared as a Kubernetes resource: the operator keeps one Herald
/// subscription per resource in sync with it.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "WebhookSubscription",
    namespaced,
    shortname = "whs",
    category = "herald",
    status = "WebhookSubscriptionStatus",
    derive = "PartialEq",
    doc = "A Herald webhook subscription: where events are delivered, which ones, and how.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.targetUrl"),
    printcolumn(name = "Events", type_ = "string", json_path = ".spec.eventTypes"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Subscription",
        type_ = "string",
        json_path = ".status.subscriptionId"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionSpec {
    /// The `http` or `https` URL that receives the deliveries.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''")
            .message("must be an absolute http:// or https:// URL with a host")
    )]
    pub target_url: String,

    /// Event types to deliver; empty or absent means every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 256)))]
    pub event_types: Vec<String>,

    /// The Secret key holding the HMAC signing secret (16 to 256 bytes). Without one,
    /// deliveries are signed with the secret the subscription had, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,

    /// Extra headers sent with every delivery.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(
        validation = Rule::new("self.all(k, k.matches(\"^[-!#$%&'*+.^_`|~0-9A-Za-z]{1,256}$\"))")
            .message("header names must be HTTP tokens (letters, digits and !#$%&'*+-.^_`|~), 1 to 256 characters")
    )]
    pub headers: BTreeMap<String, String>,

    /// Retry policy overrides; absent fields use Herald's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,

    /// A paused subscription keeps its queued deliveries until it is resumed.
    #[serde(default)]
    pub paused: bool,
}

/// A key of a Secret in the resource's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// Attempts in all, the first included (1 to 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout in seconds (1 to 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 120))]
    pub timeout_seconds: Option<u32>,
    /// Delays between attempts, e.g. `[10s, 30s, 1m, 5m, 15m]` (units `ms`, `s`, `m`, `h`; at
    /// most 7 days each, at most 49 delays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 49), inner(regex(pattern = r"^([0-9]+(ms|s|m|h))+$")))]
    pub backoff: Option<Vec<String>>,
}

/// What the operator last did with the resource.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionStatus {
    /// The Herald subscription id: ingest with `POST /ingest/<subscriptionId>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: whether the subscription matches the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl WebhookSubscriptionSpec {
    /// The subscription spec core validates and stores; `secret` is the value `secretRef`
    /// points at, read by the caller.
    pub fn to_subscription_spec(&self, secret: Option<String>) -> SubscriptionSpec {
        let delivery = self.delivery.clone().unwrap_or_default();
        SubscriptionSpec {
            target_url: self.target_url.clone(),
            event_types: self.event_types.clone(),
            secret,
            headers: self.headers.clone(),
            max_attempts: delivery.max_attempts,
            timeout_ms: delivery.timeout_seconds.map(|s| u64::from(s) * 1000),
            retry_schedule: delivery.backoff,
            paused: self.paused,
        }
    }
}

// The schema's bounds are literals (attributes cannot name constants); these keep them equal
// to core's.
const _: () = assert!(MAX_ATTEMPTS_LIMIT == 50 && TIMEOUT_MS_LIMIT == 120_000);

/// The CRD as YAML, as `herald-operator crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> String {
    let crd = WebhookSubscription::crd();
    let body = serde_yaml::to_string(&crd).expect("a CRD serializes");
    format!("# Generated by `herald-operator crd` from operator/src/crd.rs; do not edit.\n{body}")
}
