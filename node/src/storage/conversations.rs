//! The REST reads of conversations: a user's list with each one's last message and unread count, history pages
//! (newest first) and who has read a message.
//!
//! Nothing here checks membership for history and read receipts: the caller asks the member cache first, so a
//! non-member is answered like a missing conversation before any of these run. The hot-path reads of a session
//! (`hello`, `sync`) are `queries.rs`'s.

use common::frame::Msg;
use common::ids::{ConvId, MsgId, Seq, UserId};
use deadpool_postgres::Pool;

use super::queries::{message_from_row, KIND_DIRECT};
use super::StoreError;

/// A conversation's last message as the list shows it: its attributes are kept as the JSON they were stored as.
#[derive(Debug, Clone)]
pub struct LastMessage {
    pub id: MsgId,
    pub seq: Seq,
    pub from: UserId,
    pub cid: String,
    pub kind: String,
    pub body: String,
    pub ts: i64,
    /// `None` if the message has none (or they are not JSON).
    pub attrs: Option<serde_json::Value>,
    pub recalled: bool,
}

/// One entry of a user's conversation list.
#[derive(Debug, Clone)]
pub struct ConversationSummary {
    pub id: ConvId,
    pub direct: bool,
    pub title: String,
    /// For a 1:1 conversation, the other user (the user themself in a note-to-self).
    pub peer: Option<UserId>,
    pub last_seq: Seq,
    pub read_seq: Seq,
    pub last_activity_ms: i64,
    pub last_message: Option<LastMessage>,
}

/// `user`'s conversations, most recently active first, at most `limit`; and the user's unread count over all of
/// their conversations (not only the listed ones).
pub async fn conversation_list(
    pool: &Pool,
    user: UserId,
    limit: i64,
) -> Result<(Vec<ConversationSummary>, i64), StoreError> {
    let client = pool.get().await?;
    let list = client
        .prepare_cached(
            "SELECT c.id, c.kind, c.title, c.direct_low, c.direct_high, c.last_seq, m.read_seq, c.last_msg_ms,
                    msg.id, msg.seq, msg.sender, msg.cid, msg.kind, msg.body, msg.created_ms, msg.attrs::text, msg.recalled
             FROM conversation_members m JOIN conversations c ON c.id = m.conv_id
             LEFT JOIN messages msg ON msg.conv_id = c.id AND msg.seq = c.last_seq
             WHERE m.user_id = $1 ORDER BY c.last_msg_ms DESC, c.id DESC LIMIT $2",
        )
        .await?;
    let unread = client
        .prepare_cached(
            "SELECT coalesce(sum(c.last_seq - m.read_seq), 0)::bigint FROM conversation_members m
             JOIN conversations c ON c.id = m.conv_id WHERE m.user_id = $1",
        )
        .await?;
    let rows = client.query(&list, &[&user, &limit]).await?;
    let total_unread: i64 = client.query_one(&unread, &[&user]).await?.try_get(0)?;
    let mut conversations = Vec::with_capacity(rows.len());
    for row in &rows {
        let kind: i16 = row.try_get(1)?;
        let direct = kind == KIND_DIRECT;
        let peer = if direct {
            let low: Option<UserId> = row.try_get(3)?;
            let high: Option<UserId> = row.try_get(4)?;
            if low == Some(user) {
                high
            } else {
                low
            }
        } else {
            None
        };
        // The last message's columns start at index 8; a conversation without messages has NULLs there.
        let last_message = match row.try_get::<_, Option<MsgId>>(8)? {
            Some(id) => {
                let attrs: Option<String> = row.try_get(15)?;
                Some(LastMessage {
                    id,
                    seq: row.try_get(9)?,
                    from: row.try_get(10)?,
                    cid: row.try_get(11)?,
                    kind: row.try_get(12)?,
                    body: row.try_get(13)?,
                    ts: row.try_get(14)?,
                    attrs: attrs.and_then(|text| serde_json::from_str(&text).ok()),
                    recalled: row.try_get(16)?,
                })
            }
            None => None,
        };
        conversations.push(ConversationSummary {
            id: row.try_get(0)?,
            direct,
            title: row.try_get(2)?,
            peer,
            last_seq: row.try_get(5)?,
            read_seq: row.try_get(6)?,
            last_activity_ms: row.try_get(7)?,
            last_message,
        });
    }
    Ok((conversations, total_unread))
}

/// Up to `limit` messages of `conv` before `before_seq`, newest first, and whether older ones remain.
pub async fn history(
    pool: &Pool,
    conv: ConvId,
    before_seq: Seq,
    limit: i64,
) -> Result<(Vec<Msg>, bool), StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT id, seq, sender, cid, kind, body, created_ms, attrs::text, recalled FROM messages
             WHERE conv_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
        )
        .await?;
    // One extra row tells whether there is more.
    let rows = client
        .query(&statement, &[&conv, &before_seq, &(limit + 1)])
        .await?;
    let more = rows.len() as i64 > limit;
    let messages = rows
        .iter()
        .take(limit as usize)
        .map(|row| message_from_row(row, conv))
        .collect::<Result<_, _>>()?;
    Ok((messages, more))
}

/// The members of `conv` other than the sender of message `seq`, split into those who have read up to `seq` and
/// those who have not, each by id.
pub async fn read_receipts(
    pool: &Pool,
    conv: ConvId,
    seq: Seq,
) -> Result<(Vec<UserId>, Vec<UserId>), StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT m.user_id, m.read_seq >= $2 FROM conversation_members m
             WHERE m.conv_id = $1 AND m.user_id <> coalesce((SELECT sender FROM messages WHERE conv_id = $1 AND seq = $2), 0)
             ORDER BY m.user_id",
        )
        .await?;
    let (mut read, mut unread) = (Vec::new(), Vec::new());
    for row in client.query(&statement, &[&conv, &seq]).await? {
        let user: UserId = row.try_get(0)?;
        if row.try_get::<_, bool>(1)? {
            read.push(user);
        } else {
            unread.push(user);
        }
    }
    Ok((read, unread))
}
