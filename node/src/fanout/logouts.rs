//! Ending logins from elsewhere: announcing a revocation to every node, and moving a user's devices out — after
//! `DELETE /v1/devices/{device}` (their login is revoked: `kick{revoked}`) or under the "one session per platform"
//! policy (`kick{replaced}` first, then their login is revoked so it cannot come back).

use std::collections::BTreeMap;

use common::ids::UserId;
use common::KickReason;
use router::BusMessage;
use tracing::{info, warn};

use crate::identity::auth::{token_id_from_hex, token_id_hex, Claims};
use crate::state::NodeState;
use crate::storage::devices::DeviceRow;

/// Closes the revoked connections on this node and tells every other node to do the same.
pub async fn announce_revoked(
    state: &NodeState,
    user: UserId,
    token: Option<u128>,
    not_before_ms: Option<u64>,
) {
    super::revoked::close_revoked(&state.sessions, user, token, not_before_ms);
    state
        .delivery
        .broadcast(BusMessage::TokensRevoked {
            user,
            token: token.map(token_id_hex),
            not_before_ms,
        })
        .await;
}

/// Why devices are moved out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveOut {
    /// Their owner logged them out from another device.
    ByOwner,
    /// A newer login on the same platform replaced them.
    Replaced,
}

/// Moves `devices` of `user` out: for `Replaced`, each connected one first gets `kick{replaced}` (wherever it
/// is); then every login (token) they used is revoked in Redis and announced, which closes whatever is left with
/// `kick{revoked}` and refuses the token from now on. Fails only if Redis refused a revocation.
pub async fn move_out(
    state: &NodeState,
    user: UserId,
    devices: &[DeviceRow],
    why: MoveOut,
) -> Result<(), router::RouterError> {
    if devices.is_empty() {
        return Ok(());
    }
    if why == MoveOut::Replaced {
        for device in devices {
            state
                .sessions
                .kick_device(user, &device.device, KickReason::Replaced);
        }
        match state.locations.lookup(&[user]).await {
            Ok(found) => {
                let moved: Vec<&str> = devices.iter().map(|d| d.device.as_str()).collect();
                for location in found.get(&user).into_iter().flatten() {
                    if location.node == state.node_id || !moved.contains(&location.device.as_str())
                    {
                        continue;
                    }
                    let kick = BusMessage::KickDevice {
                        user,
                        device: location.device.clone(),
                    };
                    if let Err(error) = state.bus.publish(&location.node, &kick).await {
                        warn!(%error, node = location.node, "could not tell a node to move a device out");
                    }
                }
            }
            // The revocation below still closes them, as `revoked`.
            Err(error) => warn!(%error, "could not look up the devices to move out"),
        }
    }
    // One revocation per login, however many of its devices (tabs) there were.
    let mut logins: BTreeMap<&str, &DeviceRow> = BTreeMap::new();
    for device in devices {
        logins.entry(device.token_id.as_str()).or_insert(device);
    }
    let scope = match why {
        MoveOut::ByOwner => "device",
        MoveOut::Replaced => "platform_policy",
    };
    for (token_hex, device) in logins {
        let Some(id) = token_id_from_hex(token_hex) else {
            warn!(user, "a device row names an unreadable token id; skipped");
            continue;
        };
        let claims = Claims {
            user,
            issued_ms: u64::try_from(device.token_issued_ms).unwrap_or(0),
            expires: u64::try_from(device.token_expires).unwrap_or(0),
            id,
        };
        if claims.remaining_secs() > 0 {
            state.revocations.revoke_token(&claims).await?;
            ::metrics::counter!("im_tokens_revoked_total", "scope" => scope).increment(1);
        }
        announce_revoked(state, user, Some(id), None).await;
        info!(
            user,
            device = device.device,
            platform = device.platform,
            scope,
            "moved a login out"
        );
    }
    Ok(())
}
