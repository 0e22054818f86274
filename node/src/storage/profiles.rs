//! Users' public profiles in the `users` table: read by id or exact username, and the caller's own update of
//! display name and avatar.
//!
//! Checking the new values (length, displayable characters, an avatar the user may use) is the caller's job; this
//! file only stores what it is given. Credentials are `queries.rs`'s.

use common::ids::UserId;
use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::Row;

use super::StoreError;

/// What anyone signed in may see of a user.
#[derive(Debug, Clone)]
pub struct Profile {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    /// SHA-256 of the avatar image, if one is set.
    pub avatar: Option<String>,
}

impl Profile {
    /// Reads `id, username, display_name, avatar` (in that order) from the start of `row`.
    pub(super) fn from_row(row: &Row) -> Result<Profile, StoreError> {
        Ok(Profile {
            id: row.try_get(0)?,
            username: row.try_get(1)?,
            display_name: row.try_get(2)?,
            avatar: row.try_get(3)?,
        })
    }
}

async fn one_profile<C: GenericClient>(
    client: &C,
    sql: &str,
    key: &(dyn tokio_postgres::types::ToSql + Sync),
) -> Result<Option<Profile>, StoreError> {
    let statement = client.prepare_cached(sql).await?;
    match client.query_opt(&statement, &[key]).await? {
        Some(row) => Ok(Some(Profile::from_row(&row)?)),
        None => Ok(None),
    }
}

/// `user`'s profile; `None` if there is no such user.
pub async fn profile(pool: &Pool, user: UserId) -> Result<Option<Profile>, StoreError> {
    let client = pool.get().await?;
    one_profile(
        &client,
        "SELECT id, username, display_name, avatar FROM users WHERE id = $1",
        &user,
    )
    .await
}

/// The profile of the user with exactly this username, if there is one.
pub async fn profile_by_username(
    pool: &Pool,
    username: &str,
) -> Result<Option<Profile>, StoreError> {
    let client = pool.get().await?;
    one_profile(
        &client,
        "SELECT id, username, display_name, avatar FROM users WHERE username = $1",
        &username,
    )
    .await
}

/// Sets `user`'s display name and avatar where given (`None` keeps the value); an empty avatar clears it.
pub async fn update_profile(
    pool: &Pool,
    user: UserId,
    display_name: Option<&str>,
    avatar: Option<&str>,
) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE users SET display_name = coalesce($2, display_name),
                 avatar = CASE WHEN $3::text IS NULL THEN avatar WHEN $3 = '' THEN NULL ELSE $3 END
             WHERE id = $1",
        )
        .await?;
    client
        .execute(&statement, &[&user, &display_name, &avatar])
        .await?;
    Ok(())
}
