//! Ingest: accept an event, verify it, store and queue it durably, answer 202.
//!
//! The store-and-enqueue step runs in its own task: if the client disconnects, axum drops the
//! handler, but the spawned task still completes, so an event is either fully queued or was
//! never acknowledged (and never half-stored).

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::Utc;
use herald_core::model::{DeliveryState, Event, IdempotencyKey, Publish, PublishOutcome};
use herald_core::signing::{SigningKeys, HUB_SIGNATURE_HEADER};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{body_error, check_json_content_type, check_json_syntax};
use crate::state::AppState;
use crate::views::{FanoutAccepted, IngestAccepted};

const FANOUT_SCOPE: &str = "events";

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::BadRequest(format!("header {name} must be visible ASCII"))),
    }
}

fn event_type(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match header_str(headers, "event-type")? {
        None | Some("") => Ok(None),
        Some(t) if t.len() > 256 => Err(ApiError::invalid(
            "Event-Type",
            "must be at most 256 characters",
        )),
        Some(t) => Ok(Some(t.to_string())),
    }
}

fn idempotency_key(
    headers: &HeaderMap,
    scope: &str,
    event_type: Option<&str>,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, ApiError> {
    match header_str(headers, "idempotency-key")? {
        None | Some("") => Ok(None),
        Some(k) if k.len() > 255 => Err(ApiError::invalid(
            "Idempotency-Key",
            "must be at most 255 characters",
        )),
        Some(k) => Ok(Some(IdempotencyKey::new(scope, k, event_type, body))),
    }
}

fn checked_body(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    check_json_content_type(headers)?;
    let body = body.map_err(|e| body_error(e, st.max_payload))?;
    check_json_syntax(&body)?;
    Ok(body)
}

/// Stores and queues in a task of its own, so a client that goes away cannot cancel it half-way.
async fn publish(st: &AppState, p: Publish) -> Result<PublishOutcome, ApiError> {
    let queue = st.backend.intake.clone();
    let metrics = st.telemetry.clone();
    let matched = p.subscription_ids.len() as u64;
    let out = tokio::spawn(async move {
        let out = queue.publish(p).await;
        if matches!(out, Ok(PublishOutcome::Accepted)) {
            metrics.count_ingested(1);
            metrics.count_queued(matched);
        }
        out
    })
    .await
    .map_err(|e| ApiError::internal("ingest task", e))??;
    Ok(out)
}

/// 422, as the IETF Idempotency-Key draft specifies for a key reused with another payload.
fn key_reused(first: &str) -> ApiError {
    ApiError::invalid(
        "Idempotency-Key",
        format!(
            "was already used within 24 h for a different request (event type or body) \
             that created {first}; send this one with a new key"
        ),
    )
}

fn replayed<T: serde::Serialize>(body: T, duplicate: bool) -> Response {
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if duplicate {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

#[utoipa::path(post, path = "/ingest/{subscription_id}", tag = "ingest",
    request_body(content = Object, content_type = "application/json", description = "any JSON document; delivered byte for byte"),
    params(
        ("subscription_id" = String, Path),
        ("Event-Type" = Option<String>, Header),
        ("Idempotency-Key" = Option<String>, Header, description = "the same key within 24 h returns the first answer and queues nothing; reused with a different event type or body it is a 422"),
        ("X-Hub-Signature-256" = Option<String>, Header, description = "sha256=<hex HMAC of the body>, required when the subscription has a secret; during a rotation's overlap either secret's signature is accepted"),
    ),
    responses((status = 202, body = IngestAccepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "the subscription is disabled; the error carries the reason"),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
              (status = 503, body = ErrorBody, description = "the store cannot take the event (e.g. the disk is full)")))]
pub async fn ingest(
    State(st): State<AppState>,
    Path(subscription_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let sub = st
        .cache
        .get(&super::subscription_id(&subscription_id)?)
        .await?
        .ok_or(ApiError::NotFound("subscription"))?;
    let body = checked_body(&st, &headers, body)?;
    let secrets = sub.active_secrets(Utc::now());
    if !secrets.is_empty() {
        let keys = SigningKeys::from_secrets(secrets)
            .map_err(|e| ApiError::internal("reading signing secrets", e))?;
        keys.verify_hub(header_str(&headers, HUB_SIGNATURE_HEADER)?, &body)?;
    }
    // After the signature check, so the reason is told only to a producer that may send here.
    if sub.is_disabled() {
        let reason = sub
            .disabled_reason
            .as_deref()
            .unwrap_or("no reason recorded");
        return Err(ApiError::Conflict(format!(
            "subscription is disabled ({reason}); a PUT or PATCH of the subscription re-enables it"
        )));
    }
    let event_type = event_type(&headers)?;
    if !sub.accepts(event_type.as_deref()) {
        return Err(ApiError::invalid(
            "Event-Type",
            format!(
                "subscription accepts only {:?}, not {:?}",
                sub.event_types,
                event_type.as_deref().unwrap_or("")
            ),
        ));
    }
    let idempotency = idempotency_key(&headers, &sub.id, event_type.as_deref(), &body)?;
    if let Some(rl) = &st.rate_limiter {
        if !rl.allow(&sub.id) {
            return Err(ApiError::RateLimited);
        }
    }
    let webhook_id = herald_core::ids::webhook_id();
    let p = Publish {
        event: Event {
            webhook_id: webhook_id.clone(),
            event_type,
            payload: body,
            received_at: Utc::now(),
        },
        subscription_ids: vec![sub.id.clone()],
        idempotency,
    };
    Ok(match publish(&st, p).await? {
        PublishOutcome::Accepted => replayed(
            IngestAccepted {
                webhook_id: webhook_id.into(),
                status: DeliveryState::Queued.as_str(),
            },
            false,
        ),
        PublishOutcome::KeyReused { webhook_id } => return Err(key_reused(&webhook_id)),
        PublishOutcome::Duplicate { webhook_id, .. } => replayed(
            IngestAccepted {
                webhook_id: webhook_id.into(),
                status: DeliveryState::Queued.as_str(),
            },
            true,
        ),
    })
}

#[utoipa::path(post, path = "/events", tag = "ingest",
    description = "Fan-out to every matching subscription. Always needs `Authorization: Bearer` with \
        HERALD_INGEST_KEY, or HERALD_API_KEY when no ingest key is set; with neither set it answers 401.",
    request_body(content = Object, content_type = "application/json"),
    params(("Event-Type" = String, Header, description = "required: selects the subscriptions"),
           ("Idempotency-Key" = Option<String>, Header, description = "as for /ingest: reused with a different request it is a 422")),
    responses((status = 202, body = FanoutAccepted), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody, description = "missing or wrong key, or no key configured"),
              (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
              (status = 503, body = ErrorBody, description = "the store cannot take the event (e.g. the disk is full)")))]
