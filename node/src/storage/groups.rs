//! Groups in Postgres: creating one, adding, removing and leaving members, renaming, members' roles
//! (`conversation_members.role`), and the listings of a user's groups and a group's members.
//!
//! Each membership or role change is one transaction that first locks the group's row (`members::lock_conversation`),
//! then checks the role rules (`Role`) and the member cap, so what was checked still holds at the commit and
//! concurrent adds cannot overshoot the cap. A rename is one statement after the role check. Telling the members
//! (cache invalidation, the `system` message) is the caller's job once a change is committed; who is added directly
//! rather than invited is `relations::split_direct_adds`'s answer, the invitations themselves `invitations.rs`'s.

use common::ids::{ConvId, Seq, UserId};
use deadpool_postgres::{GenericClient, Pool};

use super::invitations::invite;
use super::members::{lock_conversation, member_ids};
use super::queries::KIND_GROUP;
use super::relations::split_direct_adds;
use super::StoreError;

/// A member's role in a group, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    /// The role stored as `role` (0 member, 1 admin, 2 owner; the code writes no other value).
    fn from_db(role: i16) -> Role {
        match role {
            2 => Role::Owner,
            1 => Role::Admin,
            _ => Role::Member,
        }
    }

    fn to_db(self) -> i16 {
        match self {
            Role::Member => 0,
            Role::Admin => 1,
            Role::Owner => 2,
        }
    }

    /// The role's name in the REST API.
    pub fn name(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Admins remove members, the owner removes anyone; nobody removes an equal.
    pub fn may_remove(self, target: Role) -> bool {
        self >= Role::Admin && target < self
    }

    /// The owner and admins rename the group.
    pub fn may_rename(self) -> bool {
        self >= Role::Admin
    }

    /// Only the owner appoints and dismisses admins and hands over ownership.
    pub fn may_change_roles(self) -> bool {
        self == Role::Owner
    }
}

/// `user`'s role in group `conv`; `None` if there is no such group (a 1:1 conversation is none) or `user` is not
/// in it.
async fn role_of<C: GenericClient>(
    client: &C,
    conv: ConvId,
    user: UserId,
) -> Result<Option<Role>, StoreError> {
    let statement = client
        .prepare_cached(
            "SELECT m.role FROM conversation_members m JOIN conversations c ON c.id = m.conv_id
             WHERE m.conv_id = $1 AND m.user_id = $2 AND c.kind = $3",
        )
        .await?;
    match client
        .query_opt(&statement, &[&conv, &user, &KIND_GROUP])
        .await?
    {
        Some(row) => Ok(Some(Role::from_db(row.try_get(0)?))),
        None => Ok(None),
    }
}

/// Outcome of creating a group.
pub enum CreateOutcome {
    Created {
        conv: ConvId,
        /// Members added directly (the owner not included).
        added: Vec<UserId>,
        invited: Vec<UserId>,
        /// The invitees to tell (those who have not blocked the owner).
        told: Vec<UserId>,
    },
    /// One of the wanted members does not exist; nothing was created.
    UnknownUser,
}

/// Creates group `title` owned by `owner`: of `others`, those `split_direct_adds` allows (with `consent`) become
/// members, the rest are invited. One transaction. The member cap is the caller's to check beforehand: nobody else
/// can add to a group that does not exist yet.
pub async fn create(
    pool: &Pool,
    owner: UserId,
    title: &str,
    others: &[UserId],
    consent: bool,
) -> Result<CreateOutcome, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some((added, invited)) = split_direct_adds(&tx, owner, others, consent).await? else {
        return Ok(CreateOutcome::UnknownUser);
    };
    let new_group = tx
        .prepare_cached(
            "INSERT INTO conversations (kind, title, owner) VALUES ($1, $2, $3) RETURNING id",
        )
        .await?;
    let conv: ConvId = tx
        .query_one(&new_group, &[&KIND_GROUP, &title, &owner])
        .await?
        .try_get(0)?;
    let add_owner = tx
        .prepare_cached(
            "INSERT INTO conversation_members (conv_id, user_id, role) VALUES ($1, $2, $3)",
        )
        .await?;
    tx.execute(&add_owner, &[&conv, &owner, &Role::Owner.to_db()])
        .await?;
    let add_members = tx
        .prepare_cached(
            "INSERT INTO conversation_members (conv_id, user_id, role) SELECT $1, u, 0 FROM unnest($2::bigint[]) AS u",
        )
        .await?;
    tx.execute(&add_members, &[&conv, &added]).await?;
    let told = invite(&tx, conv, owner, &invited).await?;
    tx.commit().await?;
    Ok(CreateOutcome::Created {
        conv,
        added,
        invited,
        told,
    })
}

/// One of a user's groups.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub id: ConvId,
    pub title: String,
    pub owner: Option<UserId>,
    /// The user's role in it.
    pub role: Role,
    pub last_seq: Seq,
    pub member_count: i64,
}

