//! Group invitations: how someone who is not the inviter's friend joins a group only with their consent.
//!
//! `GET /v1/invitations` lists mine; `POST /v1/invitations/{group}/accept` joins (a `members_added` system message
//! records it), `.../decline` drops it. An invitation from someone the invitee blocked is never shown, told or
//! accepted, but the inviter's answer does not differ, so a block cannot be probed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::frame::{Attrs, Notice};
use common::ids::{ConvId, UserId};
use common::ServerFrame;
use serde_json::json;

use super::{not_found, system_message, unavailable, AuthUser};
use crate::error::json_error;
use crate::rest::input::ApiPath;
use crate::state::NodeState;
use crate::storage::invitations::{self, AcceptOutcome};

/// Tells each of `users` (in real time, on any node) that `inviter` invited them to `conv`.
pub async fn tell_invited(state: &NodeState, inviter: UserId, conv: ConvId, users: &[UserId]) {
    if users.is_empty() {
        return;
    }
    ::metrics::counter!("im_group_invitations_total").increment(users.len() as u64);
    ::metrics::counter!("im_notices_total", "kind" => "group_invitation")
        .increment(users.len() as u64);
    let frame = ServerFrame::Notice(Notice {
        kind: "group_invitation".into(),
        user: inviter,
        request: None,
        note: None,
        online: None,
        conv: Some(conv),
    });
    state.delivery.event_to_users(users, None, &frame).await;
}

/// `GET /v1/invitations`: my pending group invitations.
pub async fn list(State(state): State<Arc<NodeState>>, AuthUser(me): AuthUser) -> Response {
    match invitations::invitations_of(&state.pool, me).await {
        Ok(invitations) => Json(json!({ "invitations": invitations })).into_response(),
        Err(error) => unavailable(error),
    }
}

fn no_such_invitation() -> Response {
    not_found("no such invitation")
}

/// `POST /v1/invitations/{group}/accept`: join the group (within its member cap).
pub async fn accept(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(conv): ApiPath<ConvId>,
) -> Response {
    let cap = state.config.group_member_cap;
    let outcome = invitations::accept(&state.pool, conv, me, cap).await;
    match outcome {
        Ok(AcceptOutcome::Joined(all)) => {
            state.delivery.members_changed(conv).await;
            ::metrics::counter!("im_group_changes_total", "event" => "members_added").increment(1);
            let attrs = Attrs {
                event: Some("members_added".into()),
                users: Some(vec![me]),
                ..Attrs::default()
            };
            if let Err(response) = system_message(&state, me, conv, all.into(), attrs).await {
                return response;
            }
            Json(json!({ "id": conv })).into_response()
        }
        Ok(AcceptOutcome::NoInvitation) => no_such_invitation(),
        Ok(AcceptOutcome::Full) => json_error(
            StatusCode::CONFLICT,
            "group_full",
            &format!("groups have at most {cap} members"),
        ),
        Err(error) => unavailable(error),
    }
}

/// `POST /v1/invitations/{group}/decline`.
pub async fn decline(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(conv): ApiPath<ConvId>,
) -> Response {
    match invitations::decline(&state.pool, conv, me).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => no_such_invitation(),
        Err(error) => unavailable(error),
    }
}
