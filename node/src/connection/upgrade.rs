//! `GET /v1/ws`: everything that must hold before a connection is upgraded.
//!
//! The WebSocket version is checked first (426 unless 13), then `Origin` (403), the token — signature, expiry and
//! revocation — (401) and the device id (400), then the connection limits per user and per node (429), all
//! before any upgrade. Then, still before the 101 response, the
//! device is registered locally, in the Redis location registry and in the device list (where "one session per
//! platform" moves older logins of the same platform out), and only after that is the `hello` state read
//! from Postgres. That order closes a window: a message committed after the state was read is routed to this
//! device, and one committed before is counted in `hello`'s `last_seq`, so the client sees it through sync.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use common::frame::Hello;
use common::{KickReason, ServerFrame};
use fastwebsockets::upgrade::IncomingUpgrade;
use router::BusMessage;
use tracing::{info_span, warn, Instrument};

use crate::connection::outbox::Outbox;
use crate::connection::session::{self, SessionContext};
use crate::error::json_error;
use crate::fanout::local::{ConnectionLimits, LimitHit};
use crate::fanout::logouts::{self, MoveOut};
use crate::identity::auth::{token_id_hex, unix_now_ms, Claims};
use crate::identity::revocation::{authenticate, Refusal};
use crate::metrics;
use crate::peer::PeerAddr;
use crate::rest::input;
use crate::rest::token_refused;
use crate::state::NodeState;
use crate::storage::{devices, queries};

pub async fn handle(
    State(state): State<Arc<NodeState>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Result<IncomingUpgrade, StatusCode>,
) -> Response {
    if state.is_draining() {
        metrics::handshake_refused("draining");
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining; connect to another node",
        );
    }
    // RFC 6455 §4.4: a version we do not speak gets 426 naming the one we do, before anything else is judged.
    if let Some(refused) = unsupported_version(&headers) {
        return refused;
    }
    // Browsers send `Origin` and let any page open a WebSocket with the user's ambient credentials (a `?token=`
    // in a URL the page got hold of); fastwebsockets does not check it, so we do.
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !state.config.origin_allowed(origin, host) {
        metrics::handshake_refused("bad_origin");
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "this Origin may not open WebSockets here",
        );
    }
    let token = input::bearer_token(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
        .or_else(|| params.get("token").map(String::as_str));
    let Some(token) = token else {
        metrics::handshake_refused("no_token");
        return json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing token (Authorization: Bearer or ?token=)",
        );
    };
    let claims = match authenticate(&state.auth, &state.revocations, token).await {
        Ok(claims) => claims,
        Err(refusal) => {
            metrics::handshake_refused(refusal.label());
            return token_refused(refusal);
        }
    };
    let user = claims.user;
    let device = match input::device_id(params.get("device").map(String::as_str)) {
        Ok(device) => device.to_string(),
        Err(rejected) => {
            metrics::handshake_refused("bad_device");
            return rejected.into_response();
        }
    };
    let platform = match input::platform(params.get("platform").map(String::as_str)) {
        Ok(platform) => platform,
        Err(rejected) => {
            metrics::handshake_refused("bad_platform");
            return rejected.into_response();
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(status) => {
            metrics::handshake_refused("not_websocket");
            return json_error(
                status,
                "not_websocket",
                "expected a WebSocket upgrade request (version 13)",
            );
        }
    };

    let conn_id = state.next_conn_id();
    let span = info_span!("conn", conn_id, %peer, user, device = %device, platform);
    async move {
        let device: Arc<str> = Arc::from(device.as_str());
        let (outbox, outbound) = Outbox::new(
            state.config.outbound_queue,
            state.config.compress_threshold,
            state.metrics.clone(),
        );
        let limits = ConnectionLimits {
            per_user: state.config.max_conns_per_user,
            total: state.config.max_connections,
        };
        match state.sessions.insert(
            user,
            device.clone(),
            conn_id,
            outbox.clone(),
            claims,
            limits,
        ) {
            Ok(Some(previous)) => {
                previous.kick(KickReason::Replaced);
            }
            Ok(None) => {}
            Err(limit) => return too_many_connections(limit, &limits),
        }
        // A revocation announced between the token check and the registration above found no connection to
        // close; catch it now that the connection can be found.
        if state.revocations.known_revoked(&claims) {
            state.sessions.remove(user, &device, conn_id);
            metrics::handshake_refused("revoked_token");
            return token_refused(Refusal::Revoked.into());
        }
        let registered = state
            .locations
            .register(user, &device, &state.node_id)
            .await;
        let previous_node = match registered {
            Ok(previous_node) => previous_node,
            Err(error) => {
                state.sessions.remove(user, &device, conn_id);
                metrics::handshake_refused("redis_unavailable");
                warn!(%error, "could not register the device location");
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "routing registry unavailable; retry",
                );
            }
        };
        state
            .delivery
            .presence_changed(state.pool.clone(), user, true);
        if let Some(node) = previous_node {
            let kick = BusMessage::KickDevice {
                user,
                device: device.to_string(),
            };
            if let Err(error) = state.bus.publish(&node, &kick).await {
                warn!(%error, node, "could not tell the previous node to drop this device");
            }
        }
        record_device(&state, &claims, &device, platform).await;
        let convs =
            match queries::conversation_states(&state.pool, user, state.config.hello_conversations)
                .await
            {
                Ok(convs) => convs,
                Err(error) => {
                    session::unregister(&state, user, &device, conn_id).await;
                    metrics::handshake_refused("store_unavailable");
                    warn!(%error, "could not read the hello state");
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "message store unavailable; retry",
                    );
                }
            };
        let hello = ServerFrame::Hello(Hello {
            user,
            device: device.to_string(),
            node: state.config.node_name.clone(),
            ping: state.config.ping_interval_secs,
            idle: state.config.idle_timeout_secs,
            convs,
            limits: Some(state.config.client_limits()),
        });
        let hello = match common::encode(&hello, state.config.compress_threshold) {
            Ok(bytes) => Bytes::from(bytes),
            Err(error) => {
                session::unregister(&state, user, &device, conn_id).await;
                warn!(%error, "could not encode hello");
                return json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "could not encode hello",
                );
            }
        };
        let (response, socket) = match upgrade.upgrade() {
            Ok(pair) => pair,
            Err(error) => {
                session::unregister(&state, user, &device, conn_id).await;
                return json_error(StatusCode::BAD_REQUEST, "not_websocket", &error.to_string());
            }
        };
        let context = SessionContext {
            user,
            device,
            conn_id,
            outbox,
            outbound,
            hello,
        };
        let tracker = state.connections.clone();
        tracker.spawn(session::run(state, socket, context).in_current_span());
        response.into_response()
    }
    .instrument(span)
    .await
}

