//! Every metric family the node exports, with its `# HELP` text, described once at start (`describe_all`).
//!
//! The table is the code's side of the catalogue in `docs/operations.md` (which has the labels and more words).
//! A unit test keeps it whole: every `"im_…"` name in the node's and the router crate's sources is described here,
//! and nothing here is stale. The `process_*` families are described by `metrics-process` (`observe::admin`).

use metrics::{describe_counter, describe_gauge, describe_histogram};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

use Kind::{Counter, Gauge, Histogram};

const CATALOGUE: &[(&str, Kind, &str)] = &[
    // Build and lease.
    ("im_build_info", Gauge, "Always 1; labels name the node's version and name."),
    ("im_node_lease_held", Gauge, "1 while this node holds its Redis lease, 0 once it has been lost for a TTL."),
    ("im_node_lease_lapses_total", Counter, "Times the lease was found lapsed (node paused or Redis lost it); every connection is then kicked."),
    // Connections and handshakes.
    ("im_connections_open", Gauge, "Open WebSocket connections on this node."),
    ("im_drain_kicks_total", Counter, "Connections a draining node asked to move (kick draining), slice by slice over --drain-spread-secs."),
    ("im_connections_max", Gauge, "This node's WebSocket connection limit (--max-connections); upgrades past it are refused."),
    ("im_connections_opened_total", Counter, "WebSocket upgrades completed."),
    ("im_connections_closed_total", Counter, "WebSocket connections closed, by reason."),
    ("im_handshake_failures_total", Counter, "WebSocket upgrades refused, by reason."),
    ("im_http_connection_errors_total", Counter, "HTTP connections ended by an error, by kind (header timeout, header too large, bad request, other)."),
    ("im_http_request_duration_seconds", Histogram, "REST requests by method, route template and status: time from the request head to the response head."),
    ("im_http_input_rejected_total", Counter, "REST and upgrade input refused by its parser, by code."),
    ("im_proxy_protocol_errors_total", Counter, "Connections from trusted proxies closed for a missing or bad PROXY v2 header, by kind."),
    ("im_tls_handshakes_total", Counter, "TLS handshakes on the client listener, by result."),
    ("im_tls_handshake_seconds", Histogram, "Duration of successful TLS handshakes."),
    ("im_backend_tls_failures_total", Counter, "Server certificates refused on the node's own TLS connections (to Postgres, Redis, the push webhook), by backend."),
    ("im_ws_writer_aborted_total", Counter, "Connection writers aborted because the peer stopped reading past the close deadline."),
    ("im_conformance_echo_connections_total", Counter, "Connections to the conformance echo route (only with --conformance-echo)."),
    ("im_conformance_echo_messages_total", Counter, "Messages echoed by the conformance echo route."),
    // Tokens and revocation.
    ("im_token_checks_total", Counter, "Revocation checks of presented tokens, by where the answer came from."),
    ("im_token_check_seconds", Histogram, "Duration of a revocation check that went to Redis."),
    ("im_tokens_revoked_total", Counter, "Revocations made on this node (logout, logout-all, device logout, platform policy), by scope."),
    ("im_revoked_disconnects_total", Counter, "Connections closed because their token was revoked."),
    ("im_revocation_rechecks_total", Counter, "Periodic re-checks of every live connection's token."),
    ("im_revocation_recheck_seconds", Histogram, "Duration of one periodic revocation re-check."),
    ("im_revocation_recheck_errors_total", Counter, "Revocation re-checks cut short because Redis did not answer."),
    // Frames and bytes.
    ("im_frames_in_total", Counter, "Protocol frames received."),
    ("im_frames_out_total", Counter, "Protocol frames sent."),
    ("im_bytes_in_total", Counter, "Bytes of received frames as on the wire."),
    ("im_bytes_out_total", Counter, "Bytes of sent frames as on the wire."),
    ("im_zstd_wire_bytes_total", Counter, "Wire bytes of zstd-compressed frames, by direction."),
    ("im_zstd_plain_bytes_total", Counter, "Inflated bytes of the zstd-compressed frames, by direction."),
    ("im_error_frames_total", Counter, "Error frames sent, by code."),
    ("im_rate_limited_total", Counter, "Sends and recalls refused by the per-user send rate limit."),
    ("im_rate_limit_closes_total", Counter, "Connections closed for repeated send rate refusals."),
    ("im_slow_consumer_disconnects_total", Counter, "Connections kicked because their outbound queue was full."),
    // Messages and the writer.
    ("im_messages_accepted_total", Counter, "Messages newly committed."),
    ("im_messages_delivered_total", Counter, "Message copies handed to connections, by path (local, redis, sync)."),
    ("im_ack_latency_seconds", Histogram, "Time from a send frame received to its ack queued."),
    ("im_route_latency_seconds", Histogram, "Time from commit to routed (local pushes and publishes issued)."),
    ("im_writer_batch_rows", Histogram, "Messages per writer transaction."),
    ("im_writer_flush_seconds", Histogram, "Writer transaction duration."),
    ("im_writer_errors_total", Counter, "Writer transactions failed for an infrastructure reason."),
    ("im_writer_batch_splits_total", Counter, "Writer batches that failed on one submission's data and were retried in halves."),
    ("im_writer_refused_total", Counter, "Submissions the database refused on their own."),
    ("im_writer_queue_depth", Gauge, "Messages waiting for the writer."),
    ("im_direct_conversations_created_total", Counter, "1:1 conversations created by the writers."),
    ("im_group_invitations_total", Counter, "Group invitations told to their invitees."),
    // Postgres pool (refreshed on every scrape).
    ("im_postgres_pool_max_connections", Gauge, "Most connections the Postgres pool may open (--postgres-pool)."),
    ("im_postgres_pool_connections", Gauge, "Connections the Postgres pool holds now, busy or idle."),
    ("im_postgres_pool_available", Gauge, "Idle connections in the Postgres pool, ready for a request."),
    ("im_postgres_pool_waiting", Gauge, "Requests waiting for a Postgres pool connection."),
    // Redis and the bus.
    ("im_redis_publish_total", Counter, "Cross-node publishes."),
    ("im_redis_publish_errors_total", Counter, "Cross-node publishes that failed."),
    ("im_redis_messages_received_total", Counter, "Bus messages received."),
    ("im_redis_messages_dropped_total", Counter, "Bus messages lost, by why; clients recover them through sync."),
    ("im_redis_reconnects_total", Counter, "Redis reconnects, by client."),
    // Accounts.
    ("im_users_registered_total", Counter, "Registrations."),
    ("im_logins_total", Counter, "Logins, by result."),
    ("im_login_throttled_total", Counter, "Logins refused (429) after too many failures, by scope (user, ip)."),
    ("im_login_throttle_unavailable_total", Counter, "Logins let through unthrottled because Redis could not give the failure counts."),
    // Chat features.
    ("im_read_updates_total", Counter, "Read frames applied (read cursors moved)."),
    ("im_typing_relayed_total", Counter, "Typing frames relayed."),
    ("im_recalls_total", Counter, "Recalls accepted."),
    ("im_group_changes_total", Counter, "Group changes, by event."),
    ("im_notices_total", Counter, "Friend notices sent, by kind."),
    ("im_presence_changes_total", Counter, "Presence notices (first device online, last device offline)."),
    // Media and push.
    ("im_media_uploads_total", Counter, "Media uploads, by result (stored, deduplicated)."),
    ("im_media_rejected_total", Counter, "Media uploads refused, by why."),
    ("im_media_bytes_total", Counter, "Bytes of newly stored media."),
    ("im_media_downloads_total", Counter, "Media and thumbnails served."),
    ("im_media_thumbnail_seconds", Histogram, "Decoding an uploaded image and making its thumbnail."),
    ("im_media_store_errors_total", Counter, "Media store operations that failed (answered 503), by store and op."),
    ("im_push_events_total", Counter, "Offline push events posted to the webhook, by result."),
    ("im_push_dropped_total", Counter, "Offline push events dropped because the webhook queue was full."),
];

