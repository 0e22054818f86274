//! The 1:1 pairs recently found allowed to message each other, with the conversation that carries them.
//!
//! The cache is filled by the writer, which checks a pair's policy and finds or creates its conversation inside the
//! batch that stores the pair's first message (no round trip of its own on the send path). Only allowed pairs are
//! cached: a refusal is always decided on Postgres (`chat::policy`). An entry is dropped whenever any node changes
//! that pair's friendship or blocking (it broadcasts `PairChanged`) and expires after 15 s; a stale entry cannot
//! store anything, because the writer re-checks the pair in the commit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::ids::{ConvId, UserId};

const TTL: Duration = Duration::from_secs(15);
/// Most cached pairs before the cache is cleared (an entry is ~48 bytes).
const CAPACITY: usize = 200_000;

#[derive(Clone, Copy)]
struct Entry {
    checked: Instant,
    conv: ConvId,
}

pub struct PairCache {
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

impl Default for PairCache {
    fn default() -> Self {
        Self::new()
    }
}

impl PairCache {
    pub fn new() -> Self {
        PairCache {
            cached: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, UserId), Entry>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The conversation of a pair allowed to message each other when last checked (less than 15 s ago).
    pub fn route(&self, from: UserId, to: UserId) -> Option<ConvId> {
        match self.lock().get(&pair(from, to)) {
            Some(entry) if entry.checked.elapsed() < TTL => Some(entry.conv),
            _ => None,
        }
    }

    /// Records a pair a committed batch found allowed, with its conversation.
    pub fn remember(&self, a: UserId, b: UserId, conv: ConvId) {
        let mut cached = self.lock();
        if cached.len() >= CAPACITY {
            cached.clear();
        }
        cached.insert(
            pair(a, b),
            Entry {
                checked: Instant::now(),
                conv,
            },
        );
    }

    /// Forgets every pair (invalidations may have been lost).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Forgets a pair (its friendship or blocking changed); the next send re-checks it in the writer's batch.
    pub fn invalidate(&self, a: UserId, b: UserId) {
        self.lock().remove(&pair(a, b));
    }
}
