//! Delivery: this node's connected devices, and getting committed messages to every device that should see them.
//!
//! `LocalSessions` maps user → this node's connected devices, each with its `Outbox` (a bounded queue of encoded
//! frames plus a kick switch). The router task takes committed batches from the writer in commit order, pushes
//! each message to local devices directly, and publishes it once per other node that has a recipient device
//! (found in the Redis location registry). The bus task does the local half for messages other nodes published.
//!
//! Nothing here retries: a push that cannot happen (device gone, node gone, pub/sub dropped it) is recovered by
//! the client's `sync`. A full outbox never blocks delivery: its connection is kicked as a slow consumer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use common::frame::{Ack, ErrorFrame, Kick};
use common::ids::{ConvId, UserId};
use common::{KickReason, ServerFrame};
use router::{Bus, BusMessage, LocationRegistry};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::fanout::members::MemberCache;
use crate::identity::auth::Claims;
use crate::metrics::{self, Metrics};
use crate::storage::writer::{AckSink, Committed};

/// What a connection's writer task sends.
pub enum Outbound {
    /// An encoded protocol frame, sent as one binary WebSocket message.
    Frame(Bytes),
    /// The answer to a client's ping.
    Pong(Bytes),
}

/// A connection's queue of outbound frames, shared by its `Outbox` (many pushers) and its writer task (one reader).
///
/// A deque behind a mutex rather than a tokio channel: a channel allocates a block of 32 slots per connection up
/// front, this allocates nothing while empty and gives its memory back once drained, which is what an idle
/// connection is most of the time.
struct Queue {
    items: Mutex<VecDeque<Outbound>>,
    ready: Notify,
    /// Set when the `Outbox` is dropped: the reader sees the end once the queue is empty.
    closed: AtomicBool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Outbound>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Drained deques keep at most this many slots; a larger one is freed when it empties.
const KEEP_SLOTS: usize = 8;

/// The writer task's end of a connection's queue.
pub struct OutboundRx(Arc<Queue>);

impl OutboundRx {
    /// The next frame to send; `None` once the outbox is gone and everything queued was taken. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            {
                let mut items = self.0.lock();
                if let Some(item) = items.pop_front() {
                    if items.is_empty() && items.capacity() > KEEP_SLOTS {
                        *items = VecDeque::new();
                    }
                    return Some(item);
                }
                if self.0.closed.load(Ordering::Acquire) {
                    return None;
                }
            }
            // A push between the check above and this wait leaves a permit, so the wakeup is not lost.
            self.0.ready.notified().await;
        }
    }

    /// Everything queued now, without waiting (what is still to be sent before a kick).
    pub fn take_queued(&mut self) -> VecDeque<Outbound> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// The sending side of one connection: a bounded frame queue and a switch that closes the connection.
pub struct Outbox {
    queue: Arc<Queue>,
    capacity: usize,
    closed: CancellationToken,
    kick_reason: AtomicU8,
    compress_threshold: usize,
    metrics: Metrics,
}

const NO_KICK: u8 = u8::MAX;
const KICK_REASONS: [KickReason; 8] = [
    KickReason::Draining,
    KickReason::Replaced,
    KickReason::SlowConsumer,
    KickReason::IdleTimeout,
    KickReason::LeaseLost,
    KickReason::ProtocolError,
    KickReason::Revoked,
    KickReason::RateLimited,
];

