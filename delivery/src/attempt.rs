//! One delivery attempt: the HTTP POST of the original payload with Herald's headers, and what
//! came of it.

use std::time::{Duration, Instant, SystemTime};

use herald_core::model::{Job, Subscription, RESPONSE_EXCERPT_BYTES};
use herald_core::retry::{honours_retry_after, parse_retry_after};
use herald_core::signing::SigningKeys;
use herald_core::ssrf::TargetGuard;
use herald_core::target::TargetUrl;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};

#[derive(Debug)]
pub struct AttemptResult {
    pub success: bool,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
    pub duration: Duration,
    pub response_excerpt: Option<String>,
}

impl AttemptResult {
    fn error(started: Instant, message: String) -> Self {
        Self {
            success: false,
            http_status: None,
            error: Some(message),
            retry_after: None,
            duration: started.elapsed(),
            response_excerpt: None,
        }
    }
}

pub async fn send(
    client: &reqwest::Client,
    guard: &TargetGuard,
    sub: &Subscription,
    job: &Job,
    timeout: Duration,
) -> AttemptResult {
    let started = Instant::now();
    let target = match TargetUrl::parse(&sub.target_url) {
        Ok(t) => t,
        Err(e) => return AttemptResult::error(started, format!("invalid target URL: {e}")),
    };
    if let Err(blocked) = guard.check_target(&target) {
        return AttemptResult::error(started, format!("refused: {blocked}"));
    }

    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let mut req = client
        .post(target.into_url())
        .timeout(timeout)
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", job.webhook_id.as_str())
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(t) = &job.event_type {
        req = req.header("Event-Type", t);
    }
    // During a rotation's overlap both secrets sign: receivers that know either one verify.
    match SigningKeys::from_secrets(sub.active_secrets(chrono::Utc::now())) {
        Ok(keys) => {
            if let Some(hub) = keys.hub_signature(&job.payload) {
                req = req
                    .header(
                        "webhook-signature",
                        keys.standard_signatures(&job.webhook_id, timestamp, &job.payload),
                    )
                    .header("X-Hub-Signature-256", hub);
            }
        }
        Err(e) => return AttemptResult::error(started, format!("unusable secret: {e}")),
    }
    for (name, value) in &sub.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            req = req.header(n, v);
        }
    }

    let resp = match req.body(job.payload.clone()).send().await {
        Ok(r) => r,
        Err(e) => return AttemptResult::error(started, describe(&e, timeout)),
    };
    let status = resp.status();
    let retry_after = if honours_retry_after(status.as_u16()) {
        resp.headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    } else {
        None
    };
    let (excerpt, body_error) = read_excerpt(resp).await;
    let success = status.is_success();
    AttemptResult {
        success,
        http_status: Some(status.as_u16()),
        error: (!success)
            .then(|| body_error.unwrap_or_else(|| format!("HTTP {}", status.as_u16()))),
        retry_after,
        duration: started.elapsed(),
        response_excerpt: excerpt,
    }
}

/// Reads at most the first 1 KiB of the body; the rest is not waited for.
async fn read_excerpt(mut resp: reqwest::Response) -> (Option<String>, Option<String>) {
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < RESPONSE_EXCERPT_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                let excerpt = (!buf.is_empty()).then(|| excerpt_of(&buf));
                return (excerpt, Some(format!("reading the response failed: {e}")));
            }
        }
    }
    ((!buf.is_empty()).then(|| excerpt_of(&buf)), None)
}

fn excerpt_of(buf: &[u8]) -> String {
    let mut end = buf.len().min(RESPONSE_EXCERPT_BYTES);
    // Cut on a character boundary.
    while end > 0 && std::str::from_utf8(&buf[..end]).is_err() && buf.len() - end < 4 {
        end -= 1;
    }
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A readable reason for a failed request, with the underlying causes.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {} ms", timeout.as_millis());
    }
    let mut msg = if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_cut_at_1_kib_on_char_boundaries() {
        let s = "é".repeat(600); // 1200 bytes
        let e = excerpt_of(s.as_bytes());
        assert!(e.len() <= RESPONSE_EXCERPT_BYTES && e.len() >= RESPONSE_EXCERPT_BYTES - 3);
        assert!(e.chars().all(|c| c == 'é'));
        assert_eq!(excerpt_of(b"ok"), "ok");
    }
}
