//! The location registry: hash `im:loc:{user}`, field = device id, value = node id.
//!
//! A location is only trusted while its node's lease is live (`lease::live_nodes`); entries of dead nodes are
//! skipped by readers and deleted lazily. Removal is conditional (only while the entry still names the remover),
//! so a device that reconnected to another node is never unregistered by its old node's late cleanup.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ids::UserId;
use fred::prelude::*;
use tokio::sync::RwLock;

use crate::RouterError;

/// Sets the device's node and returns the node it pointed at before ("" if none).
const REGISTER: &str = r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if old then return old end
return ''
"#;

/// Deletes the device's entry only if it still names this node.
const UNREGISTER: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"#;

fn key(user: UserId) -> String {
    format!("im:loc:{user}")
}

/// One connected device somewhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLocation {
    pub device: String,
    pub node: String,
}

/// Reads and writes device locations; caches the live-node set for `live_cache_ttl`.
#[derive(Clone)]
pub struct LocationRegistry {
    client: Client,
    live_cache_ttl: Duration,
    live: Arc<RwLock<(Instant, HashSet<String>)>>,
}

impl LocationRegistry {
    pub fn new(client: Client, live_cache_ttl: Duration) -> Self {
        let stale = Instant::now()
            .checked_sub(live_cache_ttl * 2)
            .unwrap_or_else(Instant::now);
        LocationRegistry {
            client,
            live_cache_ttl,
            live: Arc::new(RwLock::new((stale, HashSet::new()))),
        }
    }

    /// Registers `device` of `user` on `node`; returns the node it was registered on before, if any and different.
    pub async fn register(
        &self,
        user: UserId,
        device: &str,
        node: &str,
    ) -> Result<Option<String>, RouterError> {
        let old: String = self
            .client
            .eval(REGISTER, vec![key(user)], vec![device, node])
            .await?;
        Ok((!old.is_empty() && old != node).then_some(old))
    }

    /// Removes the entry if it still points at `node`; returns whether it did.
    pub async fn unregister(
        &self,
        user: UserId,
        device: &str,
        node: &str,
    ) -> Result<bool, RouterError> {
        let removed: i64 = self
            .client
            .eval(UNREGISTER, vec![key(user)], vec![device, node])
            .await?;
        Ok(removed == 1)
    }

    /// The live nodes, from a cache refreshed at most every `live_cache_ttl`.
    pub async fn live_nodes(&self) -> Result<HashSet<String>, RouterError> {
        {
            let cached = self.live.read().await;
            if cached.0.elapsed() < self.live_cache_ttl {
                return Ok(cached.1.clone());
            }
        }
        self.refresh_live_nodes().await
    }

    /// Reads the live-node set from Redis now and caches it.
    pub async fn refresh_live_nodes(&self) -> Result<HashSet<String>, RouterError> {
        let fresh = crate::lease::live_nodes(&self.client).await?;
        *self.live.write().await = (Instant::now(), fresh.clone());
        Ok(fresh)
    }

    /// Looks up every device of every user in one pipeline, skipping (and lazily deleting) entries of dead nodes.
    pub async fn lookup(
        &self,
        users: &[UserId],
    ) -> Result<HashMap<UserId, Vec<DeviceLocation>>, RouterError> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let mut live = self.live_nodes().await?;
        // Concurrent commands: fred pipelines them on each connection, and on a Redis Cluster each goes to the
        // shard that owns its key (an explicit pipeline would assume one connection).
        let lookups = users.iter().map(|user| {
            self.client
                .hgetall::<HashMap<String, String>, _>(key(*user))
        });
        let results: Vec<HashMap<String, String>> = futures::future::join_all(lookups)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        // A node missing from the cached set may have started after the cache was filled: ask again before
        // treating it as dead, or a new node's devices would miss pushes (and lose their entries) for a while.
        if results
            .iter()
            .flat_map(|devices| devices.values())
            .any(|node| !live.contains(node))
        {
            live = self.refresh_live_nodes().await?;
        }
        let mut found = HashMap::with_capacity(users.len());
        for (user, devices) in users.iter().zip(results) {
            let mut located = Vec::with_capacity(devices.len());
            for (device, node) in devices {
                if live.contains(&node) {
                    located.push(DeviceLocation { device, node });
                } else {
                    // Best effort: a failed cleanup only leaves an entry the next reader skips again.
                    let client = self.client.clone();
                    let user = *user;
                    tokio::spawn(async move {
                        let _: Result<i64, _> = client
                            .eval(UNREGISTER, vec![key(user)], vec![device, node])
                            .await;
                    });
                }
            }
            found.insert(*user, located);
        }
        Ok(found)
    }
}
