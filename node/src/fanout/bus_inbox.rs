//! The bus inbox: applies what other nodes published for this node — pushes to local devices, device kicks, and
//! the invalidations of cached member lists, 1:1 pairs and tokens.

use std::sync::Arc;

use bytes::Bytes;
use common::KickReason;
use router::BusMessage;
use tokio::sync::mpsc;
use tracing::warn;

use super::delivery::Delivery;

/// Applies what other nodes published for this node.
pub async fn run(
    mut inbox: mpsc::Receiver<BusMessage>,
    delivery: Delivery,
    pairs: Arc<crate::storage::pair_cache::PairCache>,
    revocations: Arc<crate::identity::revocation::Revocations>,
) {
    let sessions = &delivery.sessions;
    let metrics = &delivery.metrics;
    while let Some(message) = inbox.recv().await {
        match message {
            BusMessage::Deliver { users, skip, frame } => {
                let frame = Bytes::from(frame);
                let skip = skip.as_ref().map(|(user, device)| (*user, device.as_str()));
                metrics
                    .delivered_redis
                    .increment(sessions.deliver(&users, skip, &frame));
            }
            BusMessage::DeliverConv { conv, skip, frame } => match delivery.members.get(conv).await
            {
                Ok(Some(members)) => {
                    let frame = Bytes::from(frame);
                    let skip = skip.as_ref().map(|(user, device)| (*user, device.as_str()));
                    // One pass under one lock: members without a local device are skipped inside.
                    let local = &members.users;
                    metrics
                        .delivered_redis
                        .increment(sessions.deliver(local, skip, &frame));
                }
                Ok(None) => {}
                Err(error) => {
                    warn!(%error, conv, "could not load members; local members will get this by sync")
                }
            },
            BusMessage::KickDevice { user, device } => {
                sessions.kick_device(user, &device, KickReason::Replaced);
            }
            BusMessage::ConvChanged { conv } => delivery.members.invalidate(conv),
            BusMessage::TokensRevoked {
                user,
                token,
                not_before_ms,
            } => {
                let token = token
                    .as_deref()
                    .and_then(crate::identity::auth::token_id_from_hex);
                revocations.learn_revoked(user, token, not_before_ms);
                crate::fanout::revoked::close_revoked(sessions, user, token, not_before_ms);
            }
            BusMessage::PairChanged { a, b } => pairs.invalidate(a, b),
            BusMessage::MayHaveMissed => {
                delivery.members.clear();
                pairs.clear();
            }
        }
    }
}
