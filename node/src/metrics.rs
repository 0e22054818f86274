//! The node's Prometheus metrics: the recorder, the `/metrics` rendering, and handles for hot paths.
//!
//! Names follow Prometheus conventions (`_total` counters, `_seconds` and `_bytes` units). Per-message paths use
//! the pre-registered handles in `Metrics` instead of the macros, which hash the name on every call. The full
//! catalogue with meanings is in `docs/operations.md`.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const ROWS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// Installs the global recorder. Called once per process; a second call (tests) returns an error.
pub fn install() -> Result<PrometheusHandle, crate::error::Error> {
    PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("im_writer_batch_rows".into()), ROWS_BUCKETS)
        })
        .map_err(|e| crate::error::Error::Internal(e.to_string()))?
        .install_recorder()
        .map_err(|e| crate::error::Error::Internal(e.to_string()))
}

/// Handles for metrics touched per frame or per message.
#[derive(Clone)]
pub struct Metrics {
    pub connections_open: Gauge,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub messages_accepted: Counter,
    pub delivered_local: Counter,
    pub delivered_redis: Counter,
    pub delivered_sync: Counter,
    pub ack_latency: Histogram,
    pub route_latency: Histogram,
    pub batch_rows: Histogram,
    pub flush_seconds: Histogram,
    pub writer_queue_depth: Gauge,
    pub rate_limited: Counter,
    pub rate_limit_closes: Counter,
    pub zstd_wire_in: Counter,
    pub zstd_plain_in: Counter,
    pub zstd_wire_out: Counter,
    pub zstd_plain_out: Counter,
}

impl Metrics {
    pub fn new(node_name: &str) -> Self {
        gauge!("im_build_info", "version" => env!("CARGO_PKG_VERSION"), "node" => node_name.to_string()).set(1.0);
        let metrics = Metrics {
            connections_open: gauge!("im_connections_open"),
            frames_in: counter!("im_frames_in_total"),
            frames_out: counter!("im_frames_out_total"),
            bytes_in: counter!("im_bytes_in_total"),
            bytes_out: counter!("im_bytes_out_total"),
            messages_accepted: counter!("im_messages_accepted_total"),
            delivered_local: counter!("im_messages_delivered_total", "path" => "local"),
            delivered_redis: counter!("im_messages_delivered_total", "path" => "redis"),
            delivered_sync: counter!("im_messages_delivered_total", "path" => "sync"),
            ack_latency: histogram!("im_ack_latency_seconds"),
            route_latency: histogram!("im_route_latency_seconds"),
            batch_rows: histogram!("im_writer_batch_rows"),
            flush_seconds: histogram!("im_writer_flush_seconds"),
            writer_queue_depth: gauge!("im_writer_queue_depth"),
            rate_limited: counter!("im_rate_limited_total"),
            rate_limit_closes: counter!("im_rate_limit_closes_total"),
            zstd_wire_in: counter!("im_zstd_wire_bytes_total", "direction" => "in"),
            zstd_plain_in: counter!("im_zstd_plain_bytes_total", "direction" => "in"),
            zstd_wire_out: counter!("im_zstd_wire_bytes_total", "direction" => "out"),
            zstd_plain_out: counter!("im_zstd_plain_bytes_total", "direction" => "out"),
        };
        register_rare_events();
        metrics
    }

    /// Counts a compressed frame received (wire and inflated size); plain frames cost one header check.
    pub fn compressed_in(&self, message: &[u8]) {
        if let Some(plain) = common::codec::declared_plain_size(message) {
            self.zstd_wire_in.increment(message.len() as u64);
            self.zstd_plain_in.increment(plain);
        }
    }

    /// Counts a compressed frame sent (wire and inflated size); plain frames cost one header check.
    pub fn compressed_out(&self, message: &[u8]) {
        if let Some(plain) = common::codec::declared_plain_size(message) {
            self.zstd_wire_out.increment(message.len() as u64);
            self.zstd_plain_out.increment(plain);
        }
    }
}

/// Registers, at zero, the counters that only move when something goes wrong. A series that exists from the start
/// lets `rate()` and `increase()` in alerts and dashboards see the first error instead of a series appearing out of
/// nothing, and lets a test check that every metric the alerts name is exported.
fn register_rare_events() {
    for name in [
        "im_connections_opened_total",
        "im_rate_limited_total",
        "im_rate_limit_closes_total",
        "im_slow_consumer_disconnects_total",
        "im_writer_errors_total",
        "im_writer_batch_splits_total",
        "im_writer_refused_total",
        "im_group_invitations_total",
        "im_redis_publish_total",
        "im_redis_publish_errors_total",
        "im_redis_messages_received_total",
        "im_node_lease_lapses_total",
    ] {
        counter!(name).increment(0);
    }
    for why in ["lagged", "node_busy", "undecodable"] {
        counter!("im_redis_messages_dropped_total", "why" => why).increment(0);
    }
    counter!("im_redis_reconnects_total", "client" => "subscriber").increment(0);
    for reason in [
        "redis_unavailable",
        "store_unavailable",
        "bad_version",
        "revoked_token",
        "revocation_unavailable",
        "user_connection_limit",
        "node_connection_limit",
    ] {
        counter!("im_handshake_failures_total", "reason" => reason).increment(0);
    }
    for scope in ["token", "user"] {
        counter!("im_tokens_revoked_total", "scope" => scope).increment(0);
    }
    counter!("im_revoked_disconnects_total").increment(0);
    counter!("im_revocation_recheck_errors_total").increment(0);
    for kind in ["header_timeout", "header_too_large", "bad_request", "other"] {
        counter!("im_http_connection_errors_total", "kind" => kind).increment(0);
    }
    // What the push, login-throttle and TLS alerts watch (TLS moves only with `--tls-cert`).
    counter!("im_push_dropped_total").increment(0);
    for result in ["sent", "failed"] {
        counter!("im_push_events_total", "result" => result).increment(0);
    }
    for scope in ["user", "ip"] {
        counter!("im_login_throttled_total", "scope" => scope).increment(0);
    }
    counter!("im_login_throttle_unavailable_total").increment(0);
    counter!("im_ws_writer_aborted_total").increment(0);
    for result in ["ok", "failed", "timeout"] {
        counter!("im_tls_handshakes_total", "result" => result).increment(0);
    }
    for kind in ["closed", "invalid", "timeout"] {
        counter!("im_proxy_protocol_errors_total", "kind" => kind).increment(0);
    }
    // ImBackendTlsRefused (it moves only with TLS to that backend).
    for backend in ["postgres", "redis", "push"] {
        counter!("im_backend_tls_failures_total", "backend" => backend).increment(0);
    }
}

/// Counts a connection closed, labelled by why.
pub fn connection_closed(reason: &'static str) {
    counter!("im_connections_closed_total", "reason" => reason).increment(1);
}

/// Counts a refused WebSocket handshake, labelled by why.
pub fn handshake_refused(reason: &'static str) {
    counter!("im_handshake_failures_total", "reason" => reason).increment(1);
}

/// Counts an `error` frame sent, labelled by its code.
pub fn error_frame(code: common::ErrorCode) {
    counter!("im_error_frames_total", "code" => code.as_str()).increment(1);
}
