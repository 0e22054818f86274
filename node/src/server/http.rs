//! The HTTP side of the client listener: the accept loop (hyper, with upgrades, a header timeout and size cap, a
//! PROXY header from trusted proxies, optionally TLS) and the routes.
//!
//! Routes: `POST /v1/users`, `POST /v1/sessions`, `POST /v1/auth/logout[-all]` (accounts), `GET /v1/ws` (WebSocket),
//! the REST API (`rest/`), and the web app (`web.rs`) on other GET paths; `observe::access` wraps them all. Every
//! error answer is JSON `{"error": code, "message": text}`. `/metrics`, `/healthz` and `/readyz` are on the admin
//! listener (`observe::admin`), not here.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{any, delete, get, patch, post, put};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{counter, histogram};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::Service;
use tracing::{debug, debug_span, warn, Instrument};

use crate::peer::{ConnectionOrigin, PeerAddr};
use crate::rest::accounts;
use crate::state::NodeState;
use crate::{connection, rest};

pub fn routes(state: Arc<NodeState>) -> Router {
    let web_root = crate::server::web::web_root(&state.config.web_dir);
    let mut router = Router::new();
    if state.config.conformance_echo {
        router = router.route("/v1/echo", get(connection::echo::handle));
    }
    router
        .route(
            "/v1/users",
            post(accounts::register).get(rest::profiles::search),
        )
        .route(
            "/v1/users/me",
            get(rest::profiles::me).patch(rest::profiles::update_me),
        )
        .route("/v1/users/{id}", get(rest::profiles::get_user))
        .route("/v1/presence", get(rest::profiles::presence))
        .route("/v1/sessions", post(accounts::login))
        .route("/v1/auth/logout", post(accounts::logout))
        .route("/v1/auth/logout-all", post(accounts::logout_all))
        .route("/v1/devices", get(rest::devices::list))
        .route("/v1/devices/policy", put(rest::devices::set_policy))
        .route("/v1/devices/{device}", delete(rest::devices::revoke))
        .route("/v1/friends", get(rest::friends::list))
        .route("/v1/friends/{user}", delete(rest::friends::remove))
        .route(
            "/v1/friends/requests",
            post(rest::friends::request).get(rest::friends::list_requests),
        )
        .route(
            "/v1/friends/requests/{id}/{action}",
            post(rest::friends::answer),
        )
        .route("/v1/blocks", get(rest::friends::list_blocks))
        .route(
            "/v1/blocks/{user}",
            put(rest::friends::block).delete(rest::friends::unblock),
        )
        .route(
            "/v1/groups",
            post(rest::groups::create).get(rest::groups::list_mine),
        )
        .route("/v1/groups/{id}", patch(rest::groups::rename))
        .route(
            "/v1/groups/{id}/members",
            get(rest::groups::members).post(rest::groups::add_members),
        )
        .route(
            "/v1/groups/{id}/members/{user}",
            delete(rest::groups::remove_member),
        )
        .route("/v1/groups/{id}/leave", post(rest::groups::leave))
        .route("/v1/groups/{id}/owner", post(rest::groups::transfer))
        .route(
            "/v1/groups/{id}/admins/{user}",
            put(rest::groups::appoint_admin).delete(rest::groups::dismiss_admin),
        )
        .route("/v1/invitations", get(rest::invitations::list))
        .route(
            "/v1/invitations/{id}/accept",
            post(rest::invitations::accept),
        )
        .route(
            "/v1/invitations/{id}/decline",
            post(rest::invitations::decline),
        )
        .route("/v1/conversations", get(rest::conversations::list))
        .route(
            "/v1/conversations/{id}/messages",
            get(rest::conversations::history),
        )
        .route(
            "/v1/conversations/{id}/reads",
            get(rest::conversations::reads),
        )
        // The upload streams its body to a temporary file and enforces --max-media-bytes itself (rest/spool.rs).
        .route("/v1/media", post(rest::media::upload))
        .route("/v1/media/{hash}", get(rest::media::get))
        .route("/v1/media/{hash}/thumb", get(rest::media::get_thumb))
        .route("/v1/media/{hash}/info", get(rest::media::info))
        .route("/v1/ws", get(connection::upgrade::handle))
        // Answered here, not by the web app's fallback (which would serve its page, 200, and fool a probe pointed
        // at the wrong port).
        .route("/healthz", any(on_the_admin_listener))
        .route("/readyz", any(on_the_admin_listener))
        .route("/metrics", any(on_the_admin_listener))
        .fallback(move |method, uri, headers| {
            crate::server::web::fallback(web_root.clone(), method, uri, headers)
        })
        .layer(axum::middleware::from_fn(crate::server::web::cors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::observe::access::record,
        ))
        .with_state(state)
}

