//! `herald healthcheck`: the container HEALTHCHECK, since the runtime image has no curl or
//! shell.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// `/healthz` of the api at `addr`, reached over loopback when `addr` is a wildcard (the
/// container's `0.0.0.0:8000`): the check runs inside the same network namespace.
pub fn default_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, addr.port()))
}

/// GETs `url`; `Ok` when it answers 200 within `timeout`.
pub async fn check(url: &str, timeout: Duration) -> anyhow::Result<()> {
    // No proxy: a proxy variable in the container's environment must not reroute a loopback
    // check; no redirects: only the endpoint's own answer counts.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()?;
    let status = client.get(url).send().await?.status();
    anyhow::ensure!(status == reqwest::StatusCode::OK, "answered {status}");
    Ok(())
}
