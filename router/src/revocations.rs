//! Revoked session tokens, shared by every node: `im:revoked:{token id}` marks one revoked token and
//! `im:nbf:{user}` holds the user's "not before" (Unix ms): every token of that user issued at or before it is
//! revoked.
//!
//! Every key expires by itself: a revoked token's key lives as long as the token would have, a "not before" as
//! long as the longest-lived token it can revoke. Nothing here caches; the node keeps the cheap local view and
//! announces revocations on the bus.

use std::time::Duration;

use common::ids::UserId;
use fred::prelude::*;

use crate::RouterError;

/// Raises the "not before" (never lowers it: nodes' clocks may disagree) and extends its expiry.
const RAISE_NOT_BEFORE: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then current = wanted end
redis.call('SET', KEYS[1], tostring(current), 'PX', ARGV[2])
return current
"#;

fn revoked_key(token_id: &str) -> String {
    format!("im:revoked:{token_id}")
}

fn not_before_key(user: UserId) -> String {
    format!("im:nbf:{user}")
}

/// What Redis says about one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenStatus {
    /// The token itself was revoked.
    pub revoked: bool,
    /// The user's "not before" in Unix ms (0: none).
    pub not_before_ms: u64,
}

/// The Redis side of token revocation.
#[derive(Clone)]
pub struct RevocationStore {
    client: Client,
}

impl RevocationStore {
    pub fn new(client: Client) -> Self {
        RevocationStore { client }
    }

    /// Marks one token revoked for `remaining` (its remaining lifetime; at least a second).
    pub async fn revoke_token(
        &self,
        token_id: &str,
        remaining: Duration,
    ) -> Result<(), RouterError> {
        let millis = remaining.as_millis().max(1_000) as i64;
        let _: () = self
            .client
            .set(
                revoked_key(token_id),
                1,
                Some(Expiration::PX(millis)),
                None,
                false,
            )
            .await?;
        Ok(())
    }

    /// Revokes every token of `user` issued at or before `not_before_ms`; kept for `lifetime` (the token
    /// lifetime). Returns the effective "not before" (a later one set by another node wins).
    pub async fn revoke_user_before(
        &self,
        user: UserId,
        not_before_ms: u64,
        lifetime: Duration,
    ) -> Result<u64, RouterError> {
        let millis = lifetime.as_millis().max(1_000).to_string();
        let effective: i64 = self
            .client
            .eval(
                RAISE_NOT_BEFORE,
                vec![not_before_key(user)],
                vec![not_before_ms.to_string(), millis],
            )
            .await?;
        Ok(effective.max(0) as u64)
    }

    /// The status of many `(user, token id)` pairs, in order, in one pipelined round trip. Separate commands, not
    /// MGET: the keys live in different slots of a Redis Cluster.
    pub async fn status(
        &self,
        tokens: &[(UserId, String)],
    ) -> Result<Vec<TokenStatus>, RouterError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        for (user, token_id) in tokens {
            let _: () = pipeline.exists(revoked_key(token_id)).await?;
            let _: () = pipeline.get(not_before_key(*user)).await?;
        }
        let values: Vec<Value> = pipeline.all().await?;
        let mut statuses = Vec::with_capacity(tokens.len());
        for pair in values.chunks(2) {
            let revoked = pair.first().and_then(|v| v.as_i64()).is_some_and(|n| n > 0);
            let not_before_ms = pair.get(1).and_then(as_millis).unwrap_or(0);
            statuses.push(TokenStatus {
                revoked,
                not_before_ms,
            });
        }
        Ok(statuses)
    }
}

/// A stored number, whether the reply came as a string or as bytes.
fn as_millis(value: &Value) -> Option<u64> {
    match value {
        Value::Bytes(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        other => other.as_u64(),
    }
}