/// Accepts connections until `stop` fires. Each connection runs in the state's tracker; from a trusted proxy with
/// `--proxy-protocol` it first reads the PROXY header, and with `tls` it then completes a TLS handshake, each
/// within the handshake timeout.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<NodeState>,
    stop: CancellationToken,
) {
    let app = routes(state.clone());
    let limits = HeadLimits {
        timeout: Duration::from_secs(state.config.handshake_timeout_secs),
        max_bytes: state.config.max_header_bytes,
    };
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        let node = state.clone();
        state.connections.spawn(async move {
            let (trusted, expect_header) =
                (&node.config.trusted_proxies, node.config.proxy_protocol);
            let origin = crate::server::proxy::connection_origin(
                &mut stream,
                peer,
                trusted,
                expect_header,
                limits.timeout,
            );
            let Some(origin) = origin.await else {
                return;
            };
            match tls {
                None => serve_connection(stream, origin, app, limits, stop).await,
                Some(acceptor) => {
                    let started = std::time::Instant::now();
                    let handshake = acceptor
                        .accept(stream)
                        .instrument(debug_span!("tls_handshake", %peer));
                    match tokio::time::timeout(limits.timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            counter!("im_tls_handshakes_total", "result" => "ok").increment(1);
                            histogram!("im_tls_handshake_seconds")
                                .record(started.elapsed().as_secs_f64());
                            serve_connection(stream, origin, app, limits, stop).await;
                        }
                        Ok(Err(error)) => {
                            // Plain HTTP on the TLS port lands here too.
                            counter!("im_tls_handshakes_total", "result" => "failed").increment(1);
                            debug!(%error, %peer, "TLS handshake failed");
                        }
                        Err(_) => {
                            counter!("im_tls_handshakes_total", "result" => "timeout").increment(1);
                            debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
}

/// What bounds a request head: its time and its size.
#[derive(Clone, Copy)]
struct HeadLimits {
    timeout: Duration,
    max_bytes: usize,
}

/// 404 for the admin paths on the client listener, naming where they are.
async fn on_the_admin_listener() -> Response {
    crate::error::json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "served on the admin listener (IM_ADMIN_LISTEN), not on this port",
    )
}

/// Serves HTTP/1.1 (with upgrades) on one connection, plain or TLS, until it ends or the node stops.
async fn serve_connection<I>(
    io: I,
    origin: ConnectionOrigin,
    app: Router,
    limits: HeadLimits,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(PeerAddr(origin.client));
        request.extensions_mut().insert(origin);
        let mut app = app.clone();
        async move { app.call(request).await }
    });
    // A head over `max_bytes` gets hyper's bare 431 and the connection is closed; a head not complete within
    // `timeout` (slowloris) gets the connection closed without an answer.
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.timeout)
        .max_header_size(limits.max_bytes)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                let kind = if error.is_timeout() {
                    "header_timeout"
                } else if error.is_parse_too_large() {
                    "header_too_large"
                } else if error.is_parse() {
                    "bad_request"
                } else {
                    "other"
                };
                counter!("im_http_connection_errors_total", "kind" => kind).increment(1);
                debug!(%error, peer = %origin.peer, kind, "http connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
        }
    }
}
