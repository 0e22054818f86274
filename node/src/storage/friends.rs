//! Friend requests, friendships and blocks: the `friend_requests`, `friendships` and `blocks` tables.
//!
//! A friendship is stored as two rows (one per direction) and made in the same transaction that accepts its
//! request. What a block hides is part of the statements here: a request from someone the recipient has blocked is
//! stored, but never listed to them nor answerable by them. Telling the other side and dropping cached pair
//! decisions is the caller's job, after the change is committed; whether a pair may message each other is
//! `relations.rs`'s.

use common::ids::UserId;
use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;

use super::profiles::Profile;
use super::StoreError;

/// Where a friend request stands, in `friend_requests.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    Pending,
    Accepted,
    Rejected,
}

impl RequestStatus {
    fn from_db(status: i16) -> RequestStatus {
        match status {
            0 => RequestStatus::Pending,
            1 => RequestStatus::Accepted,
            _ => RequestStatus::Rejected,
        }
    }

    fn to_db(self) -> i16 {
        match self {
            RequestStatus::Pending => 0,
            RequestStatus::Accepted => 1,
            RequestStatus::Rejected => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Accepted => "accepted",
            RequestStatus::Rejected => "rejected",
        }
    }
}

/// What a would-be requester needs to know about the user they ask.
#[derive(Debug, Clone, Copy)]
pub struct RequestStanding {
    pub exists: bool,
    pub already_friends: bool,
    /// The asked user has blocked the requester: the request is stored but the asked user is never told.
    pub blocked_by_them: bool,
}

/// Where `from` stands with `to` for a new friend request.
pub async fn request_standing(
    pool: &Pool,
    from: UserId,
    to: UserId,
) -> Result<RequestStanding, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = $2),
                    EXISTS (SELECT 1 FROM friendships WHERE user_id = $1 AND friend_id = $2),
                    EXISTS (SELECT 1 FROM blocks WHERE user_id = $2 AND blocked_id = $1)",
        )
        .await?;
    let row = client.query_one(&statement, &[&from, &to]).await?;
    Ok(RequestStanding {
        exists: row.try_get(0)?,
        already_friends: row.try_get(1)?,
        blocked_by_them: row.try_get(2)?,
    })
}

/// Outcome of storing a friend request.
pub enum RequestOutcome {
    Created(i64),
    /// A request from `from` to `to` is already pending (at most one per ordered pair).
    AlreadyPending,
}

/// Stores a pending request from `from` to `to` with its note.
pub async fn insert_request(
    pool: &Pool,
    from: UserId,
    to: UserId,
    note: &str,
) -> Result<RequestOutcome, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "INSERT INTO friend_requests (from_user, to_user, note) VALUES ($1, $2, $3) RETURNING id",
        )
        .await?;
    match client.query_one(&statement, &[&from, &to, &note]).await {
        Ok(row) => Ok(RequestOutcome::Created(row.try_get(0)?)),
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Ok(RequestOutcome::AlreadyPending)
        }
        Err(error) => Err(error.into()),
    }
}

/// A friend request as its sender or recipient sees it.
#[derive(Debug, Clone)]
pub struct FriendRequest {
    pub id: i64,
    pub from: UserId,
    pub to: UserId,
    pub note: String,
    pub status: RequestStatus,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
}

/// Pending requests to `user` (leaving out those from users they blocked) and every request `user` sent, newest
/// first, at most 500.
pub async fn requests_of(pool: &Pool, user: UserId) -> Result<Vec<FriendRequest>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT id, from_user, to_user, note, status, extract(epoch from created_at)::bigint
             FROM friend_requests r
             WHERE (to_user = $1 AND status = 0
                    AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.user_id = $1 AND b.blocked_id = r.from_user))
                OR from_user = $1
             ORDER BY id DESC LIMIT 500",
        )
        .await?;
    client
        .query(&statement, &[&user])
        .await?
        .iter()
        .map(|row| {
            Ok(FriendRequest {
                id: row.try_get(0)?,
                from: row.try_get(1)?,
                to: row.try_get(2)?,
                note: row.try_get(3)?,
                status: RequestStatus::from_db(row.try_get(4)?),
                created_at: row.try_get(5)?,
            })
        })
        .collect()
}

