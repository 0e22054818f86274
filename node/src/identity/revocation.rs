//! Is a (validly signed) token still good? Revocation, shared by every node through Redis and the bus.
//!
//! Redis holds the truth (`router::RevocationStore`). Every REST call and WebSocket handshake asks, so each node
//! keeps a small local view: per token "revoked" or "checked good at", per user the "not before" and when it was
//! read. A revocation updates the view of the node that made it at once and reaches the others as a
//! `TokensRevoked` bus message, which also closes the affected connections (close 1008). Pub/sub is at-most-once,
//! so an entry older than the re-check period is read from Redis again, and `run_recheck` re-checks every live
//! connection on that period: a lost bus message delays a revocation by at most one period.
//!
//! If Redis cannot answer and nothing is cached, the token is refused with 503: a revocation that cannot be
//! checked is not assumed absent.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::ids::UserId;
use router::{RevocationStore, TokenStatus};
use tracing::{debug, warn};

use crate::identity::auth::{token_id_hex, Claims};

/// Most cached entries of each kind before the cache is cleared (an entry is a few dozen bytes).
const CACHE_CAP: usize = 200_000;
/// Tokens re-checked per Redis pipeline by the periodic re-check.
const RECHECK_CHUNK: usize = 500;

/// Why a token cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("token revoked")]
    Revoked,
    #[error("revocation state unavailable; retry")]
    Unavailable,
}

#[derive(Clone, Copy)]
enum TokenState {
    Good(Instant),
    Revoked,
}

#[derive(Default)]
struct Cache {
    tokens: HashMap<u128, TokenState>,
    /// user → (not before in Unix ms, when it was read or announced).
    users: HashMap<UserId, (u64, Instant)>,
}

impl Cache {
    /// The answer from the cache alone: Some(true) revoked, Some(false) good, None unknown or too old.
    fn judge(&self, claims: &Claims, fresh: Duration, allow_stale: bool) -> Option<bool> {
        let user = self.users.get(&claims.user);
        if let Some((not_before, _)) = user {
            if claims.issued_ms <= *not_before {
                return Some(true);
            }
        }
        match (self.tokens.get(&claims.id)?, user) {
            (TokenState::Revoked, _) => Some(true),
            (TokenState::Good(read), Some((_, user_read)))
                if allow_stale || (read.elapsed() < fresh && user_read.elapsed() < fresh) =>
            {
                Some(false)
            }
            _ => None,
        }
    }

    fn learn(&mut self, claims: &Claims, status: TokenStatus, now: Instant) {
        if self.tokens.len() >= CACHE_CAP {
            self.tokens.clear();
        }
        if self.users.len() >= CACHE_CAP {
            self.users.clear();
        }
        // A revocation is final: a read that does not show it (Redis lost its data) does not undo what was learned.
        let known_revoked = matches!(self.tokens.get(&claims.id), Some(TokenState::Revoked));
        let state = if status.revoked || known_revoked {
            TokenState::Revoked
        } else {
            TokenState::Good(now)
        };
        self.tokens.insert(claims.id, state);
        let entry = self.users.entry(claims.user).or_insert((0, now));
        // An announced value may be newer than what a read that started earlier returned.
        *entry = (entry.0.max(status.not_before_ms), now);
    }
}

/// The node's view of revoked tokens.
pub struct Revocations {
    store: RevocationStore,
    /// Cached answers older than this are read again (also the period of `run_recheck`).
    fresh: Duration,
    cache: Mutex<Cache>,
}

impl Revocations {
    pub fn new(store: RevocationStore, recheck: Duration) -> Self {
        Revocations {
            store,
            fresh: recheck,
            cache: Mutex::new(Cache::default()),
        }
    }