/// `user`'s groups, most recently active first.
pub async fn groups_of(pool: &Pool, user: UserId) -> Result<Vec<GroupSummary>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT c.id, c.title, c.owner, m.role, c.last_seq,
                    (SELECT count(*) FROM conversation_members x WHERE x.conv_id = c.id)
             FROM conversation_members m JOIN conversations c ON c.id = m.conv_id
             WHERE m.user_id = $1 AND c.kind = $2 ORDER BY c.last_msg_ms DESC, c.id DESC",
        )
        .await?;
    client
        .query(&statement, &[&user, &KIND_GROUP])
        .await?
        .iter()
        .map(|row| {
            Ok(GroupSummary {
                id: row.try_get(0)?,
                title: row.try_get(1)?,
                owner: row.try_get(2)?,
                role: Role::from_db(row.try_get(3)?),
                last_seq: row.try_get(4)?,
                member_count: row.try_get(5)?,
            })
        })
        .collect()
}

/// A group member as the member list shows them.
#[derive(Debug, Clone)]
pub struct GroupMember {
    pub user: UserId,
    pub role: Role,
    pub username: String,
    pub display_name: String,
}

/// The members of group `conv`, owner and admins first, if `viewer` is one of them; `None` if there is no such
/// group or `viewer` is not in it.
pub async fn members_seen_by(
    pool: &Pool,
    conv: ConvId,
    viewer: UserId,
) -> Result<Option<Vec<GroupMember>>, StoreError> {
    let client = pool.get().await?;
    if role_of(&client, conv, viewer).await?.is_none() {
        return Ok(None);
    }
    let statement = client
        .prepare_cached(
            "SELECT m.user_id, m.role, u.username, u.display_name FROM conversation_members m JOIN users u ON u.id = m.user_id
             WHERE m.conv_id = $1 ORDER BY m.role DESC, m.user_id",
        )
        .await?;
    let members = client
        .query(&statement, &[&conv])
        .await?
        .iter()
        .map(|row| {
            Ok(GroupMember {
                user: row.try_get(0)?,
                role: Role::from_db(row.try_get(1)?),
                username: row.try_get(2)?,
                display_name: row.try_get(3)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Some(members))
}

/// Outcome of adding members to a group.
pub enum AddOutcome {
    Added {
        /// Newly added directly (those already in are left out).
        added: Vec<UserId>,
        /// Invited instead of added (those already in are left out).
        invited: Vec<UserId>,
        /// The invitees to tell (those who have not blocked the actor).
        told: Vec<UserId>,
        /// Every member now.
        members: Vec<UserId>,
    },
    /// No such group, or the actor is not in it.
    NotMember,
    /// The adds would pass the member cap; nothing changed.
    Full,
    /// One of `users` does not exist; nothing changed.
    UnknownUser,
}

/// Any member (`actor`) adds `users` to group `conv`: those `split_direct_adds` allows (with `consent`) directly,
/// the rest by invitation; at most `cap` members in all.
pub async fn add_members(
    pool: &Pool,
    conv: ConvId,
    actor: UserId,
    users: &[UserId],
    consent: bool,
    cap: i64,
) -> Result<AddOutcome, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    lock_conversation(&tx, conv).await?;
    if role_of(&tx, conv, actor).await?.is_none() {
        return Ok(AddOutcome::NotMember);
    }
    let Some((direct, invited)) = split_direct_adds(&tx, actor, users, consent).await? else {
        return Ok(AddOutcome::UnknownUser);
    };
    let insert = tx
        .prepare_cached(
            "INSERT INTO conversation_members (conv_id, user_id, role) SELECT $1, u, 0 FROM unnest($2::bigint[]) AS u
             ON CONFLICT DO NOTHING RETURNING user_id",
        )
        .await?;
    let added = super::first_column::<UserId>(&tx.query(&insert, &[&conv, &direct]).await?)?;
    let members = member_ids(&tx, conv).await?;
    if members.len() as i64 > cap {
        return Ok(AddOutcome::Full);
    }
    let invited: Vec<UserId> = invited
        .into_iter()
        .filter(|user| !members.contains(user))
        .collect();
    let told = invite(&tx, conv, actor, &invited).await?;
    tx.commit().await?;
    Ok(AddOutcome::Added {
        added,
        invited,
        told,
        members,
    })
}

async fn delete_member<C: GenericClient>(
    client: &C,
    conv: ConvId,
    user: UserId,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached("DELETE FROM conversation_members WHERE conv_id = $1 AND user_id = $2")
        .await?;
    client.execute(&statement, &[&conv, &user]).await?;
    Ok(())
}

/// Outcome of removing someone else from a group.
pub enum RemoveOutcome {
    /// Removed; the members that remain.
    Removed { members: Vec<UserId> },
    /// No such group, or the actor is not in it.
    NoGroup,
    /// The target is not in the group.
    NotInGroup,
    /// The actor's role may not remove the target's (`Role::may_remove`).
    Forbidden,
}

/// `actor` removes `target` (another member) from group `conv`.
pub async fn remove_member(
    pool: &Pool,
    conv: ConvId,
    actor: UserId,
    target: UserId,
) -> Result<RemoveOutcome, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    lock_conversation(&tx, conv).await?;
    let Some(actor_role) = role_of(&tx, conv, actor).await? else {
        return Ok(RemoveOutcome::NoGroup);
    };
    let Some(target_role) = role_of(&tx, conv, target).await? else {
        return Ok(RemoveOutcome::NotInGroup);
    };
    if !actor_role.may_remove(target_role) {
        return Ok(RemoveOutcome::Forbidden);
    }
    delete_member(&tx, conv, target).await?;
    let members = member_ids(&tx, conv).await?;
    tx.commit().await?;
    Ok(RemoveOutcome::Removed { members })
}

/// Outcome of leaving a group.
pub enum LeaveOutcome {
    /// Left; the members before leaving (the leaver included).
    Left { members: Vec<UserId> },
    /// No such group, or the user is not in it.
    NoGroup,
    /// The owner of a group with other members must hand it over first.
    OwnerMustTransfer,
}

/// `user` leaves group `conv`.
pub async fn leave(pool: &Pool, conv: ConvId, user: UserId) -> Result<LeaveOutcome, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    lock_conversation(&tx, conv).await?;
    let Some(role) = role_of(&tx, conv, user).await? else {
        return Ok(LeaveOutcome::NoGroup);
    };
    let members = member_ids(&tx, conv).await?;
    if role == Role::Owner && members.len() > 1 {
        return Ok(LeaveOutcome::OwnerMustTransfer);
    }
    delete_member(&tx, conv, user).await?;
    tx.commit().await?;
    Ok(LeaveOutcome::Left { members })
}

