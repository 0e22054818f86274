//! Friend requests, friends and blocks.
//!
//! Every change that affects who may message whom drops the pair from every node's send-permission cache
//! (`PairChanged`). The other side is told in real time by a `notice` frame, and finds the same state through
//! `GET /v1/friends/requests` after being offline.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::frame::Notice;
use common::ids::UserId;
use common::ServerFrame;
use router::BusMessage;
use serde::Deserialize;
use serde_json::json;

use super::{bad_request, not_found, unavailable, AuthUser};
use crate::error::json_error;
use crate::rest::input::ApiPath;
use crate::state::NodeState;
use crate::storage::friends::{self, BlockOutcome, RequestOutcome};

async fn notify(
    state: &NodeState,
    to: UserId,
    kind: &str,
    about: UserId,
    request: Option<i64>,
    note: Option<String>,
) {
    ::metrics::counter!("im_notices_total", "kind" => kind.to_string()).increment(1);
    let frame = ServerFrame::Notice(Notice {
        kind: kind.into(),
        user: about,
        request,
        note,
        online: None,
        conv: None,
    });
    state.delivery.event_to_users(&[to], None, &frame).await;
}

async fn pair_changed(state: &NodeState, a: UserId, b: UserId) {
    state.pairs.invalidate(a, b);
    state
        .delivery
        .broadcast(BusMessage::PairChanged { a, b })
        .await;
}

#[derive(Deserialize)]
pub struct NewRequest {
    user: UserId,
    #[serde(default)]
    note: String,
}

/// `POST /v1/friends/requests {user, note}`.
pub async fn request(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    body: Result<Json<NewRequest>, JsonRejection>,
) -> Response {
    let Ok(Json(new)) = body else {
        return bad_request("bad_request", "expected {user, note}");
    };
    if new.user == me {
        return bad_request("bad_request", "you cannot befriend yourself");
    }
    if new.note.chars().count() > 200 {
        return bad_request("bad_note", "notes are at most 200 characters");
    }
    let standing = match friends::request_standing(&state.pool, me, new.user).await {
        Ok(standing) => standing,
        Err(error) => return unavailable(error),
    };
    if !standing.exists {
        return not_found("no such user");
    }
    if standing.already_friends {
        return json_error(
            StatusCode::CONFLICT,
            "already_friends",
            "you are already friends",
        );
    }
    if new.note.contains('\0') {
        return bad_request("bad_note", "note contains U+0000, which cannot be stored");
    }
    match friends::insert_request(&state.pool, me, new.user, &new.note).await {
        Ok(RequestOutcome::Created(id)) => {
            // A request to someone who blocked you is stored and answered like any other (the answer must not
            // reveal the block), but they are never told and never see it.
            if !standing.blocked_by_them {
                notify(
                    &state,
                    new.user,
                    "friend_request",
                    me,
                    Some(id),
                    Some(new.note),
                )
                .await;
            }
            (StatusCode::CREATED, Json(json!({ "id": id }))).into_response()
        }
        Ok(RequestOutcome::AlreadyPending) => json_error(
            StatusCode::CONFLICT,
            "request_pending",
            "a request to this user is already pending",
        ),
        Err(error) => unavailable(error),
    }
}

/// `GET /v1/friends/requests`: pending requests to me, and my requests with their status.
pub async fn list_requests(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
) -> Response {
    let requests = match friends::requests_of(&state.pool, me).await {
        Ok(requests) => requests,
        Err(error) => return unavailable(error),
    };
    let (mut incoming, mut outgoing) = (Vec::new(), Vec::new());
    for request in requests {
        let item = json!({
            "id": request.id, "from": request.from, "to": request.to, "note": request.note,
            "status": request.status.name(), "created_at": request.created_at,
        });
        if request.from == me {
            outgoing.push(item);
        } else {
            incoming.push(item);
        }
    }
    Json(json!({ "incoming": incoming, "outgoing": outgoing })).into_response()
}

/// `POST /v1/friends/requests/{id}/accept` and `/reject`: only the recipient may answer, once.
pub async fn answer(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath((id, action)): ApiPath<(i64, String)>,
) -> Response {
    let accept = match action.as_str() {
        "accept" => true,
        "reject" => false,
        _ => return not_found("no such action"),
    };
    match friends::answer_request(&state.pool, id, me, accept).await {
        Ok(Some(from)) => {
            if accept {
                pair_changed(&state, me, from).await;
            }
            let kind = if accept {
                "friend_accepted"
            } else {
                "friend_rejected"
            };
            notify(&state, from, kind, me, Some(id), None).await;
            Json(json!({ "id": id, "status": if accept { "accepted" } else { "rejected" } }))
                .into_response()
        }
        Ok(None) => not_found("no pending request with this id addressed to you"),
        Err(error) => unavailable(error),
    }
}

/// `GET /v1/friends`: my friends with their profiles.
pub async fn list(State(state): State<Arc<NodeState>>, AuthUser(me): AuthUser) -> Response {
    match friends::friend_profiles(&state.pool, me).await {
        Ok(profiles) => {
            let friends: Vec<_> = profiles
                .iter()
                .map(|p| {
                    json!({"id": p.id, "username": p.username,
                           "display_name": p.display_name, "avatar": p.avatar})
                })
                .collect();
            Json(json!({ "friends": friends })).into_response()
        }
        Err(error) => unavailable(error),
    }
}

/// `DELETE /v1/friends/{user}`.
pub async fn remove(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(other): ApiPath<UserId>,
) -> Response {
    match friends::remove_friendship(&state.pool, me, other).await {
        Ok(false) => not_found("not a friend"),
        Ok(true) => {
            pair_changed(&state, me, other).await;
            notify(&state, other, "friend_removed", me, None, None).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => unavailable(error),
    }
}

/// `PUT /v1/blocks/{user}` and `DELETE /v1/blocks/{user}`.
pub async fn block(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(other): ApiPath<UserId>,
) -> Response {
    if other == me {
        return bad_request("bad_request", "you cannot block yourself");
    }
    match friends::block(&state.pool, me, other).await {
        Ok(BlockOutcome::Blocked) => {
            pair_changed(&state, me, other).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(BlockOutcome::UnknownUser) => not_found("no such user"),
        Err(error) => unavailable(error),
    }
}

pub async fn unblock(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(other): ApiPath<UserId>,
) -> Response {
    match friends::unblock(&state.pool, me, other).await {
        Ok(()) => {
            pair_changed(&state, me, other).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => unavailable(error),
    }
}

/// `GET /v1/blocks`.
pub async fn list_blocks(State(state): State<Arc<NodeState>>, AuthUser(me): AuthUser) -> Response {
    match friends::blocked_by(&state.pool, me).await {
        Ok(blocked) => Json(json!({ "blocked": blocked })).into_response(),
        Err(error) => unavailable(error),
    }
}
