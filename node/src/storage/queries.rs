//! Accounts and a session's reads: creating a user and reading their credentials, the conversation list of
//! `hello`, `sync` pages, and the `/readyz` probe; with the conversation kinds and the message row layout the
//! other storage files share.

use common::frame::{ConvState, Msg};
use common::ids::{ConvId, Seq, UserId};
use deadpool_postgres::Pool;

use super::StoreError;

/// `conversations.kind` of a 1:1 conversation (a note-to-self is one with the same user on both sides).
pub const KIND_DIRECT: i16 = 1;
/// `conversations.kind` of a group.
pub const KIND_GROUP: i16 = 2;

/// Outcome of creating a user.
pub enum NewUser {
    Created(UserId),
    NameTaken,
}

pub async fn create_user(
    pool: &Pool,
    username: &str,
    password_hash: &str,
) -> Result<NewUser, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "INSERT INTO users (username, password_hash) VALUES ($1, $2) ON CONFLICT (username) DO NOTHING RETURNING id",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&username, &password_hash])
        .await?;
    Ok(match row {
        Some(row) => NewUser::Created(row.try_get(0)?),
        None => NewUser::NameTaken,
    })
}

/// The user's id and password hash, if the name exists.
pub async fn user_credentials(
    pool: &Pool,
    username: &str,
) -> Result<Option<(UserId, String)>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT id, password_hash FROM users WHERE username = $1")
        .await?;
    let row = client.query_opt(&statement, &[&username]).await?;
    row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
}

/// The user's conversations, most recently active first.
pub async fn conversation_states(
    pool: &Pool,
    user: UserId,
    limit: i64,
) -> Result<Vec<ConvState>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT c.id, c.last_seq, m.read_seq, c.kind, c.direct_low, c.direct_high, c.title
             FROM conversation_members m JOIN conversations c ON c.id = m.conv_id
             WHERE m.user_id = $1 ORDER BY c.last_msg_ms DESC, c.id DESC LIMIT $2",
        )
        .await?;
    let rows = client.query(&statement, &[&user, &limit]).await?;
    let mut states = Vec::with_capacity(rows.len());
    for row in rows {
        let kind: i16 = row.try_get(3)?;
        let low: Option<UserId> = row.try_get(4)?;
        let high: Option<UserId> = row.try_get(5)?;
        let peer = match (kind, low, high) {
            (KIND_DIRECT, Some(low), Some(high)) => Some(if low == user { high } else { low }),
            _ => None,
        };
        let title: String = row.try_get(6)?;
        states.push(ConvState {
            conv: row.try_get(0)?,
            last_seq: row.try_get(1)?,
            read_seq: row.try_get(2)?,
            peer,
            title: (kind != KIND_DIRECT).then_some(title),
        });
    }
    Ok(states)
}

/// Outcome of a sync query.
pub enum SyncPage {
    Messages { msgs: Vec<Msg>, more: bool },
    NotMember,
}

/// Messages of `conv` after `after_seq`, oldest first, if `user` is a member.
pub async fn sync(
    pool: &Pool,
    user: UserId,
    conv: ConvId,
    after_seq: Seq,
    limit: u32,
) -> Result<SyncPage, StoreError> {
    let client = pool.get().await?;
    let member = client
        .prepare_cached("SELECT 1 FROM conversation_members WHERE conv_id = $1 AND user_id = $2")
        .await?;
    let page = client
        .prepare_cached(
            "SELECT id, seq, sender, cid, kind, body, created_ms, attrs::text, recalled FROM messages
             WHERE conv_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .await?;
    if client.query_opt(&member, &[&conv, &user]).await?.is_none() {
        return Ok(SyncPage::NotMember);
    }
    // One extra row tells whether there is more.
    let rows = client
        .query(&page, &[&conv, &after_seq, &(i64::from(limit) + 1)])
        .await?;
    let more = rows.len() > limit as usize;
    let mut msgs = Vec::with_capacity(rows.len().min(limit as usize));
    for row in rows.into_iter().take(limit as usize) {
        msgs.push(message_from_row(&row, conv)?);
    }
    Ok(SyncPage::Messages { msgs, more })
}

/// Builds a `Msg` from `id, seq, sender, cid, kind, body, created_ms, attrs::text, recalled`.
pub fn message_from_row(row: &tokio_postgres::Row, conv: ConvId) -> Result<Msg, StoreError> {
    let attrs: Option<String> = row.try_get(7)?;
    Ok(Msg {
        id: row.try_get(0)?,
        conv,
        seq: row.try_get(1)?,
        from: row.try_get(2)?,
        cid: row.try_get(3)?,
        kind: row.try_get(4)?,
        body: row.try_get(5)?,
        ts: row.try_get(6)?,
        attrs: attrs.and_then(|text| serde_json::from_str(&text).ok()),
        recalled: row.try_get(8)?,
    })
}

/// Cheap liveness probe for `/readyz`.
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}
