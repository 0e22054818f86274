//! The per-user send rate limit of this node, with escalation for clients that ignore it.
//!
//! One token bucket per **user on this node** (not per connection): a user's devices on one node share it, so
//! opening more connections (device ids are the client's choice) buys no extra rate. A user connected to several
//! nodes gets one bucket per node; the cluster-wide rate is bounded by the node count, which is small and cannot be
//! chosen freely by the client (the load balancer picks). Keeping the buckets in process keeps Redis off the send
//! path.
//!
//! A send that finds the bucket empty is refused (`Verdict::Refused`: the session answers `error{rate_limited}` and
//! stores nothing) and counts as a strike. `strikes` strikes within `strike_window` make the verdict
//! `Verdict::Close`: the session kicks the connection (close 1008). A well-behaved client that slows down on
//! `rate_limited` never gets there.
//!
//! Memory stays bounded: buckets live in sharded maps, and a shard that grew past its high-water mark drops every
//! bucket that is back at rest (full, no recent strikes) — forgetting those changes no verdict.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::ids::UserId;

/// Shards of the bucket map (a power of two); sends of different users rarely wait on one lock.
const SHARDS: usize = 64;
/// A shard is pruned when it reaches this many buckets (then twice what survived, at least this).
const PRUNE_AT: usize = 1024;

/// What the session does with one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: go on.
    Allowed,
    /// Over the rate: answer `error{rate_limited}`, store nothing.
    Refused,
    /// Over the rate again and again: refuse this send and close the connection (1008).
    Close,
}

/// The rate limit settings (from `Config`).
#[derive(Debug, Clone, Copy)]
pub struct SendLimits {
    /// Sustained sends per second.
    pub rate: f64,
    /// Sends allowed at once above the sustained rate (the bucket size).
    pub burst: f64,
    /// Refusals within `strike_window` that close the connection.
    pub strikes: u32,
    pub strike_window: Duration,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
    strikes: u32,
    /// When the current strike window began (the first refusal of it).
    strikes_since: Instant,
}

struct Shard {
    buckets: HashMap<UserId, Bucket>,
    prune_at: usize,
}

pub struct SendLimiter {
    limits: SendLimits,
    shards: Box<[Mutex<Shard>]>,
}

impl SendLimiter {
    pub fn new(limits: SendLimits) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    buckets: HashMap::new(),
                    prune_at: PRUNE_AT,
                })
            })
            .collect();
        SendLimiter { limits, shards }
    }

    /// Takes one token for `user`'s send.
    pub fn check(&self, user: UserId) -> Verdict {
        self.check_at(user, Instant::now())
    }

    fn shard(&self, user: UserId) -> MutexGuard<'_, Shard> {
        // Ids are sequential, so the low bits spread users evenly.
        let index = (user as u64 as usize) & (SHARDS - 1);
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_at(&self, user: UserId, now: Instant) -> Verdict {
        let limits = self.limits;
        let mut shard = self.shard(user);
        if shard.buckets.len() >= shard.prune_at && !shard.buckets.contains_key(&user) {
            shard
                .buckets
                .retain(|_, bucket| !at_rest(bucket, &limits, now));
            shard.prune_at = (shard.buckets.len() * 2).max(PRUNE_AT);
        }
        let bucket = shard.buckets.entry(user).or_insert(Bucket {
            tokens: limits.burst,
            updated: now,
            strikes: 0,
            strikes_since: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limits.rate).min(limits.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Allowed;
        }
        if bucket.strikes == 0
            || now.saturating_duration_since(bucket.strikes_since) > limits.strike_window
        {
            bucket.strikes = 0;
            bucket.strikes_since = now;
        }
        bucket.strikes += 1;
        if bucket.strikes >= limits.strikes {
            // The next connection starts with a clean record (but still an empty bucket).
            bucket.strikes = 0;
            Verdict::Close
        } else {
            Verdict::Refused
        }
    }

    /// Buckets held (for tests of the pruning).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.buckets.len()).unwrap_or(0))
            .sum()
    }
}

/// A bucket that is full again and has no strikes in the window behaves exactly like a missing one.
fn at_rest(bucket: &Bucket, limits: &SendLimits, now: Instant) -> bool {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    let full = bucket.tokens + elapsed * limits.rate >= limits.burst;
    let strikes_over = bucket.strikes == 0
        || now.saturating_duration_since(bucket.strikes_since) > limits.strike_window;
    full && strikes_over
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: f64, strikes: u32) -> SendLimiter {
        SendLimiter::new(SendLimits {
            rate,
            burst,
            strikes,
            strike_window: Duration::from_secs(10),
        })
    }

    #[test]
    fn burst_then_refusals_then_close() {
        let limiter = limiter(1.0, 3.0, 4);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_at(7, now), Verdict::Allowed);
        }
        for _ in 0..3 {
            assert_eq!(limiter.check_at(7, now), Verdict::Refused);
        }
        assert_eq!(limiter.check_at(7, now), Verdict::Close);
        // Another user is not affected.
        assert_eq!(limiter.check_at(8, now), Verdict::Allowed);
        // Tokens come back at the sustained rate.
        let later = now + Duration::from_millis(1500);
        assert_eq!(limiter.check_at(7, later), Verdict::Allowed);
        assert_eq!(limiter.check_at(7, later), Verdict::Refused);
    }

    #[test]
    fn strikes_expire_with_their_window() {
        let limiter = limiter(0.001, 1.0, 3);
        let now = Instant::now();
        assert_eq!(limiter.check_at(1, now), Verdict::Allowed);
        assert_eq!(limiter.check_at(1, now), Verdict::Refused);
        assert_eq!(limiter.check_at(1, now), Verdict::Refused);
        // The window ended: the count starts again.
        let later = now + Duration::from_secs(11);
        assert_eq!(limiter.check_at(1, later), Verdict::Refused);
        assert_eq!(limiter.check_at(1, later), Verdict::Refused);
        assert_eq!(limiter.check_at(1, later), Verdict::Close);
    }

    #[test]
    fn buckets_at_rest_are_forgotten() {
        let limiter = limiter(100.0, 2.0, 10);
        let now = Instant::now();
        for user in 0..(SHARDS * PRUNE_AT) as i64 {
            limiter.check_at(user, now);
        }
        assert_eq!(limiter.held(), SHARDS * PRUNE_AT);
        // A second later every bucket is full again; new users push the old ones out.
        let later = now + Duration::from_secs(1);
        for user in 0..SHARDS as i64 {
            limiter.check_at(1_000_000 + user, later);
        }
        assert_eq!(limiter.held(), SHARDS);
    }
}
