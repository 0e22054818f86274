//! This node's connected devices: user → devices, each with its connection as a `Device` (its outbox), the per-user and per-node
//! connection limits, and local pushes (one lock per push, devices without a connection skipped).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::ids::UserId;
use common::KickReason;

use crate::identity::auth::Claims;

/// A connected device as fan-out sees it: somewhere to push encoded frames, and a switch that closes it. The
/// connection's `Outbox` is one; fan-out never needs to know more about connections.
pub trait Device: Send + Sync {
    /// Queues an encoded frame; `false` if it was not queued (full: the device is kicked as a slow consumer).
    fn push(&self, frame: Bytes) -> bool;
    /// Asks the connection to close with `reason`; returns whether this call decided it.
    fn kick(&self, reason: KickReason) -> bool;
}

struct LocalDevice {
    device: Arc<str>,
    conn_id: u64,
    outbox: Arc<dyn Device>,
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
        outbox: Arc<dyn Device>,
        token: Claims,
        limits: ConnectionLimits,
    ) -> Result<Option<Arc<dyn Device>>, LimitHit> {
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

    /// Every connected device's switch, so a drain can close them in waves without holding the lock.
    pub fn all_devices(&self) -> Vec<Arc<dyn Device>> {
        self.lock()
            .values()
            .flatten()
            .map(|local| local.outbox.clone())
            .collect()
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
