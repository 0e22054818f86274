//! Conversations: my list with unread counts, history paging, and who has read a message.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::ids::{ConvId, Seq};
use serde::Deserialize;
use serde_json::json;

use super::{bad_request, no_such_conversation, unavailable, AuthUser};
use crate::rest::input::{ApiPath, ApiQuery};
use crate::state::NodeState;
use crate::storage::conversations;

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default = "default_list_limit")]
    limit: i64,
}

fn default_list_limit() -> i64 {
    200
}

/// `GET /v1/conversations`: mine, most recently active first, each with its last message and unread count, and
/// the total unread.
pub async fn list(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Response {
    let limit = query.limit.clamp(1, 1000);
    let (list, total_unread) = match conversations::conversation_list(&state.pool, me, limit).await
    {
        Ok(found) => found,
        Err(error) => return unavailable(error),
    };
    let conversations: Vec<_> = list
        .into_iter()
        .map(|summary| {
            let last_message = summary.last_message.map(|msg| {
                json!({
                    "id": msg.id, "conv": summary.id, "seq": msg.seq, "from": msg.from,
                    "cid": msg.cid, "kind": msg.kind, "body": msg.body,
                    "ts": msg.ts, "attrs": msg.attrs,
                    "recalled": msg.recalled,
                })
            });
            json!({
                "id": summary.id,
                "kind": if summary.direct { "direct" } else { "group" },
                "title": summary.title,
                "peer": summary.peer,
                "last_seq": summary.last_seq,
                "read_seq": summary.read_seq,
                "unread": (summary.last_seq - summary.read_seq).max(0),
                "last_activity_ms": summary.last_activity_ms,
                "last_message": last_message,
            })
        })
        .collect();
    Json(json!({ "conversations": conversations, "total_unread": total_unread })).into_response()
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    before_seq: Option<Seq>,
    #[serde(default = "default_history_limit")]
    limit: i64,
}

fn default_history_limit() -> i64 {
    50
}

/// Whether `user` is in `conv`, as Postgres says now: who may read is never decided by a cache.
async fn is_member(state: &NodeState, conv: ConvId, user: i64) -> Result<bool, Response> {
    match crate::storage::relations::conversation_access(
        &state.pool,
        user,
        conv,
        state.config.require_friendship,
    )
    .await
    {
        Ok(access) => Ok(access.is_some_and(|access| access.member)),
        Err(error) => Err(unavailable(error)),
    }
}

/// `GET /v1/conversations/{id}/messages?before_seq=&limit=`: history, newest first (members only; anyone else gets
/// the answer for a missing conversation).
pub async fn history(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(conv): ApiPath<ConvId>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Response {
    match is_member(&state, conv, me).await {
        Ok(true) => {}
        Ok(false) => return no_such_conversation(),
        Err(response) => return response,
    }
    let limit = query.limit.clamp(1, 200);
    let before = query.before_seq.unwrap_or(i64::MAX);
    match conversations::history(&state.pool, conv, before, limit).await {
        Ok((messages, more)) => {
            Json(json!({ "conv": conv, "messages": messages, "more": more })).into_response()
        }
        Err(error) => unavailable(error),
    }
}

#[derive(Deserialize)]
pub struct ReadsQuery {
    seq: Seq,
}

/// `GET /v1/conversations/{id}/reads?seq=N`: which other members have read up to N (members only).
pub async fn reads(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(conv): ApiPath<ConvId>,
    ApiQuery(query): ApiQuery<ReadsQuery>,
) -> Response {
    match is_member(&state, conv, me).await {
        Ok(true) => {}
        Ok(false) => return no_such_conversation(),
        Err(response) => return response,
    }
    if query.seq < 1 {
        return bad_request("bad_request", "seq must be >= 1");
    }
    match conversations::read_receipts(&state.pool, conv, query.seq).await {
        Ok((read, unread)) => Json(
            json!({ "conv": conv, "seq": query.seq, "read_count": read.len(), "read": read,
                     "unread_count": unread.len(), "unread": unread }),
        )
        .into_response(),
        Err(error) => unavailable(error),
    }
}