pub async fn fanout(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = checked_body(&st, &headers, body)?;
    let event_type = event_type(&headers)?
        .ok_or_else(|| ApiError::BadRequest("the Event-Type header is required".into()))?;
    let idempotency = idempotency_key(&headers, FANOUT_SCOPE, Some(&event_type), &body)?;
    if let Some(rl) = &st.rate_limiter {
        if !rl.allow(FANOUT_SCOPE) {
            return Err(ApiError::RateLimited);
        }
    }
    let subs = st.cache.matching(Some(&event_type)).await?;
    let webhook_id = herald_core::ids::webhook_id();
    let p = Publish {
        event: Event {
            webhook_id: webhook_id.clone(),
            event_type: Some(event_type),
            payload: body,
            received_at: Utc::now(),
        },
        subscription_ids: subs.iter().map(|s| s.id.clone()).collect(),
        idempotency,
    };
    let matched = p.subscription_ids.len();
    Ok(match publish(&st, p).await? {
        PublishOutcome::Accepted => replayed(
            FanoutAccepted {
                webhook_id: webhook_id.into(),
                matched,
            },
            false,
        ),
        PublishOutcome::KeyReused { webhook_id } => return Err(key_reused(&webhook_id)),
        PublishOutcome::Duplicate {
            webhook_id,
            matched,
        } => replayed(
            FanoutAccepted {
                webhook_id: webhook_id.into(),
                matched,
            },
            true,
        ),
    })
}