impl Outbox {
    pub fn new(
        capacity: usize,
        compress_threshold: usize,
        metrics: Metrics,
    ) -> (Arc<Self>, OutboundRx) {
        let queue = Arc::new(Queue {
            items: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let outbox = Outbox {
            queue: queue.clone(),
            capacity,
            closed: CancellationToken::new(),
            kick_reason: AtomicU8::new(NO_KICK),
            compress_threshold,
            metrics,
        };
        (Arc::new(outbox), OutboundRx(queue))
    }

    /// Queues an encoded frame. A full queue kicks the connection (slow consumer); returns whether it was queued.
    pub fn push(&self, frame: Bytes) -> bool {
        self.push_outbound(Outbound::Frame(frame))
    }

    /// Queues a pong (same queue, so a client that stops reading cannot make pongs pile up elsewhere).
    pub fn pong(&self, payload: Bytes) -> bool {
        self.push_outbound(Outbound::Pong(payload))
    }

    fn push_outbound(&self, outbound: Outbound) -> bool {
        {
            let mut items = self.queue.lock();
            if items.len() < self.capacity {
                items.push_back(outbound);
                drop(items);
                self.queue.ready.notify_one();
                return true;
            }
        }
        if self.kick(KickReason::SlowConsumer) {
            ::metrics::counter!("im_slow_consumer_disconnects_total").increment(1);
        }
        false
    }

    /// Encodes and queues a server frame.
    pub fn send(&self, frame: &ServerFrame) -> bool {
        match common::encode(frame, self.compress_threshold) {
            Ok(bytes) => self.push(Bytes::from(bytes)),
            Err(error) => {
                warn!(%error, "could not encode a server frame");
                false
            }
        }
    }

    /// Sends an `error` frame.
    pub fn error(&self, frame: ErrorFrame) -> bool {
        metrics::error_frame(frame.code);
        self.send(&ServerFrame::Error(frame))
    }

    /// Asks the connection to close with `reason`; the first reason wins. Returns whether this call decided it.
    pub fn kick(&self, reason: KickReason) -> bool {
        let code = KICK_REASONS.iter().position(|r| *r == reason).unwrap_or(0) as u8;
        let decided = self
            .kick_reason
            .compare_exchange(NO_KICK, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.closed.cancel();
        decided
    }

    /// Why the connection is being closed, if it is.
    pub fn kicked(&self) -> Option<KickReason> {
        KICK_REASONS
            .get(self.kick_reason.load(Ordering::Acquire) as usize)
            .copied()
    }

    /// Resolves once the connection must close.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// The `kick` frame for the reason this connection is closing.
    pub fn kick_frame(reason: KickReason) -> ServerFrame {
        let msg = match reason {
            KickReason::Draining => "node shutting down: reconnect to any node and sync",
            KickReason::Replaced => "this device connected again elsewhere",
            KickReason::SlowConsumer => "outbound queue full: reconnect and sync",
            KickReason::IdleTimeout => "nothing received within the idle timeout",
            KickReason::LeaseLost => "node lost its cluster lease: reconnect and sync",
            KickReason::ProtocolError => "protocol error",
            KickReason::Revoked => "session token revoked: log in again",
            KickReason::RateLimited => {
                "send rate exceeded again and again: back off before reconnecting"
            }
        };
        ServerFrame::Kick(Kick {
            reason,
            msg: msg.into(),
        })
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Release);
        self.queue.ready.notify_one();
    }
}

impl AckSink for Outbox {
    fn answer(&self, outcome: Result<Ack, ErrorFrame>, received_at: Instant) {
        match outcome {
            Ok(ack) => {
                self.metrics
                    .ack_latency
                    .record(received_at.elapsed().as_secs_f64());
                self.send(&ServerFrame::Ack(ack));
            }
            Err(frame) => {
                self.error(frame);
            }
        }
    }
}

struct LocalDevice {
    device: Arc<str>,
    conn_id: u64,
    outbox: Arc<Outbox>,
    /// The token the connection was opened with, so a revocation can find it.
    token: Claims,
}

/// How many WebSocket connections this node accepts.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Per user, on this node (a device connecting again replaces its old connection and does not count twice).
    pub per_user: usize,
    /// In total, on this node.
    pub total: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    PerUser,
    Total,
}

/// This node's connected devices.
#[derive(Default)]
pub struct LocalSessions {
    by_user: Mutex<HashMap<UserId, Vec<LocalDevice>>>,
    /// Connections in `by_user`, changed only under its lock (read without it for metrics and limits).
    total: AtomicUsize,
}

impl LocalSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Vec<LocalDevice>>> {
        // A panic while holding this lock would be a bug elsewhere; the map itself stays consistent, so keep going.
        self.by_user
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a connection within `limits`; returns the outbox of a previous connection of the same device, now
    /// replaced, or which limit refused it.
    pub fn insert(
        &self,
        user: UserId,
        device: Arc<str>,
        conn_id: u64,
        outbox: Arc<Outbox>,
        token: Claims,
        limits: ConnectionLimits,
    ) -> Result<Option<Arc<Outbox>>, LimitHit> {
        let mut map = self.lock();
        let devices = map.entry(user).or_default();
        let replaces = devices.iter().position(|d| d.device == device);
        if replaces.is_none() {
            if devices.len() >= limits.per_user {
                if devices.is_empty() {
                    map.remove(&user);
                }
                return Err(LimitHit::PerUser);
            }
            if self.total.load(Ordering::Relaxed) >= limits.total {
                if devices.is_empty() {
                    map.remove(&user);
                }
                return Err(LimitHit::Total);
            }
            self.total.fetch_add(1, Ordering::Relaxed);
        }
        let previous = replaces.map(|i| devices.swap_remove(i).outbox);
        devices.push(LocalDevice {
            device,
            conn_id,
            outbox,
            token,
        });
        Ok(previous)
    }

