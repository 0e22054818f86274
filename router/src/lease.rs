//! Node leases: the sorted set `im:nodes`, member = node id, score = lease expiry in Redis' clock (ms).
//!
//! Using Redis' `TIME` inside the scripts means no node's clock matters: a paused node cannot think its lease is
//! still valid because its own clock says so, it learns the truth on its next refresh.

use std::collections::HashSet;
use std::time::Duration;

use fred::prelude::*;

use crate::RouterError;

pub(crate) const NODES_KEY: &str = "im:nodes";

/// Refreshes the lease and reports whether it had lapsed (1 = the member was absent or expired). Expired members of
/// other nodes are swept on the way.
const REFRESH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local lapsed = 0
if (not score) or tonumber(score) < now then lapsed = 1 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return lapsed
"#;

/// Lists the nodes whose lease has not expired.
const LIVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"#;

/// One node's lease.
#[derive(Clone)]
pub struct NodeLease {
    client: Client,
    node_id: String,
    ttl: Duration,
}

/// What a refresh found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// The lease was still held and has been extended.
    Held,
    /// The lease had expired or vanished (node paused past its TTL, Redis restarted or lost data). It is held again
    /// now, but the node's registrations may be gone and others may have treated it as dead.
    Reacquired,
}

impl NodeLease {
    pub fn new(client: Client, node_id: String, ttl: Duration) -> Self {
        NodeLease {
            client,
            node_id,
            ttl,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Extends the lease by its TTL from Redis' now.
    pub async fn refresh(&self) -> Result<LeaseState, RouterError> {
        let ttl_ms = self.ttl.as_millis().to_string();
        let lapsed: i64 = self
            .client
            .eval(
                REFRESH,
                vec![NODES_KEY],
                vec![self.node_id.as_str(), ttl_ms.as_str()],
            )
            .await?;
        Ok(if lapsed == 1 {
            LeaseState::Reacquired
        } else {
            LeaseState::Held
        })
    }

    /// Drops the lease at once (graceful shutdown), so others stop routing here without waiting for the TTL.
    pub async fn release(&self) -> Result<(), RouterError> {
        let _: i64 = self.client.zrem(NODES_KEY, self.node_id.as_str()).await?;
        Ok(())
    }
}

/// Reads the set of live nodes.
pub async fn live_nodes(client: &Client) -> Result<HashSet<String>, RouterError> {
    let nodes: Vec<String> = client
        .eval(LIVE, vec![NODES_KEY], Vec::<String>::new())
        .await?;
    Ok(nodes.into_iter().collect())
}
