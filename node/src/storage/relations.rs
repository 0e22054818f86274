//! The relationship facts the chat policy decides on, read from Postgres: a 1:1 pair's friendship and blocks, a
//! user's access to a conversation, why the writer refused a message, and who of a list may be added to a group
//! directly.
//!
//! These are the database's answers; `chat::policy` makes the decisions and caches what it may. Nothing here
//! caches.

use common::ids::{ConvId, UserId};
use deadpool_postgres::GenericClient;
use deadpool_postgres::Pool;

use common::ErrorCode;

use super::queries::KIND_DIRECT;
use super::StoreError;
use crate::error::Refusal;

/// Whether a 1:1 message between two users is allowed, as the database says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairPolicy {
    Allowed,
    NotFriends,
    Blocked,
}

impl PairPolicy {
    /// How a refused pair is answered; `None` if allowed.
    pub fn refusal(self) -> Option<Refusal> {
        match self {
            PairPolicy::Allowed => None,
            PairPolicy::Blocked => Some(Refusal::new(
                ErrorCode::Blocked,
                "messages between you are blocked",
            )),
            PairPolicy::NotFriends => Some(Refusal::new(
                ErrorCode::NotFriends,
                "you are not friends with this user",
            )),
        }
    }

    /// The pair rule: a block either way refuses; otherwise friends (or oneself) may, and strangers may only when
    /// the server does not require friendship.
    pub fn decide(blocked: bool, friends: bool, require_friendship: bool) -> PairPolicy {
        if blocked {
            PairPolicy::Blocked
        } else if friends || !require_friendship {
            PairPolicy::Allowed
        } else {
            PairPolicy::NotFriends
        }
    }
}

/// The SQL condition "a block stands between `lo` and `hi`" (either direction).
macro_rules! blocked_between {
    ($lo:literal, $hi:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM blocks b WHERE (b.user_id = ",
            $lo,
            " AND b.blocked_id = ",
            $hi,
            ") OR (b.user_id = ",
            $hi,
            " AND b.blocked_id = ",
            $lo,
            "))"
        )
    };
}
pub(crate) use blocked_between;

/// The pair policy of `a` and `b` now.
pub async fn pair_policy(
    pool: &Pool,
    a: UserId,
    b: UserId,
    require_friendship: bool,
) -> Result<PairPolicy, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(concat!(
            "SELECT $1 <> $2 AND ",
            blocked_between!("$1", "$2"),
            ", $1 = $2 OR EXISTS (SELECT 1 FROM friendships f WHERE f.user_id = $1 AND f.friend_id = $2)"
        ))
        .await?;
    let row = client.query_one(&statement, &[&a, &b]).await?;
    Ok(PairPolicy::decide(
        row.try_get(0)?,
        row.try_get(1)?,
        require_friendship,
    ))
}

/// A user's standing in a conversation, as the database says now.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub kind: i16,
    pub member: bool,
    /// For a 1:1 conversation: the other user (the user themself in a note-to-self) and the pair's policy.
    pub direct: Option<(UserId, PairPolicy)>,
}

/// `user`'s access to `conv`; `None` if the conversation does not exist.
pub async fn conversation_access(
    pool: &Pool,
    user: UserId,
    conv: ConvId,
    require_friendship: bool,
) -> Result<Option<Access>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(concat!(
            "SELECT c.kind,
                    EXISTS (SELECT 1 FROM conversation_members m WHERE m.conv_id = c.id AND m.user_id = $2),
                    CASE WHEN c.direct_low = $2 THEN c.direct_high ELSE c.direct_low END,
                    c.direct_low <> c.direct_high AND ",
            blocked_between!("c.direct_low", "c.direct_high"),
            ",
                    c.direct_low = c.direct_high
                      OR EXISTS (SELECT 1 FROM friendships f WHERE f.user_id = c.direct_low AND f.friend_id = c.direct_high)
             FROM conversations c WHERE c.id = $1"
        ))
        .await?;
    let Some(row) = client.query_opt(&statement, &[&conv, &user]).await? else {
        return Ok(None);
    };
    let kind: i16 = row.try_get(0)?;
    let direct = if kind == KIND_DIRECT {
        let peer: Option<UserId> = row.try_get(2)?;
        let blocked: Option<bool> = row.try_get(3)?;
        let friends: Option<bool> = row.try_get(4)?;
        peer.map(|peer| {
            (
                peer,
                PairPolicy::decide(
                    blocked.unwrap_or(false),
                    friends.unwrap_or(false),
                    require_friendship,
                ),
            )
        })
    } else {
        None
    };
    Ok(Some(Access {
        kind,
        member: row.try_get(1)?,
        direct,
    }))
}

