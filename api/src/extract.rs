//! Request body handling shared by ingest and management: size limit, content type and JSON
//! checks, each with its own clear error.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Accepts `application/json` and `application/<subtype>+json`, with any parameters
/// (`charset=utf-8`). Anything else, a missing type and `application/x-www-form-urlencoded`
/// included, is a 415: a browser sends form and `text/plain` bodies cross-origin without a CORS
/// preflight, so accepting them would let any web page drive an unauthenticated Herald.
pub fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(
            "a Content-Type header is required; send application/json".into(),
        ));
    };
    let declared = String::from_utf8_lossy(value.as_bytes());
    if is_json_media_type(&declared) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "content type {declared:?} is not supported; send application/json"
        )))
    }
}

/// Whether a `Content-Type` value names JSON: `application/json` or a `+json` structured
/// syntax suffix (RFC 6839), case-insensitive, parameters ignored.
pub fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    if !kind.eq_ignore_ascii_case("application") {
        return false;
    }
    let subtype = subtype.to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    subtype == "json" || subtype.strip_suffix("+json").is_some_and(token)
}

/// Maps a body-read failure: over the limit is a 413, anything else a 400.
pub fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(limit)
    } else {
        ApiError::BadRequest(format!("could not read the request body: {e}"))
    }
}

/// Checks that a body is well-formed JSON without building it. UTF-8 is checked first and on
/// the whole body: JSON must be UTF-8 (RFC 8259 §8.1), and the syntax check skips over string
/// contents without validating them.
pub fn check_json_syntax(body: &[u8]) -> Result<(), ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON document".into(),
        ));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::BadRequest(format!(
            "the body is not valid UTF-8 (byte {}); JSON must be UTF-8",
            e.valid_up_to()
        )));
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
        parse_json(&bytes).map(JsonBody)
    }
}

/// As [`JsonBody`], but an empty body (with or without a content type) stands for
/// `T::default()`: for actions whose every field is optional, such as a secret rotation.
pub struct OptionalJsonBody<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJsonBody<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| body_error(e, crate::MANAGEMENT_BODY_LIMIT))?;
        if bytes.is_empty() {
            return Ok(OptionalJsonBody(T::default()));
        }
        check_json_content_type(&headers)?;
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

/// Well-formed JSON that does not fit `T` is a 422 naming the offending field by its path
/// (`headers.X-Env`, `event_types[2]`). A missing field is reported at the object that lacks
/// it, so its name (which serde gives only in the message) is added to that path (`target_url`,
/// not the body); any other error at the top level (a body that is not an object) names the
/// body.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    check_json_syntax(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let field = match (path.as_str(), named_field(&message)) {
            (".", Some(name)) => name.to_string(),
            (".", None) => "body".to_string(),
            (_, Some(name)) => format!("{path}.{name}"),
            (_, None) => path,
        };
        ApiError::invalid(field, message)
    })
}

/// The field a serde "missing field `x`" message names.
fn named_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Query parameters whose rejection (`?limit=abc`) is the API's JSON 400, not axum's plain text.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn errors_name_the_field_by_its_path() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            name: String,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outer {
            target_url: String,
            limit: Option<u32>,
            inner: Option<Inner>,
            tags: Option<Vec<u32>>,
        }
        let field = |body: &str| match parse_json::<Outer>(body.as_bytes()) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(field("{}"), "target_url");
        assert_eq!(field(r#"{"target_url":"x","extra":1}"#), "extra");
        assert_eq!(field(r#"{"target_url":"x","limit":"many"}"#), "limit");
        assert_eq!(field(r#"{"target_url":"x","inner":{}}"#), "inner.name");
        assert_eq!(
            field(r#"{"target_url":"x","inner":{"name":"a","b":1}}"#),
            "inner.b"
        );
        assert_eq!(field(r#"{"target_url":"x","tags":[1,"two"]}"#), "tags[1]");
        assert_eq!(field(r#""a string""#), "body");
    }

    #[test]
    fn json_media_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/merge-patch+json",
            "application/vnd.api+json ; q=1",
        ] {
            assert!(is_json_media_type(ok), "{ok}");
        }
        for bad in [
            "",
            "application/x-www-form-urlencoded",
            "text/plain",
            "text/json",
            "multipart/form-data; boundary=x",
            "application/+json",
            "application/jsonx",
            "application",
            "application/json5",
            "application/x+jsonp",
        ] {
            assert!(!is_json_media_type(bad), "{bad}");
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Spec {
        target_url: String,
        #[serde(default)]
        max_attempts: Option<u32>,
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        event_types: Vec<String>,
    }

    fn field_of(body: &str) -> String {
        match parse_json::<Spec>(body.as_bytes()) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_body_that_does_not_fit_names_the_field_by_its_path() {
        assert_eq!(field_of(r#"{"target_url": 1}"#), "target_url");
        assert_eq!(
            field_of(r#"{"target_url": "u", "max_attempts": "x"}"#),
            "max_attempts"
        );
        assert_eq!(
            field_of(r#"{"target_url": "u", "headers": {"X-Env": 5}}"#),
            "headers.X-Env"
        );
        assert_eq!(
            field_of(r#"{"target_url": "u", "event_types": ["a", 2]}"#),
            "event_types[1]"
        );
        assert_eq!(field_of(r#"{"target_url": "u", "unknown": 1}"#), "unknown");
        // A missing field is named; a body that is not an object is the body's fault.
        assert_eq!(field_of("{}"), "target_url");
        assert_eq!(field_of("[]"), "body");
        let Err(ApiError::Invalid { message, .. }) = parse_json::<Spec>(b"{}") else {
            panic!("{{}} is refused");
        };
        assert!(message.contains("target_url"), "{message}");
        assert!(parse_json::<Spec>(br#"{"target_url": "u"}"#).is_ok());
    }

    proptest! {
        /// Parameters never change the decision, and only the application type can be JSON.
        #[test]
        fn parameters_do_not_change_the_decision(
            kind in "[a-zA-Z]{1,12}",
            subtype in "[a-zA-Z0-9.+-]{1,20}",
            params in "(;[ a-z]{0,8}=[a-z0-9-]{0,8}){0,3}",
        ) {
            let bare = format!("{kind}/{subtype}");
            let with = format!("{bare}{params}");
            prop_assert_eq!(is_json_media_type(&bare), is_json_media_type(&with));
            if is_json_media_type(&bare) {
                prop_assert!(kind.eq_ignore_ascii_case("application"));
                prop_assert!(subtype.to_ascii_lowercase().ends_with("json"));
            }
        }

        #[test]
        fn invalid_utf8_is_refused_before_syntax(prefix in "[a-z ]{0,10}", bad in 0x80u8..=0xffu8) {
            // A lone byte >= 0x80 followed by ASCII is never valid UTF-8.
            let body = format!("\"{prefix}").into_bytes().into_iter()
                .chain([bad, b'"']).collect::<Vec<u8>>();
            let err = check_json_syntax(&body).unwrap_err();
            prop_assert!(err.to_string().contains("UTF-8"), "{}", err);
        }
    }
}
