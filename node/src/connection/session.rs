//! One WebSocket connection, from the 101 response to the close: the socket plumbing and the read loop.
//!
//! Two tasks per connection. The reader (this task) owns the read half: it reads frames with `frames::FrameReader`
//! (which holds no buffer while the connection is idle), reassembles messages under our own cap and hands each
//! one to `handlers::Connection`, which decodes and acts on it. The writer task (`writer.rs`) owns the write half:
//! it sends `hello` first, then whatever the outbox queues, pings on a timer, and on a kick sends the `kick` frame
//! and the close frame. Either side ending ends the other.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use common::ids::UserId;
use common::{close_code, KickReason, ServerFrame};
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::WebSocketError;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf, ReadHalf};
use tokio::sync::oneshot;
use tracing::{debug, Instrument};

use super::handlers::Connection;
use super::writer;
use crate::connection::frames::FrameReader;
use crate::connection::inbound::{Assembler, Inbound, INVALID_PAYLOAD};
use crate::connection::outbox::{OutboundRx, Outbox};
use crate::metrics;
use crate::state::NodeState;

type Io = TokioIo<Upgraded>;

/// The socket's read half, shared so the session can take it back from the WebSocket reader when closing.
///
/// Closing a TCP socket with unread input makes the kernel send a reset, and a reset makes the peer discard data it
/// has not read yet — our `kick` and close frame among them. So after deciding to close, the session takes the raw
/// read half and discards input until the peer closes (or a deadline passes) before dropping the socket.
#[derive(Clone)]
struct SharedRead(Arc<Mutex<Option<ReadHalf<Io>>>>);

