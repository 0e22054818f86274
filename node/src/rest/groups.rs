//! Groups: create, add, remove, leave, rename, transfer ownership, admins, and listings.
//!
//! Consent: a member adds their friends (no block either way) directly; anyone else gets an invitation they accept
//! or decline (`invitations.rs`). Roles: 0 member, 1 admin, 2 owner. Any member may add or invite; admins and the owner remove members and
//! rename; only the owner appoints admins and transfers ownership. Every change is one transaction (the
//! conversation row is locked, so concurrent adds cannot overshoot the member cap), then every node drops its
//! cached member list, then a `system` message records the change in the group's timeline.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::frame::Attrs;
use common::ids::{ConvId, UserId};
use serde::Deserialize;
use serde_json::json;
use tokio_postgres::GenericClient;

use super::{
    bad_request, forbidden, invitations, no_such_group, system_message, unavailable, AuthUser,
};
use crate::error::json_error;
use crate::rest::input::ApiPath;
use crate::state::NodeState;
use crate::storage::queries::KIND_GROUP;
use crate::storage::relations;
use crate::storage::StoreError;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const MEMBER: i16 = 0;
const ADMIN: i16 = 1;
const OWNER: i16 = 2;

/// The caller's role in a group, or `None` if the group does not exist or the caller is not in it.
async fn role_of<C: GenericClient>(
    client: &C,
    conv: ConvId,
    user: UserId,
) -> Result<Option<i16>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT m.role FROM conversation_members m JOIN conversations c ON c.id = m.conv_id
             WHERE m.conv_id = $1 AND m.user_id = $2 AND c.kind = $3",
            &[&conv, &user, &KIND_GROUP],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

async fn member_ids<C: GenericClient>(
    client: &C,
    conv: ConvId,
) -> Result<Vec<UserId>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT user_id FROM conversation_members WHERE conv_id = $1",
            &[&conv],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// After a committed change: drop cached member lists everywhere, then record it in the timeline.
async fn record(
    state: &NodeState,
    actor: UserId,
    conv: ConvId,
    recipients: Vec<UserId>,
    attrs: Attrs,
) -> Result<i64, Response> {
    state.delivery.members_changed(conv).await;
    ::metrics::counter!("im_group_changes_total", "event" => attrs.event.clone().unwrap_or_default()).increment(1);
    let ack = system_message(state, actor, conv, recipients.into(), attrs).await?;
    Ok(ack.seq)
}

fn event(name: &str, users: Vec<UserId>) -> Attrs {
    Attrs {
        event: Some(name.into()),
        users: Some(users),
        ..Attrs::default()
    }
}

/// A new group's id, the members added directly, the users invited, and the invitees to tell.
type Created = (ConvId, Vec<UserId>, Vec<UserId>, Vec<UserId>);

#[derive(Deserialize)]
pub struct NewGroup {
    title: String,
    #[serde(default)]
    members: Vec<UserId>,
}

/// `POST /v1/groups {title, members}`: the caller becomes the owner.
pub async fn create(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    body: Result<Json<NewGroup>, JsonRejection>,
) -> Response {
    let Ok(Json(new)) = body else {
        return bad_request("bad_request", "expected {title, members}");
    };
    if let Err(rejected) = crate::rest::input::group_title(&new.title) {
        return rejected.into_response();
    }
    let mut others: Vec<UserId> = new.members.into_iter().filter(|u| *u != me).collect();
    others.sort_unstable();
    others.dedup();
    if others.len() as i64 + 1 > state.config.group_member_cap {
        return json_error(
            StatusCode::CONFLICT,
            "group_full",
            "more members than the group member cap",
        );
    }
    let mut client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let created: Result<Option<Created>, StoreError> = async {
        let tx = client.transaction().await?;
        // Consent: friends (no block either way) are added, everyone else is invited.
        let Some((direct, invited)) = relations::split_direct_adds(&tx, me, &others, state.config.group_consent).await? else {
            return Ok(None);
        };
        let conv: ConvId = tx
            .query_one(
                "INSERT INTO conversations (kind, title, owner) VALUES ($1, $2, $3) RETURNING id",
                &[&KIND_GROUP, &new.title, &me],
            )
            .await?
            .try_get(0)?;
        tx.execute(
            "INSERT INTO conversation_members (conv_id, user_id, role) VALUES ($1, $2, $3)",
            &[&conv, &me, &OWNER],
        )
        .await?;
        tx.execute(
            "INSERT INTO conversation_members (conv_id, user_id, role) SELECT $1, u, 0 FROM unnest($2::bigint[]) AS u",
            &[&conv, &direct],
        )
        .await?;
        let told = relations::invite(&tx, conv, me, &invited, now_ms()).await?;
        tx.commit().await?;
        Ok(Some((conv, direct, invited, told)))
    }
    .await;
    let (conv, direct, invited, told) = match created {
        Ok(Some(created)) => created,
        Ok(None) => return bad_request("unknown_user", "a member does not exist"),
        Err(error) => return unavailable(error),
    };
    let mut members = vec![me];
    members.extend(&direct);
    let attrs = Attrs {
        title: Some(new.title.clone()),
        ..event("created", direct.clone())
    };
    if let Err(response) = record(&state, me, conv, members.clone(), attrs).await {
        return response;
    }
    invitations::tell_invited(&state, me, conv, &told).await;
    (
        StatusCode::CREATED,
        Json(json!({ "id": conv, "title": new.title, "owner": me, "members": members, "invited": invited })),
    )
        .into_response()
}