/// Outcome of renaming a group.
pub enum RenameOutcome {
    /// Renamed; every member.
    Renamed { members: Vec<UserId> },
    /// No such group, or the actor is not in it.
    NoGroup,
    /// The actor's role may not rename (`Role::may_rename`).
    Forbidden,
}

/// `actor` renames group `conv` to `title`.
pub async fn rename(
    pool: &Pool,
    conv: ConvId,
    actor: UserId,
    title: &str,
) -> Result<RenameOutcome, StoreError> {
    let client = pool.get().await?;
    match role_of(&client, conv, actor).await? {
        Some(role) if role.may_rename() => {}
        Some(_) => return Ok(RenameOutcome::Forbidden),
        None => return Ok(RenameOutcome::NoGroup),
    }
    let statement = client
        .prepare_cached("UPDATE conversations SET title = $2 WHERE id = $1")
        .await?;
    client.execute(&statement, &[&conv, &title]).await?;
    let members = member_ids(&client, conv).await?;
    Ok(RenameOutcome::Renamed { members })
}

/// Outcome of changing a member's role.
pub enum RoleOutcome {
    /// Changed; every member.
    Changed { members: Vec<UserId> },
    /// No such group, or the actor is not in it.
    NoGroup,
    /// The target is not in the group.
    NotInGroup,
    /// The actor's role may not change roles (`Role::may_change_roles`).
    Forbidden,
}

/// `actor` gives `target` (another member) `role`. Making them the owner hands the group over: the old owner
/// becomes an admin.
pub async fn set_role(
    pool: &Pool,
    conv: ConvId,
    actor: UserId,
    target: UserId,
    role: Role,
) -> Result<RoleOutcome, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    lock_conversation(&tx, conv).await?;
    match role_of(&tx, conv, actor).await? {
        Some(actor_role) if actor_role.may_change_roles() => {}
        Some(_) => return Ok(RoleOutcome::Forbidden),
        None => return Ok(RoleOutcome::NoGroup),
    }
    if role_of(&tx, conv, target).await?.is_none() {
        return Ok(RoleOutcome::NotInGroup);
    }
    let set = tx
        .prepare_cached(
            "UPDATE conversation_members SET role = $3 WHERE conv_id = $1 AND user_id = $2",
        )
        .await?;
    tx.execute(&set, &[&conv, &target, &role.to_db()]).await?;
    if role == Role::Owner {
        tx.execute(&set, &[&conv, &actor, &Role::Admin.to_db()])
            .await?;
        let hand_over = tx
            .prepare_cached("UPDATE conversations SET owner = $2 WHERE id = $1")
            .await?;
        tx.execute(&hand_over, &[&conv, &target]).await?;
    }
    let members = member_ids(&tx, conv).await?;
    tx.commit().await?;
    Ok(RoleOutcome::Changed { members })
}