    /// Removes a connection if it is still the registered one for its device; returns whether it was.
    pub fn remove(&self, user: UserId, device: &str, conn_id: u64) -> bool {
        let mut map = self.lock();
        let Some(devices) = map.get_mut(&user) else {
            return false;
        };
        let Some(index) = devices
            .iter()
            .position(|d| &*d.device == device && d.conn_id == conn_id)
        else {
            return false;
        };
        devices.swap_remove(index);
        self.total.fetch_sub(1, Ordering::Relaxed);
        if devices.is_empty() {
            map.remove(&user);
        }
        true
    }

    /// Kicks the connections of `user` whose token matches; returns how many.
    pub fn kick_tokens(
        &self,
        user: UserId,
        reason: KickReason,
        matches: impl Fn(&Claims) -> bool,
    ) -> usize {
        let map = self.lock();
        let mut kicked = 0;
        for local in map.get(&user).into_iter().flatten() {
            if matches(&local.token) {
                local.outbox.kick(reason);
                kicked += 1;
            }
        }
        kicked
    }

    /// The tokens of every connection on this node, each once.
    pub fn token_claims(&self) -> Vec<Claims> {
        let map = self.lock();
        let mut seen = HashSet::new();
        map.values()
            .flatten()
            .filter(|d| seen.insert(d.token.id))
            .map(|d| d.token)
            .collect()
    }

    /// Pushes `frame` to every local device of `users` except `skip`; returns how many got it.
    pub fn deliver(&self, users: &[UserId], skip: Option<(UserId, &str)>, frame: &Bytes) -> u64 {
        let map = self.lock();
        let mut delivered = 0;
        for user in users {
            let Some(devices) = map.get(user) else {
                continue;
            };
            for device in devices {
                if skip.is_some_and(|(u, d)| u == *user && d == &*device.device) {
                    continue;
                }
                delivered += u64::from(device.outbox.push(frame.clone()));
            }
        }
        delivered
    }

    /// Whether `user` has any device on this node.
    pub fn has_user(&self, user: UserId) -> bool {
        self.lock().contains_key(&user)
    }

    /// Kicks one device (it connected again on another node).
    pub fn kick_device(&self, user: UserId, device: &str, reason: KickReason) {
        if let Some(devices) = self.lock().get(&user) {
            for local in devices.iter().filter(|d| &*d.device == device) {
                local.outbox.kick(reason);
            }
        }
    }

