//! The client router's outermost layer, once per REST call (a WebSocket upgrade included):
//!
//! - the client address: `X-Forwarded-For` applied from trusted proxies (`peer.rs`), written back into the
//!   request's `PeerAddr` so handlers (the per-address login throttle) see the real client;
//! - a request id: the one a trusted proxy sent in `X-Request-Id` (if well-formed), else a new random one; it is
//!   returned in the `X-Request-Id` response header;
//! - a `request` span carrying that id, so every line logged while serving the call — and, for an upgrade, every
//!   line of the WebSocket connection it opens — carries it;
//! - one access log line (target `access`: `IM_LOG=info,access=warn` silences it) with method, route template,
//!   path, status, latency, request id and client address; never the query string, which may hold a token;
//! - the REST request histogram `im_http_request_duration_seconds{method, route, status}`.
//!
//! The route label is the route's template (`/v1/users/{id}`), never the concrete path, so ids cannot grow the
//! number of series; requests that no route matched (the web app's files, unknown paths) are `fallback`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use metrics::histogram;
use tracing::{info, info_span, Instrument};

use crate::peer::{ConnectionOrigin, PeerAddr};
use crate::state::NodeState;

/// The request id header, read from trusted proxies and always answered.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Longest request id accepted from a proxy.
const MAX_REQUEST_ID_LEN: usize = 128;

pub async fn record(
    State(state): State<Arc<NodeState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let trusted = &state.config.trusted_proxies;
    // The accept loop always sets the origin; a router driven without it (none is) would log 0.0.0.0.
    let origin = request
        .extensions()
        .get::<ConnectionOrigin>()
        .copied()
        .unwrap_or(ConnectionOrigin {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
        });
    let forwarded = request
        .headers()
        .get_all(&FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok());
    let client_ip = trusted.client_address(origin.client.ip(), forwarded);
    let client = if client_ip == origin.client.ip() {
        origin.client
    } else {
        // A forwarded address has no port.
        SocketAddr::new(client_ip, 0)
    };
    request.extensions_mut().insert(PeerAddr(client));

    let forwarded_id = if trusted.contains(origin.peer.ip()) {
        request
            .headers()
            .get(&REQUEST_ID)
            .and_then(well_formed_request_id)
    } else {
        None
    };
    let request_id = forwarded_id.unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "fallback".to_string(), |path| path.as_str().to_string());
    let path = request.uri().path().to_string();

    let span = info_span!("request", request_id = %request_id, method, route = %route, client = %client_ip);
    let mut response = next.run(request).instrument(span.clone()).await;

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    histogram!(
        "im_http_request_duration_seconds",
        "method" => method,
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .record(elapsed.as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    span.in_scope(|| {
        info!(
            target: "access",
            method,
            route = %route,
            path = %path,
            status,
            latency_ms = elapsed.as_micros() as f64 / 1000.0,
            request_id = %request_id,
            client = %client_ip,
            "access"
        )
    });
    response
}

/// A proxy's request id when it is safe to log and to send back: 1–128 characters of `[A-Za-z0-9._:-]`.
fn well_formed_request_id(value: &HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let fits = (1..=MAX_REQUEST_ID_LEN).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    fits.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// The method as a metric label: the standard ones by name, anything else (hyper accepts any token) as `other`,
/// so a client cannot mint series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_proxies_are_checked() {
        let check = |text: &str| well_formed_request_id(&HeaderValue::from_str(text).unwrap());
        assert_eq!(
            check("0A1B2C3D:9C4E_1733.7-x").as_deref(),
            Some("0A1B2C3D:9C4E_1733.7-x")
        );
        assert_eq!(check(""), None);
        assert_eq!(check("has space"), None);
        assert_eq!(check("quote\"injection"), None);
        assert_eq!(check(&"a".repeat(129)), None);
        assert!(check(&"a".repeat(128)).is_some());
    }

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