    pub fn recheck_period(&self) -> Duration {
        self.fresh
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a verified token may be used. Cheap when the cache knows the answer; one Redis round trip when not.
    pub async fn check(&self, claims: &Claims) -> Result<(), Refusal> {
        if let Some(revoked) = self.lock().judge(claims, self.fresh, false) {
            ::metrics::counter!("im_token_checks_total", "source" => "cache").increment(1);
            return verdict(revoked);
        }
        let started = Instant::now();
        let pair = [(claims.user, token_id_hex(claims.id))];
        let read = self.store.status(&pair).await;
        ::metrics::histogram!("im_token_check_seconds").record(started.elapsed().as_secs_f64());
        match read {
            Ok(statuses) => {
                ::metrics::counter!("im_token_checks_total", "source" => "redis").increment(1);
                let status = statuses.first().copied().unwrap_or(TokenStatus {
                    revoked: false,
                    not_before_ms: 0,
                });
                let mut cache = self.lock();
                cache.learn(claims, status, started);
                verdict(cache.judge(claims, self.fresh, true).unwrap_or(false))
            }
            Err(error) => {
                debug!(%error, "revocation state unavailable");
                match self.lock().judge(claims, self.fresh, true) {
                    Some(revoked) => {
                        ::metrics::counter!("im_token_checks_total", "source" => "stale_cache")
                            .increment(1);
                        verdict(revoked)
                    }
                    None => {
                        ::metrics::counter!("im_token_checks_total", "source" => "unavailable")
                            .increment(1);
                        Err(Refusal::Unavailable)
                    }
                }
            }
        }
    }

    /// Whether this node already knows the token to be revoked (no Redis round trip). The handshake asks again
    /// once the connection is registered, so a revocation announced while it was being checked is not missed.
    pub fn known_revoked(&self, claims: &Claims) -> bool {
        self.lock().judge(claims, self.fresh, true) == Some(true)
    }

    /// Revokes one token: Redis first (the truth), then this node's view. The caller announces it on the bus.
    pub async fn revoke_token(&self, claims: &Claims) -> Result<(), router::RouterError> {
        self.store
            .revoke_token(
                &token_id_hex(claims.id),
                Duration::from_secs(claims.remaining_secs()),
            )
            .await?;
        self.learn_revoked(claims.user, Some(claims.id), None);
        Ok(())
    }

    /// Revokes every token of `user` issued at or before `not_before_ms`; returns the effective "not before".
    pub async fn revoke_user_before(
        &self,
        user: UserId,
        not_before_ms: u64,
        token_lifetime: Duration,
    ) -> Result<u64, router::RouterError> {
        let effective = self
            .store
            .revoke_user_before(user, not_before_ms, token_lifetime)
            .await?;
        self.learn_revoked(user, None, Some(effective));
        Ok(effective)
    }

    /// Records a revocation (made here, or announced by another node).
    pub fn learn_revoked(&self, user: UserId, token: Option<u128>, not_before_ms: Option<u64>) {
        let mut cache = self.lock();
        if let Some(token) = token {
            cache.tokens.insert(token, TokenState::Revoked);
        }
        if let Some(not_before) = not_before_ms {
            let now = Instant::now();
            let entry = cache.users.entry(user).or_insert((0, now));
            *entry = (entry.0.max(not_before), now);
        }
    }

    /// Re-reads the state of every live connection's token and returns the claims found revoked.
    pub async fn revoked_among(&self, live: &[Claims]) -> Vec<Claims> {
        let mut revoked = Vec::new();
        for chunk in live.chunks(RECHECK_CHUNK) {
            let pairs: Vec<(UserId, String)> =
                chunk.iter().map(|c| (c.user, token_id_hex(c.id))).collect();
            let started = Instant::now();
            match self.store.status(&pairs).await {
                Ok(statuses) => {
                    let mut cache = self.lock();
                    for (claims, status) in chunk.iter().zip(statuses) {
                        cache.learn(claims, status, started);
                        if cache.judge(claims, self.fresh, true) == Some(true) {
                            revoked.push(*claims);
                        }
                    }
                }
                Err(error) => {
                    // The next period tries again; meanwhile the bus still delivers announcements.
                    warn!(%error, "revocation re-check failed");
                    ::metrics::counter!("im_revocation_recheck_errors_total").increment(1);
                    break;
                }
            }
        }
        revoked
    }
}

fn verdict(revoked: bool) -> Result<(), Refusal> {
    if revoked {
        Err(Refusal::Revoked)
    } else {
        Ok(())
    }
}

/// Why a presented token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("{0}")]
    Invalid(#[from] crate::identity::auth::TokenError),
    #[error("{0}")]
    Refused(#[from] Refusal),
}

impl TokenRefusal {
    /// The metric label of the refusal.
    pub fn label(self) -> &'static str {
        match self {
            TokenRefusal::Invalid(_) => "bad_token",
            TokenRefusal::Refused(Refusal::Revoked) => "revoked_token",
            TokenRefusal::Refused(Refusal::Unavailable) => "revocation_unavailable",
        }
    }
}

/// Verifies a token's signature and expiry, then whether it was revoked.
pub async fn authenticate(
    auth: &crate::identity::auth::Authenticator,
    revocations: &Revocations,
    token: &str,
) -> Result<Claims, TokenRefusal> {
    let claims = auth.verify(token)?;
    revocations.check(&claims).await?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(id: u128, issued_ms: u64) -> Claims {
        Claims {
            user: 7,
            issued_ms,
            expires: u64::MAX,
            id,
        }
    }

    const FRESH: Duration = Duration::from_secs(30);

    #[test]
    fn the_cache_answers_only_what_it_knows_recently() {
        let mut cache = Cache::default();
        let token = claims(1, 1_000);
        assert_eq!(cache.judge(&token, FRESH, false), None);
        let now = Instant::now();
        let good = TokenStatus {
            revoked: false,
            not_before_ms: 0,
        };
        cache.learn(&token, good, now);
        assert_eq!(cache.judge(&token, FRESH, false), Some(false));
        // Too old: asked again, unless Redis cannot answer.
        assert_eq!(cache.judge(&token, Duration::ZERO, false), None);
        assert_eq!(cache.judge(&token, Duration::ZERO, true), Some(false));
        // Another token of the same user is unknown until read.
        assert_eq!(cache.judge(&claims(2, 1_000), FRESH, false), None);
    }

    #[test]
    fn revocations_are_final_and_not_before_covers_earlier_tokens() {
        let mut cache = Cache::default();
        let (earlier, later) = (claims(1, 1_000), claims(2, 3_000));
        let now = Instant::now();
        let not_before = TokenStatus {
            revoked: false,
            not_before_ms: 2_000,
        };
        cache.learn(&earlier, not_before, now);
        cache.learn(&later, not_before, now);
        assert_eq!(cache.judge(&earlier, FRESH, false), Some(true));
        assert_eq!(cache.judge(&later, FRESH, false), Some(false));
        // A later read without the revocation (Redis lost it) neither lowers "not before" nor un-revokes a token.
        let revoked = TokenStatus {
            revoked: true,
            not_before_ms: 0,
        };
        cache.learn(&later, revoked, now);
        let forgotten = TokenStatus {
            revoked: false,
            not_before_ms: 0,
        };
        cache.learn(&later, forgotten, now);
        cache.learn(&earlier, forgotten, now);
        assert_eq!(cache.judge(&later, FRESH, false), Some(true));
        assert_eq!(cache.judge(&earlier, FRESH, false), Some(true));
    }
}