    /// Kicks every connection (drain, lease lost).
    pub fn kick_all(&self, reason: KickReason) -> usize {
        let map = self.lock();
        let mut kicked = 0;
        for local in map.values().flatten() {
            local.outbox.kick(reason);
            kicked += 1;
        }
        kicked
    }

    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

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
pub struct Route<'a> {
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
    pub async fn deliver(&self, routes: &[Route<'_>]) -> u64 {
        let mut local = 0;
        let mut lookup_users: Vec<UserId> = Vec::new();
        let mut seen = HashSet::new();
        let mut broadcasts: Vec<&Route<'_>> = Vec::new();
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
        route: &Route<'_>,
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
        route: &Route<'_>,
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
                self.deliver(&[Route {
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
            let Ok(friends) = crate::chat::pair_cache::friends_of(&pool, user).await else {
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

/// Routes committed batches, in commit order, until the writer stops.
pub async fn run_router(
    mut committed: mpsc::Receiver<Vec<Committed>>,
    delivery: Delivery,
    compress_threshold: usize,
) {
    while let Some(batch) = committed.recv().await {
        let mut frames = Vec::with_capacity(batch.len());
        for item in &batch {
            match common::encode(&ServerFrame::Msg(item.msg.clone()), compress_threshold) {
                Ok(bytes) => frames.push((item, Bytes::from(bytes))),
                Err(error) => {
                    warn!(%error, "could not encode a committed message; recipients will get it by sync")
                }
            }
        }
        let routes: Vec<Route<'_>> = frames
            .iter()
            .map(|(item, frame)| Route {
                conv: Some(item.msg.conv),
                users: &item.members,
                skip: Some((item.msg.from, &*item.sender_device)),
                frame,
                msg: Some(&item.msg),
            })
            .collect();
        delivery.deliver(&routes).await;
        for item in &batch {
            delivery
                .metrics
                .route_latency
                .record(item.committed_at.elapsed().as_secs_f64());
        }
    }
    debug!("router stopped");
}

/// Applies what other nodes published for this node.
pub async fn run_bus_consumer(
    mut inbox: mpsc::Receiver<BusMessage>,
    delivery: Delivery,
    pairs: Arc<crate::chat::pair_cache::PairCache>,
    revocations: Arc<crate::identity::revocation::Revocations>,
) {
    let sessions = &delivery.sessions;
    let metrics = &delivery.metrics;
    while let Some(message) = inbox.recv().await {
        match message {
            BusMessage::Deliver { users, skip, frame } => {
                let frame = Bytes::from(frame);
                let skip = skip.as_ref().map(|(user, device)| (*user, device.as_str()));
                metrics
                    .delivered_redis
                    .increment(sessions.deliver(&users, skip, &frame));
            }
            BusMessage::DeliverConv { conv, skip, frame } => match delivery.members.get(conv).await
            {
                Ok(Some(members)) => {
                    let frame = Bytes::from(frame);
                    let skip = skip.as_ref().map(|(user, device)| (*user, device.as_str()));
                    // One pass under one lock: members without a local device are skipped inside.
                    let local = &members.users;
                    metrics
                        .delivered_redis
                        .increment(sessions.deliver(local, skip, &frame));
                }
                Ok(None) => {}
                Err(error) => {
                    warn!(%error, conv, "could not load members; local members will get this by sync")
                }
            },
            BusMessage::KickDevice { user, device } => {
                sessions.kick_device(user, &device, KickReason::Replaced);
            }
            BusMessage::ConvChanged { conv } => delivery.members.invalidate(conv),
            BusMessage::TokensRevoked {
                user,
                token,
                not_before_ms,
            } => {
                let token = token
                    .as_deref()
                    .and_then(crate::identity::auth::token_id_from_hex);
                revocations.learn_revoked(user, token, not_before_ms);
                crate::identity::revocation::close_revoked(sessions, user, token, not_before_ms);
            }
            BusMessage::PairChanged { a, b } => pairs.invalidate(a, b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[tokio::test]
    async fn queue_keeps_order_bounds_its_length_and_ends_when_the_outbox_goes() {
        let (outbox, mut rx) = Outbox::new(3, usize::MAX, Metrics::new("test"));
        for n in 0..3 {
            assert!(outbox.push(frame(n)));
        }
        // The fourth frame does not fit: refused, and the connection is kicked as a slow consumer.
        assert!(!outbox.push(frame(3)));
        assert_eq!(outbox.kicked(), Some(KickReason::SlowConsumer));
        for n in 0..3 {
            match rx.recv().await {
                Some(Outbound::Frame(bytes)) => assert_eq!(bytes, frame(n)),
                _ => panic!("expected frame {n}"),
            }
        }
        // A reader waiting on an empty queue is woken by the next push.
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await.is_some();
            let end = rx.recv().await.is_none();
            (first, end)
        });
        tokio::task::yield_now().await;
        assert!(outbox.pong(frame(9)));
        drop(outbox);
        assert_eq!(waiter.await.ok(), Some((true, true)));
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_memory_back() {
        let (outbox, mut rx) = Outbox::new(1000, usize::MAX, Metrics::new("test"));
        for n in 0..100 {
            assert!(outbox.push(frame(n)));
        }
        while !outbox.queue.lock().is_empty() {
            rx.recv().await;
        }
        assert!(outbox.queue.lock().capacity() <= KEEP_SLOTS);
    }
}
