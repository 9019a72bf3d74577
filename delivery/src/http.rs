//! The outgoing HTTP client: keep-alive pool, no redirects, no proxies, and a resolver that
//! applies the SSRF guard to every address a target name resolves to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_core::ssrf::TargetGuard;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

pub const USER_AGENT: &str = concat!("herald/", env!("CARGO_PKG_VERSION"));

struct GuardedResolver {
    guard: TargetGuard,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed = guard
                .filter(addrs)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

pub fn client(guard: TargetGuard, max_idle_per_host: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { guard }))
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .expect("the HTTP client builds")
}
