//! Who is in a conversation, read from `conversation_members`: the member list the fan-out cache loads, and the
//! two steps every membership change takes inside its transaction (lock the conversation row, re-read the members).
//!
//! Nothing here decides who may join or leave (`groups.rs` and `invitations.rs` do, under the lock taken here) and
//! nothing caches (`fanout::members` does).

use common::ids::{ConvId, UserId};
use deadpool_postgres::{GenericClient, Pool};

use super::StoreError;

/// A conversation's kind and its members, in id order.
pub struct ConversationMembers {
    /// `queries::KIND_DIRECT` or `queries::KIND_GROUP`.
    pub kind: i16,
    pub users: Vec<UserId>,
}

/// The members of `conv`; `None` if the conversation does not exist.
pub async fn conversation_members(
    pool: &Pool,
    conv: ConvId,
) -> Result<Option<ConversationMembers>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT c.kind, coalesce(array_agg(m.user_id ORDER BY m.user_id) FILTER (WHERE m.user_id IS NOT NULL), '{}')
             FROM conversations c LEFT JOIN conversation_members m ON m.conv_id = c.id
             WHERE c.id = $1 GROUP BY c.kind",
        )
        .await?;
    let Some(row) = client.query_opt(&statement, &[&conv]).await? else {
        return Ok(None);
    };
    Ok(Some(ConversationMembers {
        kind: row.try_get(0)?,
        users: row.try_get(1)?,
    }))
}

/// Locks `conv`'s row until the transaction ends, so membership changes of one conversation run one at a time and
/// a member cap checked after the change cannot be overshot by a concurrent one. A missing conversation locks
/// nothing; the caller's next read finds it missing.
pub(super) async fn lock_conversation<C: GenericClient>(
    tx: &C,
    conv: ConvId,
) -> Result<(), StoreError> {
    let statement = tx
        .prepare_cached("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE")
        .await?;
    tx.execute(&statement, &[&conv]).await?;
    Ok(())
}

/// Every member of `conv`, as the caller's transaction sees it.
pub(super) async fn member_ids<C: GenericClient>(
    client: &C,
    conv: ConvId,
) -> Result<Vec<UserId>, StoreError> {
    let statement = client
        .prepare_cached("SELECT user_id FROM conversation_members WHERE conv_id = $1")
        .await?;
    super::first_column(&client.query(&statement, &[&conv]).await?)
}
