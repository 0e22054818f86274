//! The delivery checker: records every send and ack during a fault run, then compares what every device showed,
//! and what Postgres holds, with the promise of `docs/protocol.md` §6 and the design's delivery guarantee.
//!
//! Counts, all of which must be zero for a run to pass:
//! - `lost`: an acknowledged message missing from some member device after its final sync (the sending device
//!   is excused: it holds the ack), or missing from Postgres, or stored under another id, conversation or seq;
//! - `duplicated`: one `(sender, cid)` shown or stored as more than one message, or acked with two different ids;
//! - `reordered`: a device showed a lower seq after a higher one in a conversation, showed a message below a gap it
//!   had settled, or two different messages claimed one `(conversation, seq)`;
//! - `unexpected`: a device showed a message nobody sent, or one of a conversation its user is not a member of.
//!
//! Un-acknowledged sends may go either way: stored and delivered, or neither. The checker is not a stub of the
//! system: it only reads what real clients received from real nodes and what the real Postgres holds.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

use common::frame::Ack;
use common::ids::{ConvId, MsgId, Seq, UserId};

use crate::client::ConvLog;

/// Kinds of message the server makes itself (no client send behind them).
const SERVER_KINDS: [&str; 2] = [common::frame::kinds::SYSTEM, common::frame::kinds::RECALL];

fn is_server_made(kind: &str) -> bool {
    SERVER_KINDS.contains(&kind)
}

/// One send as the traffic generator made it (a retry reuses the record).
#[derive(Debug, Clone)]
struct SendRecord {
    device: String,
    /// Every member of the target conversation, the sender included.
    members: Vec<UserId>,
    attempts: u32,
}

/// What one device showed over the whole run (carried across its reconnects).
#[derive(Debug, Clone)]
pub struct DeviceRecord {
    pub user: UserId,
    pub device: String,
    pub convs: HashMap<ConvId, ConvLog>,
    pub reconnects: u32,
}

/// The result of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: usize,
    pub retries: usize,
    pub acked: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub reordered: usize,
    pub unexpected: usize,
    /// Pushes a device dropped because it had the message already (evidence that a duplicate reached a client).
    pub dedup_dropped: usize,
    pub reconnects: usize,
}

impl Counts {
    /// Whether the run kept the promise.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0 && self.unexpected == 0
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent={} retries={} acked={} delivered={} lost={} duplicated={} reordered={} unexpected={} \
             dedup_dropped={} reconnects={}",
            self.sent,
            self.retries,
            self.acked,
            self.delivered,
            self.lost,
            self.duplicated,
            self.reordered,
            self.unexpected,
            self.dedup_dropped,
            self.reconnects
        )
    }
}

#[derive(Default)]
struct Log {
    sends: HashMap<(UserId, String), SendRecord>,
    acks: HashMap<(UserId, String), Vec<Ack>>,
}

/// Shared by every traffic task of a run.
#[derive(Default)]
pub struct Checker {
    log: Mutex<Log>,
}

