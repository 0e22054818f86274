//! Delivery: getting frames to every device that should see them, anywhere in the cluster.
//!
//! `Delivery` pushes to this node's devices directly (`LocalSessions`) and publishes once per other node that has a
//! recipient device (found in the Redis location registry), or, for a large conversation, broadcasts one
//! `DeliverConv` to every node. Presence changes and offline pushes start here too.
//!
//! Nothing here retries: a push that cannot happen (device gone, node gone, pub/sub dropped it) is recovered by
//! the client's `sync`. A full outbox never blocks delivery: its connection is kicked as a slow consumer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use common::ids::{ConvId, UserId};
use common::ServerFrame;
use router::{Bus, BusMessage, LocationRegistry};
use tracing::warn;

use super::local::LocalSessions;
use crate::fanout::members::MemberCache;
use crate::metrics::Metrics;

/// Conversations with more members than this are pushed to other nodes by broadcasting one `DeliverConv` to every
/// live node instead of looking up each member's devices: Redis work per message then grows with the node count,
/// not the member count.
pub const BROADCAST_MEMBERS: usize = 16;

/// Everything needed to get a frame to devices anywhere in the cluster.
#[derive(Clone)]
pub struct Delivery {
    pub sessions: Arc<LocalSessions>,
    pub locations: LocationRegistry,
    pub bus: Bus,
    pub members: Arc<MemberCache>,
    pub node_id: String,
    pub metrics: Metrics,
    /// The offline push hook, when configured.
    pub push: Option<crate::fanout::push::PushQueue>,
}

/// One frame for a set of recipients.
pub struct Push<'a> {
    pub conv: Option<ConvId>,
    pub users: &'a [UserId],
    pub skip: Option<(UserId, &'a str)>,
    pub frame: &'a Bytes,
    /// For a stored message: recipients found offline are offered to the push hook.
    pub msg: Option<&'a common::frame::Msg>,
}

