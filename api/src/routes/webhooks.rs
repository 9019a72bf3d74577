//! Delivery status: one webhook with its attempts, a subscription's recent attempts, replay.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{ApiError, ErrorBody};
use crate::extract::Query;
use crate::state::AppState;
use crate::views::{AttemptList, Requeued, WebhookStatus};

const MAX_ATTEMPTS_LISTED: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecentParams {
    /// How many attempts, newest first (default 20, at most 1000).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/webhooks/{webhook_id}", tag = "status",
    responses((status = 200, body = WebhookStatus), (status = 401, body = ErrorBody, description = "HERALD_API_KEY is set and the request lacks it"), (status = 404, body = ErrorBody)))]
pub async fn status(
    State(st): State<AppState>,
    Path(webhook_id): Path<String>,
) -> Result<Json<WebhookStatus>, ApiError> {
    super::webhook_id(&webhook_id)?;
    // State first, then the log: attempts are recorded before their delivery is settled, so
    // the log read second holds every attempt the state accounts for.
    let rec = st
        .backend
        .intake
        .webhook(&webhook_id)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    let attempts = st.backend.attempts.by_webhook(&webhook_id).await?;
    Ok(Json(WebhookStatus::new(rec, attempts)))
}

#[utoipa::path(post, path = "/webhooks/{webhook_id}/retry", tag = "status",
    responses((status = 202, body = Requeued), (status = 401, body = ErrorBody, description = "HERALD_API_KEY is set and the request lacks it"), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "no failed delivery to retry")))]
pub async fn retry(
    State(st): State<AppState>,
    Path(webhook_id): Path<String>,
) -> Result<(StatusCode, Json<Requeued>), ApiError> {
    super::webhook_id(&webhook_id)?;
    let requeued = st.backend.intake.replay(&webhook_id).await?;
    if requeued == 0 {
        return match st.backend.intake.webhook(&webhook_id).await? {
            None => Err(ApiError::NotFound("webhook")),
            Some(rec) => Err(ApiError::Conflict(format!(
                "nothing to retry: the webhook is {}, only failed deliveries can be retried",
                serde_json::to_value(rec.status())
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ))),
        };
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Requeued {
            webhook_id,
            requeued,
        }),
    ))
}

#[utoipa::path(get, path = "/subscriptions/{id}/deliveries", tag = "status", params(RecentParams),
    responses((status = 200, body = AttemptList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody, description = "HERALD_API_KEY is set and the request lacks it"),
              (status = 404, body = ErrorBody)))]
pub async fn recent(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<RecentParams>,
) -> Result<Json<AttemptList>, ApiError> {
    let id = super::subscription_id(&id)?;
    let limit = p.limit.unwrap_or(20).clamp(1, MAX_ATTEMPTS_LISTED);
    let data = st.backend.attempts.by_subscription(&id, limit).await?;
    // A deleted subscription's log stays readable until retention removes it.
    if data.is_empty() && st.backend.subscriptions.get(&id).await?.is_none() {
        return Err(ApiError::NotFound("subscription"));
    }
    Ok(Json(AttemptList {
        subscription_id: id.into(),
        data,
    }))
}

/// The original README's path for the same list.
#[utoipa::path(get, path = "/subscription/logs/{id}", tag = "status", params(RecentParams),
    responses((status = 200, body = AttemptList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody, description = "HERALD_API_KEY is set and the request lacks it"),
              (status = 404, body = ErrorBody)))]
pub async fn logs_alias(
    st: State<AppState>,
    id: Path<String>,
    p: Query<RecentParams>,
) -> Result<Json<AttemptList>, ApiError> {
    recent(st, id, p).await
}
