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

const PROFILE_COLUMNS: &str = "id, username, display_name, avatar";

fn profile_json(row: &tokio_postgres::Row) -> Result<serde_json::Value, tokio_postgres::Error> {
    Ok(json!({
        "id": row.try_get::<_, i64>(0)?,
        "username": row.try_get::<_, String>(1)?,
        "display_name": row.try_get::<_, String>(2)?,
        "avatar": row.try_get::<_, Option<String>>(3)?,
    }))
}

async fn profile(state: &NodeState, user: UserId) -> Response {
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    match client
        .query_opt(
            &format!("SELECT {PROFILE_COLUMNS} FROM users WHERE id = $1"),
            &[&user],
        )
        .await
    {
        Ok(Some(row)) => match profile_json(&row) {
            Ok(value) => Json(value).into_response(),
            Err(error) => unavailable(error.into()),
        },
        Ok(None) => not_found("no such user"),
        Err(error) => unavailable(error.into()),
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
        match crate::storage::chat::accessible_media(&state.pool, avatar, user).await {
            Ok(Some((_, mime))) if mime.starts_with("image/") => {}
            Ok(_) => return bad_request("bad_avatar", "avatar must be an image you uploaded"),
            Err(error) => return unavailable(error),
        }
    }
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let result = client
        .execute(
            "UPDATE users SET display_name = coalesce($2, display_name),
                 avatar = CASE WHEN $3::text IS NULL THEN avatar WHEN $3 = '' THEN NULL ELSE $3 END
             WHERE id = $1",
            &[&user, &update.display_name, &update.avatar],
        )
        .await;
    match result {
        Ok(_) => profile(&state, user).await,
        Err(error) => unavailable(error.into()),
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
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    match client
        .query_opt(
            &format!("SELECT {PROFILE_COLUMNS} FROM users WHERE username = $1"),
            &[&username],
        )
        .await
    {
        Ok(Some(row)) => match profile_json(&row) {
            Ok(value) => Json(json!({ "users": [value] })).into_response(),
            Err(error) => unavailable(error.into()),
        },
        Ok(None) => Json(json!({ "users": [] })).into_response(),
        Err(error) => unavailable(error.into()),
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
    let friends: HashSet<UserId> =
        match crate::storage::relations::friends_of(&state.pool, user).await {
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