/// Accepts or rejects request `id`, if it is pending, addressed to `recipient` and not from someone they blocked;
/// accepting makes the friendship in the same transaction. Returns the requester, or `None` if there was no such
/// request.
pub async fn answer_request(
    pool: &Pool,
    id: i64,
    recipient: UserId,
    accept: bool,
) -> Result<Option<UserId>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let status = if accept {
        RequestStatus::Accepted
    } else {
        RequestStatus::Rejected
    };
    let decide = tx
        .prepare_cached(
            "UPDATE friend_requests SET status = $3, decided_at = now()
             WHERE id = $1 AND to_user = $2 AND status = 0
               AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.user_id = $2 AND b.blocked_id = friend_requests.from_user)
             RETURNING from_user",
        )
        .await?;
    let Some(row) = tx
        .query_opt(&decide, &[&id, &recipient, &status.to_db()])
        .await?
    else {
        return Ok(None);
    };
    let from: UserId = row.try_get(0)?;
    if accept {
        let befriend = tx
            .prepare_cached(
                "INSERT INTO friendships (user_id, friend_id) VALUES ($1, $2), ($2, $1) ON CONFLICT DO NOTHING",
            )
            .await?;
        tx.execute(&befriend, &[&recipient, &from]).await?;
    }
    tx.commit().await?;
    Ok(Some(from))
}

/// The user's friends (ids only).
pub async fn friends_of(pool: &Pool, user: UserId) -> Result<Vec<UserId>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT friend_id FROM friendships WHERE user_id = $1")
        .await?;
    super::first_column(&client.query(&statement, &[&user]).await?)
}

/// The user's friends with their profiles, by username.
pub async fn friend_profiles(pool: &Pool, user: UserId) -> Result<Vec<Profile>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT u.id, u.username, u.display_name, u.avatar FROM friendships f JOIN users u ON u.id = f.friend_id
             WHERE f.user_id = $1 ORDER BY u.username",
        )
        .await?;
    client
        .query(&statement, &[&user])
        .await?
        .iter()
        .map(Profile::from_row)
        .collect()
}

/// Ends the friendship of `a` and `b` (both directions); `false` if they were not friends.
pub async fn remove_friendship(pool: &Pool, a: UserId, b: UserId) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "DELETE FROM friendships WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)",
        )
        .await?;
    Ok(client.execute(&statement, &[&a, &b]).await? > 0)
}

/// Outcome of a block.
pub enum BlockOutcome {
    /// Blocked now (or already).
    Blocked,
    UnknownUser,
}

/// `user` blocks `other`.
pub async fn block(pool: &Pool, user: UserId, other: UserId) -> Result<BlockOutcome, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "INSERT INTO blocks (user_id, blocked_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .await?;
    match client.execute(&statement, &[&user, &other]).await {
        Ok(_) => Ok(BlockOutcome::Blocked),
        Err(error) if error.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
            Ok(BlockOutcome::UnknownUser)
        }
        Err(error) => Err(error.into()),
    }
}

/// `user` lifts their block of `other` (if there was one).
pub async fn unblock(pool: &Pool, user: UserId, other: UserId) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("DELETE FROM blocks WHERE user_id = $1 AND blocked_id = $2")
        .await?;
    client.execute(&statement, &[&user, &other]).await?;
    Ok(())
}

/// The users `user` has blocked, by id.
pub async fn blocked_by(pool: &Pool, user: UserId) -> Result<Vec<UserId>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT blocked_id FROM blocks WHERE user_id = $1 ORDER BY blocked_id")
        .await?;
    super::first_column(&client.query(&statement, &[&user]).await?)
}
