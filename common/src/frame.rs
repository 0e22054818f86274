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
// Frames live for one decode or encode; boxing the large variants would add an allocation to every frame.
#[allow(clippy::large_enum_variant)]
pub enum ClientFrame {
    /// Send a message; answered by `ack` (after commit) or `error`.
    Send(Send),
    /// Ask for stored messages of a conversation after a seq; answered by `synced` or `error`.
    Sync(SyncRequest),
    /// Move my read cursor in a conversation (never backwards); my other devices and, in 1:1, the peer are told.
    Read(ReadRequest),
    /// I am typing in a conversation: relayed to its online members, never stored.
    Typing(TypingRequest),
    /// Recall one of my messages (or, as a group admin, anyone's): answered like `send`, by `ack` or `error`.
    Recall(RecallRequest),
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
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
    /// Someone (you on another device, or the peer of a 1:1) read a conversation up to a seq.
    Read(ReadState),
    /// Someone is typing in one of your conversations.
    Typing(TypingState),
    /// Something about your contacts changed: friend requests and answers, presence.
    Notice(Notice),
}

/// `send`: one message to a user (`to`, a 1:1 conversation) or into a conversation (`conv`, e.g. a group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Send {
    /// Client idempotency key: the same `(sender, cid)` never makes two messages; retry with the same one.
    pub cid: String,
    /// The recipient user (exactly one of `to` and `conv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<UserId>,
    /// The conversation (exactly one of `to` and `conv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<ConvId>,
    /// `text`, `emoji`, `image`, `file` or `custom` (see `kinds`).
    pub kind: String,
    /// The text, the emoji code, or a caption; may be empty for media.
    #[serde(default)]
    pub body: String,
    /// Typed attributes of non-text kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attrs: Option<Attrs>,
}

/// Message kinds. Clients may send the first five; `system` and `recall` are made by the server.
pub mod kinds {
    pub const TEXT: &str = "text";
    pub const EMOJI: &str = "emoji";
    pub const IMAGE: &str = "image";
    pub const FILE: &str = "file";
    pub const CUSTOM: &str = "custom";
    /// Membership and group changes (`attrs.event` says which).
    pub const SYSTEM: &str = "system";
    /// A recall notice; `attrs.target_seq` is the recalled message.
    pub const RECALL: &str = "recall";
    pub const CLIENT_KINDS: [&str; 5] = [TEXT, EMOJI, IMAGE, FILE, CUSTOM];
}

/// Typed attributes of a message. Each kind uses some of them; all are optional on the wire.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attrs {
    /// `image`/`file`: SHA-256 (lowercase hex) of an uploaded medium.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    /// `file`: the file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `image`/`file`: size in bytes and MIME type, filled in by the server from the upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// `custom`: an application-defined type, a memo and an amount (e.g. a red packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// `system`: what happened (`created`, `members_added`, `member_left`, `member_removed`, `renamed`,
    /// `owner_changed`), who did it is `from`, who it concerns is `users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<UserId>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `recall`: the seq of the recalled message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_seq: Option<Seq>,
}

/// `read`: my read cursor in `conv` moves up to `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub conv: ConvId,
    pub seq: Seq,
}

/// `typing`: I am typing in `conv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypingRequest {
    pub conv: ConvId,
}

/// `recall`: recall the message at `seq` of `conv`; `cid` is the idempotency key of the recall itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecallRequest {
    pub cid: String,
    pub conv: ConvId,
    pub seq: Seq,
}

/// `read` (server): `user` has read `conv` up to `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadState {
    pub conv: ConvId,
    pub user: UserId,
    pub seq: Seq,
}

/// `typing` (server): `user` is typing in `conv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypingState {
    pub conv: ConvId,
    pub user: UserId,
}

/// `notice`: a change about contacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// `friend_request`, `friend_accepted`, `friend_rejected`, `friend_removed`, `presence` or `group_invitation`.
    pub kind: String,
    /// The other user concerned.
    pub user: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// The group of a `group_invitation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<ConvId>,
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
    /// The node's size limits, for clients to check before sending (absent from older nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ClientLimits>,
}

/// The size limits a client checks before sending, so nothing it sends is refused (or closes the connection) for
/// size. All in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLimits {
    /// Largest WebSocket message (a bigger one closes the connection with 1009).
    pub message_bytes: u64,
    /// Longest `send.body` of a text or custom message (UTF-8).
    pub body_bytes: u64,
    /// Longest caption of an image or file message.
    pub caption_bytes: u64,
    /// Longest emoji code.
    pub emoji_bytes: u64,
    /// Largest upload (`POST /v1/media`).
    pub media_bytes: u64,
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
    /// For a group, its title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attrs: Option<Attrs>,
    /// The message was recalled: `body` and `attrs` are gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recalled: bool,
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
