//! Closing this node's connections whose token was revoked: at once when a revocation is announced on the bus,
//! and by a periodic re-check of every live connection's token (the safety net under the at-most-once bus).

use std::sync::Arc;
use std::time::Instant;

use common::ids::UserId;
use common::KickReason;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use super::local::LocalSessions;
use crate::identity::revocation::Revocations;

/// Closes the local connections of `user` whose token is `token` or was issued at or before `not_before_ms`.
pub fn close_revoked(
    sessions: &LocalSessions,
    user: UserId,
    token: Option<u128>,
    not_before_ms: Option<u64>,
) -> usize {
    let closed = sessions.kick_tokens(user, KickReason::Revoked, |claims| {
        token == Some(claims.id) || not_before_ms.is_some_and(|nbf| claims.issued_ms <= nbf)
    });
    if closed > 0 {
        ::metrics::counter!("im_revoked_disconnects_total").increment(closed as u64);
        info!(user, closed, "closed connections of revoked tokens");
    }
    closed
}

/// Every period, re-checks the token of every connection on this node against Redis and closes the revoked ones:
/// the safety net under the at-most-once bus.
pub async fn run_recheck(
    revocations: Arc<Revocations>,
    sessions: Arc<LocalSessions>,
    stop: CancellationToken,
) {
    let period = revocations.recheck_period();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let live = sessions.token_claims();
        let span = info_span!("revocation_recheck", tokens = live.len());
        let revoked = revocations.revoked_among(&live).instrument(span).await;
        for claims in &revoked {
            close_revoked(&sessions, claims.user, Some(claims.id), None);
        }
        ::metrics::histogram!("im_revocation_recheck_seconds")
            .record(started.elapsed().as_secs_f64());
        ::metrics::counter!("im_revocation_rechecks_total").increment(1);
        debug!(
            checked = live.len(),
            revoked = revoked.len(),
            "revocation re-check"
        );
    }
}
