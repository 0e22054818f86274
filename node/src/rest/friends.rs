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
use tokio_postgres::error::SqlState;

use super::{bad_request, not_found, unavailable, AuthUser};
use crate::error::json_error;
use crate::rest::input::ApiPath;
use crate::state::NodeState;

const PENDING: i16 = 0;
const ACCEPTED: i16 = 1;
const REJECTED: i16 = 2;

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
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let check = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = $2),
                    EXISTS (SELECT 1 FROM friendships WHERE user_id = $1 AND friend_id = $2),
                    EXISTS (SELECT 1 FROM blocks WHERE user_id = $2 AND blocked_id = $1)",
            &[&me, &new.user],
        )
        .await;
    let (exists, friends, blocked) = match check {
        Ok(row) => (
            row.get::<_, bool>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2),
        ),
        Err(error) => return unavailable(error.into()),
    };
    if !exists {
        return not_found("no such user");
    }
    if friends {
        return json_error(
            StatusCode::CONFLICT,
            "already_friends",
            "you are already friends",
        );
    }
    if new.note.contains('\0') {
        return bad_request("bad_note", "note contains U+0000, which cannot be stored");
    }
    let inserted = client
        .query_one(
            "INSERT INTO friend_requests (from_user, to_user, note) VALUES ($1, $2, $3) RETURNING id",
            &[&me, &new.user, &new.note],
        )
        .await;
    match inserted {
        Ok(row) => {
            let id: i64 = row.get(0);
            // A request to someone who blocked you is stored and answered like any other (the answer must not
            // reveal the block), but they are never told and never see it.
            if !blocked {
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
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => json_error(
            StatusCode::CONFLICT,
            "request_pending",
            "a request to this user is already pending",
        ),
        Err(error) => unavailable(error.into()),
    }
}

/// `GET /v1/friends/requests`: pending requests to me, and my requests with their status.
pub async fn list_requests(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
) -> Response {
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let rows = client
        .query(
            "SELECT id, from_user, to_user, note, status, extract(epoch from created_at)::bigint
             FROM friend_requests r
             WHERE (to_user = $1 AND status = 0
                    AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.user_id = $1 AND b.blocked_id = r.from_user))
                OR from_user = $1
             ORDER BY id DESC LIMIT 500",
            &[&me],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => return unavailable(error.into()),
    };
    let status_name = |s: i16| match s {
        PENDING => "pending",
        ACCEPTED => "accepted",
        _ => "rejected",
    };
    let (mut incoming, mut outgoing) = (Vec::new(), Vec::new());
    for row in rows {
        let from: UserId = row.get(1);
        let item = json!({
            "id": row.get::<_, i64>(0), "from": from, "to": row.get::<_, i64>(2), "note": row.get::<_, String>(3),
            "status": status_name(row.get(4)), "created_at": row.get::<_, i64>(5),
        });
        if from == me {
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
    let mut client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let result: Result<Option<UserId>, tokio_postgres::Error> = async {
        let tx = client.transaction().await?;
        let status = if accept { ACCEPTED } else { REJECTED };
        let row = tx
            .query_opt(
                "UPDATE friend_requests SET status = $3, decided_at = now()
                 WHERE id = $1 AND to_user = $2 AND status = 0
                   AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.user_id = $2 AND b.blocked_id = friend_requests.from_user)
                 RETURNING from_user",
                &[&id, &me, &status],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let from: UserId = row.get(0);
        if accept {
            tx.execute(
                "INSERT INTO friendships (user_id, friend_id) VALUES ($1, $2), ($2, $1) ON CONFLICT DO NOTHING",
                &[&me, &from],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(from))
    }
    .await;
    match result {
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
        Err(error) => unavailable(error.into()),
    }
}

/// `GET /v1/friends`: my friends with their profiles.
pub async fn list(State(state): State<Arc<NodeState>>, AuthUser(me): AuthUser) -> Response {
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let rows = client
        .query(
            "SELECT u.id, u.username, u.display_name, u.avatar FROM friendships f JOIN users u ON u.id = f.friend_id
             WHERE f.user_id = $1 ORDER BY u.username",
            &[&me],
        )
        .await;
    match rows {
        Ok(rows) => {
            let friends: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({"id": r.get::<_, i64>(0), "username": r.get::<_, String>(1),
                           "display_name": r.get::<_, String>(2), "avatar": r.get::<_, Option<String>>(3)})
                })
                .collect();
            Json(json!({ "friends": friends })).into_response()
        }
        Err(error) => unavailable(error.into()),
    }
}

/// `DELETE /v1/friends/{user}`.
pub async fn remove(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(other): ApiPath<UserId>,
) -> Response {
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    match client
        .execute(
            "DELETE FROM friendships WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)",
            &[&me, &other],
        )
        .await
    {
        Ok(0) => not_found("not a friend"),
        Ok(_) => {
            pair_changed(&state, me, other).await;
            notify(&state, other, "friend_removed", me, None, None).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => unavailable(error.into()),
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
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let result = client
        .execute(
            "INSERT INTO blocks (user_id, blocked_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&me, &other],
        )
        .await;
    match result {
        Ok(_) => {
            pair_changed(&state, me, other).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) if error.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
            not_found("no such user")
        }
        Err(error) => unavailable(error.into()),
    }
}

pub async fn unblock(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(other): ApiPath<UserId>,
) -> Response {
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    match client
        .execute(
            "DELETE FROM blocks WHERE user_id = $1 AND blocked_id = $2",
            &[&me, &other],
        )
        .await
    {
        Ok(_) => {
            pair_changed(&state, me, other).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => unavailable(error.into()),
    }
}

/// `GET /v1/blocks`.
pub async fn list_blocks(State(state): State<Arc<NodeState>>, AuthUser(me): AuthUser) -> Response {
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    match client
        .query(
            "SELECT blocked_id FROM blocks WHERE user_id = $1 ORDER BY blocked_id",
            &[&me],
        )
        .await
    {
        Ok(rows) => {
            Json(json!({ "blocked": rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>() }))
                .into_response()
        }
        Err(error) => unavailable(error.into()),
    }
}