/// `GET /v1/groups`: my groups.
pub async fn list_mine(State(state): State<Arc<NodeState>>, AuthUser(me): AuthUser) -> Response {
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let rows = client
        .query(
            "SELECT c.id, c.title, c.owner, m.role, c.last_seq,
                    (SELECT count(*) FROM conversation_members x WHERE x.conv_id = c.id)
             FROM conversation_members m JOIN conversations c ON c.id = m.conv_id
             WHERE m.user_id = $1 AND c.kind = $2 ORDER BY c.last_msg_ms DESC, c.id DESC",
            &[&me, &KIND_GROUP],
        )
        .await;
    match rows {
        Ok(rows) => {
            let groups: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({"id": r.get::<_, i64>(0), "title": r.get::<_, String>(1), "owner": r.get::<_, Option<i64>>(2),
                           "role": role_name(r.get(3)), "last_seq": r.get::<_, i64>(4), "member_count": r.get::<_, i64>(5)})
                })
                .collect();
            Json(json!({ "groups": groups })).into_response()
        }
        Err(error) => unavailable(error.into()),
    }
}

fn role_name(role: i16) -> &'static str {
    match role {
        OWNER => "owner",
        ADMIN => "admin",
        _ => "member",
    }
}

/// `GET /v1/groups/{id}/members` (members only).
pub async fn members(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(conv): ApiPath<ConvId>,
) -> Response {
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    match role_of(&**client, conv, me).await {
        Ok(Some(_)) => {}
        Ok(None) => return no_such_group(),
        Err(error) => return unavailable(error.into()),
    }
    let rows = client
        .query(
            "SELECT m.user_id, m.role, u.username, u.display_name FROM conversation_members m JOIN users u ON u.id = m.user_id
             WHERE m.conv_id = $1 ORDER BY m.role DESC, m.user_id",
            &[&conv],
        )
        .await;
    match rows {
        Ok(rows) => {
            let members: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({"user": r.get::<_, i64>(0), "role": role_name(r.get(1)), "username": r.get::<_, String>(2),
                           "display_name": r.get::<_, String>(3)})
                })
                .collect();
            Json(json!({ "id": conv, "members": members })).into_response()
        }
        Err(error) => unavailable(error.into()),
    }
}

#[derive(Deserialize)]
pub struct AddMembers {
    users: Vec<UserId>,
}

