//! A minimal HTTP/1.1 client on hyper's connection API: one TCP connection per sender, so
//! "N connections" means exactly N sockets, and a loopback-only guard on every target.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

pub type Sender = SendRequest<Full<Bytes>>;

/// A Herald (or floor) base URL, resolved once to a loopback socket address.
#[derive(Debug, Clone)]
pub struct Base {
    pub addr: SocketAddr,
    /// `host:port`, sent as the Host header.
    pub authority: String,
}

impl Base {
    /// Parses `http://host:port` and refuses anything that does not resolve to loopback only:
    /// the harness sends load, and load goes to this machine alone.
    pub async fn parse(url: &str) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported (got {url:?})");
        }
        if !matches!(uri.path(), "" | "/") {
            bail!("the base URL must have no path (got {url:?})");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("URL {url:?} has no host"))?
            .to_string();
        let host_port = if uri.port().is_some() {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port.as_str())
            .await
            .with_context(|| format!("cannot resolve {host_port}"))?
            .collect();
        if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
            bail!("refusing {url:?}: the harness only sends traffic to loopback (127.0.0.0/8, ::1), and it resolves to {addrs:?}");
        }
        Ok(Self {
            addr: addrs[0],
            authority,
        })
    }

    pub fn from_addr(addr: SocketAddr) -> Self {
        assert!(addr.ip().is_loopback(), "harness targets are loopback only");
        Self {
            addr,
            authority: addr.to_string(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

/// Opens one keep-alive HTTP/1.1 connection.
pub async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request on `sender` and reads the whole answer.
pub async fn send(
    sender: &mut Sender,
    method: Method,
    authority: &str,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
) -> Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = sender.send_request(req.body(Full::new(body))?).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// One control-plane call on a fresh connection (subscription set-up, /stats, /ping).
pub async fn call_json(
    base: &Base,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(StatusCode, Value)> {
    let fut = async {
        let mut sender = connect(base.addr).await?;
        let body = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let (status, bytes) = send(&mut sender, method, &base.authority, path, &[], body).await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok::<_, anyhow::Error>((status, value))
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| anyhow!("{path}: no answer within 30 s"))?
}

/// Creates a subscription and returns its id.
pub async fn create_subscription(base: &Base, spec: &Value) -> Result<String> {
    let (status, body) = call_json(base, Method::POST, "/subscriptions", Some(spec)).await?;
    if status != StatusCode::CREATED && !status.is_success() {
        bail!("POST /subscriptions answered {status}: {body}");
    }
    body.get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("POST /subscriptions answered without an id: {body}"))
}

/// Picks a free loopback port (bind to :0 and release it).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_non_loopback() {
        assert!(Base::parse("http://127.0.0.1:8000").await.is_ok());
        assert!(Base::parse("http://localhost:8000/").await.is_ok());
        assert!(Base::parse("http://10.0.0.1:8000").await.is_err());
        assert!(Base::parse("http://192.168.1.1").await.is_err());
        assert!(Base::parse("https://127.0.0.1:8000").await.is_err());
        assert!(Base::parse("http://127.0.0.1:8000/x").await.is_err());
    }
}
