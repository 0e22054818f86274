//! Devices: where the caller is logged in (`GET /v1/devices`), logging one out (`DELETE /v1/devices/{device}`),
//! and the caller's "one session per platform" choice (`PUT /v1/devices/policy`).
//!
//! A device is listed from the `devices` table (written when it connects) and shown online when the location
//! registry places it on a live node; which node is not shown (it means nothing to a user). Logging a device out
//! revokes the login (token) it connected with, so every device of that login (the tabs of one browser) goes, on
//! every node, with `kick{revoked}`; the policy itself is applied when a device connects (`connection/upgrade.rs`).

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tracing::{info_span, warn, Instrument};

use super::{bad_request, not_found, unavailable, AuthToken};
use crate::error::json_error;
use crate::fanout::logouts::{self, MoveOut};
use crate::identity::auth::{token_id_hex, unix_now};
use crate::rest::input::{self, ApiPath};
use crate::state::NodeState;
use crate::storage::devices;

/// `GET /v1/devices`: the caller's devices with an unexpired login, most recently seen first, and the policy.
pub async fn list(State(state): State<Arc<NodeState>>, AuthToken(claims): AuthToken) -> Response {
    let user = claims.user;
    let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
    let (rows, choice) = match tokio::try_join!(
        devices::list(&state.pool, user, now),
        devices::policy(&state.pool, user)
    ) {
        Ok(found) => found,
        Err(error) => return unavailable(error),
    };
    // Online: the registry places the device on a live node. Without Redis, the list still answers (all offline).
    let online: HashSet<String> = match state.locations.lookup(&[user]).await {
        Ok(mut found) => found
            .remove(&user)
            .unwrap_or_default()
            .into_iter()
            .map(|l| l.device)
            .collect(),
        Err(error) => {
            warn!(%error, "could not read device locations for the device list");
            HashSet::new()
        }
    };
    let mine = token_id_hex(claims.id);
    let list: Vec<_> = rows
        .iter()
        .map(|row| {
            json!({
                "device": row.device,
                "platform": row.platform,
                "first_seen_ms": row.first_seen_ms,
                "last_seen_ms": row.last_seen_ms,
                "online": online.contains(&row.device),
                "this_login": row.token_id == mine,
            })
        })
        .collect();
    Json(json!({
        "devices": list,
        "policy": policy_json(&state, choice),
    }))
    .into_response()
}

fn policy_json(state: &NodeState, choice: Option<bool>) -> serde_json::Value {
    let effective: Vec<&str> = common::ids::PLATFORMS
        .iter()
        .copied()
        .filter(|p| state.config.one_session_on(p, choice))
        .collect();
    json!({
        "one_session_per_platform": choice,
        "server_platforms": state.config.one_session_platforms.iter().filter(|p| !p.is_empty()).collect::<Vec<_>>(),
        "platforms": effective,
    })
}

/// `DELETE /v1/devices/{device}`: logs the device out (its login is revoked everywhere).
pub async fn revoke(
    State(state): State<Arc<NodeState>>,
    AuthToken(claims): AuthToken,
    ApiPath(device): ApiPath<String>,
) -> Response {
    let user = claims.user;
    if let Err(rejected) = input::device_id(Some(&device)) {
        return rejected.into_response();
    }
    let span = info_span!("revoke_device", user, device = %device);
    async move {
        let removed = match devices::remove_login_of(&state.pool, user, &device).await {
            Ok(removed) => removed,
            Err(error) => return unavailable(error),
        };
        if removed.is_empty() {
            return not_found("no such device");
        }
        if let Err(error) = logouts::move_out(&state, user, &removed, MoveOut::ByOwner).await {
            warn!(%error, "could not revoke a device's login");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "could not log the device out right now; retry",
            );
        }
        let gone: Vec<&str> = removed.iter().map(|r| r.device.as_str()).collect();
        let mine = token_id_hex(claims.id);
        Json(json!({
            "logged_out": gone,
            "this_login": removed.iter().any(|r| r.token_id == mine),
        }))
        .into_response()
    }
    .instrument(span)
    .await
}

#[derive(Deserialize)]
pub struct PolicyUpdate {
    /// `true`: one login per platform (every platform but web); `false`: off; `null`: the server's setting.
    one_session_per_platform: Option<bool>,
}

/// `PUT /v1/devices/policy`: the caller's own "one session per platform" choice.
pub async fn set_policy(
    State(state): State<Arc<NodeState>>,
    AuthToken(claims): AuthToken,
    body: Result<Json<PolicyUpdate>, JsonRejection>,
) -> Response {
    let Ok(Json(update)) = body else {
        return bad_request(
            "bad_body",
            "expected JSON {\"one_session_per_platform\": true, false or null}",
        );
    };
    let choice = update.one_session_per_platform;
    if let Err(error) = devices::set_policy(&state.pool, claims.user, choice).await {
        return unavailable(error);
    }
    Json(json!({ "policy": policy_json(&state, choice) })).into_response()
}
