//! Cached member lists of conversations, for routing and for authorising frames.
//!
//! The lists are read from Postgres (`storage::members`) on first use and dropped when any node changes a
//! membership (it broadcasts `ConvChanged`), when this node's bus subscription was interrupted or overflowed (an
//! invalidation may have been lost: everything is dropped), and after `TTL` at the latest. A load that raced with an
//! invalidation is not kept (an epoch counts invalidations). A stale list can only affect pushes for a moment, never
//! storage or who may read: the writer checks membership inside its transaction, and `sync` and history check it in
//! the query that reads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ids::{ConvId, UserId};
use deadpool_postgres::Pool;

use crate::storage::{self, StoreError};

/// Most cached conversations before the cache is emptied (a crude but bounded policy).
const CAPACITY: usize = 100_000;
/// The longest a list is used without being read again (the backstop for a lost invalidation).
const TTL: Duration = Duration::from_secs(30);

/// The members of one conversation.
#[derive(Debug)]
pub struct Members {
    /// 1 = direct, 2 = group.
    pub kind: i16,
    pub users: Arc<[UserId]>,
    set: HashSet<UserId>,
}

impl Members {
    pub fn new(kind: i16, users: Vec<UserId>) -> Self {
        let set = users.iter().copied().collect();
        Members {
            kind,
            users: users.into(),
            set,
        }
    }

    pub fn contains(&self, user: UserId) -> bool {
        self.set.contains(&user)
    }
}

type Entries = HashMap<ConvId, (Arc<Members>, Instant)>;

pub struct MemberCache {
    pool: Pool,
    cached: Mutex<Entries>,
    /// Bumped by every invalidation: a load that saw another epoch at its start is answered but not kept.
    epoch: AtomicU64,
}

impl MemberCache {
    pub fn new(pool: Pool) -> Self {
        MemberCache {
            pool,
            cached: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The members of `conv`; `None` if the conversation does not exist.
    pub async fn get(&self, conv: ConvId) -> Result<Option<Arc<Members>>, StoreError> {
        if let Some((members, loaded)) = self.lock().get(&conv) {
            if loaded.elapsed() < TTL {
                return Ok(Some(members.clone()));
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let Some(found) = storage::members::conversation_members(&self.pool, conv).await? else {
            return Ok(None);
        };
        let members = Arc::new(Members::new(found.kind, found.users));
        let mut cached = self.lock();
        if self.epoch.load(Ordering::Acquire) == epoch {
            if cached.len() >= CAPACITY {
                cached.clear();
            }
            cached.insert(conv, (members.clone(), Instant::now()));
        }
        Ok(Some(members))
    }

    pub fn invalidate(&self, conv: ConvId) {
        let mut cached = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        cached.remove(&conv);
    }

    /// Drops every list (invalidations may have been lost).
    pub fn clear(&self) {
        let mut cached = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        cached.clear();
    }
}