/// Describes every metric family to the installed recorder. Call once, after the recorder is installed.
pub fn describe_all() {
    for &(name, kind, help) in CATALOGUE {
        match kind {
            Counter => describe_counter!(name, help),
            Gauge => describe_gauge!(name, help),
            Histogram => describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// Every `"im_…"` string literal of the Rust files under `dir`, except this file's.
    fn metric_names_in(dir: &Path, names: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                metric_names_in(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("observe/catalogue.rs")
            {
                let source = std::fs::read_to_string(&path).unwrap();
                for piece in source.split("\"im_").skip(1) {
                    let name: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if piece[name.len()..].starts_with('"') {
                        names.insert(format!("im_{name}"));
                    }
                }
            }
        }
    }

    #[test]
    fn every_metric_in_the_sources_is_described_and_nothing_else() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut used = BTreeSet::new();
        metric_names_in(&root.join("src"), &mut used);
        metric_names_in(&root.join("../router/src"), &mut used);
        let described: BTreeSet<String> = CATALOGUE
            .iter()
            .map(|(name, ..)| name.to_string())
            .collect();
        assert_eq!(
            described.len(),
            CATALOGUE.len(),
            "a metric is described twice"
        );
        let missing: Vec<_> = used.difference(&described).collect();
        let stale: Vec<_> = described.difference(&used).collect();
        assert!(
            missing.is_empty(),
            "metrics without a description: {missing:?}"
        );
        assert!(
            stale.is_empty(),
            "described metrics no source uses: {stale:?}"
        );
    }

    #[test]
    fn names_follow_the_conventions() {
        for &(name, kind, help) in CATALOGUE {
            assert_eq!(
                kind == Counter,
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
            assert!(
                help.ends_with('.') && !help.contains('\n'),
                "{name}: one sentence of help"
            );
        }
    }
}
