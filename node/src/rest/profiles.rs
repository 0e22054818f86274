//! Profiles, search by exact username, and presence.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::ids::UserId;
use serde::Deserialize;
use serde_json::json;

use super::{bad_request, not_found, unavailable, AuthUser};
use crate::chat::content::is_displayable_name;
use crate::rest::input::{ApiPath, ApiQuery};
use crate::state::NodeState;
use crate::storage;
use crate::storage::profiles::{self, Profile};

fn profile_json(profile: &Profile) -> serde_json::Value {
    json!({
        "id": profile.id,
        "username": profile.username,
        "display_name": profile.display_name,
        "avatar": profile.avatar,
    })
}

async fn profile(state: &NodeState, user: UserId) -> Response {
    match profiles::profile(&state.pool, user).await {
        Ok(Some(profile)) => Json(profile_json(&profile)).into_response(),
        Ok(None) => not_found("no such user"),
        Err(error) => unavailable(error),
    }
}

pub async fn me(State(state): State<Arc<NodeState>>, AuthUser(user): AuthUser) -> Response {
    profile(&state, user).await
}

pub async fn get_user(
    State(state): State<Arc<NodeState>>,
    AuthUser(_): AuthUser,
    ApiPath(id): ApiPath<UserId>,
) -> Response {
    profile(&state, id).await
}

#[derive(Deserialize)]
pub struct ProfileUpdate {
    display_name: Option<String>,
    /// SHA-256 of an uploaded image, or "" to clear.
    avatar: Option<String>,
}

pub async fn update_me(
    State(state): State<Arc<NodeState>>,
    AuthUser(user): AuthUser,
    body: Result<Json<ProfileUpdate>, JsonRejection>,
) -> Response {
    let Ok(Json(update)) = body else {
        return bad_request("bad_request", "expected {display_name?, avatar?}");
    };
    if update
        .display_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > 64 || !is_displayable_name(n))
    {
        return bad_request(
            "bad_display_name",
            "display_name: at most 64 characters, no control or bidirectional-override characters",
        );
    }
    if let Some(avatar) = update.avatar.as_deref().filter(|a| !a.is_empty()) {
        if crate::rest::input::media_hash(avatar).is_err() {
            return bad_request(
                "bad_avatar",
                "avatar must be the SHA-256 (hex) of an image you uploaded",
            );
        }
        match storage::media_meta::accessible_media(&state.pool, avatar, user).await {
            Ok(Some((_, mime))) if mime.starts_with("image/") => {}
            Ok(_) => return bad_request("bad_avatar", "avatar must be an image you uploaded"),
            Err(error) => return unavailable(error),
        }
    }
    let updated = profiles::update_profile(
        &state.pool,
        user,
        update.display_name.as_deref(),
        update.avatar.as_deref(),
    )
    .await;
    match updated {
        Ok(()) => profile(&state, user).await,
        Err(error) => unavailable(error),
    }
}

#[derive(Deserialize)]
pub struct Search {
    username: Option<String>,
}

/// `GET /v1/users?username=exact`: find a user by exact username.
pub async fn search(
    State(state): State<Arc<NodeState>>,
    AuthUser(_): AuthUser,
    ApiQuery(query): ApiQuery<Search>,
) -> Response {
    let Some(username) = query.username else {
        return bad_request("bad_request", "username is required");
    };
    match profiles::profile_by_username(&state.pool, &username).await {
        Ok(Some(profile)) => Json(json!({ "users": [profile_json(&profile)] })).into_response(),
        Ok(None) => Json(json!({ "users": [] })).into_response(),
        Err(error) => unavailable(error),
    }
}

#[derive(Deserialize)]
pub struct PresenceQuery {
    /// Comma-separated user ids (your friends, or yourself).
    users: String,
}

/// `GET /v1/presence?users=1,2`: which of my friends are online (on any node).
pub async fn presence(
    State(state): State<Arc<NodeState>>,
    AuthUser(user): AuthUser,
    ApiQuery(query): ApiQuery<PresenceQuery>,
) -> Response {
    let asked = crate::rest::input::user_list(&query.users, 500);
    let friends: HashSet<UserId> = match storage::friends::friends_of(&state.pool, user).await {
        Ok(friends) => friends.into_iter().collect(),
        Err(error) => return unavailable(error),
    };
    let visible: Vec<UserId> = asked
        .into_iter()
        .filter(|u| *u == user || friends.contains(u))
        .collect();
    match state.locations.lookup(&visible).await {
        Ok(located) => {
            let online: serde_json::Map<String, serde_json::Value> = visible
                .iter()
                .map(|u| {
                    (
                        u.to_string(),
                        json!(located.get(u).is_some_and(|d| !d.is_empty())),
                    )
                })
                .collect();
            Json(json!({ "online": online })).into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "presence lookup failed");
            crate::error::json_error(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "presence unavailable",
            )
        }
    }
}
