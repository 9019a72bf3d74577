//! Subscription management: create, list, read, update, delete, rotate the secret.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use herald_core::retry::parse_duration;
use herald_core::spec::{SubscriptionPatch, SubscriptionSpec};
use herald_core::subscriptions::{check_overlap, Caller};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, OptionalJsonBody, Query};
use crate::state::AppState;
use crate::views::{SecretRotated, SubscriptionPage, SubscriptionView};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[utoipa::path(post, path = "/subscriptions", tag = "subscriptions", request_body = SubscriptionSpec,
    responses((status = 201, body = SubscriptionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody, description = "HERALD_API_KEY is set and the request lacks it"),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    JsonBody(spec): JsonBody<SubscriptionSpec>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let sub = st.subscriptions.create(&spec, None).await?;
    Ok((StatusCode::CREATED, Json(sub.into())))
}

#[utoipa::path(get, path = "/subscriptions", tag = "subscriptions", params(ListParams),
    responses((status = 200, body = SubscriptionPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody, description = "HERALD_API_KEY is set and the request lacks it")))]
pub async fn list(
    State(st): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Json<SubscriptionPage>, ApiError> {
    let page = st
        .subscriptions
        .list(p.limit.unwrap_or(50), p.cursor.as_deref())
        .await?;
    Ok(Json(SubscriptionPage {
        data: page.data.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(get, path = "/subscriptions/{id}", tag = "subscriptions",
    responses((status = 200, body = SubscriptionView), (status = 401, body = ErrorBody, description = "HERALD_API_KEY is set and the request lacks it"), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    Ok(Json(
        st.subscriptions
            .get(&super::subscription_id(&id)?)
            .await?
            .into(),
    ))
}

#[utoipa::path(put, path = "/subscriptions/{id}", tag = "subscriptions", request_body = SubscriptionSpec,
    responses((status = 200, body = SubscriptionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody, description = "HERALD_API_KEY is set and the request lacks it"),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "managed by the Kubernetes operator"),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn replace(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(spec): JsonBody<SubscriptionSpec>,
) -> Result<Json<SubscriptionView>, ApiError> {
    Ok(Json(
        st.subscriptions
            .update(&super::subscription_id(&id)?, &spec, &Caller::Api)
            .await?
            .into(),
    ))
}

#[utoipa::path(patch, path = "/subscriptions/{id}", tag = "subscriptions", request_body = SubscriptionPatch,
    responses((status = 200, body = SubscriptionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody, description = "HERALD_API_KEY is set and the request lacks it"),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<SubscriptionPatch>,
) -> Result<Json<SubscriptionView>, ApiError> {
    Ok(Json(
        st.subscriptions
            .patch(&super::subscription_id(&id)?, patch, &Caller::Api)
            .await?
            .into(),
    ))
}

#[utoipa::path(delete, path = "/subscriptions/{id}", tag = "subscriptions",
    responses((status = 204, description = "deleted; queued deliveries end as Failure"), (status = 401, body = ErrorBody, description = "HERALD_API_KEY is set and the request lacks it"),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.subscriptions
        .delete(&super::subscription_id(&id)?, &Caller::Api)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A secret rotation; an empty body (or `{}`) rotates to a generated secret with the default
/// overlap.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// The new secret, 16 to 256 bytes (`whsec_<base64>` for Standard Webhooks receivers);
    /// generated (`whsec_` and 32 random bytes) when absent.
    pub secret: Option<String>,
    /// How long the current secret keeps signing deliveries and verifying ingest, e.g. `24h`,
    /// `30m`; `0s` ends it at once; at most `7d`. Default: `HERALD_SECRET_OVERLAP` (24 h).
    #[schema(example = "24h")]
    pub overlap: Option<String>,
}

#[utoipa::path(post, path = "/subscriptions/{id}/secret/rotate", tag = "subscriptions",
    description = "Replaces the signing secret. Until `previous_secret_expires_at` deliveries carry one \
        `v1,` signature per secret in `webhook-signature` (X-Hub-Signature-256 uses the new one) and \
        `/ingest` accepts a signature made with either; an earlier previous secret is dropped. \
        The new secret is shown in this answer only.",
    request_body(content = Option<RotateSecret>, content_type = "application/json", description = "optional; empty means a generated secret and the default overlap"),
    responses((status = 200, body = SecretRotated), (status = 400, body = ErrorBody, description = "malformed JSON or an invalid overlap"),
              (status = 401, body = ErrorBody, description = "HERALD_API_KEY is set and the request lacks it"),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "managed by the Kubernetes operator"),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody, description = "an invalid secret, or the current one")))]
pub async fn rotate_secret(
    State(st): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(req): OptionalJsonBody<RotateSecret>,
) -> Result<Json<SecretRotated>, ApiError> {
    let id = super::subscription_id(&id)?;
    let overlap = req
        .overlap
        .as_deref()
        .map(|o| parse_duration(o).and_then(check_overlap))
        .transpose()
        .map_err(|m| ApiError::BadRequest(format!("invalid overlap: {m}")))?;
    let rotated = st
        .subscriptions
        .rotate_secret(&id, req.secret, overlap, &Caller::Api)
        .await?;
    Ok(Json(SecretRotated {
        previous_secret_expires_at: rotated.subscription.previous_secret_expires_at,
        secret: rotated.secret,
        subscription: rotated.subscription.into(),
    }))
}
