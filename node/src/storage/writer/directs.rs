//! Step 2 of a batch: the 1:1 sends the node has not routed before. One statement checks every pair's policy
//! (blocks, friendship, both users exist) and finds its conversation; one more creates the missing conversations of
//! the whole batch, so a first message costs no commit of its own.

use std::collections::HashMap;

use common::ids::{ConvId, UserId};
use common::ErrorCode;
use deadpool_postgres::Transaction;

use crate::error::Refusal;
use crate::storage::queries::KIND_DIRECT;
use crate::storage::relations::{blocked_between, PairPolicy};
use crate::storage::StoreError;

/// The conversations and refusals of a batch's unrouted 1:1 pairs, keyed by the pair in `(low, high)` order.
#[derive(Default)]
pub(super) struct Directs {
    pub conv: HashMap<(UserId, UserId), ConvId>,
    /// Conversations this batch created.
    pub created: usize,
    pub refused: HashMap<(UserId, UserId), Refusal>,
}

pub(super) async fn resolve_directs(
    tx: &Transaction<'_>,
    require_friendship: bool,
    wanted: Vec<(UserId, UserId)>,
) -> Result<Directs, StoreError> {
    let mut directs = Directs::default();
    if wanted.is_empty() {
        return Ok(directs);
    }
    let create = check_pairs(tx, require_friendship, &wanted, &mut directs).await?;
    if !create.is_empty() {
        create_conversations(tx, create, &mut directs).await?;
    }
    Ok(directs)
}

/// Decides every wanted pair; returns the allowed pairs that have no conversation yet.
async fn check_pairs(
    tx: &Transaction<'_>,
    require_friendship: bool,
    wanted: &[(UserId, UserId)],
    directs: &mut Directs,
) -> Result<Vec<(UserId, UserId)>, StoreError> {
    let (lows, highs): (Vec<UserId>, Vec<UserId>) = wanted.iter().copied().unzip();
    let check_stmt = tx
        .prepare_cached(concat!(
            "SELECT v.lo, v.hi,
                 EXISTS (SELECT 1 FROM users u WHERE u.id = v.lo) AND EXISTS (SELECT 1 FROM users u WHERE u.id = v.hi),
                 v.lo <> v.hi AND ",
            blocked_between!("v.lo", "v.hi"),
            ",
                 v.lo = v.hi OR EXISTS (SELECT 1 FROM friendships f WHERE f.user_id = v.lo AND f.friend_id = v.hi),
                 c.id
             FROM unnest($1::bigint[], $2::bigint[]) AS v(lo, hi)
             LEFT JOIN conversations c ON c.direct_low = v.lo AND c.direct_high = v.hi"
        ))
        .await?;
    let mut create = Vec::new();
    for row in tx.query(&check_stmt, &[&lows, &highs]).await? {
        let pair: (UserId, UserId) = (row.try_get(0)?, row.try_get(1)?);
        if !row.try_get::<_, bool>(2)? {
            directs.refused.insert(
                pair,
                Refusal::new(ErrorCode::UnknownUser, "the recipient does not exist"),
            );
            continue;
        }
        let policy = PairPolicy::decide(row.try_get(3)?, row.try_get(4)?, require_friendship);
        if let Some(refusal) = policy.refusal() {
            directs.refused.insert(pair, refusal);
            continue;
        }
        match row.try_get::<_, Option<ConvId>>(5)? {
            Some(conv) => {
                directs.conv.insert(pair, conv);
            }
            None => create.push(pair),
        }
    }
    Ok(create)
}

/// Creates the conversations (and member rows) of allowed pairs that have none; a pair created meanwhile by
/// another node's batch is read back instead.
async fn create_conversations(
    tx: &Transaction<'_>,
    mut create: Vec<(UserId, UserId)>,
    directs: &mut Directs,
) -> Result<(), StoreError> {
    // Inserted in pair order, so two batches creating overlapping pairs wait on each other in one order only.
    create.sort_unstable();
    let (lows, highs): (Vec<UserId>, Vec<UserId>) = create.iter().copied().unzip();
    let create_stmt = tx
        .prepare_cached(
            "WITH ins AS (
                 INSERT INTO conversations (kind, direct_low, direct_high)
                 SELECT $1, lo, hi FROM unnest($2::bigint[], $3::bigint[]) AS v(lo, hi) ORDER BY lo, hi
                 ON CONFLICT (direct_low, direct_high) DO NOTHING
                 RETURNING id, direct_low, direct_high
             ), joined AS (
                 INSERT INTO conversation_members (conv_id, user_id)
                 SELECT id, direct_low FROM ins UNION SELECT id, direct_high FROM ins
                 ON CONFLICT DO NOTHING
             )
             SELECT id, direct_low, direct_high FROM ins",
        )
        .await?;
    let mut found = HashMap::with_capacity(create.len());
    for row in tx
        .query(&create_stmt, &[&KIND_DIRECT, &lows, &highs])
        .await?
    {
        found.insert((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?);
    }
    directs.created = found.len();
    // A pair created meanwhile by another node's batch (committed while this one waited on it).
    let raced: Vec<(UserId, UserId)> = create
        .iter()
        .copied()
        .filter(|p| !found.contains_key(p))
        .collect();
    if !raced.is_empty() {
        let (lows, highs): (Vec<UserId>, Vec<UserId>) = raced.iter().copied().unzip();
        let raced_stmt = tx
            .prepare_cached(
                "SELECT c.id, c.direct_low, c.direct_high FROM conversations c
                 JOIN unnest($1::bigint[], $2::bigint[]) AS v(lo, hi)
                   ON c.direct_low = v.lo AND c.direct_high = v.hi",
            )
            .await?;
        for row in tx.query(&raced_stmt, &[&lows, &highs]).await? {
            found.insert((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?);
        }
    }
    for pair in create {
        let Some(&conv) = found.get(&pair) else {
            return Err(StoreError::Invalid(format!(
                "the conversation of {} and {} was neither created nor found",
                pair.0, pair.1
            )));
        };
        directs.conv.insert(pair, conv);
    }
    Ok(())
}
