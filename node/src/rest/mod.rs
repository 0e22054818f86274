//! The REST API of the chat features: profiles, friends, groups, conversations, media and devices.
//!
//! Every route needs `Authorization: Bearer <token>` (`AuthUser`). Every error is JSON
//! `{"error": code, "message": text}`; the routes and their shapes are in `docs/openapi.yaml`.

pub mod accounts;
pub mod conversations;
pub mod devices;
pub mod friends;
pub mod groups;
pub mod input;
pub mod invitations;
pub mod media;
pub mod profiles;
pub mod spool;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::Response;
use common::frame::{Ack, Attrs, ErrorFrame};
use common::ids::{ConvId, UserId};
use tokio::sync::oneshot;

use crate::error::json_error;
use crate::identity::auth::Claims;
use crate::identity::revocation::{authenticate, Refusal, TokenRefusal};
use crate::state::NodeState;
use crate::storage::writer::{AckSink, Submission, Target};
use crate::storage::StoreError;

/// The authenticated caller of a REST route.
pub struct AuthUser(pub UserId);

/// The caller's verified token, for routes that act on the token itself (logout).
pub struct AuthToken(pub Claims);

impl FromRequestParts<Arc<NodeState>> for AuthToken {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<NodeState>,
    ) -> Result<Self, Self::Rejection> {
        let authorization = parts.headers.get(header::AUTHORIZATION);
        let token = crate::rest::input::bearer_token(authorization.map(|v| v.as_bytes()))
            .ok_or_else(|| {
                json_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing Authorization: Bearer token",
                )
            })?;
        authenticate(&state.auth, &state.revocations, token)
            .await
            .map(AuthToken)
            .map_err(token_refused)
    }
}

impl FromRequestParts<Arc<NodeState>> for AuthUser {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<NodeState>,
    ) -> Result<Self, Self::Rejection> {
        let AuthToken(claims) = AuthToken::from_request_parts(parts, state).await?;
        Ok(AuthUser(claims.user))
    }
}

/// The HTTP answer to a refused token: 401 (bad, expired, revoked), or 503 when revocation cannot be checked.
pub fn token_refused(refusal: TokenRefusal) -> Response {
    match refusal {
        TokenRefusal::Refused(Refusal::Unavailable) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &refusal.to_string(),
        ),
        _ => json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &refusal.to_string(),
        ),
    }
}

/// The answer to a store failure: logged, and 503 to the caller.
pub fn unavailable(error: StoreError) -> Response {
    axum::response::IntoResponse::into_response(crate::error::Error::from(error))
}

pub fn bad_request(code: &str, message: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, code, message)
}

pub fn forbidden(message: &str) -> Response {
    json_error(StatusCode::FORBIDDEN, "forbidden", message)
}

pub fn not_found(message: &str) -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", message)
}

/// The answer for a conversation the caller may not see: it does not exist, or the caller is not a member. The two
/// must be indistinguishable (status, code and body), so ids cannot be probed.
pub fn no_such_conversation() -> Response {
    not_found("no such conversation")
}

/// The same for the group routes (a missing group, a group without the caller, or a 1:1 conversation).
pub fn no_such_group() -> Response {
    not_found("no such group")
}

/// Receives the outcome of a server-made message.
struct OneshotSink(Mutex<Option<oneshot::Sender<Result<Ack, ErrorFrame>>>>);

impl AckSink for OneshotSink {
    fn answer(&self, outcome: Result<Ack, ErrorFrame>, _received_at: Instant) {
        if let Some(sender) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = sender.send(outcome);
        }
    }
}

/// Commits a `system` message (group changes) through the writer and waits for it; `members` are its recipients.
pub async fn system_message(
    state: &NodeState,
    actor: UserId,
    conv: ConvId,
    members: Arc<[UserId]>,
    attrs: Attrs,
) -> Result<Ack, Response> {
    let (tx, rx) = oneshot::channel();
    let submission = Submission {
        sender: actor,
        sender_device: Arc::from("server"),
        cid: format!("sys-{:032x}", rand::random::<u128>()),
        target: Target::Conv(conv),
        members,
        kind: common::frame::kinds::SYSTEM.into(),
        body: String::new(),
        attrs: Some(attrs),
        system: true,
        recall_target: None,
        reply: Arc::new(OneshotSink(Mutex::new(Some(tx)))),
        received_at: Instant::now(),
    };
    if state.writer.submit(submission).await.is_err() {
        return Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining; retry elsewhere",
        ));
    }
    match tokio::time::timeout(Duration::from_secs(10), rx).await {
        Ok(Ok(Ok(ack))) => Ok(ack),
        Ok(Ok(Err(frame))) => Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            frame.code.as_str(),
            &frame.msg,
        )),
        _ => Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the change could not be recorded in time",
        )),
    }
}
