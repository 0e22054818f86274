//! Registration and login over REST.
//!
//! `POST /v1/users {username, password}` → 201 `{id, username}` (409 if the name is taken);
//! `POST /v1/sessions {username, password}` → 200 `{user_id, token, expires_at}` (401 on bad credentials).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tracing::warn;

use crate::http::json_error;
use crate::state::NodeState;
use crate::store::queries::{self, NewUser};

#[derive(Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
}

/// Usernames are 3-32 characters of `[a-z0-9_.-]` (lower case, so names differing only in case cannot coexist).
fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

fn bad_body(rejection: JsonRejection) -> Response {
    json_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        &rejection.body_text(),
    )
}

pub async fn register(
    State(state): State<Arc<NodeState>>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Response {
    let Json(credentials) = match body {
        Ok(body) => body,
        Err(rejection) => return bad_body(rejection),
    };
    if !valid_username(&credentials.username) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_username",
            "username must be 3-32 characters of [a-z0-9_.-]",
        );
    }
    if !(8..=256).contains(&credentials.password.len()) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_password",
            "password must be 8-256 bytes",
        );
    }
    let hash = match state.auth.hash_password(credentials.password).await {
        Ok(hash) => hash,
        Err(error) => {
            warn!(%error, "password hashing failed");
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "could not hash the password",
            );
        }
    };
    match queries::create_user(&state.pool, &credentials.username, &hash).await {
        Ok(NewUser::Created(id)) => {
            ::metrics::counter!("im_users_registered_total").increment(1);
            (
                StatusCode::CREATED,
                Json(serde_json::json!({ "id": id, "username": credentials.username })),
            )
                .into_response()
        }
        Ok(NewUser::NameTaken) => json_error(
            StatusCode::CONFLICT,
            "username_taken",
            "this username is taken",
        ),
        Err(error) => {
            warn!(%error, "registration failed");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "user store unavailable; retry",
            )
        }
    }
}

pub async fn login(
    State(state): State<Arc<NodeState>>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Response {
    let Json(credentials) = match body {
        Ok(body) => body,
        Err(rejection) => return bad_body(rejection),
    };
    let stored = match queries::user_credentials(&state.pool, &credentials.username).await {
        Ok(stored) => stored,
        Err(error) => {
            warn!(%error, "login lookup failed");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "user store unavailable; retry",
            );
        }
    };
    let Some((user, hash)) = stored else {
        ::metrics::counter!("im_logins_total", "result" => "refused").increment(1);
        return json_error(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong username or password",
        );
    };
    if !state.auth.check_password(credentials.password, hash).await {
        ::metrics::counter!("im_logins_total", "result" => "refused").increment(1);
        return json_error(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong username or password",
        );
    }
    ::metrics::counter!("im_logins_total", "result" => "ok").increment(1);
    let (token, expires_at) = state.auth.issue(user);
    Json(serde_json::json!({ "user_id": user, "token": token, "expires_at": expires_at }))
        .into_response()
}