impl Checker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a send attempt (the first or a retry with the same cid).
    pub fn sent(&self, sender: UserId, device: &str, cid: &str, members: &[UserId]) {
        let mut log = self.lock();
        log.sends
            .entry((sender, cid.to_string()))
            .and_modify(|record| record.attempts += 1)
            .or_insert_with(|| SendRecord {
                device: device.to_string(),
                members: members.to_vec(),
                attempts: 1,
            });
    }

    /// Records an ack.
    pub fn acked(&self, sender: UserId, ack: &Ack) {
        self.lock()
            .acks
            .entry((sender, ack.cid.clone()))
            .or_default()
            .push(ack.clone());
    }

    pub fn acked_count(&self) -> usize {
        self.lock().acks.len()
    }

    /// Compares the devices' final state and the database with the records. `devices` must have done their final
    /// sync; `sql` is a connection to the cluster's database.
    pub async fn verify(
        &self,
        devices: &[DeviceRecord],
        sql: &tokio_postgres::Client,
    ) -> anyhow::Result<Counts> {
        let (sends, acks) = {
            let log = self.lock();
            (log.sends.clone(), log.acks.clone())
        };
        let mut counts = Counts {
            sent: sends.len(),
            retries: sends.values().map(|s| s.attempts as usize - 1).sum(),
            acked: acks.len(),
            reconnects: devices.iter().map(|d| d.reconnects as usize).sum(),
            ..Counts::default()
        };

        // Acks: one message per (sender, cid), one message per (conversation, seq).
        let mut by_slot: HashMap<(ConvId, Seq), MsgId> = HashMap::new();
        let mut final_ack: HashMap<(UserId, String), Ack> = HashMap::new();
        for (key, list) in &acks {
            let ids: HashSet<MsgId> = list.iter().map(|a| a.id).collect();
            counts.duplicated += ids.len() - 1;
            for ack in list {
                if *by_slot.entry((ack.conv, ack.seq)).or_insert(ack.id) != ack.id {
                    counts.reordered += 1;
                }
            }
            if let Some(first) = list.first() {
                final_ack.insert(key.clone(), first.clone());
            }
        }

        // Devices: order, membership, origin, duplicates after dedup by id.
        for device in devices {
            for (conv, log) in &device.convs {
                counts.dedup_dropped += log.duplicates;
                counts.reordered += log.violations;
                counts.reordered += log.shown.windows(2).filter(|w| w[1] < w[0]).count();
                let mut by_cid: HashMap<(UserId, &str), HashSet<MsgId>> = HashMap::new();
                for msg in log.msgs.values() {
                    if is_server_made(&msg.kind) {
                        // Group events (created, member added, …) come from the server, not from a send.
                        continue;
                    }
                    counts.delivered += 1;
                    let key = (msg.from, msg.cid.to_string());
                    match sends.get(&key) {
                        None => counts.unexpected += 1,
                        Some(send) if !send.members.contains(&device.user) => {
                            counts.unexpected += 1
                        }
                        Some(_) => {}
                    }
                    if let Some(ack) = final_ack.get(&key) {
                        if ack.conv != *conv || ack.seq != msg.seq || ack.id != msg.id {
                            counts.reordered += 1;
                        }
                    }
                    by_cid
                        .entry((msg.from, &msg.cid))
                        .or_default()
                        .insert(msg.id);
                }
                counts.duplicated += by_cid.values().map(|ids| ids.len() - 1).sum::<usize>();
            }
        }

        // Every acked message on every member device except the one that sent it.
        for (key, ack) in &final_ack {
            let Some(send) = sends.get(key) else {
                counts.unexpected += 1;
                continue;
            };
            for device in devices {
                let is_sender_device = device.user == key.0 && device.device == send.device;
                if is_sender_device || !send.members.contains(&device.user) {
                    continue;
                }
                let shown = device
                    .convs
                    .get(&ack.conv)
                    .and_then(|log| log.msgs.get(&ack.seq))
                    .is_some_and(|msg| msg.id == ack.id);
                if !shown {
                    counts.lost += 1;
                }
            }
        }

        // Postgres: every acked message stored as acked; one row per (sender, cid); nothing nobody sent.
        let rows = sql
            .query(
                "SELECT id, conv_id, seq, sender, cid FROM messages WHERE kind <> ALL($1)",
                &[&SERVER_KINDS.to_vec()],
            )
            .await?;
        let mut stored: HashMap<MsgId, (ConvId, Seq)> = HashMap::new();
        let mut per_cid: HashMap<(UserId, String), usize> = HashMap::new();
        let mut per_slot: HashMap<(ConvId, Seq), usize> = HashMap::new();
        for row in rows {
            let id: MsgId = row.try_get(0)?;
            let conv: ConvId = row.try_get(1)?;
            let seq: Seq = row.try_get(2)?;
            let key: (UserId, String) = (row.try_get(3)?, row.try_get(4)?);
            stored.insert(id, (conv, seq));
            *per_slot.entry((conv, seq)).or_default() += 1;
            if !sends.contains_key(&key) {
                counts.unexpected += 1;
            }
            *per_cid.entry(key).or_default() += 1;
        }
        counts.duplicated += per_cid.values().map(|n| n - 1).sum::<usize>();
        counts.reordered += per_slot.values().map(|n| n - 1).sum::<usize>();
        for ack in final_ack.values() {
            if stored.get(&ack.id) != Some(&(ack.conv, ack.seq)) {
                counts.lost += 1;
            }
        }
        Ok(counts)
    }
}
