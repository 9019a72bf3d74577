//! Runs an axum router on 127.0.0.1 (random port) in its own thread and tokio runtime, so a
//! server the harness hosts (receiver, floors) behaves like a separate process: its own worker
//! threads, not the load generator's.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use axum::Router;

pub struct ServerThread {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

impl ServerThread {
    pub fn start(name: &str, router: Router, worker_threads: usize) -> Result<Self> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let join = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(worker_threads.max(1))
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = addr_tx.send(Err(anyhow!("runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = addr_tx.send(Err(anyhow!("bind: {e}")));
                            return;
                        }
                    };
                    let _ = addr_tx.send(listener.local_addr().map_err(Into::into));
                    tokio::spawn(async move {
                        let _ = axum::serve(listener, router).await;
                    });
                    let _ = shutdown_rx.await;
                });
                // Stops at once, with the connections still open (a Herald's idle keep-alive
                // connections would hold a graceful shutdown forever).
                rt.shutdown_background();
            })?;
        let addr = addr_rx
            .recv()
            .map_err(|_| anyhow!("server thread {name} died"))??;
        Ok(Self {
            addr,
            shutdown: Some(shutdown_tx),
            join: Some(join),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}
