//! The box's WebSocket ceiling: a bare fastwebsockets echo server (no protocol, no storage) and a closed-loop
//! client that keeps one 100-byte binary message in flight per connection. Its round trips per second bound what
//! any server built on this stack could do on this machine with this many connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use fastwebsockets::{upgrade, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::client::upgrade_request;
use crate::load::{new_histogram, Percentiles};
use crate::sys::{self, SourceAddresses};

/// Serves WebSocket echo on `listen` until the process is stopped.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    sys::raise_fd_limit()?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    eprintln!("echo server on {listen}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|mut request: Request<Incoming>| async move {
                let (response, upgrade) = upgrade::upgrade(&mut request)?;
                tokio::spawn(async move {
                    if let Ok(ws) = upgrade.await {
                        let _ = echo(ws).await;
                    }
                });
                Ok::<Response<Empty<Bytes>>, WebSocketError>(response)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn echo(
    mut ws: fastwebsockets::WebSocket<TokioIo<hyper::upgrade::Upgraded>>,
) -> Result<(), WebSocketError> {
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            // A fresh frame: writing back the received one would keep the client's mask bit (stack notes).
            OpCode::Binary => {
                let payload = frame.payload.to_vec();
                ws.write_frame(Frame::binary(Payload::Owned(payload)))
                    .await?;
            }
            OpCode::Close => return Ok(()),
            _ => {}
        }
    }
}

/// Opens `connections` WebSockets to an echo server and runs closed-loop round trips for `seconds` after a 1 s
/// warm-up; returns round trips per second and their latency.
pub async fn load(
    target: SocketAddr,
    connections: usize,
    seconds: f64,
    sources: &SourceAddresses,
) -> anyhow::Result<serde_json::Value> {
    sys::raise_fd_limit()?;
    let round_trips = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let latency = Arc::new(std::sync::Mutex::new(new_histogram()));
    let mut tasks = tokio::task::JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(100));
    let mut failures = 0u64;
    for n in 0..connections {
        let permit = permits.clone().acquire_owned().await?;
        let stream = match sys::connect_from(sources.pick(n), target).await {
            Ok(stream) => stream,
            Err(_) => {
                failures += 1;
                continue;
            }
        };
        let request = upgrade_request(target, "/", None)?;
        let (round_trips, measuring, stop, latency) = (
            round_trips.clone(),
            measuring.clone(),
            stop.clone(),
            latency.clone(),
        );
        tasks.spawn(async move {
            let executor = Executor;
            let (mut ws, _) = fastwebsockets::handshake::client(&executor, request, stream).await?;
            drop(permit);
            let body = vec![b'x'; 100];
            let mut local = new_histogram();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                ws.write_frame(Frame::binary(Payload::Borrowed(&body)))
                    .await?;
                loop {
                    let frame = ws.read_frame().await?;
                    if frame.opcode == OpCode::Binary {
                        break;
                    }
                }
                if measuring.load(Ordering::Relaxed) {
                    round_trips.fetch_add(1, Ordering::Relaxed);
                    let _ = local.record((sent.elapsed().as_micros() as u64).max(1));
                }
            }
            let _ = ws.write_frame(Frame::close(1000, b"")).await;
            if let Ok(mut shared) = latency.lock() {
                let _ = shared.add(&local);
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let count = round_trips.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = tasks.join_next().await {
        if !matches!(joined, Ok(Ok(()))) {
            failures += 1;
        }
    }
    let percentiles = latency
        .lock()
        .map(|h| Percentiles::of(&h))
        .unwrap_or_default();
    let rate = count as f64 / elapsed;
    eprintln!(
        "  echo: {connections} connections, {rate:.0} round trips/s, p50 {} p99 {} ms, {failures} failures",
        percentiles.p50, percentiles.p99
    );
    Ok(json!({
        "connections": connections,
        "seconds": (elapsed * 100.0).round() / 100.0,
        "round_trips": count,
        "round_trips_per_s": rate.round(),
        "latency_ms": percentiles,
        "failures": failures,
    }))
}

/// The box's connect ceiling: `connections` WebSocket handshakes (TCP connect + upgrade) against the bare echo
/// server, at most `in_flight` at once, every connection held until the last is open: the `connect` scenario's
/// shape without what ours adds (token check, device registration in Redis, the `hello` state from Postgres).
pub async fn connect_storm(
    target: SocketAddr,
    connections: usize,
    in_flight: usize,
    sources: &SourceAddresses,
) -> anyhow::Result<serde_json::Value> {
    sys::raise_fd_limit()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for n in 0..connections {
        let permit = permits.clone().acquire_owned().await?;
        let source = sources.pick(n);
        tasks.spawn(async move {
            let began = Instant::now();
            let opened = async {
                let stream = sys::connect_from(source, target).await?;
                let (ws, _) = fastwebsockets::handshake::client(
                    &Executor,
                    upgrade_request(target, "/", None)?,
                    stream,
                )
                .await?;
                anyhow::Ok(ws)
            }
            .await;
            drop(permit);
            (opened, began.elapsed())
        });
    }
    let mut held = Vec::with_capacity(connections);
    let mut failed = 0u64;
    let mut handshakes = new_histogram();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((Ok(ws), took)) => {
                held.push(ws);
                let _ = handshakes.record((took.as_micros() as u64).max(1));
            }
            _ => failed += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let connected = held.len();
    drop(held);
    let rate = connected as f64 / seconds;
    let percentiles = Percentiles::of(&handshakes);
    eprintln!(
        "  echo connect: {connected}/{connections} in {seconds:.2} s = {rate:.0}/s ({in_flight} in flight), p50 {} p99 {} ms",
        percentiles.p50, percentiles.p99
    );
    Ok(json!({
        "connections": connections,
        "in_flight": in_flight,
        "connected": connected,
        "failed": failed,
        "seconds": (seconds * 100.0).round() / 100.0,
        "connections_per_s": rate.round(),
        "handshake_ms": percentiles,
    }))
}

struct Executor;

impl<F> hyper::rt::Executor<F> for Executor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future);
    }
}
