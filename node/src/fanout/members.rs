//! Cached member lists of conversations, for routing and for authorising frames.
//!
//! The lists are read from Postgres (`storage::members`) on first use and dropped when any node changes a
//! membership (it broadcasts `ConvChanged`). A stale list can only affect pushes, never storage: the writer checks
//! membership again inside its transaction, and a member added a moment ago still finds every message through
//! `sync`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use common::ids::{ConvId, UserId};
use deadpool_postgres::Pool;

use crate::storage::{self, StoreError};

/// Most cached conversations before the cache is emptied (a crude but bounded policy).
const CAPACITY: usize = 100_000;

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

pub struct MemberCache {
    pool: Pool,
    cached: Mutex<HashMap<ConvId, Arc<Members>>>,
}

impl MemberCache {
    pub fn new(pool: Pool) -> Self {
        MemberCache {
            pool,
            cached: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConvId, Arc<Members>>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The members of `conv`; `None` if the conversation does not exist.
    pub async fn get(&self, conv: ConvId) -> Result<Option<Arc<Members>>, StoreError> {
        if let Some(members) = self.lock().get(&conv) {
            return Ok(Some(members.clone()));
        }
        let Some(found) = storage::members::conversation_members(&self.pool, conv).await? else {
            return Ok(None);
        };
        let members = Arc::new(Members::new(found.kind, found.users));
        let mut cached = self.lock();
        if cached.len() >= CAPACITY {
            cached.clear();
        }
        cached.insert(conv, members.clone());
        Ok(Some(members))
    }

    pub fn invalidate(&self, conv: ConvId) {
        self.lock().remove(&conv);
    }
}