/// `POST /v1/groups/{id}/members {users}`: any member may add their friends (no block either way); anyone else is
/// invited. The cap is enforced under the group's row lock.
pub async fn add_members(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(conv): ApiPath<ConvId>,
    body: Result<Json<AddMembers>, JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        return bad_request("bad_request", "expected {users}");
    };
    if request.users.is_empty() || request.users.len() > 1000 {
        return bad_request("bad_request", "add 1-1000 users at a time");
    }
    let mut users = request.users;
    users.sort_unstable();
    users.dedup();
    let cap = state.config.group_member_cap;
    let mut client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    enum Outcome {
        Added {
            added: Vec<UserId>,
            invited: Vec<UserId>,
            told: Vec<UserId>,
            all: Vec<UserId>,
        },
        NotMember,
        Full,
        UnknownUser,
    }
    let outcome: Result<Outcome, StoreError> = async {
        let tx = client.transaction().await?;
        tx.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", &[&conv]).await?;
        if role_of(&*tx, conv, me).await?.is_none() {
            return Ok(Outcome::NotMember);
        }
        let Some((direct, invited)) = relations::split_direct_adds(&tx, me, &users, state.config.group_consent).await? else {
            return Ok(Outcome::UnknownUser);
        };
        let added: Vec<UserId> = tx
            .query(
                "INSERT INTO conversation_members (conv_id, user_id, role) SELECT $1, u, 0 FROM unnest($2::bigint[]) AS u
                 ON CONFLICT DO NOTHING RETURNING user_id",
                &[&conv, &direct],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let all = member_ids(&*tx, conv).await?;
        if all.len() as i64 > cap {
            return Ok(Outcome::Full);
        }
        let invited: Vec<UserId> = invited.into_iter().filter(|u| !all.contains(u)).collect();
        let told = relations::invite(&tx, conv, me, &invited, now_ms()).await?;
        tx.commit().await?;
        Ok(Outcome::Added { added, invited, told, all })
    }
    .await;
    match outcome {
        Ok(Outcome::Added {
            added,
            invited,
            told,
            all,
        }) => {
            if !added.is_empty() {
                if let Err(response) =
                    record(&state, me, conv, all, event("members_added", added.clone())).await
                {
                    return response;
                }
            }
            invitations::tell_invited(&state, me, conv, &told).await;
            Json(json!({ "id": conv, "added": added, "invited": invited })).into_response()
        }
        Ok(Outcome::NotMember) => no_such_group(),
        Ok(Outcome::Full) => json_error(
            StatusCode::CONFLICT,
            "group_full",
            &format!("groups have at most {cap} members"),
        ),
        Ok(Outcome::UnknownUser) => bad_request("unknown_user", "a user does not exist"),
        Err(error) => unavailable(error),
    }
}

/// `DELETE /v1/groups/{id}/members/{user}`: admins remove members, the owner removes anyone; removing yourself is
/// leaving.
pub async fn remove_member(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath((conv, target)): ApiPath<(ConvId, UserId)>,
) -> Response {
    if target == me {
        return leave_group(&state, me, conv).await;
    }
    let mut client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let outcome: Result<Result<Vec<UserId>, Response>, tokio_postgres::Error> = async {
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
            &[&conv],
        )
        .await?;
        let Some(my_role) = role_of(&*tx, conv, me).await? else {
            return Ok(Err(no_such_group()));
        };
        let Some(their_role) = role_of(&*tx, conv, target).await? else {
            return Ok(Err(json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "that user is not in the group",
            )));
        };
        if my_role < ADMIN || their_role >= my_role {
            return Ok(Err(forbidden(
                "only the owner and admins remove members, and not their equals",
            )));
        }
        tx.execute(
            "DELETE FROM conversation_members WHERE conv_id = $1 AND user_id = $2",
            &[&conv, &target],
        )
        .await?;
        let all = member_ids(&*tx, conv).await?;
        tx.commit().await?;
        Ok(Ok(all))
    }
    .await;
    match outcome {
        Ok(Ok(mut recipients)) => {
            recipients.push(target);
            match record(
                &state,
                me,
                conv,
                recipients,
                event("member_removed", vec![target]),
            )
            .await
            {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(response) => response,
            }
        }
        Ok(Err(response)) => response,
        Err(error) => unavailable(error.into()),
    }
}

/// `POST /v1/groups/{id}/leave`.
pub async fn leave(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(conv): ApiPath<ConvId>,
) -> Response {
    leave_group(&state, me, conv).await
}

async fn leave_group(state: &NodeState, me: UserId, conv: ConvId) -> Response {
    let mut client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let outcome: Result<Result<Vec<UserId>, Response>, tokio_postgres::Error> = async {
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
            &[&conv],
        )
        .await?;
        let Some(role) = role_of(&*tx, conv, me).await? else {
            return Ok(Err(no_such_group()));
        };
        let all = member_ids(&*tx, conv).await?;
        if role == OWNER && all.len() > 1 {
            return Ok(Err(json_error(
                StatusCode::CONFLICT,
                "owner_must_transfer",
                "transfer ownership before leaving",
            )));
        }
        tx.execute(
            "DELETE FROM conversation_members WHERE conv_id = $1 AND user_id = $2",
            &[&conv, &me],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(all))
    }
    .await;
    match outcome {
        Ok(Ok(recipients)) => {
            match record(state, me, conv, recipients, event("member_left", vec![me])).await {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(response) => response,
            }
        }
        Ok(Err(response)) => response,
        Err(error) => unavailable(error.into()),
    }
}

