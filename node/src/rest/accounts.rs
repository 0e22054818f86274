//! Registration and login over REST.
//!
//! `POST /v1/users {username, password}` → 201 `{id, username}` (409 if the name is taken);
//! `POST /v1/sessions {username, password}` → 200 `{user_id, token, expires_at}` (401 on bad credentials, 429
//! after too many failures for the username or the client address within the window, counted cluster-wide);
//! `POST /v1/auth/logout` revokes the presented token, `POST /v1/auth/logout-all` every token of its user issued
//! until now (`revocation.rs`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use common::ids::UserId;
use serde::Deserialize;
use tracing::{info_span, warn, Instrument};

use crate::error::json_error;
use crate::identity::auth::{token_id_hex, unix_now_ms};
use crate::identity::login_throttle::{self, Admission, LoginLimits};
use crate::peer::PeerAddr;
use crate::rest::AuthToken;
use crate::state::NodeState;
use crate::storage::queries::{self, NewUser};

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

fn invalid_credentials() -> Response {
    json_error(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "wrong username or password",
    )
}

fn throttled_response(retry_after: Duration) -> Response {
    let mut response = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failures",
        "too many failed logins; try again later",
    );
    if let Ok(value) = axum::http::HeaderValue::from_str(&retry_after.as_secs().to_string()) {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, value);
    }
    response
}

pub async fn login(
    State(state): State<Arc<NodeState>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Response {
    let Json(credentials) = match body {
        Ok(body) => body,
        Err(rejection) => return bad_body(rejection),
    };
    if !valid_username(&credentials.username) {
        // No such user can exist; answering at once also keeps junk out of the failure counters.
        ::metrics::counter!("im_logins_total", "result" => "refused").increment(1);
        return invalid_credentials();
    }
    let limits = LoginLimits {
        per_user: state.config.login_max_failures_per_user,
        per_address: state.config.login_max_failures_per_ip,
        window: Duration::from_secs(state.config.login_failure_window_secs),
    };
    let attempt = match login_throttle::admit(
        state.redis.clone(),
        limits,
        &credentials.username,
        peer.ip(),
    )
    .await
    {
        Admission::Refused { retry_after, .. } => return throttled_response(retry_after),
        Admission::Admitted(attempt) => attempt,
    };
    let stored = match queries::user_credentials(&state.pool, &credentials.username).await {
        Ok(stored) => stored,
        Err(error) => {
            warn!(%error, "login lookup failed");
            attempt.abandoned().await;
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "user store unavailable; retry",
            );
        }
    };
    let verified = match stored {
        Some((user, hash)) => state
            .auth
            .check_password(credentials.password, hash)
            .await
            .then_some(user),
        None => None,
    };
    let Some(user) = verified else {
        attempt.failed();
        ::metrics::counter!("im_logins_total", "result" => "refused").increment(1);
        return invalid_credentials();
    };
    attempt.succeeded().await;
    ::metrics::counter!("im_logins_total", "result" => "ok").increment(1);
    let (token, expires_at) = state.auth.issue(user);
    Json(serde_json::json!({ "user_id": user, "token": token, "expires_at": expires_at }))
        .into_response()
}

/// `POST /v1/auth/logout`: revokes the presented token everywhere and closes its connections on every node.
pub async fn logout(State(state): State<Arc<NodeState>>, AuthToken(claims): AuthToken) -> Response {
    let span = info_span!("logout", user = claims.user);
    async move {
        if let Err(error) = state.revocations.revoke_token(&claims).await {
            warn!(%error, "could not store a token revocation");
            return revocation_unavailable();
        }
        ::metrics::counter!("im_tokens_revoked_total", "scope" => "token").increment(1);
        announce(&state, claims.user, Some(claims.id), None).await;
        Json(serde_json::json!({ "revoked": "token", "user_id": claims.user })).into_response()
    }
    .instrument(span)
    .await
}

/// `POST /v1/auth/logout-all`: revokes every token of the caller issued until now (a per-user "not before"),
/// everywhere, and closes their connections on every node. Tokens issued afterwards work.
pub async fn logout_all(
    State(state): State<Arc<NodeState>>,
    AuthToken(claims): AuthToken,
) -> Response {
    let span = info_span!("logout_all", user = claims.user);
    async move {
        // Remember the "not before" as long as the longest-lived token it can revoke.
        let lifetime = state.auth.token_ttl() + Duration::from_secs(60);
        let not_before = match state
            .revocations
            .revoke_user_before(claims.user, unix_now_ms(), lifetime)
            .await
        {
            Ok(not_before) => not_before,
            Err(error) => {
                warn!(%error, "could not store a user's revocation");
                return revocation_unavailable();
            }
        };
        ::metrics::counter!("im_tokens_revoked_total", "scope" => "user").increment(1);
        announce(&state, claims.user, None, Some(not_before)).await;
        Json(serde_json::json!({
            "revoked": "all",
            "user_id": claims.user,
            "not_before_ms": not_before,
        }))
        .into_response()
    }
    .instrument(span)
    .await
}

/// Closes the revoked connections everywhere and forgets the devices of the revoked logins (best effort: the
/// device list drops expired and revoked logins anyway when it is next read).
async fn announce(
    state: &NodeState,
    user: UserId,
    token: Option<u128>,
    not_before_ms: Option<u64>,
) {
    crate::fanout::logouts::announce_revoked(state, user, token, not_before_ms).await;
    let token_hex = token.map(token_id_hex);
    let not_before = not_before_ms.and_then(|ms| i64::try_from(ms).ok());
    if let Err(error) =
        crate::storage::devices::forget_revoked(&state.pool, user, token_hex.as_deref(), not_before)
            .await
    {
        warn!(%error, "could not forget the devices of a revoked login");
    }
}

fn revocation_unavailable() -> Response {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "revocation store unavailable; the token was not revoked; retry",
    )
}
