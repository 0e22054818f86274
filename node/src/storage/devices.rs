//! The `devices` table: where each user is logged in. A row per (user, device id), written when the device
//! connects (with its platform and the login — token — it used) and touched when it disconnects; the user's choice
//! about "one session per platform" is the `users.one_session_per_platform` column.
//!
//! Deciding whether a platform allows one session is the caller's (it passes `decide`); this file stores and
//! returns rows. Rows of expired tokens are dropped when the list is read.

use common::ids::UserId;
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::StoreError;

/// One device of a user, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub device: String,
    pub platform: String,
    /// The id (hex) of the token the device last connected with.
    pub token_id: String,
    pub token_issued_ms: i64,
    /// Unix seconds.
    pub token_expires: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

const COLUMNS: &str =
    "device, platform, token_id, token_issued_ms, token_expires, first_seen_ms, last_seen_ms";

impl DeviceRow {
    fn from_row(row: &Row) -> Result<DeviceRow, StoreError> {
        Ok(DeviceRow {
            device: row.try_get(0)?,
            platform: row.try_get(1)?,
            token_id: row.try_get(2)?,
            token_issued_ms: row.try_get(3)?,
            token_expires: row.try_get(4)?,
            first_seen_ms: row.try_get(5)?,
            last_seen_ms: row.try_get(6)?,
        })
    }
}

/// A device that just connected.
#[derive(Debug, Clone)]
pub struct Connected<'a> {
    pub user: UserId,
    pub device: &'a str,
    pub platform: &'a str,
    pub token_id: &'a str,
    pub token_issued_ms: i64,
    pub token_expires: i64,
    pub now_ms: i64,
}

/// Records a connection. `decide` gets the user's own policy choice (`None`: the server's) and says whether this
/// platform keeps one session; if so, the user's other devices of the same platform logged in with another token
/// are removed and returned (the caller moves them out). One transaction, under the user's row lock, so two
/// devices connecting at once cannot both stay.
pub async fn connected(
    pool: &Pool,
    device: &Connected<'_>,
    decide: impl FnOnce(Option<bool>) -> bool,
) -> Result<Vec<DeviceRow>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Prepared once per pooled connection: this runs on every WebSocket connect.
    let lock = tx
        .prepare_cached(
            "SELECT one_session_per_platform FROM users WHERE id = $1 FOR NO KEY UPDATE",
        )
        .await?;
    let record = tx
        .prepare_cached(
            "INSERT INTO devices (user_id, device, platform, token_id, token_issued_ms, token_expires, first_seen_ms, \
             last_seen_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (user_id, device) DO UPDATE SET platform = EXCLUDED.platform, token_id = EXCLUDED.token_id, \
             token_issued_ms = EXCLUDED.token_issued_ms, token_expires = EXCLUDED.token_expires, \
             last_seen_ms = EXCLUDED.last_seen_ms",
        )
        .await?;
    let choice: Option<bool> = match tx.query_opt(&lock, &[&device.user]).await? {
        Some(row) => row.try_get(0)?,
        None => return Err(StoreError::Invalid(format!("no user {}", device.user))),
    };
    tx.execute(
        &record,
        &[
            &device.user,
            &device.device,
            &device.platform,
            &device.token_id,
            &device.token_issued_ms,
            &device.token_expires,
            &device.now_ms,
        ],
    )
    .await?;
    let mut moved_out = Vec::new();
    if decide(choice) {
        let sql = format!(
            "DELETE FROM devices WHERE user_id = $1 AND platform = $2 AND token_id <> $3 RETURNING {COLUMNS}"
        );
        for row in tx
            .query(&sql, &[&device.user, &device.platform, &device.token_id])
            .await?
        {
            moved_out.push(DeviceRow::from_row(&row)?);
        }
    }
    tx.commit().await?;
    Ok(moved_out)
}

/// Notes that a device was seen now (it disconnected).
pub async fn touch(pool: &Pool, user: UserId, device: &str, now_ms: i64) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE devices SET last_seen_ms = GREATEST(last_seen_ms, $3) WHERE user_id = $1 AND device = $2",
        )
        .await?;
    client
        .execute(&statement, &[&user, &device, &now_ms])
        .await?;
    Ok(())
}

/// The user's devices whose login has not expired, most recently seen first (expired ones are deleted).
pub async fn list(pool: &Pool, user: UserId, now_secs: i64) -> Result<Vec<DeviceRow>, StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "DELETE FROM devices WHERE user_id = $1 AND token_expires < $2",
            &[&user, &now_secs],
        )
        .await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM devices WHERE user_id = $1 ORDER BY last_seen_ms DESC, device LIMIT 500"
    );
    client
        .query(&sql, &[&user])
        .await?
        .iter()
        .map(DeviceRow::from_row)
        .collect()
}

/// Removes `device` and every other device logged in with the same token (one login: the tabs of one browser);
/// returns the removed rows (empty if the user has no such device).
pub async fn remove_login_of(
    pool: &Pool,
    user: UserId,
    device: &str,
) -> Result<Vec<DeviceRow>, StoreError> {
    let client = pool.get().await?;
    let sql = format!(
        "DELETE FROM devices WHERE user_id = $1 AND token_id = \
         (SELECT token_id FROM devices WHERE user_id = $1 AND device = $2) RETURNING {COLUMNS}"
    );
    client
        .query(&sql, &[&user, &device])
        .await?
        .iter()
        .map(DeviceRow::from_row)
        .collect()
}

/// Forgets the devices of a revoked token (`Some`), or of every token issued up to `not_before_ms` (logout-all).
pub async fn forget_revoked(
    pool: &Pool,
    user: UserId,
    token_id: Option<&str>,
    not_before_ms: Option<i64>,
) -> Result<(), StoreError> {
    let client = pool.get().await?;
    if let Some(token_id) = token_id {
        client
            .execute(
                "DELETE FROM devices WHERE user_id = $1 AND token_id = $2",
                &[&user, &token_id],
            )
            .await?;
    }
    if let Some(not_before_ms) = not_before_ms {
        client
            .execute(
                "DELETE FROM devices WHERE user_id = $1 AND token_issued_ms <= $2",
                &[&user, &not_before_ms],
            )
            .await?;
    }
    Ok(())
}

/// The user's own "one session per platform" choice (`None`: the server's setting).
pub async fn policy(pool: &Pool, user: UserId) -> Result<Option<bool>, StoreError> {
    let client = pool.get().await?;
    match client
        .query_opt(
            "SELECT one_session_per_platform FROM users WHERE id = $1",
            &[&user],
        )
        .await?
    {
        Some(row) => Ok(row.try_get(0)?),
        None => Ok(None),
    }
}

/// Sets the user's own choice (`None`: follow the server's setting).
pub async fn set_policy(pool: &Pool, user: UserId, choice: Option<bool>) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE users SET one_session_per_platform = $2 WHERE id = $1",
            &[&user, &choice],
        )
        .await?;
    Ok(())
}
