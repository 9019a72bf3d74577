//! Every error answer of the API, mapped in one place to a status and a JSON body
//! `{"error": "...", "detail"?: ...}`. Bad input never becomes a 500.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::error::Error as CoreError;
use herald_core::error::{chain, Cause};
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

/// What a client is told when the store does not answer; the cause goes to the log only (a
/// driver's message may name hosts, users and internals).
pub const STORE_UNAVAILABLE: &str = "the store is unavailable, retry later";
/// What a client is told when the store cannot take writes (full or failing storage).
pub const STORE_FULL: &str = "the store is full or failing, retry later";
/// What a client is told for a failure of the server itself.
pub const INTERNAL: &str = "internal error";

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
    /// A store failure, its cause kept for the log (see [`ApiError::into_response`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A failure of the server itself while `doing` something.
    #[error("{doing}")]
    Internal {
        doing: &'static str,
        #[source]
        source: Cause,
    },
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::Store(StoreError::NotFound) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::Store(StoreError::Conflict(_)) => {
                StatusCode::CONFLICT
            }
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Store(StoreError::Unavailable(..) | StoreError::Full(..)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Store(StoreError::Backend(..) | StoreError::Rejected(..))
            | ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client reads in `error`: the error itself when it is about the request, a
    /// fixed message when it is the server's (the cause is logged instead).
    fn public_message(&self) -> String {
        match self {
            ApiError::Store(StoreError::NotFound) => ApiError::NotFound("resource").to_string(),
            ApiError::Store(StoreError::Conflict(m)) => m.clone(),
            ApiError::Store(StoreError::Unavailable(..)) => STORE_UNAVAILABLE.into(),
            ApiError::Store(StoreError::Full(..)) => STORE_FULL.into(),
            ApiError::Store(StoreError::Backend(..) | StoreError::Rejected(..))
            | ApiError::Internal { .. } => INTERNAL.into(),
            other => other.to_string(),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn internal(doing: &'static str, source: impl Into<Cause>) -> Self {
        ApiError::Internal {
            doing,
            source: source.into(),
        }
    }
}

impl IntoResponse for ApiError {
    /// The one place a failed request is logged: with its whole cause chain, once, for the
    /// server's failures (a client's mistake is the client's to read, not the log's).
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %chain(&self), status = status.as_u16(), "request failed");
        }
        let detail = match &self {
            ApiError::Invalid { field, .. } => Some(serde_json::json!({ "field": field })),
            _ => None,
        };
        let body = ErrorBody {
            error: self.public_message(),
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
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::HeaderMap;
    use parking_lot::Mutex;
    use serde_json::Value;

    use super::*;

    /// What a subscriber wrote, to read the log back.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Log {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
        type Writer = Log;
        fn make_writer(&'a self) -> Log {
            self.clone()
        }
    }

    struct Answer {
        status: u16,
        headers: HeaderMap,
        body: Value,
        log: String,
    }

    async fn answer(e: ApiError) -> Answer {
        let log = Log::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .finish();
        let resp = tracing::subscriber::with_default(subscriber, || e.into_response());
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let log = String::from_utf8(log.0.lock().clone()).unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap(),
            log,
        }
    }

    /// A driver's error as MongoDB's or Redis's would read: hosts and internals.
    fn driver() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused by mongo-0.herald.svc:27017 (user herald)",
        )
    }

    #[tokio::test]
    async fn a_store_failure_is_logged_with_its_cause_and_answered_without_it() {
        let e =
            StoreError::unavailable_by("MongoDB is unavailable: reading a subscription", driver());
        let a = answer(e.into()).await;
        assert_eq!(a.status, 503);
        assert_eq!(a.headers[header::RETRY_AFTER], "2");
        assert_eq!(a.body, serde_json::json!({ "error": STORE_UNAVAILABLE }));
        assert!(!a.body.to_string().contains("mongo-0"), "{}", a.body);
        // The log has the whole chain, once.
        assert_eq!(a.log.matches("request failed").count(), 1, "{}", a.log);
        assert!(
            a.log.contains(
                "backend unavailable: MongoDB is unavailable: reading a subscription: \
                 connection refused by mongo-0.herald.svc:27017"
            ),
            "{}",
            a.log
        );
        assert!(a.log.contains("status=503"), "{}", a.log);
    }

    #[tokio::test]
    async fn each_store_failure_keeps_its_status_and_public_message() {
        let full = answer(
            StoreError::Full("the database cannot grow".into(), Some(Box::new(driver()))).into(),
        )
        .await;
        assert_eq!(
            (full.status, &full.body["error"]),
            (503, &Value::from(STORE_FULL))
        );
        assert_eq!(full.headers[header::RETRY_AFTER], "2");
        for e in [
            StoreError::backend_by("MongoDB failed: reading", driver()),
            StoreError::rejected_by("MongoDB refused the write: storing", driver()),
        ] {
            let a = answer(e.into()).await;
            assert_eq!((a.status, &a.body["error"]), (500, &Value::from(INTERNAL)));
            assert!(!a.headers.contains_key(header::RETRY_AFTER));
            assert!(!a.body.to_string().contains("mongo-0"), "{}", a.body);
            assert!(a.log.contains("mongo-0.herald.svc"), "{}", a.log);
        }
        // What is about the request is the client's to read, and not logged.
        let missing = answer(StoreError::NotFound.into()).await;
        assert_eq!(
            (missing.status, &missing.body["error"]),
            (404, &Value::from("resource not found"))
        );
        let conflict = answer(StoreError::Conflict("the id exists".into()).into()).await;
        assert_eq!(
            (conflict.status, &conflict.body["error"]),
            (409, &Value::from("the id exists"))
        );
        assert_eq!(missing.log + &conflict.log, "");
    }

    #[tokio::test]
    async fn a_failure_of_the_server_itself_is_logged_and_answered_as_internal() {
        let a = answer(ApiError::internal("ingest task", driver())).await;
        assert_eq!(a.status, 500);
        assert_eq!(a.body, serde_json::json!({ "error": INTERNAL }));
        assert!(
            a.log.contains("ingest task: connection refused by mongo-0"),
            "{}",
            a.log
        );
    }
}
