//! A TCP proxy the test can cut: it stands between one node and Redis to simulate a network partition.
//!
//! `cut` closes every proxied connection and resets new ones as they arrive (the node sees connection refused
//! and resets, like a dead link); `restore` lets connections through again. Everything stays on 127.0.0.1.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `127.0.0.1:upstream_port`.
    pub async fn start(upstream_port: u16) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (open, watcher) = watch::channel(true);
        let accept_task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !*watcher.borrow() {
                    // Linger 0: the peer sees a reset, as from a broken link.
                    let _ = inbound.set_zero_linger();
                    drop(inbound);
                    continue;
                }
                let mut watcher = watcher.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    let mut inbound = inbound;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watcher.wait_for(|open| !*open) => {
                            let _ = inbound.set_zero_linger();
                        }
                    }
                });
            }
        });
        Ok(TcpProxy {
            addr,
            open,
            accept_task,
        })
    }

    /// Drops every proxied connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        let _ = self.open.send(false);
    }

    pub fn restore(&self) {
        let _ = self.open.send(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept_task.abort();
    }
}