impl SharedRead {
    fn take(&self) -> Option<ReadHalf<Io>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl AsyncRead for SharedRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(read) => Pin::new(read).poll_read(cx, buf),
            // Taken for draining: the WebSocket reader sees end of input.
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Discards input until the peer closes, `limit` passes or `max_bytes` were read.
async fn drain_input(shared: &SharedRead, limit: Duration, max_bytes: usize) {
    let Some(mut read) = shared.take() else {
        return;
    };
    let mut scratch = vec![0u8; 8192];
    let mut total = 0;
    let _ = tokio::time::timeout(limit, async {
        while total < max_bytes {
            match read.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

pub struct SessionContext {
    pub user: UserId,
    pub device: Arc<str>,
    pub conn_id: u64,
    pub outbox: Arc<Outbox>,
    pub outbound: OutboundRx,
    pub hello: Bytes,
}

/// How the reader wants the connection closed.
pub(crate) struct CloseInstruction {
    /// A `kick` frame to send first (server-initiated closes).
    pub(crate) kick: Option<ServerFrame>,
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

/// Removes the device from this node and, if the registry still points here, from Redis.
pub async fn unregister(state: &NodeState, user: UserId, device: &str, conn_id: u64) {
    if state.sessions.remove(user, device, conn_id) {
        // "Last seen" for the device list; best effort, off the connection's path.
        let pool = state.pool.clone();
        let device_id = device.to_string();
        tokio::spawn(async move {
            let now = i64::try_from(crate::identity::auth::unix_now_ms()).unwrap_or(i64::MAX);
            if let Err(error) = crate::storage::devices::touch(&pool, user, &device_id, now).await {
                debug!(%error, "could not note when the device was last seen");
            }
        });
        match state
            .locations
            .unregister(user, device, &state.node_id)
            .await
        {
            Ok(_) => state
                .delivery
                .presence_changed(state.pool.clone(), user, false),
            // The entry will be ignored once this node's lease lapses, and replaced when the device reconnects.
            Err(error) => debug!(%error, "could not remove the device location"),
        }
    }
}

pub async fn run(state: Arc<NodeState>, socket: UpgradeFut, context: SessionContext) {
    let SessionContext {
        user,
        device,
        conn_id,
        outbox,
        outbound,
        hello,
    } = context;
    let ws = match tokio::time::timeout(
        Duration::from_secs(state.config.handshake_timeout_secs),
        socket,
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            debug!(%error, "upgrade failed");
            Box::pin(unregister(&state, user, &device, conn_id)).await;
            return;
        }
        Err(_) => {
            Box::pin(unregister(&state, user, &device, conn_id)).await;
            return;
        }
    };
    state.metrics.connections_open.increment(1.0);
    ::metrics::counter!("im_connections_opened_total").increment(1);

    let shared_read = SharedRead(Arc::new(Mutex::new(None)));
    let slot = shared_read.clone();
    // fastwebsockets writes; our `FrameReader` reads (it holds no buffer while the connection is idle). The read
    // half fastwebsockets would own gets an empty stream and is dropped at once, with its buffer.
    let (_, writer) = ws.split(move |io| {
        let (read, write) = tokio::io::split(io);
        *slot.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(read);
        (tokio::io::empty(), write)
    });
    let mut reader = FrameReader::new(shared_read.clone(), state.config.max_message_bytes);

    let (close_tx, close_rx) = oneshot::channel();
    let writer_task = tokio::spawn(
        writer::write_loop(
            writer,
            outbound,
            outbox.clone(),
            hello,
            close_rx,
            state.clone(),
        )
        .in_current_span(),
    );

    let mut connection = Connection::new(state.clone(), user, device.clone(), outbox.clone());
    let idle = Duration::from_secs(u64::from(state.config.idle_timeout_secs));
    let max_message = state.config.max_message_bytes;
    let mut assembler = Assembler::new(max_message, false);

    let close: Option<CloseInstruction> = loop {
        let read = tokio::select! {
            biased;
            _ = outbox.closed().cancelled() => break None,
            read = tokio::time::timeout(idle, reader.read_frame()) => read,
        };
        let frame = match read {
            Err(_) => {
                outbox.kick(KickReason::IdleTimeout);
                break None;
            }
            Ok(Err(error)) => break close_for_error(&error),
            Ok(Ok(frame)) => frame,
        };
        let complete: Option<Vec<u8>> = match assembler.accept(&frame) {
            Err(refusal) => break Some(protocol_close(refusal.code, refusal.reason)),
            Ok(Inbound::Message { payload, .. }) => Some(payload),
            Ok(Inbound::Close { code }) => {
                break Some(CloseInstruction {
                    kick: None,
                    code,
                    reason: "",
                })
            }
            Ok(Inbound::Ping(payload)) => {
                outbox.pong(payload);
                None
            }
            Ok(Inbound::Pong | Inbound::Pending) => None,
        };
        if let Some(message) = complete {
            // Boxed: handling a message awaits the store and Redis, and those futures inlined here would make every
            // connection's task as large as the largest of them for its whole life, idle or not.
            if let Some(close) = Box::pin(connection.on_message(&message)).await {
                break Some(close);
            }
        }
    };

    let reason = match (&close, outbox.kicked()) {
        (_, Some(kick)) => kick.as_str(),
        (Some(instruction), None) if instruction.kick.is_some() => "protocol_error",
        (Some(_), None) => "client_closed",
        (None, None) => "connection_lost",
    };
    let closing = close.is_some() || outbox.kicked().is_some();
    if let Some(instruction) = close {
        let _ = close_tx.send(instruction);
    } else {
        drop(close_tx);
    }
    drop(reader);
    if closing {
        // Keep reading (and discarding) while the kick and close go out, so the socket is not reset under them.
        drain_input(&shared_read, Duration::from_secs(2), 4 * max_message).await;
    }
    // The writer finishes its close within a bounded time; a stuck peer cannot hold the task. A peer that stopped
    // reading leaves the writer blocked in a socket write, which no select can interrupt: abort it, or the task,
    // its queue and the socket would live as long as the peer keeps the TCP connection open.
    let writer_abort = writer_task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), writer_task)
        .await
        .is_err()
    {
        ::metrics::counter!("im_ws_writer_aborted_total").increment(1);
        writer_abort.abort();
    }
    Box::pin(unregister(&state, user, &device, conn_id)).await;
    state.metrics.connections_open.decrement(1.0);
    metrics::connection_closed(reason);
    debug!(reason, "connection closed");
}

fn protocol_close(code: u16, reason: &'static str) -> CloseInstruction {
    CloseInstruction {
        kick: Some(Outbox::kick_frame(KickReason::ProtocolError)),
        code,
        reason,
    }
}

pub(crate) fn close_for_error(error: &WebSocketError) -> Option<CloseInstruction> {
    match error {
        WebSocketError::InvalidUTF8 => {
            Some(protocol_close(INVALID_PAYLOAD, "text is not valid UTF-8"))
        }
        WebSocketError::FrameTooLarge => Some(protocol_close(
            close_code::MESSAGE_TOO_BIG,
            "message too big",
        )),
        WebSocketError::UnexpectedEOF
        | WebSocketError::ConnectionClosed
        | WebSocketError::IoError(_) => None,
        _ => Some(protocol_close(
            close_code::PROTOCOL_ERROR,
            "websocket protocol error",
        )),
    }
}
