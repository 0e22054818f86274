//! A connection's writer task: owns the write half of the socket, sends `hello`, then whatever the outbox queues,
//! pings on a timer, and on a kick sends the queued frames, the `kick` frame and the close frame (within a bound).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::KickReason;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::WriteHalf;
use tokio::sync::oneshot;
use tracing::debug;

use super::outbox::{Outbound, OutboundRx, Outbox};
use super::session::CloseInstruction;
use crate::state::NodeState;

type Io = TokioIo<Upgraded>;

pub(super) async fn write_loop(
    mut writer: WebSocketWrite<WriteHalf<Io>>,
    mut outbound: OutboundRx,
    outbox: Arc<Outbox>,
    hello: Bytes,
    mut close_rx: oneshot::Receiver<CloseInstruction>,
    state: Arc<NodeState>,
) {
    let metrics = &state.metrics;
    let sent = write_binary(&mut writer, &hello, &state).await;
    // `hello` lists up to --hello-conversations conversations; kept, it would cost that much for the connection's life.
    drop(hello);
    if sent.is_err() {
        outbox.kick(KickReason::ProtocolError);
        return;
    }
    let period = Duration::from_secs(u64::from(state.config.ping_interval_secs));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let instruction = loop {
        tokio::select! {
            biased;
            _ = outbox.closed().cancelled() => {
                let reason = outbox.kicked().unwrap_or(KickReason::Draining);
                break Some(CloseInstruction { kick: Some(Outbox::kick_frame(reason)), code: reason.close_code(), reason: reason.as_str() });
            }
            instruction = &mut close_rx => break instruction.ok(),
            next = outbound.recv() => {
                let result = match next {
                    Some(Outbound::Frame(bytes)) => write_binary(&mut writer, &bytes, &state).await,
                    Some(Outbound::Pong(payload)) => writer.write_frame(Frame::pong(Payload::Borrowed(&payload))).await,
                    None => break None,
                };
                if result.is_err() {
                    break None;
                }
            }
            _ = ping.tick() => {
                if writer.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]))).await.is_err() {
                    break None;
                }
            }
        }
    };
    if let Some(instruction) = instruction {
        // Frames queued before a kick (say, the `rate_limited` errors that led to it) go out first; a slow consumer's
        // queue is what could not be sent, so it is dropped.
        let queued = if outbox.kicked() == Some(KickReason::SlowConsumer) {
            Default::default()
        } else {
            outbound.take_queued()
        };
        let closing = async {
            for item in queued {
                match item {
                    Outbound::Frame(bytes) => write_binary(&mut writer, &bytes, &state).await?,
                    Outbound::Pong(_) => {}
                }
            }
            if let Some(kick) = &instruction.kick {
                if let Ok(bytes) = common::encode(kick, usize::MAX) {
                    write_binary(&mut writer, &bytes, &state).await?;
                }
            }
            writer
                .write_frame(Frame::close(
                    instruction.code,
                    instruction.reason.as_bytes(),
                ))
                .await
        };
        if tokio::time::timeout(Duration::from_secs(2), closing)
            .await
            .is_err()
        {
            debug!("peer did not take the close frame in time");
        }
    }
    // Make sure the reader stops too (client gone or close sent).
    outbox.closed().cancel();
    let _ = metrics;
}

async fn write_binary(
    writer: &mut WebSocketWrite<WriteHalf<Io>>,
    bytes: &[u8],
    state: &NodeState,
) -> Result<(), WebSocketError> {
    state.metrics.frames_out.increment(1);
    state.metrics.bytes_out.increment(bytes.len() as u64);
    state.metrics.compressed_out(bytes);
    writer
        .write_frame(Frame::binary(Payload::Borrowed(bytes)))
        .await
}
