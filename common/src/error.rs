//! Stable, machine-readable error codes, kick reasons and WebSocket close codes.
//!
//! These strings and numbers are part of the public protocol (`docs/protocol.md`): clients branch on them, so a
//! variant may be added but never renamed or renumbered.

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be decoded: bad header bits, truncated or invalid MessagePack, wrong field types.
    BadFrame,
    /// The frame decoded but its `t` names no frame a client may send.
    UnknownFrame,
    /// A size, depth or length limit was exceeded (the message says which).
    LimitExceeded,
    /// A field had a value outside its rules (bad `cid`, unknown `kind`, `limit` out of range...).
    InvalidRequest,
    /// The sender's send rate (per user and node) was exceeded; nothing was stored; retry later with the same `cid`.
    RateLimited,
    /// The recipient does not exist.
    UnknownUser,
    /// The sender is not a member of the conversation.
    NotMember,
    /// 1:1 messages need friendship on this server, and the recipient is not a friend.
    NotFriends,
    /// The recipient blocked the sender (or the sender blocked the recipient).
    Blocked,
    /// The action is not allowed: recall window passed, not the author or an admin, ...
    Forbidden,
    /// The medium named in `attrs.media` was never uploaded.
    UnknownMedia,
    /// Postgres could not commit the message; nothing was stored; retry with the same `cid`.
    StoreUnavailable,
    /// The node is draining; reconnect to another node and retry with the same `cid`.
    Draining,
    /// A bug or an unexpected state on the server; retry with the same `cid`.
    Internal,
}

impl ErrorCode {
    /// Whether retrying the same request (with the same `cid`) later can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::StoreUnavailable
                | ErrorCode::Draining
                | ErrorCode::Internal
        )
    }

    /// The snake_case wire name, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownFrame => "unknown_frame",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::NotMember => "not_member",
            ErrorCode::NotFriends => "not_friends",
            ErrorCode::Blocked => "blocked",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownMedia => "unknown_media",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Draining => "draining",
            ErrorCode::Internal => "internal",
        }
    }
}

/// The `reason` of a `kick` frame, sent just before the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KickReason {
    /// The node is shutting down: reconnect (to any node) and sync.
    Draining,
    /// The same user and device connected again elsewhere, or a newer login on the same platform moved this one out
    /// (one session per platform); this connection is superseded. Do not reconnect blindly.
    Replaced,
    /// The client did not read fast enough and its outbound queue filled up: reconnect and sync.
    SlowConsumer,
    /// Nothing was received for longer than the idle timeout (pongs count).
    IdleTimeout,
    /// The node lost its cluster lease (it was paused or cut off from Redis): reconnect and sync.
    LeaseLost,
    /// The client's input broke the protocol at the WebSocket level (see the close code).
    ProtocolError,
    /// The session token was revoked (logout, or logout of every session): log in again, do not reconnect with it.
    Revoked,
    /// The client kept sending over its rate limit after being told (`error{rate_limited}`): back off before
    /// reconnecting.
    RateLimited,
}

impl KickReason {
    /// The snake_case wire name, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            KickReason::Draining => "draining",
            KickReason::Replaced => "replaced",
            KickReason::SlowConsumer => "slow_consumer",
            KickReason::IdleTimeout => "idle_timeout",
            KickReason::LeaseLost => "lease_lost",
            KickReason::ProtocolError => "protocol_error",
            KickReason::Revoked => "revoked",
            KickReason::RateLimited => "rate_limited",
        }
    }

    /// The WebSocket close code that follows this kick.
    pub fn close_code(self) -> u16 {
        match self {
            KickReason::Draining => close_code::SERVICE_RESTART,
            KickReason::Replaced => close_code::REPLACED,
            KickReason::SlowConsumer => close_code::SLOW_CONSUMER,
            KickReason::IdleTimeout => close_code::IDLE_TIMEOUT,
            KickReason::LeaseLost => close_code::LEASE_LOST,
            KickReason::ProtocolError => close_code::PROTOCOL_ERROR,
            KickReason::Revoked => close_code::POLICY_VIOLATION,
            KickReason::RateLimited => close_code::POLICY_VIOLATION,
        }
    }
}

/// WebSocket close codes the server sends.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The WebSocket framing was broken (RFC 6455).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame was sent: the protocol is binary only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A usage policy was broken: the session token was revoked, or the client kept sending over its rate limit
    /// after being told (RFC 6455 "policy violation"); the kick reason says which.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message was larger than the configured maximum WebSocket message size.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server hit an unexpected condition.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The node is draining; reconnect elsewhere.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Superseded by a newer connection of the same user and device.
    pub const REPLACED: u16 = 4001;
    /// Outbound queue full.
    pub const SLOW_CONSUMER: u16 = 4002;
    /// Silent for longer than the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4003;
    /// The node lost its cluster lease.
    pub const LEASE_LOST: u16 = 4004;
}