impl Delivery {
    /// Delivers many frames: local devices at once; then one Redis pipeline of location lookups for the small
    /// fan-outs and one pipeline of publishes for everything remote. Returns local deliveries.
    pub async fn deliver(&self, routes: &[Push<'_>]) -> u64 {
        let mut local = 0;
        let mut lookup_users: Vec<UserId> = Vec::new();
        let mut seen = HashSet::new();
        let mut broadcasts: Vec<&Push<'_>> = Vec::new();
        for route in routes {
            local += self.sessions.deliver(route.users, route.skip, route.frame);
            match route.conv {
                Some(_) if route.users.len() > BROADCAST_MEMBERS => broadcasts.push(route),
                _ => lookup_users.extend(route.users.iter().copied().filter(|u| seen.insert(*u))),
            }
        }
        self.metrics.delivered_local.increment(local);

        let mut publishes: Vec<(String, BusMessage)> = Vec::new();
        if !broadcasts.is_empty() {
            match self.locations.live_nodes().await {
                Ok(nodes) => {
                    for route in &broadcasts {
                        for node in nodes.iter().filter(|n| **n != self.node_id) {
                            publishes.push((
                                node.clone(),
                                BusMessage::DeliverConv {
                                    conv: route.conv.unwrap_or_default(),
                                    skip: route.skip.map(|(u, d)| (u, d.to_string())),
                                    frame: route.frame.to_vec(),
                                },
                            ));
                        }
                    }
                }
                Err(error) => {
                    warn!(%error, "live-node lookup failed; remote members will get these by sync")
                }
            }
        }
        if !lookup_users.is_empty() {
            match self.locations.lookup(&lookup_users).await {
                Ok(located) => {
                    for route in routes
                        .iter()
                        .filter(|r| r.conv.is_none() || r.users.len() <= BROADCAST_MEMBERS)
                    {
                        self.plan_publishes(route, &located, &mut publishes);
                        self.offer_push(route, &located);
                    }
                }
                Err(error) => {
                    warn!(%error, "location lookup failed; remote recipients will get these by sync")
                }
            }
        }
        if !publishes.is_empty() {
            let failed = self.bus.publish_many(&publishes).await;
            if failed > 0 {
                warn!(
                    failed,
                    "publishes failed; recipients will get those frames by sync"
                );
            }
        }
        local
    }

    /// Offers recipients of a stored message with no device anywhere to the push hook.
    fn offer_push(
        &self,
        route: &Push<'_>,
        located: &HashMap<UserId, Vec<router::locations::DeviceLocation>>,
    ) {
        let (Some(push), Some(msg)) = (&self.push, route.msg) else {
            return;
        };
        for user in route.users.iter().filter(|u| **u != msg.from) {
            let offline = located.get(user).is_none_or(|devices| devices.is_empty())
                && !self.sessions.has_user(*user);
            if offline {
                let preview = if msg.kind == common::frame::kinds::TEXT {
                    msg.body.chars().take(80).collect()
                } else {
                    String::new()
                };
                push.offer(crate::fanout::push::PushEvent {
                    user: *user,
                    conv: msg.conv,
                    id: msg.id,
                    seq: msg.seq,
                    from: msg.from,
                    kind: msg.kind.clone(),
                    preview,
                });
            }
        }
    }

    /// One `Deliver` per other node holding a recipient device of this route.
    fn plan_publishes(
        &self,
        route: &Push<'_>,
        located: &HashMap<UserId, Vec<router::locations::DeviceLocation>>,
        publishes: &mut Vec<(String, BusMessage)>,
    ) {
        let mut per_node: HashMap<&str, Vec<UserId>> = HashMap::new();
        for user in route.users {
            for location in located.get(user).into_iter().flatten() {
                if location.node == self.node_id
                    || route.skip == Some((*user, location.device.as_str()))
                {
                    continue;
                }
                let users = per_node.entry(location.node.as_str()).or_default();
                if !users.contains(user) {
                    users.push(*user);
                }
            }
        }
        for (node, users) in per_node {
            publishes.push((
                node.to_string(),
                BusMessage::Deliver {
                    users,
                    skip: route.skip.map(|(u, d)| (u, d.to_string())),
                    frame: route.frame.to_vec(),
                },
            ));
        }
    }

    /// Encodes and delivers one server frame to users (events: read state, typing, notices).
    pub async fn event_to_users(
        &self,
        users: &[UserId],
        skip: Option<(UserId, &str)>,
        frame: &ServerFrame,
    ) {
        self.event(None, users, skip, frame).await;
    }

    /// Encodes and delivers one server frame to every member of a conversation.
    pub async fn event_to_conv(
        &self,
        conv: ConvId,
        users: &[UserId],
        skip: Option<(UserId, &str)>,
        frame: &ServerFrame,
    ) {
        self.event(Some(conv), users, skip, frame).await;
    }

    async fn event(
        &self,
        conv: Option<ConvId>,
        users: &[UserId],
        skip: Option<(UserId, &str)>,
        frame: &ServerFrame,
    ) {
        match common::encode(frame, 0) {
            Ok(bytes) => {
                let bytes = Bytes::from(bytes);
                self.deliver(&[Push {
                    conv,
                    users,
                    skip,
                    frame: &bytes,
                    msg: None,
                }])
                .await;
            }
            Err(error) => warn!(%error, "could not encode an event"),
        }
    }

    /// Tells the user's friends that the user came online or went offline (cluster-wide: first device connected,
    /// last device gone). Runs in the background; presence is best effort.
    pub fn presence_changed(&self, pool: deadpool_postgres::Pool, user: UserId, connected: bool) {
        let delivery = self.clone();
        tokio::spawn(async move {
            let devices = match delivery.locations.lookup(&[user]).await {
                Ok(located) => located.get(&user).map_or(0, Vec::len),
                Err(_) => return,
            };
            let transition = if connected {
                devices == 1
            } else {
                devices == 0
            };
            if !transition {
                return;
            }
            let Ok(friends) = crate::storage::friends::friends_of(&pool, user).await else {
                return;
            };
            if friends.is_empty() {
                return;
            }
            ::metrics::counter!("im_presence_changes_total").increment(1);
            let frame = ServerFrame::Notice(common::frame::Notice {
                kind: "presence".into(),
                user,
                request: None,
                note: None,
                online: Some(connected),
                conv: None,
            });
            delivery.event_to_users(&friends, None, &frame).await;
        });
    }

    /// Tells every live node (itself included) that a conversation's members changed.
    pub async fn members_changed(&self, conv: ConvId) {
        self.members.invalidate(conv);
        self.broadcast(BusMessage::ConvChanged { conv }).await;
    }

    /// Sends a bus message to every other live node.
    pub async fn broadcast(&self, message: BusMessage) {
        match self.locations.refresh_live_nodes().await {
            Ok(nodes) => {
                let publishes: Vec<(String, BusMessage)> = nodes
                    .into_iter()
                    .filter(|n| *n != self.node_id)
                    .map(|n| (n, message.clone()))
                    .collect();
                self.bus.publish_many(&publishes).await;
            }
            Err(error) => warn!(%error, "could not broadcast to the other nodes"),
        }
    }
}
