//! What each client frame does on a connection: `send` and `recall` (rate limit, content rules, the chat policy,
//! then the writer), `sync` (a page of stored messages within the client's limits), `read` (the cursor and its
//! receipts) and `typing` (throttled, then relayed). The rules themselves live in `chat/`; this file applies them
//! to one connection and answers on its outbox.

use std::sync::Arc;
use std::time::Instant;

use common::frame::{
    kinds, Attrs, ErrorFrame, ReadRequest, ReadState, RecallRequest, Send, SyncRequest, Synced,
    TypingRequest, TypingState,
};
use common::ids::{is_valid_cid, UserId};
use common::{ClientFrame, ErrorCode, KickReason, ServerFrame};
use tracing::{debug, info, warn};

use super::outbox::Outbox;
use super::session::CloseInstruction;
use crate::chat::content;
use crate::chat::rate_limit::Verdict;
use crate::chat::recall;
use crate::chat::typing::TypingThrottle;
use crate::state::NodeState;
use crate::storage::queries::{self, SyncPage};
use crate::storage::writer::{Submission, Target};

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
pub(super) struct Connection {
    state: Arc<NodeState>,
    user: UserId,
    device: Arc<str>,
    outbox: Arc<Outbox>,
    typing: TypingThrottle,
}

impl Connection {
    pub(super) fn new(
        state: Arc<NodeState>,
        user: UserId,
        device: Arc<str>,
        outbox: Arc<Outbox>,
    ) -> Self {
        Connection {
            state,
            user,
            device,
            outbox,
            typing: TypingThrottle::default(),
        }
    }

    /// Acts on one complete WebSocket message; returns a close instruction if the connection must end.
    pub(super) async fn on_message(&mut self, message: &[u8]) -> Option<CloseInstruction> {
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
        if let Err(refusal) =
            recall::may_recall(&target, self.user, self.state.config.recall_window_secs)
        {
            self.outbox.error(refusal.frame().for_cid(request.cid));
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
