//! What Postgres knows about media: each medium's size, type and thumbnail flag (`media`), who uploaded it
//! (`media_uploads`), and who may use it.
//!
//! The bytes themselves are `media/`'s. A medium's row is written only after its bytes are stored, so a row always
//! names stored bytes; which conversation carried a medium (`conversation_media`) is recorded by the writer with
//! the message.

use common::ids::UserId;
use deadpool_postgres::{GenericClient, Pool};

use super::StoreError;

/// A stored medium's description.
#[derive(Debug, Clone)]
pub struct MediumInfo {
    pub size: i64,
    pub mime: String,
    pub has_thumb: bool,
}

/// The description of the medium `hash`, whoever uploaded it; `None` if no one has.
pub async fn medium_info(pool: &Pool, hash: &str) -> Result<Option<MediumInfo>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT size, mime, has_thumb FROM media WHERE hash = $1")
        .await?;
    let row = client.query_opt(&statement, &[&hash]).await?;
    row.map(|row| {
        Ok(MediumInfo {
            size: row.try_get(0)?,
            mime: row.try_get(1)?,
            has_thumb: row.try_get(2)?,
        })
    })
    .transpose()
}

async fn insert_upload<C: GenericClient>(
    client: &C,
    hash: &str,
    user: UserId,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO media_uploads (hash, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .await?;
    client.execute(&statement, &[&hash, &user]).await?;
    Ok(())
}

/// Records that `user` uploaded the already-described medium `hash` (so they may use it).
pub async fn record_upload(pool: &Pool, hash: &str, user: UserId) -> Result<(), StoreError> {
    let client = pool.get().await?;
    insert_upload(&client, hash, user).await
}

/// Describes a newly stored medium (a concurrent upload of the same bytes may have described it first; its
/// description stands) and records that `uploader` uploaded it.
pub async fn record_medium(
    pool: &Pool,
    hash: &str,
    info: &MediumInfo,
    uploader: UserId,
) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "INSERT INTO media (hash, size, mime, uploader, has_thumb) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
        )
        .await?;
    client
        .execute(
            &statement,
            &[&hash, &info.size, &info.mime, &uploader, &info.has_thumb],
        )
        .await?;
    insert_upload(&client, hash, uploader).await
}

/// Size and MIME type of a medium, if `user` may use it: they uploaded it, or it was sent in a conversation they
/// are a member of.
pub async fn accessible_media(
    pool: &Pool,
    hash: &str,
    user: UserId,
) -> Result<Option<(i64, String)>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT m.size, m.mime FROM media m WHERE m.hash = $1 AND (
                 EXISTS (SELECT 1 FROM media_uploads u WHERE u.hash = m.hash AND u.user_id = $2)
                 OR EXISTS (SELECT 1 FROM conversation_media cm JOIN conversation_members mm ON mm.conv_id = cm.conv_id
                            WHERE cm.hash = m.hash AND mm.user_id = $2))",
        )
        .await?;
    let row = client.query_opt(&statement, &[&hash, &user]).await?;
    row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
}

/// A stored medium as `node media import` walks them.
#[derive(Debug, Clone)]
pub struct ListedMedium {
    pub hash: String,
    pub size: i64,
    pub has_thumb: bool,
}

/// Up to `limit` media whose hash sorts after `after`, in hash order (a keyset page over every medium).
pub async fn media_after(
    pool: &Pool,
    after: &str,
    limit: i64,
) -> Result<Vec<ListedMedium>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT hash, size, has_thumb FROM media WHERE hash > $1 ORDER BY hash LIMIT $2",
        )
        .await?;
    let rows = client.query(&statement, &[&after, &limit]).await?;
    rows.iter()
        .map(|row| {
            Ok(ListedMedium {
                hash: row.try_get(0)?,
                size: row.try_get(1)?,
                has_thumb: row.try_get(2)?,
            })
        })
        .collect()
}
