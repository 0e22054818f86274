//! Groups: create, add, remove, leave, rename, transfer ownership, admins, and listings.
//!
//! Consent: a member adds their friends (no block either way) directly; anyone else gets an invitation they accept
//! or decline (`invitations.rs`). Roles: member, admin, owner. Any member may add or invite; admins and the owner
//! remove members and rename; only the owner appoints admins and transfers ownership (`storage::groups::Role`).
//! Every membership or role change is one transaction in `storage::groups` (the group's row is locked, so
//! concurrent adds cannot overshoot the member cap); once it is committed, every node drops its cached member list
//! and a `system` message records the change in the group's timeline. The handlers here only read the request,
//! call storage and turn its outcome into the answer.

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

use super::{
    bad_request, forbidden, invitations, no_such_group, system_message, unavailable, AuthUser,
};
use crate::error::json_error;
use crate::rest::input::ApiPath;
use crate::state::NodeState;
use crate::storage::groups::{
    self, AddOutcome, CreateOutcome, LeaveOutcome, RemoveOutcome, RenameOutcome, Role, RoleOutcome,
};

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

fn not_in_group() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "that user is not in the group",
    )
}

fn group_full(cap: i64) -> Response {
    json_error(
        StatusCode::CONFLICT,
        "group_full",
        &format!("groups have at most {cap} members"),
    )
}

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
    let created = groups::create(
        &state.pool,
        me,
        &new.title,
        &others,
        state.config.group_consent,
    )
    .await;
    let (conv, added, invited, told) = match created {
        Ok(CreateOutcome::Created {
            conv,
            added,
            invited,
            told,
        }) => (conv, added, invited, told),
        Ok(CreateOutcome::UnknownUser) => {
            return bad_request("unknown_user", "a member does not exist")
        }
        Err(error) => return unavailable(error),
    };
    let mut members = vec![me];
    members.extend(&added);
    let attrs = Attrs {
        title: Some(new.title.clone()),
        ..event("created", added.clone())
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
    match groups::groups_of(&state.pool, me).await {
        Ok(mine) => {
            let groups: Vec<_> = mine
                .iter()
                .map(|g| {
                    json!({"id": g.id, "title": g.title, "owner": g.owner,
                           "role": g.role.name(), "last_seq": g.last_seq, "member_count": g.member_count})
                })
                .collect();
            Json(json!({ "groups": groups })).into_response()
        }
        Err(error) => unavailable(error),
    }
}

/// `GET /v1/groups/{id}/members` (members only).
pub async fn members(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath(conv): ApiPath<ConvId>,
) -> Response {
    match groups::members_seen_by(&state.pool, conv, me).await {
        Ok(Some(found)) => {
            let members: Vec<_> = found
                .iter()
                .map(|m| {
                    json!({"user": m.user, "role": m.role.name(), "username": m.username,
                           "display_name": m.display_name})
                })
                .collect();
            Json(json!({ "id": conv, "members": members })).into_response()
        }
        Ok(None) => no_such_group(),
        Err(error) => unavailable(error),
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
    let consent = state.config.group_consent;
    match groups::add_members(&state.pool, conv, me, &users, consent, cap).await {
        Ok(AddOutcome::Added {
            added,
            invited,
            told,
            members,
        }) => {
            if !added.is_empty() {
                if let Err(response) = record(
                    &state,
                    me,
                    conv,
                    members,
                    event("members_added", added.clone()),
                )
                .await
                {
                    return response;
                }
            }
            invitations::tell_invited(&state, me, conv, &told).await;
            Json(json!({ "id": conv, "added": added, "invited": invited })).into_response()
        }
        Ok(AddOutcome::NotMember) => no_such_group(),
        Ok(AddOutcome::Full) => group_full(cap),
        Ok(AddOutcome::UnknownUser) => bad_request("unknown_user", "a user does not exist"),
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
    match groups::remove_member(&state.pool, conv, me, target).await {
        Ok(RemoveOutcome::Removed { mut members }) => {
            // The removed member learns of it too.
            members.push(target);
            let attrs = event("member_removed", vec![target]);
            match record(&state, me, conv, members, attrs).await {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(response) => response,
            }
        }
        Ok(RemoveOutcome::NoGroup) => no_such_group(),
        Ok(RemoveOutcome::NotInGroup) => not_in_group(),
        Ok(RemoveOutcome::Forbidden) => {
            forbidden("only the owner and admins remove members, and not their equals")
        }
        Err(error) => unavailable(error),
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
    match groups::leave(&state.pool, conv, me).await {
        Ok(LeaveOutcome::Left { members }) => {
            match record(state, me, conv, members, event("member_left", vec![me])).await {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(response) => response,
            }
        }
        Ok(LeaveOutcome::NoGroup) => no_such_group(),
        Ok(LeaveOutcome::OwnerMustTransfer) => json_error(
            StatusCode::CONFLICT,
            "owner_must_transfer",
            "transfer ownership before leaving",
        ),
        Err(error) => unavailable(error),
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
    let members = match groups::rename(&state.pool, conv, me, &rename.title).await {
        Ok(RenameOutcome::Renamed { members }) => members,
        Ok(RenameOutcome::Forbidden) => {
            return forbidden("only the owner and admins rename the group")
        }
        Ok(RenameOutcome::NoGroup) => return no_such_group(),
        Err(error) => return unavailable(error),
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
    set_role(&state, me, conv, transfer.user, Role::Owner).await
}

/// `PUT /v1/groups/{id}/admins/{user}` and `DELETE …`: the owner appoints and dismisses admins.
pub async fn appoint_admin(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath((conv, user)): ApiPath<(ConvId, UserId)>,
) -> Response {
    set_role(&state, me, conv, user, Role::Admin).await
}

pub async fn dismiss_admin(
    State(state): State<Arc<NodeState>>,
    AuthUser(me): AuthUser,
    ApiPath((conv, user)): ApiPath<(ConvId, UserId)>,
) -> Response {
    set_role(&state, me, conv, user, Role::Member).await
}

async fn set_role(
    state: &NodeState,
    me: UserId,
    conv: ConvId,
    target: UserId,
    role: Role,
) -> Response {
    if target == me {
        return bad_request("bad_request", "you cannot change your own role");
    }
    let members = match groups::set_role(&state.pool, conv, me, target, role).await {
        Ok(RoleOutcome::Changed { members }) => members,
        Ok(RoleOutcome::Forbidden) => return forbidden("only the owner changes roles"),
        Ok(RoleOutcome::NoGroup) => return no_such_group(),
        Ok(RoleOutcome::NotInGroup) => return not_in_group(),
        Err(error) => return unavailable(error),
    };
    let name = match role {
        Role::Owner => "owner_changed",
        Role::Admin => "admin_added",
        Role::Member => "admin_removed",
    };
    match record(state, me, conv, members, event(name, vec![target])).await {
        Ok(_) => Json(json!({ "id": conv, "user": target, "role": role.name() })).into_response(),
        Err(response) => response,
    }
}
