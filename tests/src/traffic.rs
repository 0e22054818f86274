//! Steady traffic for fault runs: one task per device, each sending to its targets at a fixed pace, following the
//! client rules (retry an unacknowledged send with the same `cid`, reconnect to any node after a kick or a lost
//! connection, catch up by sync), and reporting every send and ack to the `Checker`.
//!
//! Targets are conversations a device sends into. Only direct (1:1) conversations exist today; a group target is
//! one more `Target` variant whose `members` lists the group, and nothing else here needs to change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::frame::{kinds, Send};
use common::ids::{ConvId, UserId};
use common::ClientFrame;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checker::{Checker, Counts, DeviceRecord};
use crate::client::{ConvLog, TestClient};
use crate::procs::{Cluster, TestUser};

/// A conversation a device sends into.
#[derive(Debug, Clone)]
pub enum Target {
    /// A 1:1 conversation with this user.
    Direct(UserId),
    /// A group conversation and all its members.
    Group { conv: ConvId, members: Vec<UserId> },
}

impl Target {
    /// The `send` frame for this target.
    fn frame(&self, cid: &str, body: &str) -> ClientFrame {
        let (to, conv) = match self {
            Target::Direct(user) => (Some(*user), None),
            Target::Group { conv, .. } => (None, Some(*conv)),
        };
        ClientFrame::Send(Send {
            cid: cid.into(),
            to,
            conv,
            kind: kinds::TEXT.into(),
            body: body.into(),
            attrs: None,
        })
    }

    /// Every member, the sender included.
    fn members(&self, sender: UserId) -> Vec<UserId> {
        match self {
            Target::Direct(user) if *user == sender => vec![sender],
            Target::Direct(user) => vec![sender, *user],
            Target::Group { members, .. } => members.clone(),
        }
    }
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    pub user: TestUser,
    pub device: String,
    /// The node it connects to first; after a failure it tries the others in turn.
    pub home: usize,
    pub targets: Vec<Target>,
}

/// Traffic settings.
#[derive(Debug, Clone, Copy)]
pub struct TrafficSettings {
    /// Pause between one device's sends.
    pub interval: Duration,
    /// How long a send waits for its ack before the device gives up on the connection.
    pub ack_timeout: Duration,
}

impl Default for TrafficSettings {
    fn default() -> Self {
        TrafficSettings {
            interval: Duration::from_millis(100),
            ack_timeout: Duration::from_secs(4),
        }
    }
}

/// A plan with users on every node, each sending to users homed on other nodes (cross-node 1:1) and into one group
/// of everyone, and one user with a second device on another node (so "the sender's other devices" are checked
/// too).
pub async fn cross_node_plan(
    cluster: &Cluster,
    users_per_node: usize,
) -> anyhow::Result<Vec<DevicePlan>> {
    let nodes = cluster.nodes.len();
    let mut users = Vec::new();
    for index in 0..nodes * users_per_node {
        users.push((index % nodes, cluster.user("f").await?));
    }
    let group = match users.first() {
        Some((_, owner)) => {
            let members: Vec<UserId> = users.iter().skip(1).map(|(_, u)| u.id).collect();
            let body = serde_json::json!({"title": "fault run", "members": members});
            let (status, created) = cluster
                .api(0, owner, "POST", "/v1/groups", Some(body))
                .await?;
            anyhow::ensure!(status == 201, "creating the group: {status} {created}");
            let conv = created["id"]
                .as_i64()
                .ok_or_else(|| anyhow::anyhow!("no group id in {created}"))?;
            Some(Target::Group {
                conv,
                members: users.iter().map(|(_, u)| u.id).collect(),
            })
        }
        None => None,
    };
    let mut plans = Vec::new();
    for (home, user) in &users {
        let targets = users
            .iter()
            .filter(|(other_home, other)| other_home != home && other.id != user.id)
            .map(|(_, other)| Target::Direct(other.id))
            .chain(group.clone())
            .collect();
        plans.push(DevicePlan {
            user: user.clone(),
            device: "phone".into(),
            home: *home,
            targets,
        });
    }
    if let Some((home, user)) = users.first() {
        plans.push(DevicePlan {
            user: user.clone(),
            device: "laptop".into(),
            home: (home + 1) % nodes,
            targets: Vec::new(),
        });
    }
    Ok(plans)
}

/// Running traffic.
pub struct Traffic {
    pub checker: Arc<Checker>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<DeviceRecord>>>,
}

impl Traffic {
    /// Connects every device and starts sending.
    pub fn start(
        addrs: Vec<SocketAddr>,
        plans: Vec<DevicePlan>,
        settings: TrafficSettings,
    ) -> Traffic {
        let checker = Arc::new(Checker::default());
        let (stop, stopped) = watch::channel(false);
        let addrs: Arc<[SocketAddr]> = addrs.into();
        let tasks = plans
            .into_iter()
            .enumerate()
            .map(|(index, plan)| {
                let device = SimDevice {
                    plan,
                    addrs: addrs.clone(),
                    settings,
                    checker: checker.clone(),
                    stopped: stopped.clone(),
                    convs: HashMap::new(),
                    reconnects: 0,
                    seed: index,
                };
                tokio::spawn(device.run())
            })
            .collect();
        Traffic {
            checker,
            stop,
            tasks,
        }
    }

