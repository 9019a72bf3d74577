//! Refuses cross-site state-changing requests.
//!
//! A browser lets any web page send a POST to any address, and Herald is often open (no API
//! key, bound to 0.0.0.0): without this check, a page a Herald operator visits could create
//! subscriptions. Browsers always send `Origin` on cross-origin POST/PUT/PATCH/DELETE, so a
//! state-changing request is refused (403) when it carries an `Origin` that is neither
//! Herald's own (its host and port equal the request's `Host`) nor in
//! `HERALD_ALLOWED_ORIGINS`. `Origin: null` (sandboxed frames, some redirects) is refused.
//! Requests without `Origin` (curl, servers, producers) pass: they are not a browser acting
//! on a user's behalf, and the keys protect against them.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;

/// The origins accepted besides Herald's own, normalized like [`normalize`] does.
#[derive(Clone, Default)]
pub struct Origins(pub Arc<[String]>);

fn changes_state(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// `host[:port]` with the scheme's default port dropped, lower case.
fn authority(scheme: &str, hostport: &str) -> String {
    let hp = hostport.to_ascii_lowercase();
    let default = match scheme {
        "https" => ":443",
        _ => ":80",
    };
    match hp.strip_suffix(default) {
        // `[::1]:80` -> `[::1]`, but never strip from a bare IPv6 literal's inside.
        Some(h) if !h.is_empty() && (!h.starts_with('[') || h.ends_with(']')) => h.to_string(),
        _ => hp,
    }
}

/// Whether a request with these headers and method may go on.
pub fn allowed(method: &Method, headers: &HeaderMap, extra: &[String]) -> Result<(), ApiError> {
    if !changes_state(method) {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let refuse = |o: &str| {
        Err(ApiError::Forbidden(format!(
            "cross-origin request from {o:?} refused; add the origin to HERALD_ALLOWED_ORIGINS to allow it"
        )))
    };
    let Ok(origin) = origin.to_str() else {
        return refuse("(not ASCII)");
    };
    let normalized = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let Some((scheme, hostport)) = normalized.split_once("://") else {
        return refuse(origin);
    };
    if !matches!(scheme, "http" | "https") || hostport.is_empty() {
        return refuse(origin);
    }
    if extra.contains(&normalized) {
        return Ok(());
    }
    // Same origin: the browser addressed this very host and port. The scheme is not compared:
    // behind a TLS-terminating proxy the page is https while Herald itself speaks http.
    let same = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| authority(scheme, hostport) == authority(scheme, host.trim()));
    if same {
        Ok(())
    } else {
        refuse(origin)
    }
}

pub async fn check(
    State(origins): State<Origins>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    allowed(req.method(), req.headers(), &origins.0)?;
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    fn ok(method: Method, host: &str, origin: Option<&str>, extra: &[&str]) -> bool {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        allowed(&method, &headers(host, origin), &extra).is_ok()
    }

    #[test]
    fn same_origin_and_originless_requests_pass() {
        assert!(ok(Method::POST, "localhost:8000", None, &[]));
        assert!(ok(
            Method::POST,
            "localhost:8000",
            Some("http://localhost:8000"),
            &[]
        ));
        assert!(ok(
            Method::DELETE,
            "Herald.Example",
            Some("https://herald.example"),
            &[]
        ));
        assert!(ok(
            Method::PATCH,
            "herald.example",
            Some("https://herald.example:443"),
            &[]
        ));
        assert!(ok(
            Method::PUT,
            "[::1]:8000",
            Some("http://[::1]:8000"),
            &[]
        ));
        assert!(ok(Method::POST, "[::1]", Some("http://[::1]:80"), &[]));
    }

    #[test]
    fn reads_pass_whatever_the_origin() {
        assert!(ok(
            Method::GET,
            "localhost:8000",
            Some("https://evil.example"),
            &[]
        ));
        assert!(ok(Method::OPTIONS, "localhost:8000", Some("null"), &[]));
    }

    #[test]
    fn foreign_null_and_malformed_origins_are_refused() {
        for origin in [
            "https://evil.example",
            "http://localhost:8001",
            "http://localhost.evil.example:8000",
            "null",
            "file://",
            "localhost:8000",
            "http://",
        ] {
            assert!(
                !ok(Method::POST, "localhost:8000", Some(origin), &[]),
                "{origin}"
            );
        }
        // No Host to compare with: only the allowed list can admit it.
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static("http://a.example"));
        assert!(allowed(&Method::POST, &h, &[]).is_err());
    }

    #[test]
    fn the_allowed_list_admits_exact_origins() {
        let extra = ["https://admin.example.com"];
        assert!(ok(
            Method::POST,
            "herald:8000",
            Some("https://admin.example.com"),
            &extra
        ));
        assert!(ok(
            Method::POST,
            "herald:8000",
            Some("https://ADMIN.example.com/"),
            &extra
        ));
        assert!(!ok(
            Method::POST,
            "herald:8000",
            Some("http://admin.example.com"),
            &extra
        ));
        assert!(!ok(
            Method::POST,
            "herald:8000",
            Some("https://admin.example.com:8443"),
            &extra
        ));
    }
}
