//! Friends and blocks as they affect messaging: who may send a 1:1 message to whom, cached per pair.
//!
//! The cache is dropped for a pair whenever any node changes that pair's friendship or blocking (it broadcasts
//! `PairChanged`); entries also expire after 15 s as a backstop (pub/sub may lose an invalidation).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::ids::UserId;
use deadpool_postgres::Pool;

use crate::store::StoreError;

const TTL: Duration = Duration::from_secs(15);
const CAPACITY: usize = 200_000;

/// Whether a 1:1 message between two users is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairPolicy {
    Allowed,
    NotFriends,
    Blocked,
}

pub struct PairCache {
    pool: Pool,
    require_friendship: bool,
    cached: Mutex<HashMap<(UserId, UserId), (PairPolicy, Instant)>>,
}

fn key(a: UserId, b: UserId) -> (UserId, UserId) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl PairCache {
    pub fn new(pool: Pool, require_friendship: bool) -> Self {
        PairCache {
            pool,
            require_friendship,
            cached: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, UserId), (PairPolicy, Instant)>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May `from` send a 1:1 message to `to`? Messages to oneself are always allowed.
    pub async fn policy(&self, from: UserId, to: UserId) -> Result<PairPolicy, StoreError> {
        if from == to {
            return Ok(PairPolicy::Allowed);
        }
        if let Some((policy, at)) = self.lock().get(&key(from, to)) {
            if at.elapsed() < TTL {
                return Ok(*policy);
            }
        }
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM blocks WHERE (user_id = $1 AND blocked_id = $2) OR (user_id = $2 AND blocked_id = $1)),
                        EXISTS (SELECT 1 FROM friendships WHERE user_id = $1 AND friend_id = $2)",
            )
            .await?;
        let row = client.query_one(&statement, &[&from, &to]).await?;
        let blocked: bool = row.try_get(0)?;
        let friends: bool = row.try_get(1)?;
        let policy = if blocked {
            PairPolicy::Blocked
        } else if friends || !self.require_friendship {
            PairPolicy::Allowed
        } else {
            PairPolicy::NotFriends
        };
        let mut cached = self.lock();
        if cached.len() >= CAPACITY {
            cached.clear();
        }
        cached.insert(key(from, to), (policy, Instant::now()));
        Ok(policy)
    }

    pub fn invalidate(&self, a: UserId, b: UserId) {
        self.lock().remove(&key(a, b));
    }
}

/// The user's friends.
pub async fn friends_of(pool: &Pool, user: UserId) -> Result<Vec<UserId>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT friend_id FROM friendships WHERE user_id = $1")
        .await?;
    client
        .query(&statement, &[&user])
        .await?
        .iter()
        .map(|row| Ok(row.try_get(0)?))
        .collect()
}