    /// Waits until `count` more sends are acknowledged (or `limit` passes): proof that traffic flows.
    pub async fn wait_acks(&self, count: usize, limit: Duration) -> anyhow::Result<()> {
        let target = self.checker.acked_count() + count;
        let deadline = Instant::now() + limit;
        while self.checker.acked_count() < target {
            if Instant::now() > deadline {
                anyhow::bail!(
                    "only {} of {target} acks within {limit:?}",
                    self.checker.acked_count()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops sending, lets every device do its final sync, and checks the run against the database.
    pub async fn finish(self, cluster: &Cluster) -> anyhow::Result<Counts> {
        let (checker, devices) = self.collect().await?;
        let sql = cluster.sql().await?;
        checker.verify(&devices, &sql).await
    }

    /// Stops sending and returns the records after every device's final sync, unchecked.
    pub async fn collect(self) -> anyhow::Result<(Arc<Checker>, Vec<DeviceRecord>)> {
        let _ = self.stop.send(true);
        let mut devices = Vec::new();
        for task in self.tasks {
            devices.push(task.await??);
        }
        Ok((self.checker, devices))
    }
}

struct SimDevice {
    plan: DevicePlan,
    addrs: Arc<[SocketAddr]>,
    settings: TrafficSettings,
    checker: Arc<Checker>,
    stopped: watch::Receiver<bool>,
    /// What this device has shown, kept across reconnects.
    convs: HashMap<ConvId, ConvLog>,
    reconnects: u32,
    seed: usize,
}

impl SimDevice {
    fn stopping(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Connects to the home node or, failing that, the next ones in turn, until one accepts; then catches up.
    async fn connect(&mut self, first_choice: usize) -> anyhow::Result<(TestClient, usize)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut attempt = 0;
        loop {
            let index = (first_choice + attempt) % self.addrs.len();
            attempt += 1;
            if let Ok(Ok(mut client)) = tokio::time::timeout(
                Duration::from_secs(3),
                TestClient::connect(self.addrs[index], &self.plan.user, &self.plan.device),
            )
            .await
            {
                client.convs = std::mem::take(&mut self.convs);
                match client.catch_up().await {
                    Ok(()) => return Ok((client, index)),
                    Err(_) => self.convs = std::mem::take(&mut client.convs),
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "device {}/{} could not connect to any node",
                    self.plan.user.name,
                    self.plan.device
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn run(mut self) -> anyhow::Result<DeviceRecord> {
        let (mut client, mut node) = self.connect(self.plan.home).await?;
        let mut counter = 0usize;
        // The unacknowledged send being retried: (cid, target index).
        let mut pending: Option<(String, usize)> = None;
        let mut attempts = 0u32;
        loop {
            let stopping = self.stopping();
            if stopping && (pending.is_none() || attempts >= 3) {
                break;
            }
            let mut healthy = true;
            if !self.plan.targets.is_empty() && (pending.is_some() || !stopping) {
                let (cid, target_index) = pending.clone().unwrap_or_else(|| {
                    counter += 1;
                    (
                        format!("{}-{}-{counter}", self.plan.user.id, self.plan.device),
                        (self.seed + counter) % self.plan.targets.len(),
                    )
                });
                let target = &self.plan.targets[target_index];
                self.checker.sent(
                    self.plan.user.id,
                    &self.plan.device,
                    &cid,
                    &target.members(self.plan.user.id),
                );
                attempts += 1;
                let sent = client.send(&target.frame(&cid, "fault run")).await;
                let result = match sent {
                    Ok(()) => client.wait_ack(&cid, self.settings.ack_timeout).await,
                    Err(error) => Err(error),
                };
                match result {
                    Ok(ack) => {
                        self.checker.acked(self.plan.user.id, &ack);
                        pending = None;
                        attempts = 0;
                    }
                    Err(_) => {
                        // An error frame (store unavailable, draining) means retry on this connection; anything
                        // else means the connection is gone or stuck.
                        healthy = client.errors.remove(&cid).is_some();
                        pending = Some((cid, target_index));
                    }
                }
            }
            if healthy {
                let pause = if stopping {
                    Duration::from_millis(200)
                } else {
                    self.settings.interval
                };
                healthy = client.drain(pause).await.is_ok();
            }
            if !healthy {
                self.convs = std::mem::take(&mut client.convs);
                self.reconnects += 1;
                // Prefer the next node: the one we were on may be dead or paused.
                let (next, index) = self.connect(node + 1).await?;
                client = next;
                node = index;
            }
        }
        // Final sync: a fresh connection to a live node, and everything since what this device knows.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = client.drain(Duration::from_millis(300)).await;
        self.convs = std::mem::take(&mut client.convs);
        drop(client);
        let (mut client, _) = self.connect(node).await?;
        client.drain(Duration::from_millis(300)).await?;
        let convs: Vec<ConvId> = client.hello.convs.iter().map(|c| c.conv).collect();
        for conv in convs {
            let known = client.convs.get(&conv).map_or(0, |c| c.last_seq);
            client.sync_after(conv, known).await?;
        }
        Ok(DeviceRecord {
            user: self.plan.user.id,
            device: self.plan.device.clone(),
            convs: std::mem::take(&mut client.convs),
            reconnects: self.reconnects,
        })
    }
}
