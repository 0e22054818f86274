//! The admin listener (`--admin-listen`, default `0.0.0.0:9464`): `/metrics`, `/healthz` and `/readyz`, and
//! nothing else. The client listener does not serve them, so a load balancer or ingress that publishes the client
//! port publishes no metrics; probes and Prometheus reach this port inside the cluster.
//!
//! It speaks plain HTTP/1.1 (no TLS, no PROXY header, no access log: probes every two seconds would drown the real
//! traffic) and keeps serving while the node drains, so `/readyz` says `draining` and the drain's metrics can still
//! be scraped. Each scrape first refreshes the gauges that are read rather than counted: the writer queue, the
//! Postgres pool and the process' own figures.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::gauge;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Service;
use tracing::{debug, warn};

use crate::state::NodeState;
use crate::storage;

/// Time for a scraper or probe to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

struct Admin {
    node: Arc<NodeState>,
    process: metrics_process::Collector,
}

pub fn routes(node: Arc<NodeState>) -> Router {
    let process = metrics_process::Collector::default();
    process.describe();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(Arc::new(Admin { node, process }))
}

/// Serves the admin routes on `listener` until `stop` fires; open requests get a few seconds to finish.
pub async fn serve(listener: TcpListener, node: Arc<NodeState>, stop: CancellationToken) {
    let app = routes(node);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let mut app = app.clone();
                async move { app.call(request).await }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        debug!(%error, %peer, "admin connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), connections.wait()).await;
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when Redis and Postgres answer, the lease is held and the node is not draining.
async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let state = &admin.node;
    let limit = Duration::from_secs(1);
    let redis = matches!(
        tokio::time::timeout(limit, router::ping(&state.redis)).await,
        Ok(Ok(_))
    );
    let postgres = matches!(
        tokio::time::timeout(limit, storage::queries::ping(&state.pool)).await,
        Ok(Ok(()))
    );
    let lease = state.lease_ok.load(Ordering::Acquire);
    let draining = state.is_draining();
    let body = serde_json::json!({ "redis": redis, "postgres": postgres, "lease": lease, "draining": draining });
    let status = if redis && postgres && lease && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn render_metrics(State(admin): State<Arc<Admin>>) -> Response {
    let state = &admin.node;
    state
        .metrics
        .writer_queue_depth
        .set(state.writer.queued() as f64);
    let pool = state.pool.status();
    gauge!("im_postgres_pool_max_connections").set(pool.max_size as f64);
    gauge!("im_postgres_pool_connections").set(pool.size as f64);
    gauge!("im_postgres_pool_available").set(pool.available as f64);
    gauge!("im_postgres_pool_waiting").set(pool.waiting as f64);
    admin.process.collect();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.prometheus.render(),
    )
        .into_response()
}
