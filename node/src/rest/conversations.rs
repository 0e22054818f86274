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
use crate::storage::queries::{message_from_row, KIND_DIRECT};

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
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let rows = client
        .query(
            "SELECT c.id, c.kind, c.title, c.direct_low, c.direct_high, c.last_seq, m.read_seq, c.last_msg_ms,
                    msg.id, msg.seq, msg.sender, msg.cid, msg.kind, msg.body, msg.created_ms, msg.attrs::text, msg.recalled
             FROM conversation_members m JOIN conversations c ON c.id = m.conv_id
             LEFT JOIN messages msg ON msg.conv_id = c.id AND msg.seq = c.last_seq
             WHERE m.user_id = $1 ORDER BY c.last_msg_ms DESC, c.id DESC LIMIT $2",
            &[&me, &limit],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => return unavailable(error.into()),
    };
    let total_unread_query = client
        .query_one(
            "SELECT coalesce(sum(c.last_seq - m.read_seq), 0)::bigint FROM conversation_members m
             JOIN conversations c ON c.id = m.conv_id WHERE m.user_id = $1",
            &[&me],
        )
        .await;
    let total_unread: i64 = match total_unread_query {
        Ok(row) => row.get(0),
        Err(error) => return unavailable(error.into()),
    };
    let mut conversations = Vec::with_capacity(rows.len());
    for row in &rows {
        let conv: ConvId = row.get(0);
        let kind: i16 = row.get(1);
        let last_seq: Seq = row.get(5);
        let read_seq: Seq = row.get(6);
        let peer = (kind == KIND_DIRECT).then(|| {
            let low: Option<i64> = row.get(3);
            let high: Option<i64> = row.get(4);
            if low == Some(me) {
                high
            } else {
                low
            }
        });
        // The last message's columns start at index 8; `message_from_row` reads 0..=8 of its own layout.
        let last_message = match row.get::<_, Option<i64>>(8) {
            Some(id) => {
                let attrs: Option<String> = row.get(15);
                Some(json!({
                    "id": id, "conv": conv, "seq": row.get::<_, i64>(9), "from": row.get::<_, i64>(10),
                    "cid": row.get::<_, String>(11), "kind": row.get::<_, String>(12), "body": row.get::<_, String>(13),
                    "ts": row.get::<_, i64>(14), "attrs": attrs.and_then(|a| serde_json::from_str::<serde_json::Value>(&a).ok()),
                    "recalled": row.get::<_, bool>(16),
                }))
            }
            None => None,
        };
        conversations.push(json!({
            "id": conv,
            "kind": if kind == KIND_DIRECT { "direct" } else { "group" },
            "title": row.get::<_, String>(2),
            "peer": peer.flatten(),
            "last_seq": last_seq,
            "read_seq": read_seq,
            "unread": (last_seq - read_seq).max(0),
            "last_activity_ms": row.get::<_, i64>(7),
            "last_message": last_message,
        }));
    }
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

async fn is_member(state: &NodeState, conv: ConvId, user: i64) -> Result<bool, Response> {
    match state.delivery.members.get(conv).await {
        Ok(Some(members)) => Ok(members.contains(user)),
        Ok(None) => Ok(false),
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
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let rows = client
        .query(
            "SELECT id, seq, sender, cid, kind, body, created_ms, attrs::text, recalled FROM messages
             WHERE conv_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
            &[&conv, &before, &(limit + 1)],
        )
        .await;
    match rows {
        Ok(rows) => {
            let more = rows.len() as i64 > limit;
            let mut messages = Vec::with_capacity(rows.len());
            for row in rows.iter().take(limit as usize) {
                match message_from_row(row, conv) {
                    Ok(msg) => messages.push(msg),
                    Err(error) => return unavailable(error),
                }
            }
            Json(json!({ "conv": conv, "messages": messages, "more": more })).into_response()
        }
        Err(error) => unavailable(error.into()),
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
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let rows = client
        .query(
            "SELECT m.user_id, m.read_seq >= $2 FROM conversation_members m
             WHERE m.conv_id = $1 AND m.user_id <> coalesce((SELECT sender FROM messages WHERE conv_id = $1 AND seq = $2), 0)
             ORDER BY m.user_id",
            &[&conv, &query.seq],
        )
        .await;
    match rows {
        Ok(rows) => {
            let read: Vec<i64> = rows
                .iter()
                .filter(|r| r.get::<_, bool>(1))
                .map(|r| r.get(0))
                .collect();
            let unread: Vec<i64> = rows
                .iter()
                .filter(|r| !r.get::<_, bool>(1))
                .map(|r| r.get(0))
                .collect();
            Json(
                json!({ "conv": conv, "seq": query.seq, "read_count": read.len(), "read": read,
                         "unread_count": unread.len(), "unread": unread }),
            )
            .into_response()
        }
        Err(error) => unavailable(error.into()),
    }
}