#[derive(Deserialize)]
pub struct Rename {
    title: String,
}

/// `PATCH /v1/groups/{id} {title}`: owner and admins.
pub async fn rename(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(conv): ApiPath<ConvId>,
    body: Result<Json<Rename>, JsonRejection>,
) -> Response {
    let Ok(Json(rename)) = body else {
        return bad_request("bad_request", "expected {title}");
    };
    if let Err(rejected) = crate::rest::input::group_title(&rename.title) {
        return rejected.into_response();
    }
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    match role_of(&**client, conv, me).await {
        Ok(Some(role)) if role >= ADMIN => {}
        Ok(Some(_)) => return forbidden("only the owner and admins rename the group"),
        Ok(None) => return no_such_group(),
        Err(error) => return unavailable(error.into()),
    }
    let members = match client
        .execute(
            "UPDATE conversations SET title = $2 WHERE id = $1",
            &[&conv, &rename.title],
        )
        .await
    {
        Ok(_) => match member_ids(&**client, conv).await {
            Ok(members) => members,
            Err(error) => return unavailable(error.into()),
        },
        Err(error) => return unavailable(error.into()),
    };
    let attrs = Attrs {
        title: Some(rename.title.clone()),
        ..event("renamed", vec![])
    };
    match record(&state, me, conv, members, attrs).await {
        Ok(_) => Json(json!({ "id": conv, "title": rename.title })).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub struct Transfer {
    user: UserId,
}

/// `POST /v1/groups/{id}/owner {user}`: the owner hands over; the old owner becomes an admin.
pub async fn transfer(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(conv): ApiPath<ConvId>,
    body: Result<Json<Transfer>, JsonRejection>,
) -> Response {
    let Ok(Json(transfer)) = body else {
        return bad_request("bad_request", "expected {user}");
    };
    set_role(&state, me, conv, transfer.user, OWNER).await
}

/// `PUT /v1/groups/{id}/admins/{user}` and `DELETE …`: the owner appoints and dismisses admins.
pub async fn appoint_admin(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath((conv, user)): ApiPath<(ConvId, UserId)>,
) -> Response {
    set_role(&state, me, conv, user, ADMIN).await
}

pub async fn dismiss_admin(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath((conv, user)): ApiPath<(ConvId, UserId)>,
) -> Response {
    set_role(&state, me, conv, user, MEMBER).await
}

async fn set_role(
    state: &NodeState,
    me: UserId,
    conv: ConvId,
    target: UserId,
    role: i16,
) -> Response {
    if target == me {
        return bad_request("bad_request", "you cannot change your own role");
    }
    let mut client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return unavailable(error.into()),
    };
    let outcome: Result<Result<Vec<UserId>, Response>, tokio_postgres::Error> = async {
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
            &[&conv],
        )
        .await?;
        match role_of(&*tx, conv, me).await? {
            Some(OWNER) => {}
            Some(_) => return Ok(Err(forbidden("only the owner changes roles"))),
            None => return Ok(Err(no_such_group())),
        }
        if role_of(&*tx, conv, target).await?.is_none() {
            return Ok(Err(json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "that user is not in the group",
            )));
        }
        tx.execute(
            "UPDATE conversation_members SET role = $3 WHERE conv_id = $1 AND user_id = $2",
            &[&conv, &target, &role],
        )
        .await?;
        if role == OWNER {
            tx.execute(
                "UPDATE conversation_members SET role = $3 WHERE conv_id = $1 AND user_id = $2",
                &[&conv, &me, &ADMIN],
            )
            .await?;
            tx.execute(
                "UPDATE conversations SET owner = $2 WHERE id = $1",
                &[&conv, &target],
            )
            .await?;
        }
        let all = member_ids(&*tx, conv).await?;
        tx.commit().await?;
        Ok(Ok(all))
    }
    .await;
    let name = match role {
        OWNER => "owner_changed",
        ADMIN => "admin_added",
        _ => "admin_removed",
    };
    match outcome {
        Ok(Ok(members)) => {
            match record(state, me, conv, members, event(name, vec![target])).await {
                Ok(_) => Json(json!({ "id": conv, "user": target, "role": role_name(role) }))
                    .into_response(),
                Err(response) => response,
            }
        }
        Ok(Err(response)) => response,
        Err(error) => unavailable(error.into()),
    }
}
