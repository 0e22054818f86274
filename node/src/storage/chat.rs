//! The two statements a session runs for the chat features outside the message hot path: moving a read cursor
//! (`read`) and reading what a recall needs to know about its target (`recall`).
//!
//! Deciding whether a recall is allowed is the session's and the chat rules'; the recall itself is a message the
//! writer commits.

use common::ids::{ConvId, Seq, UserId};
use deadpool_postgres::Pool;

use super::StoreError;

/// Moves `user`'s read cursor in `conv` up to `seq` (never backwards, never past the last seq). Returns the new
/// cursor and the conversation kind, or `None` if the user is not a member.
pub async fn mark_read(
    pool: &Pool,
    user: UserId,
    conv: ConvId,
    seq: Seq,
) -> Result<Option<(Seq, i16)>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE conversation_members m SET read_seq = GREATEST(m.read_seq, LEAST($3, c.last_seq))
             FROM conversations c WHERE c.id = m.conv_id AND m.conv_id = $1 AND m.user_id = $2
             RETURNING m.read_seq, c.kind",
        )
        .await?;
    let row = client.query_opt(&statement, &[&conv, &user, &seq]).await?;
    row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
}

/// What a recall needs to know about its target.
pub struct RecallTarget {
    pub sender: UserId,
    pub created_ms: i64,
    pub recalled: bool,
    pub kind: String,
    pub conv_kind: i16,
    /// The recaller's role in the conversation (0 member, 1 admin, 2 owner).
    pub role: i16,
}

/// The target of a recall, if it exists and the recaller is a member.
pub async fn recall_target(
    pool: &Pool,
    conv: ConvId,
    seq: Seq,
    user: UserId,
) -> Result<Option<RecallTarget>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT msg.sender, msg.created_ms, msg.recalled, msg.kind, c.kind, m.role
             FROM messages msg JOIN conversations c ON c.id = msg.conv_id
             JOIN conversation_members m ON m.conv_id = msg.conv_id AND m.user_id = $3
             WHERE msg.conv_id = $1 AND msg.seq = $2",
        )
        .await?;
    let row = client.query_opt(&statement, &[&conv, &seq, &user]).await?;
    row.map(|row| {
        Ok(RecallTarget {
            sender: row.try_get(0)?,
            created_ms: row.try_get(1)?,
            recalled: row.try_get(2)?,
            kind: row.try_get(3)?,
            conv_kind: row.try_get(4)?,
            role: row.try_get(5)?,
        })
    })
    .transpose()
}
