//! One WebSocket connection, from the 101 response to the close.
//!
//! Two tasks per connection. The reader (this task) owns the read half: it reads frames with `frames::FrameReader`
//! (which holds no buffer while the connection is idle), reassembles messages under our own cap, decodes frames
//! and acts on them. The writer task owns the write half (fastwebsockets):
//! it sends `hello` first, then whatever the outbox queues, pings on a timer, and on a kick sends the `kick` frame
//! and the close frame. Either side ending ends the other.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use common::frame::{
    kinds, Attrs, ErrorFrame, ReadRequest, ReadState, RecallRequest, Send, SyncRequest, Synced,
    TypingRequest, TypingState,
};
use common::ids::{is_valid_cid, UserId};
use common::{close_code, ClientFrame, ErrorCode, KickReason, ServerFrame};
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tracing::{debug, info, warn, Instrument};

use crate::chat::content;
use crate::chat::rate_limit::Verdict;
use crate::chat::typing::TypingThrottle;
use crate::connection::frames::FrameReader;
use crate::connection::inbound::{Assembler, Inbound, INVALID_PAYLOAD};
use crate::connection::outbox::{Outbound, OutboundRx, Outbox};
use crate::metrics;
use crate::state::NodeState;
use crate::storage::queries::{self, SyncPage};
use crate::storage::writer::{Submission, Target};

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
        write_loop(
            writer,
            outbound,
            outbox.clone(),
            hello,
            close_rx,
            state.clone(),
        )
        .in_current_span(),
    );

    let mut connection = Connection {
        state: state.clone(),
        user,
        device: device.clone(),
        outbox: outbox.clone(),
        typing: TypingThrottle::default(),
    };
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

