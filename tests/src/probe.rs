//! Looking at a running node from outside: plain HTTP GETs and its Prometheus metrics.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body of a plain HTTP GET.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await??;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, response))
}

/// Sum of every series of a metric on one node (0 when absent or unreachable).
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let Ok((_, body)) = http_get(addr, "/metrics").await else {
        return 0.0;
    };
    sum_series(&body, name)
}

/// Waits up to 5 s for a counter to reach `at_least`, for what a node counts only after the client has seen the
/// outcome (a connection's error is counted when its task ends); returns the last value read.
pub async fn metric_reaching(addr: SocketAddr, name: &str, at_least: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let value = metric(addr, name).await;
        if value >= at_least || std::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like `metric`, for a node serving TLS (`--tls-cert`).
pub async fn metric_over_tls(
    addr: SocketAddr,
    config: &std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    name: &str,
) -> f64 {
    let Ok(mut stream) = crate::tls::connect(addr, config).await else {
        return 0.0;
    };
    let request = format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0.0;
    }
    // A peer closing without TLS close_notify ends the read with an error; what arrived still counts.
    let mut body = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut body)).await;
    sum_series(&String::from_utf8_lossy(&body), name)
}

fn sum_series(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
