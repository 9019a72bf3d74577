//! Request body handling shared by ingest and management: size limit, content type and JSON
//! checks, each with its own clear error.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Accepts `application/json` and `application/*+json`. A missing type and curl's default for
/// `-d` (`application/x-www-form-urlencoded`) pass too, since the body is still checked to be
/// JSON; any other declared type is a 415.
pub fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ok = ct == "application/json"
        || (ct.starts_with("application/") && ct.ends_with("+json"))
        || ct == "application/x-www-form-urlencoded";
    if ok {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "content type {ct:?} is not supported; send application/json"
        )))
    }
}

/// Maps a body-read failure: over the limit is a 413, anything else a 400.
pub fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(limit)
    } else {
        ApiError::BadRequest(format!("could not read the request body: {e}"))
    }
}

/// Checks that a body is well-formed JSON without building it.
pub fn check_json_syntax(body: &[u8]) -> Result<(), ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON document".into(),
        ));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))
}

/// A JSON request body for the management API: 400 for malformed JSON, 415 for a non-JSON
/// content type, 422 for well-formed JSON with wrong or missing fields.
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_json_content_type(req.headers())?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| body_error(e, crate::MANAGEMENT_BODY_LIMIT))?;
        check_json_syntax(&bytes)?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let msg = e.to_string();
            let field = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.contains("field"))
                .unwrap_or("body")
                .to_string();
            ApiError::invalid(field, msg)
        })
    }
}

/// Query parameters, refused with the JSON error body (axum's own rejection is plain text).
pub struct JsonQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for JsonQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| JsonQuery(q.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}
