//! The frames of the protocol: what a client may send (`ClientFrame`) and what a server sends (`ServerFrame`).
//!
//! Every frame is a MessagePack map whose `t` key names the frame; the other keys are the fields below. Unknown
//! keys are ignored (so fields can be added), unknown `t` values are rejected. Field names are short because they
//! are repeated in every frame on the wire.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, KickReason};
use crate::ids::{ConvId, MsgId, Seq, UserId};

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Send a message; answered by `ack` (after commit) or `error`.
    Send(Send),
    /// Ask for stored messages of a conversation after a seq; answered by `synced` or `error`.
    Sync(SyncRequest),
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame on every connection: who you are and where each of your conversations stands.
    Hello(Hello),
    /// Your `send` was committed.
    Ack(Ack),
    /// A message in one of your conversations (also your own, sent from another of your devices).
    Msg(Msg),
    /// The answer to `sync`.
    Synced(Synced),
    /// A request failed; `cid` or `rid` says which.
    Error(ErrorFrame),
    /// The server is about to close this connection, and why.
    Kick(Kick),
}

/// `send`: one message to one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Send {
    /// Client idempotency key: the same `(sender, cid)` never makes two messages; retry with the same one.
    pub cid: String,
    /// The recipient user.
    pub to: UserId,
    /// The message kind; `"text"` for now.
    pub kind: String,
    /// The content (UTF-8).
    pub body: String,
}

/// `sync`: stored messages of `conv` with `seq > after_seq`, oldest first, at most `limit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Echoed in the reply so a client can match it; any number the client likes.
    #[serde(default)]
    pub rid: u32,
    pub conv: ConvId,
    pub after_seq: Seq,
    pub limit: u32,
}

/// `hello`: sent once, right after the upgrade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub user: UserId,
    pub device: String,
    /// The name of the node that serves this connection (for logs and support).
    pub node: String,
    /// Seconds between the server's WebSocket pings; the connection is closed after `idle` seconds of silence.
    pub ping: u32,
    pub idle: u32,
    /// The user's conversations, most recently active first (at most the node's configured cap).
    pub convs: Vec<ConvState>,
}

/// Where one conversation stands for the connecting user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvState {
    pub conv: ConvId,
    /// The highest committed seq; sync from your last seen seq up to here.
    pub last_seq: Seq,
    /// How far this user has read.
    pub read_seq: Seq,
    /// For a 1:1 conversation, the other user.
    #[serde(default)]
    pub peer: Option<UserId>,
}

/// `ack`: the message is committed and will be delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub cid: String,
    pub id: MsgId,
    pub conv: ConvId,
    pub seq: Seq,
    /// Commit time, milliseconds since the Unix epoch.
    pub ts: i64,
}

/// `msg`: a stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Msg {
    pub id: MsgId,
    pub conv: ConvId,
    pub seq: Seq,
    pub from: UserId,
    /// The sender's `cid`, so the sender's other devices can match their own messages.
    pub cid: String,
    pub kind: String,
    pub body: String,
    /// Commit time, milliseconds since the Unix epoch.
    pub ts: i64,
}

/// `synced`: the answer to `sync`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Synced {
    pub rid: u32,
    pub conv: ConvId,
    pub msgs: Vec<Msg>,
    /// More messages after the last one returned: ask again from its seq.
    pub more: bool,
}

/// `error`: a request failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    /// The `cid` of the `send` this answers, if any.
    #[serde(default)]
    pub cid: Option<String>,
    /// The `rid` of the `sync` this answers, if any.
    #[serde(default)]
    pub rid: Option<u32>,
    /// Whether the same request may succeed later.
    pub retry: bool,
    /// A human-readable explanation (not for parsing).
    pub msg: String,
}

impl ErrorFrame {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        ErrorFrame {
            code,
            cid: None,
            rid: None,
            retry: code.retryable(),
            msg: msg.into(),
        }
    }

    pub fn for_cid(mut self, cid: impl Into<String>) -> Self {
        self.cid = Some(cid.into());
        self
    }

    pub fn for_rid(mut self, rid: u32) -> Self {
        self.rid = Some(rid);
        self
    }
}

/// `kick`: the server closes the connection after this frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kick {
    pub reason: KickReason,
    pub msg: String,
}