async fn write_loop(
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

/// At most this many bytes of a cid are echoed in an answer (a valid cid is never longer).
const MAX_ECHOED_CID_BYTES: usize = 64;

/// The cid as an answer carries it: whole if valid, else its first 64 bytes (cut at a character boundary), so a
/// client matching answers by cid still finds the one to an invalid cid.
fn echoed_cid(cid: &str) -> String {
    if cid.len() <= MAX_ECHOED_CID_BYTES {
        return cid.to_string();
    }
    let mut end = MAX_ECHOED_CID_BYTES;
    while !cid.is_char_boundary(end) {
        end -= 1;
    }
    cid[..end].to_string()
}

fn invalid_cid(cid: &str) -> ErrorFrame {
    ErrorFrame::new(
        ErrorCode::InvalidRequest,
        "cid must be 1-64 characters of [A-Za-z0-9_.-]",
    )
    .for_cid(echoed_cid(cid))
}

/// The reader's per-connection state.
struct Connection {
    state: Arc<NodeState>,
    user: UserId,
    device: Arc<str>,
    outbox: Arc<Outbox>,
    typing: TypingThrottle,
}

impl Connection {
    /// Acts on one complete WebSocket message; returns a close instruction if the connection must end.
    async fn on_message(&mut self, message: &[u8]) -> Option<CloseInstruction> {
        let metrics = &self.state.metrics;
        metrics.frames_in.increment(1);
        metrics.bytes_in.increment(message.len() as u64);
        metrics.compressed_in(message);
        match common::decode::<ClientFrame>(message, &self.state.limits) {
            Ok(ClientFrame::Send(send)) => self.on_send(send).await,
            Ok(ClientFrame::Sync(request)) => self.on_sync(request).await,
            Ok(ClientFrame::Read(request)) => self.on_read(request).await,
            Ok(ClientFrame::Typing(request)) => self.on_typing(request).await,
            Ok(ClientFrame::Recall(request)) => self.on_recall(request).await,
            Err(error) => {
                // The connection stays usable: a bad frame is answered, not fatal.
                self.outbox
                    .error(ErrorFrame::new(error.code(), error.to_string()));
            }
        }
        None
    }

    async fn on_send(&mut self, send: Send) {
        let received_at = Instant::now();
        if !self.admit_send(&send.cid) {
            return;
        }
        if !is_valid_cid(&send.cid) {
            self.outbox.error(invalid_cid(&send.cid));
            return;
        }
        let state = &self.state;
        let attrs =
            match content::check_send(&state.pool, state.config.max_body_bytes, self.user, &send)
                .await
            {
                Ok(attrs) => attrs,
                Err(refusal) => {
                    self.outbox.error(refusal.frame().for_cid(send.cid));
                    return;
                }
            };
        let (target, members) = match state
            .policy
            .send_target(self.user, send.to, send.conv)
            .await
        {
            Ok(target) => target,
            Err(refusal) => {
                self.outbox.error(refusal.frame().for_cid(send.cid));
                return;
            }
        };
        let submission = Submission {
            sender: self.user,
            sender_device: self.device.clone(),
            cid: send.cid,
            target,
            members,
            kind: send.kind,
            body: send.body,
            attrs,
            system: false,
            recall_target: None,
            reply: self.outbox.clone(),
            received_at,
        };
        self.submit(submission).await;
    }

    /// The per-user send rate limit (`ratelimit.rs`), before any other work on a `send` or `recall`. Refused:
    /// `error{rate_limited}` for the `cid`; refused again and again: `kick{rate_limited}` and close 1008.
    fn admit_send(&self, cid: &str) -> bool {
        let verdict = self.state.send_limiter.check(self.user);
        if verdict == Verdict::Allowed {
            return true;
        }
        self.state.metrics.rate_limited.increment(1);
        if verdict == Verdict::Close {
            // The kick closes the queue at once, so an error frame queued now would never be sent.
            self.state.metrics.rate_limit_closes.increment(1);
            info!(
                user = self.user,
                "closing a connection that kept sending over its rate limit"
            );
            self.outbox.kick(KickReason::RateLimited);
            return false;
        }
        let mut refusal = ErrorFrame::new(
            ErrorCode::RateLimited,
            "send rate exceeded; slow down and retry with the same cid",
        );
        refusal = refusal.for_cid(echoed_cid(cid));
        self.outbox.error(refusal);
        false
    }

    async fn submit(&self, submission: Submission) {
        if let Err(submission) = self.state.writer.submit(submission).await {
            self.outbox.error(
                ErrorFrame::new(
                    ErrorCode::Draining,
                    "node is draining; retry on another node",
                )
                .for_cid(submission.cid),
            );
        }
    }

    async fn on_read(&mut self, request: ReadRequest) {
        if request.seq < 0 {
            self.outbox.error(ErrorFrame::new(
                ErrorCode::InvalidRequest,
                "seq must be >= 0",
            ));
            return;
        }
        let marked = match crate::storage::chat::mark_read(
            &self.state.pool,
            self.user,
            request.conv,
            request.seq,
        )
        .await
        {
            Ok(marked) => marked,
            Err(error) => {
                warn!(%error, "read cursor update failed");
                self.outbox.error(ErrorFrame::new(
                    ErrorCode::StoreUnavailable,
                    "message store unavailable; retry",
                ));
                return;
            }
        };
        let Some((read_seq, conv_kind)) = marked else {
            self.outbox.error(ErrorFrame::new(
                ErrorCode::NotMember,
                "not a member of this conversation",
            ));
            return;
        };
        ::metrics::counter!("im_read_updates_total").increment(1);
        let frame = ServerFrame::Read(ReadState {
            conv: request.conv,
            user: self.user,
            seq: read_seq,
        });
        // My devices keep unread badges in step; in 1:1 the peer gets a read receipt while the pair is allowed.
        let users = self
            .state
            .policy
            .read_audience(self.user, request.conv, conv_kind)
            .await;
        self.state
            .delivery
            .event_to_users(&users, Some((self.user, &self.device)), &frame)
            .await;
    }

    async fn on_typing(&mut self, request: TypingRequest) {
        if !self.typing.admit(request.conv, Instant::now()) {
            return;
        }
        let members = match self
            .state
            .policy
            .typing_audience(self.user, request.conv)
            .await
        {
            Ok(members) => members,
            Err(refusal) if refusal.code.retryable() => {
                debug!(code = refusal.code.as_str(), "typing dropped");
                return;
            }
            Err(refusal) => {
                self.outbox.error(refusal.frame());
                return;
            }
        };
        ::metrics::counter!("im_typing_relayed_total").increment(1);
        let frame = ServerFrame::Typing(TypingState {
            conv: request.conv,
            user: self.user,
        });
        self.state
            .delivery
            .event_to_conv(
                request.conv,
                &members,
                Some((self.user, &self.device)),
                &frame,
            )
            .await;
    }

    async fn on_recall(&mut self, request: RecallRequest) {
        let received_at = Instant::now();
        if !self.admit_send(&request.cid) {
            return;
        }
        if !is_valid_cid(&request.cid) {
            self.outbox.error(invalid_cid(&request.cid));
            return;
        }
        let fail =
            |code: ErrorCode, msg: &str| ErrorFrame::new(code, msg).for_cid(request.cid.clone());
        let target = match crate::storage::chat::recall_target(
            &self.state.pool,
            request.conv,
            request.seq,
            self.user,
        )
        .await
        {
            Ok(Some(target)) => target,
            Ok(None) => {
                self.outbox.error(fail(
                    ErrorCode::NotMember,
                    "no such message in a conversation of yours",
                ));
                return;
            }
            Err(error) => {
                warn!(%error, "recall lookup failed");
                self.outbox.error(fail(
                    ErrorCode::StoreUnavailable,
                    "message store unavailable; retry",
                ));
                return;
            }
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let own_in_time = target.sender == self.user
            && now_ms - target.created_ms <= self.state.config.recall_window_secs * 1000;
        let group_admin =
            target.conv_kind == crate::storage::queries::KIND_GROUP && target.role >= 1;
        if target.kind == kinds::SYSTEM || target.kind == kinds::RECALL || target.recalled {
            self.outbox.error(fail(
                ErrorCode::Forbidden,
                "this message cannot be recalled",
            ));
            return;
        }
        if !own_in_time && !group_admin {
            self.outbox.error(fail(
                ErrorCode::Forbidden,
                "only your own messages, within the recall window",
            ));
            return;
        }
        let members = match self.state.delivery.members.get(request.conv).await {
            Ok(Some(members)) => members.users.clone(),
            _ => Arc::from([self.user]),
        };
        ::metrics::counter!("im_recalls_total").increment(1);
        self.submit(Submission {
            sender: self.user,
            sender_device: self.device.clone(),
            cid: request.cid,
            target: Target::Conv(request.conv),
            members,
            kind: kinds::RECALL.into(),
            body: String::new(),
            attrs: Some(Attrs {
                target_seq: Some(request.seq),
                ..Attrs::default()
            }),
            system: false,
            recall_target: Some(request.seq),
            reply: self.outbox.clone(),
            received_at,
        })
        .await;
    }

    async fn on_sync(&mut self, request: SyncRequest) {
        let config = &self.state.config;
        if request.limit == 0 || request.after_seq < 0 {
            self.outbox.error(
                ErrorFrame::new(
                    ErrorCode::InvalidRequest,
                    "limit must be >= 1 and after_seq >= 0",
                )
                .for_rid(request.rid),
            );
            return;
        }
        let limit = request.limit.min(config.max_sync_limit);
        match queries::sync(
            &self.state.pool,
            self.user,
            request.conv,
            request.after_seq,
            limit,
        )
        .await
        {
            Ok(SyncPage::Messages { mut msgs, mut more }) => {
                // Keep the reply within what a client with our own limits accepts.
                let budget = config.max_decompressed_bytes / 2;
                let mut used = 0;
                if let Some(cut) = msgs.iter().position(|m| {
                    used += m.body.len() + 64;
                    used > budget
                }) {
                    msgs.truncate(cut.max(1));
                    more = true;
                }
                self.state
                    .metrics
                    .delivered_sync
                    .increment(msgs.len() as u64);
                self.outbox.send(&ServerFrame::Synced(Synced {
                    rid: request.rid,
                    conv: request.conv,
                    msgs,
                    more,
                }));
            }
            Ok(SyncPage::NotMember) => {
                self.outbox.error(
                    ErrorFrame::new(ErrorCode::NotMember, "not a member of this conversation")
                        .for_rid(request.rid),
                );
            }
            Err(error) => {
                warn!(%error, "sync failed");
                self.outbox.error(
                    ErrorFrame::new(
                        ErrorCode::StoreUnavailable,
                        "message store unavailable; retry",
                    )
                    .for_rid(request.rid),
                );
            }
        }
    }
}