/// Notes the device in the device list and applies "one session per platform": the user's devices of an older
/// login on this platform are moved out (`kick{replaced}`, their login revoked). Failures are logged, never
/// fatal: the device list is a convenience, and the connection itself is fine.
async fn record_device(state: &NodeState, claims: &Claims, device: &str, platform: &str) {
    let token_id = token_id_hex(claims.id);
    let connected = devices::Connected {
        user: claims.user,
        device,
        platform,
        token_id: &token_id,
        token_issued_ms: i64::try_from(claims.issued_ms).unwrap_or(i64::MAX),
        token_expires: i64::try_from(claims.expires).unwrap_or(i64::MAX),
        now_ms: i64::try_from(unix_now_ms()).unwrap_or(i64::MAX),
    };
    let moved_out = match devices::connected(&state.pool, &connected, |choice| {
        state.config.one_session_on(platform, choice)
    })
    .await
    {
        Ok(moved_out) => moved_out,
        Err(error) => {
            warn!(%error, "could not record the device");
            return;
        }
    };
    if let Err(error) = logouts::move_out(state, claims.user, &moved_out, MoveOut::Replaced).await {
        warn!(%error, "could not move an older login of this platform out");
    }
}

/// Seconds a client refused for the per-user limit is told to wait (one of its devices must go first).
const RETRY_AFTER_PER_USER_SECS: u64 = 30;
/// Seconds a client refused because the node is full is told to wait (or it tries another node).
const RETRY_AFTER_NODE_FULL_SECS: u64 = 5;

/// 426 for an upgrade request with a `Sec-WebSocket-Version` other than 13 (or none); None otherwise.
fn unsupported_version(headers: &HeaderMap) -> Option<Response> {
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes());
    if !is_upgrade || version == Some(b"13".as_slice()) {
        return None;
    }
    metrics::handshake_refused("bad_version");
    let mut response = json_error(
        StatusCode::UPGRADE_REQUIRED,
        "unsupported_websocket_version",
        "this server speaks WebSocket version 13 only (Sec-WebSocket-Version: 13)",
    );
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_VERSION,
        header::HeaderValue::from_static("13"),
    );
    Some(response)
}

/// 429 with `Retry-After` for a connection over a limit.
fn too_many_connections(limit: LimitHit, limits: &ConnectionLimits) -> Response {
    let (label, message, retry_after) = match limit {
        LimitHit::PerUser => (
            "user_connection_limit",
            format!(
                "this user already has {} connections on this node; close one first",
                limits.per_user
            ),
            RETRY_AFTER_PER_USER_SECS,
        ),
        LimitHit::Total => (
            "node_connection_limit",
            format!(
                "this node holds its maximum of {} connections; retry later or use another node",
                limits.total
            ),
            RETRY_AFTER_NODE_FULL_SECS,
        ),
    };
    metrics::handshake_refused(label);
    let mut response = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_connections",
        &message,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
    response
}
