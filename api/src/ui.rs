//! The dashboard: a plain HTML/CSS/JS page embedded in the binary, and the API reference page.
//!
//! `/` and `/ui` serve the page, `/ui/app.js` and `/ui/app.css` its assets; `/docs` renders
//! `/openapi.json` with `/docs/docs.js`. The reference page shares the dashboard's origin, where
//! the API key sits in sessionStorage, so it loads nothing from elsewhere either. Every response
//! carries a strict Content-Security-Policy: scripts, styles and API calls come from this
//! origin only, nothing inline, no frames, no plugins.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");
const DOCS_HTML: &str = include_str!("../ui/docs.html");
const DOCS_JS: &str = include_str!("../ui/docs.js");

/// The policy sent with every dashboard response. `img-src data:` is for the empty favicon.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// Routes for the dashboard, mergeable into the api's router whatever its state type.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/index.html", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
        .route("/docs", get(docs))
        .route("/docs/", get(docs))
        .route("/docs/docs.js", get(docs_js))
}

async fn docs() -> Response {
    asset(DOCS_HTML, "text/html; charset=utf-8")
}

async fn docs_js() -> Response {
    asset(DOCS_JS, "text/javascript; charset=utf-8")
}

async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // Small and embedded: always revalidate so a new binary's page is picked up.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(res: &Response, name: header::HeaderName) -> &str {
        res.headers().get(name).unwrap().to_str().unwrap()
    }

    #[tokio::test]
    async fn assets_have_content_types_and_csp() {
        for (res, ct) in [
            (index().await, "text/html; charset=utf-8"),
            (app_js().await, "text/javascript; charset=utf-8"),
            (app_css().await, "text/css; charset=utf-8"),
            (docs().await, "text/html; charset=utf-8"),
            (docs_js().await, "text/javascript; charset=utf-8"),
        ] {
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(header(&res, header::CONTENT_TYPE), ct);
            let csp = header(&res, header::CONTENT_SECURITY_POLICY);
            assert!(csp.contains("script-src 'self'"));
            assert!(!csp.contains("unsafe-inline"));
            assert!(!csp.contains("unsafe-eval"));
            assert_eq!(header(&res, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        }
    }

    #[test]
    fn page_has_no_inline_script_or_handlers() {
        let html = INDEX_HTML.to_ascii_lowercase();
        // The only script element loads app.js from this origin.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(!html.contains(" onclick="));
        assert!(!html.contains(" onload="));
        assert!(!html.contains("style="));
        assert!(html.contains(r#"href="/ui/app.css""#));
    }

    #[test]
    fn docs_page_loads_only_its_own_assets() {
        let html = DOCS_HTML.to_ascii_lowercase();
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains(r#"<script src="/docs/docs.js" defer></script>"#));
        assert!(!html.contains("style="));
        assert!(!html.contains("//"), "no absolute or protocol-relative URL");
        assert!(!DOCS_JS.contains("http:") && !DOCS_JS.contains("https:"));
        assert!(
            !DOCS_JS.contains("//"),
            "no URL, no comment that could hide one"
        );
    }

    #[test]
    fn script_never_parses_html_from_strings() {
        // Everything from users and subscribers is rendered as text.
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(forbidden), "app.js uses {forbidden}");
            assert!(!DOCS_JS.contains(forbidden), "docs.js uses {forbidden}");
        }
    }
}
