//! Cluster-wide counters of failed attempts, for throttling password guessing: `im:fail:{key}` counts failures
//! and expires a fixed window after the first one, so every node sees the same count and a counter never outlives
//! its window.

use std::time::Duration;

use fred::prelude::*;

use crate::RouterError;

/// Counts a failure; the first failure of a window starts the window's expiry.
const RECORD: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
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

    /// The current counts of `names`, in order (0 for none). One GET per key in a pipeline, not MGET: the keys
    /// may live in different slots of a Redis Cluster.
    pub async fn counts(&self, names: &[&str]) -> Result<Vec<i64>, RouterError> {
        let pipeline = self.client.pipeline();
        for name in names {
            let _: () = pipeline.get(key(name)).await?;
        }
        let values: Vec<Option<i64>> = pipeline.all().await?;
        Ok(values.into_iter().map(|v| v.unwrap_or(0)).collect())
    }

    /// Records one failure under each of `names`.
    pub async fn record(&self, names: &[&str]) -> Result<(), RouterError> {
        let window_ms = self.window.as_millis().to_string();
        for name in names {
            let _: i64 = self
                .client
                .eval(RECORD, vec![key(name)], vec![window_ms.as_str()])
                .await?;
        }
        Ok(())
    }

    /// Forgets the failures under `name` (a successful login clears its user's count).
    pub async fn clear(&self, name: &str) -> Result<(), RouterError> {
        let _: i64 = self.client.del(key(name)).await?;
        Ok(())
    }
}
