//! `GET /v1/echo`: a WebSocket echo for protocol-conformance runs (Autobahn|Testsuite), off unless the node is
//! started with `--conformance-echo`.
//!
//! Our protocol endpoint is authenticated and binary-only, which a conformance suite cannot drive. This route has
//! no token and echoes text and binary messages, but reads through the same `inbound::Assembler`, the same
//! message cap (`--max-message-bytes`), the same idle timeout and the same error-to-close mapping as a protocol
//! session, so the suite tests the code real connections run. It registers nothing and touches no store.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fastwebsockets::upgrade::IncomingUpgrade;
use fastwebsockets::{Frame, OpCode, Payload};
use tracing::debug;

use crate::connection::frames::FrameReader;
use crate::connection::inbound::{Assembler, Inbound};
use crate::connection::session::close_for_error;
use crate::error::json_error;
use crate::state::NodeState;

pub async fn handle(
    State(state): State<Arc<NodeState>>,
    upgrade: Result<IncomingUpgrade, StatusCode>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "expected a WebSocket upgrade request (version 13)",
        );
    };
    let (response, socket) = match upgrade.upgrade() {
        Ok(pair) => pair,
        Err(error) => {
            return json_error(StatusCode::BAD_REQUEST, "not_websocket", &error.to_string())
        }
    };
    ::metrics::counter!("im_conformance_echo_connections_total").increment(1);
    let tracker = state.connections.clone();
    tracker.spawn(async move {
        let Ok(Ok(ws)) = tokio::time::timeout(
            Duration::from_secs(state.config.handshake_timeout_secs),
            socket,
        )
        .await
        else {
            return;
        };
        // Read through the same `FrameReader` as protocol sessions; fastwebsockets only writes.
        let slot = Arc::new(Mutex::new(None));
        let read_slot = slot.clone();
        let (_, mut ws) = ws.split(move |io| {
            let (read, write) = tokio::io::split(io);
            *read_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(read);
            (tokio::io::empty(), write)
        });
        let Some(read) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut reader = FrameReader::new(read, state.config.max_message_bytes);
        let idle = Duration::from_secs(u64::from(state.config.idle_timeout_secs));
        let mut assembler = Assembler::new(state.config.max_message_bytes, true);
        // The close to send when the loop ends, if any (none when the peer vanished).
        let close: Option<(u16, &'static str)> = loop {
            let frame = match tokio::time::timeout(idle, reader.read_frame()).await {
                Err(_) => break Some((common::close_code::NORMAL, "idle")),
                Ok(Err(error)) => break close_for_error(&error).map(|c| (c.code, c.reason)),
                Ok(Ok(frame)) => frame,
            };
            let reply = match assembler.accept(&frame) {
                Err(refusal) => break Some((refusal.code, refusal.reason)),
                Ok(Inbound::Close { code }) => break Some((code, "")),
                Ok(Inbound::Message { text, payload }) => {
                    ::metrics::counter!("im_conformance_echo_messages_total").increment(1);
                    let opcode = if text { OpCode::Text } else { OpCode::Binary };
                    Frame::new(true, opcode, None, Payload::Owned(payload))
                }
                Ok(Inbound::Ping(payload)) => Frame::pong(Payload::Owned(payload.to_vec())),
                Ok(Inbound::Pong | Inbound::Pending) => continue,
            };
            if ws.write_frame(reply).await.is_err() {
                break None;
            }
        };
        if let Some((code, reason)) = close {
            let _ = ws.write_frame(Frame::close(code, reason.as_bytes())).await;
        }
        debug!(?close, "echo connection closed");
    });
    response.into_response()
}
