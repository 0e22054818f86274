//! Friends and blocks as they affect messaging: who may send a 1:1 message to whom, and which conversation
//! carries it, cached per pair.
//!
//! The cache is filled by the writer, which checks a pair's policy and finds or creates its conversation inside the
//! batch that stores the pair's first message (no round trip of its own on the send path). A policy entry is
//! dropped whenever any node changes that pair's friendship or blocking (it broadcasts `PairChanged`) and expires
//! after 15 s as a backstop (pub/sub may lose an invalidation); a pair's conversation id never changes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::ids::{ConvId, UserId};
use deadpool_postgres::Pool;

use crate::store::StoreError;

const TTL: Duration = Duration::from_secs(15);
/// Most cached pairs before the cache is cleared (an entry is ~48 bytes).
const CAPACITY: usize = 200_000;

/// Whether a 1:1 message between two users is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairPolicy {
    Allowed,
    NotFriends,
    Blocked,
}

/// How a 1:1 send is routed, as far as the cache knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Allowed, into this conversation.
    Conversation(ConvId),
    /// Refused by the pair's policy.
    Refused(PairPolicy),
    /// Not cached (or stale): the writer checks and resolves it inside the batch.
    Unknown,
}

#[derive(Clone, Copy)]
struct Entry {
    policy: PairPolicy,
    checked: Instant,
    conv: Option<ConvId>,
}

pub struct PairCache {
    require_friendship: bool,
    cached: Mutex<HashMap<(UserId, UserId), Entry>>,
}

/// The pair in canonical order (low, high).
pub fn pair(a: UserId, b: UserId) -> (UserId, UserId) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl PairCache {
    pub fn new(require_friendship: bool) -> Self {
        PairCache {
            require_friendship,
            cached: Mutex::new(HashMap::new()),
        }
    }

    pub fn require_friendship(&self) -> bool {
        self.require_friendship
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, UserId), Entry>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached route of a 1:1 message from `from` to `to`.
    pub fn route(&self, from: UserId, to: UserId) -> Route {
        match self.lock().get(&pair(from, to)) {
            Some(entry) if entry.checked.elapsed() < TTL => match (entry.policy, entry.conv) {
                (PairPolicy::Allowed, Some(conv)) => Route::Conversation(conv),
                (PairPolicy::Allowed, None) => Route::Unknown,
                (refused, _) => Route::Refused(refused),
            },
            _ => Route::Unknown,
        }
    }

    /// Records what a committed batch found out about a pair.
    pub fn remember(&self, a: UserId, b: UserId, policy: PairPolicy, conv: Option<ConvId>) {
        let mut cached = self.lock();
        if cached.len() >= CAPACITY {
            cached.clear();
        }
        let known = cached.get(&pair(a, b)).and_then(|entry| entry.conv);
        cached.insert(
            pair(a, b),
            Entry {
                policy,
                checked: Instant::now(),
                conv: conv.or(known),
            },
        );
    }

    /// Forgets a pair (its friendship or blocking changed); the next send re-checks it in the writer's batch.
    pub fn invalidate(&self, a: UserId, b: UserId) {
        self.lock().remove(&pair(a, b));
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
