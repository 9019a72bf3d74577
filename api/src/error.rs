//! Every error answer of the API, mapped in one place to a status and a JSON body
//! `{"error": "...", "detail"?: ...}`. Bad input never becomes a 500.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::error::Error as CoreError;
use herald_core::signing::SignatureError;
use herald_core::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("payload too large: the limit is {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("rate limit exceeded")]
    RateLimited,
    #[error("request not completed within {0:?} (HERALD_BODY_TIMEOUT)")]
    RequestTimeout(std::time::Duration),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Invalid { field, .. } => Some(serde_json::json!({ "field": field })),
            ApiError::Internal(m) | ApiError::Unavailable(m) => {
                tracing::error!(error = %m, status = status.as_u16(), "request failed");
                None
            }
            _ => None,
        };
        let body = ErrorBody {
            error: self.to_string(),
            detail,
        };
        let mut resp = (status, Json(body)).into_response();
        match self {
            ApiError::RateLimited => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // Storage that does not answer is usually back within seconds (a restart, a
            // failover): clients and load balancers should retry, not give up.
            ApiError::Unavailable(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            }
            ApiError::Unauthorized(_) => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("resource"),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            e @ StoreError::Unavailable(..) => ApiError::Unavailable(e.chain()),
            e @ StoreError::Full(..) => ApiError::Unavailable(e.chain()),
            e @ StoreError::Backend(..) => ApiError::Internal(e.chain()),
            e @ StoreError::Rejected(..) => ApiError::Internal(e.chain()),
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NotFound(what) => ApiError::NotFound(what),
            CoreError::Conflict(m) => ApiError::Conflict(m),
            CoreError::Invalid(v) => ApiError::invalid(v.field, v.message),
            CoreError::Store(s) => s.into(),
        }
    }
}

impl From<SignatureError> for ApiError {
    fn from(e: SignatureError) -> Self {
        ApiError::Unauthorized(e.to_string())
    }
}