/// Why the writer's commit refused a message into a conversation: for each `(conv, sender)`, whether the sender
/// is a member and, for a 1:1 conversation, the pair's policy. Read only when a batch had refusals.
pub async fn refusal_facts<C: GenericClient>(
    client: &C,
    convs: &[ConvId],
    senders: &[UserId],
    require_friendship: bool,
) -> Result<Vec<(ConvId, UserId, bool, Option<(UserId, UserId, PairPolicy)>)>, StoreError> {
    let statement = client
        .prepare_cached(concat!(
            "SELECT v.c, v.u,
                    EXISTS (SELECT 1 FROM conversation_members m WHERE m.conv_id = v.c AND m.user_id = v.u),
                    c.kind, c.direct_low, c.direct_high,
                    c.direct_low <> c.direct_high AND ",
            blocked_between!("c.direct_low", "c.direct_high"),
            ",
                    c.direct_low = c.direct_high
                      OR EXISTS (SELECT 1 FROM friendships f WHERE f.user_id = c.direct_low AND f.friend_id = c.direct_high)
             FROM unnest($1::bigint[], $2::bigint[]) AS v(c, u) LEFT JOIN conversations c ON c.id = v.c"
        ))
        .await?;
    let mut facts = Vec::new();
    for row in client.query(&statement, &[&convs, &senders]).await? {
        let kind: Option<i16> = row.try_get(3)?;
        let direct = match (kind, row.try_get(4)?, row.try_get(5)?) {
            (Some(KIND_DIRECT), Some(low), Some(high)) => {
                let blocked: Option<bool> = row.try_get(6)?;
                let friends: Option<bool> = row.try_get(7)?;
                Some((
                    low,
                    high,
                    PairPolicy::decide(
                        blocked.unwrap_or(false),
                        friends.unwrap_or(false),
                        require_friendship,
                    ),
                ))
            }
            _ => None,
        };
        facts.push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, direct));
    }
    Ok(facts)
}

/// Who of `users` `actor` may add to a group directly and who gets an invitation instead; `None` if one of them
/// does not exist. With `consent` (the default), only friends with no block either way are added directly; without
/// it, anyone with no block either way.
pub(super) async fn split_direct_adds<C: GenericClient>(
    client: &C,
    actor: UserId,
    users: &[UserId],
    consent: bool,
) -> Result<Option<(Vec<UserId>, Vec<UserId>)>, StoreError> {
    let statement = client
        .prepare_cached(concat!(
            "SELECT v.u, EXISTS (SELECT 1 FROM users x WHERE x.id = v.u),
                    (NOT $3 OR EXISTS (SELECT 1 FROM friendships f WHERE f.user_id = $1 AND f.friend_id = v.u))
                      AND NOT ",
            blocked_between!("$1", "v.u"),
            "
             FROM unnest($2::bigint[]) AS v(u)"
        ))
        .await?;
    let (mut direct, mut invited) = (Vec::new(), Vec::new());
    for row in client
        .query(&statement, &[&actor, &users, &consent])
        .await?
    {
        let user: UserId = row.try_get(0)?;
        if !row.try_get::<_, bool>(1)? {
            return Ok(None);
        }
        if row.try_get::<_, bool>(2)? {
            direct.push(user);
        } else {
            invited.push(user);
        }
    }
    Ok(Some((direct, invited)))
}
