//! The one policy decision point: may this user do this to this conversation or user?
//!
//! Every path that reaches a conversation asks here — `send` by `to` and by `conv`, `typing`, read receipts, and
//! (through `store::relations`) group adds and invitations; `sync`, history, recall and media fetches check
//! membership in the statement that reads, so they cannot disagree with it. The rule for a 1:1 pair is
//! `PairPolicy::decide`: a block either way refuses, otherwise friends may (strangers too when friendship is not
//! required).
//!
//! Caches make answers faster, never different:
//! - an *allowed* 1:1 route may come from the `PairCache`; the writer re-checks the pair inside the commit that
//!   stores the message, so a stale entry can never store what the database refuses;
//! - a *refusal* is never answered from a cache: a pair the cache does not know goes to the writer, which checks
//!   it in its batch before allocating a seq; a conversation the member cache says the user is not in is looked up
//!   again in Postgres;
//! - typing and read receipts are not stored, so nothing re-checks them later: they are decided on Postgres.

use std::sync::Arc;

use common::ids::{ConvId, UserId};
use common::ErrorCode;
use deadpool_postgres::Pool;
use tracing::warn;

use super::Refusal;
use crate::fanout::members::MemberCache;
use crate::storage::pair_cache::PairCache;
use crate::storage::queries::KIND_DIRECT;
use crate::storage::relations::{self, PairPolicy};
use crate::storage::writer::Target;
use crate::storage::StoreError;

pub struct Policy {
    pool: Pool,
    pairs: Arc<PairCache>,
    members: Arc<MemberCache>,
    require_friendship: bool,
}

fn unavailable(error: StoreError) -> Refusal {
    warn!(%error, "policy check failed");
    Refusal::unavailable()
}

impl Policy {
    pub fn new(
        pool: Pool,
        pairs: Arc<PairCache>,
        members: Arc<MemberCache>,
        require_friendship: bool,
    ) -> Self {
        Policy {
            pool,
            pairs,
            members,
            require_friendship,
        }
    }

    pub fn require_friendship(&self) -> bool {
        self.require_friendship
    }

    /// Where a `send` goes and who is in it: `to` names a user (their 1:1 conversation), `conv` a conversation the
    /// sender is in. A 1:1 conversation named by `conv` is treated exactly like `to` its other member.
    pub async fn send_target(
        &self,
        user: UserId,
        to: Option<UserId>,
        conv: Option<ConvId>,
    ) -> Result<(Target, Arc<[UserId]>), Refusal> {
        match (to, conv) {
            (Some(to), None) => Ok(self.direct_target(user, to)),
            (None, Some(conv)) => {
                let members = self.members_including(user, conv).await?;
                if members.kind == KIND_DIRECT {
                    let peer = members
                        .users
                        .iter()
                        .copied()
                        .find(|u| *u != user)
                        .unwrap_or(user);
                    return Ok(self.direct_target(user, peer));
                }
                Ok((Target::Conv(conv), members.users.clone()))
            }
            _ => Err(Refusal::new(
                ErrorCode::InvalidRequest,
                "exactly one of `to` and `conv` is required",
            )),
        }
    }

    /// A 1:1 send: through the cached conversation when the pair was allowed lately (the commit re-checks it),
    /// otherwise to the writer unresolved, which checks the pair and finds or creates the conversation in its batch.
    fn direct_target(&self, user: UserId, to: UserId) -> (Target, Arc<[UserId]>) {
        let members: Arc<[UserId]> = if to == user {
            Arc::from([user])
        } else {
            Arc::from([user, to])
        };
        match self.pairs.route(user, to) {
            Some(conv) => (Target::Conv(conv), members),
            None => (Target::Direct(to), members),
        }
    }

    /// The members of `conv` if `user` is one. A "not a member" from the cache is checked again in Postgres.
    async fn members_including(
        &self,
        user: UserId,
        conv: ConvId,
    ) -> Result<Arc<crate::fanout::members::Members>, Refusal> {
        let cached = self.members.get(conv).await.map_err(unavailable)?;
        if let Some(members) = cached.filter(|m| m.contains(user)) {
            return Ok(members);
        }
        self.members.invalidate(conv);
        match self.members.get(conv).await.map_err(unavailable)? {
            Some(members) if members.contains(user) => Ok(members),
            _ => Err(Refusal::new(
                ErrorCode::NotMember,
                format!("not a member of conversation {conv}"),
            )),
        }
    }

    /// Whom a `typing` in `conv` goes to. Decided on Postgres: membership, and for a 1:1 conversation the pair.
    pub async fn typing_audience(
        &self,
        user: UserId,
        conv: ConvId,
    ) -> Result<Arc<[UserId]>, Refusal> {
        let access =
            relations::conversation_access(&self.pool, user, conv, self.require_friendship)
                .await
                .map_err(unavailable)?;
        match access {
            Some(access) if access.member => {
                if let Some(refusal) = access.direct.and_then(|(_, policy)| policy.refusal()) {
                    return Err(refusal);
                }
            }
            _ => return Err(Refusal::not_member()),
        }
        let members = self.members_including(user, conv).await?;
        Ok(members.users.clone())
    }

    /// Who is told that `user` read `conv` up to some seq: their own devices always; in a 1:1 conversation the
    /// other user too while the pair is allowed (decided on Postgres). Group receipts are asked for, not pushed.
    pub async fn read_audience(&self, user: UserId, conv: ConvId, conv_kind: i16) -> Vec<UserId> {
        let mut users = vec![user];
        if conv_kind != KIND_DIRECT {
            return users;
        }
        match relations::conversation_access(&self.pool, user, conv, self.require_friendship).await
        {
            Ok(Some(access)) => {
                if let Some((peer, PairPolicy::Allowed)) = access.direct {
                    if peer != user {
                        users.push(peer);
                    }
                }
            }
            Ok(None) => {}
            Err(error) => warn!(%error, "read receipt not relayed: policy unavailable"),
        }
        users
    }

    /// A pair's policy or conversation changed (any node): forget what was cached about it.
    pub fn pair_changed(&self, a: UserId, b: UserId) {
        self.pairs.invalidate(a, b);
    }
}
