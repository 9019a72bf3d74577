//! Bearer-key checks for the management API and for ingest, compared in constant time.
//!
//! Which credential guards which route:
//!
//! | route                              | credential                                         |
//! |------------------------------------|----------------------------------------------------|
//! | management (`/subscriptions`, ...) | `HERALD_API_KEY`; open when unset                  |
//! | `POST /ingest/{id}`                | `HERALD_INGEST_KEY` if set; the subscription's signature when it has a secret |
//! | `POST /events`                     | `HERALD_INGEST_KEY`, else `HERALD_API_KEY`; never open |
//!
//! `/events` is never open because Herald signs what it delivers: an open fan-out would let
//! anyone who reaches Herald send every subscriber a correctly signed, forged event. When an
//! ingest key is set, only it opens `/events` (producers and operators hold different keys);
//! the API key stands in only when no ingest key exists. With neither set, `/events` answers
//! 401 naming the setting, and start-up logs a warning instead of refusing to run, so the
//! one-command standalone start keeps working.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// The answer of `/events` when no key is configured at all.
pub const FANOUT_UNCONFIGURED: &str =
    "POST /events needs a credential and none is configured: set HERALD_INGEST_KEY (or HERALD_API_KEY)";

pub fn check_bearer(headers: &HeaderMap, key: Option<&str>) -> Result<(), ApiError> {
    let Some(key) = key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if bool::from(g.as_bytes().ct_eq(key.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized("invalid API key".into())),
        None => Err(ApiError::Unauthorized(
            "missing API key: send Authorization: Bearer <key>".into(),
        )),
    }
}

/// The key that opens `/events`: the ingest key, else the API key, else none (always refused).
pub fn fanout_key(state: &AppState) -> Option<&str> {
    state.ingest_key.as_deref().or(state.api_key.as_deref())
}

pub async fn management(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check_bearer(req.headers(), state.api_key.as_deref())?;
    Ok(next.run(req).await)
}

pub async fn ingest(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check_bearer(req.headers(), state.ingest_key.as_deref())?;
    Ok(next.run(req).await)
}

pub async fn fanout(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match fanout_key(&state) {
        Some(key) => check_bearer(req.headers(), Some(key))?,
        None => return Err(ApiError::Unauthorized(FANOUT_UNCONFIGURED.into())),
    }
    Ok(next.run(req).await)
}
