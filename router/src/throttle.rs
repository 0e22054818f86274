//! Cluster-wide counters of failed attempts, for throttling password guessing: `im:fail:{key}` counts failures
//! and expires a fixed window after the first one, so every node sees the same count and a counter never outlives
//! its window.

use std::time::Duration;

use fred::prelude::*;

use crate::RouterError;

/// Takes one attempt under a limit, atomically: counts it, and if that puts the count over the limit takes it back
/// and answers the count before it (the caller refuses). Returns the count including this attempt otherwise.
const RESERVE: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n > tonumber(ARGV[2]) then
  redis.call('DECR', KEYS[1])
  return -1
end
return n
"#;

/// Gives back an attempt taken by `reserve` that turned out not to be a failure.
const RELEASE: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"#;

fn key(name: &str) -> String {
    format!("im:fail:{name}")
}

/// Failure counters sharing one window.
#[derive(Clone)]
pub struct FailureCounters {
    client: Client,
    window: Duration,
}

impl FailureCounters {
    pub fn new(client: Client, window: Duration) -> Self {
        FailureCounters { client, window }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Takes one attempt under `name` if fewer than `limit` are counted in the window; `false` if the limit is
    /// reached (nothing is counted then). The check and the count are one script, so concurrent attempts cannot
    /// all pass a check made before any of them was counted: an attempt counts as a failure until it is released.
    pub async fn reserve(&self, name: &str, limit: i64) -> Result<bool, RouterError> {
        let window_ms = self.window.as_millis().to_string();
        let limit = limit.to_string();
        let taken: i64 = self
            .client
            .eval(
                RESERVE,
                vec![key(name)],
                vec![window_ms.as_str(), limit.as_str()],
            )
            .await?;
        Ok(taken > 0)
    }

    /// Gives back an attempt taken by `reserve` (the attempt did not fail).
    pub async fn release(&self, name: &str) -> Result<(), RouterError> {
        let _: i64 = self
            .client
            .eval(RELEASE, vec![key(name)], Vec::<String>::new())
            .await?;
        Ok(())
    }

    /// Forgets the failures under `name` (a successful login clears its user's count).
    pub async fn clear(&self, name: &str) -> Result<(), RouterError> {
        let _: i64 = self.client.del(key(name)).await?;
        Ok(())
    }
}
