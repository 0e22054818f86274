//! Group invitations (`group_invitations`): recording them when a group is created or grown, listing a user's,
//! and accepting (joining within the member cap, in one transaction) or declining one.
//!
//! An invitation from someone the invitee has blocked is kept but never listed, told, accepted or declined: every
//! statement here leaves it out, so the inviter's view cannot tell a block from a silent invitee. Who is invited
//! rather than added is `relations::split_direct_adds`'s answer.

use common::ids::{ConvId, UserId};
use deadpool_postgres::{GenericClient, Pool};

use super::members::{lock_conversation, member_ids};
use super::StoreError;
use crate::clock::now_ms;

/// Records invitations to `conv` (a pending one is kept as it is; members are not invited). Returns the invitees
/// that should be told: those who have not blocked the inviter.
pub(super) async fn invite<C: GenericClient>(
    client: &C,
    conv: ConvId,
    inviter: UserId,
    users: &[UserId],
) -> Result<Vec<UserId>, StoreError> {
    let statement = client
        .prepare_cached(
            "WITH added AS (
                 INSERT INTO group_invitations (conv_id, user_id, inviter, created_ms)
                 SELECT $1, u, $2, $4 FROM unnest($3::bigint[]) AS u
                 WHERE NOT EXISTS (SELECT 1 FROM conversation_members m WHERE m.conv_id = $1 AND m.user_id = u)
                 ON CONFLICT (conv_id, user_id) DO NOTHING
                 RETURNING user_id
             )
             SELECT a.user_id FROM added a
             WHERE NOT EXISTS (SELECT 1 FROM blocks b WHERE b.user_id = a.user_id AND b.blocked_id = $2)",
        )
        .await?;
    super::first_column(
        &client
            .query(&statement, &[&conv, &inviter, &users, &now_ms()])
            .await?,
    )
}

/// A pending invitation as its invitee sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Invitation {
    pub group: ConvId,
    pub title: String,
    pub from: UserId,
    pub created_ms: i64,
}

/// `user`'s pending invitations, newest first, leaving out those from users they blocked.
pub async fn invitations_of(pool: &Pool, user: UserId) -> Result<Vec<Invitation>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT i.conv_id, coalesce(c.title, ''), i.inviter, i.created_ms
             FROM group_invitations i JOIN conversations c ON c.id = i.conv_id
             WHERE i.user_id = $1
               AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.user_id = $1 AND b.blocked_id = i.inviter)
             ORDER BY i.created_ms DESC, i.conv_id DESC LIMIT 500",
        )
        .await?;
    client
        .query(&statement, &[&user])
        .await?
        .iter()
        .map(|row| {
            Ok(Invitation {
                group: row.try_get(0)?,
                title: row.try_get(1)?,
                from: row.try_get(2)?,
                created_ms: row.try_get(3)?,
            })
        })
        .collect()
}

/// Removes `user`'s visible invitation to `conv`; returns the inviter if there was one.
async fn take_invitation<C: GenericClient>(
    client: &C,
    conv: ConvId,
    user: UserId,
) -> Result<Option<UserId>, StoreError> {
    let statement = client
        .prepare_cached(
            "DELETE FROM group_invitations i WHERE i.conv_id = $1 AND i.user_id = $2
               AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.user_id = $2 AND b.blocked_id = i.inviter)
             RETURNING i.inviter",
        )
        .await?;
    match client.query_opt(&statement, &[&conv, &user]).await? {
        Some(row) => Ok(Some(row.try_get(0)?)),
        None => Ok(None),
    }
}

/// Outcome of accepting an invitation.
pub enum AcceptOutcome {
    /// The user joined; every member now, the new one included.
    Joined(Vec<UserId>),
    NoInvitation,
    /// Joining would pass the member cap; nothing changed (the invitation stands).
    Full,
}

/// `user` accepts their invitation to `conv` and joins it, unless that would make more than `cap` members. One
/// transaction under the group's row lock.
pub async fn accept(
    pool: &Pool,
    conv: ConvId,
    user: UserId,
    cap: i64,
) -> Result<AcceptOutcome, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    lock_conversation(&tx, conv).await?;
    if take_invitation(&tx, conv, user).await?.is_none() {
        return Ok(AcceptOutcome::NoInvitation);
    }
    let join = tx
        .prepare_cached(
            "INSERT INTO conversation_members (conv_id, user_id, role) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&join, &[&conv, &user]).await?;
    let all = member_ids(&tx, conv).await?;
    if all.len() as i64 > cap {
        return Ok(AcceptOutcome::Full);
    }
    tx.commit().await?;
    Ok(AcceptOutcome::Joined(all))
}

/// `user` declines their invitation to `conv`; `false` if there was none.
pub async fn decline(pool: &Pool, conv: ConvId, user: UserId) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    Ok(take_invitation(&client, conv, user).await?.is_some())
}
