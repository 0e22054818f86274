//! The batched writer: the only code that inserts messages.
//!
//! A node runs `--writers` writers, each with its own Postgres connection; a message goes to the writer its sender
//! hashes to, so one sender's messages are committed in the order they were sent, and the writers' transactions
//! spread over as many Postgres backends (one writer is one backend: one core). Two writers touching one
//! conversation serialize on its row lock exactly as the writers of two nodes do.
//!
//! Sessions submit messages over a bounded channel. Each writer commits them many per transaction: it collects up
//! to `batch_rows` messages or until `flush_interval` has passed since the first, then, in one transaction,
//! 1. finds `(sender, cid)` pairs already stored (a retried send answers with the stored message),
//! 2. for 1:1 sends the node has not routed before, checks the pair's policy (blocks, friendship, both users exist)
//!    and finds or creates the pair's conversation: one statement for the checks and one for the creations of the
//!    whole batch, so a first message costs no commit of its own (what it learns goes to the `PairCache` after
//!    the commit),
//! 3. locks the batch's conversations in id order and advances each one's `last_seq` by its count of new
//!    messages (one statement; the locks are held until the commit, so the locked section is two round trips) — the seq is allocated inside the commit, so commit order is seq order and a settled gap stays
//!    settled (two writers of one conversation serialize on its row lock; the fixed order rules out deadlocks),
//! 4. in one statement, takes the idempotency keys in `message_keys` (`ON CONFLICT (sender, cid) DO NOTHING`
//!    covers a retry racing through another node; the membership check rides along), inserts the rows whose key it
//!    took into the hash-partitioned `messages`, and advances each sender's `read_seq`,
//! 5. commits.
//!
//! Only then does each sender get its `ack` and are the new messages handed, in commit order, to delivery. A
//! transaction that fails on the data of one submission (a data exception: content Postgres cannot hold) is split
//! and retried in halves, so only that submission is refused (non-retryable) and every other one is committed; any
//! other failure answers every sender of the batch with a retryable `store_unavailable`: nothing was stored.
//!
//! The 1:1 relationship is re-checked in step 4 for every message into a 1:1 conversation (recalls excepted: taking
//! back your own words is always allowed), so a stale cache on any node cannot store a message the pair's policy
//! refuses now.
//!
//! Files: `batch.rs` (a batch's outcome to its senders and to delivery, the split on data errors), `commit.rs` (the
//! transaction's steps), `directs.rs` (step 2).

use std::sync::Arc;
use std::time::{Duration, Instant};

mod batch;
mod commit;
mod directs;

use common::frame::{Ack, Attrs, ErrorFrame, Msg};
use common::ids::{ConvId, Seq, UserId};
use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use crate::metrics::Metrics;
use crate::storage::pair_cache::PairCache;
use batch::commit_batch;

/// Where the outcome of one submission goes (the sender's connection).
pub trait AckSink: Send + Sync {
    fn answer(&self, outcome: Result<Ack, ErrorFrame>, received_at: Instant);
}

/// One message waiting to be committed.
pub struct Submission {
    pub sender: UserId,
    pub sender_device: Arc<str>,
    pub cid: String,
    pub target: Target,
    /// Every member of the conversation (the sender included), for routing after the commit.
    pub members: Arc<[UserId]>,
    pub kind: String,
    pub body: String,
    pub attrs: Option<Attrs>,
    /// Made by the server (group changes, recalls): stored even if the sender is no longer a member.
    pub system: bool,
    /// For a recall: the seq whose content is erased in the same transaction.
    pub recall_target: Option<Seq>,
    pub reply: Arc<dyn AckSink>,
    pub received_at: Instant,
}

/// Where a submission goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A conversation the sender is (checked in the batch) a member of.
    Conv(ConvId),
    /// The 1:1 conversation with this user, resolved by the writer (policy checked, created if new).
    Direct(UserId),
}

/// A newly committed message, on its way to delivery.
pub struct Committed {
    pub msg: Msg,
    pub members: Arc<[UserId]>,
    pub sender_device: Arc<str>,
    pub committed_at: Instant,
}

/// The sessions' handle on the writers.
#[derive(Clone)]
pub struct WriterHandle {
    shards: Arc<[mpsc::Sender<Submission>]>,
}

impl WriterHandle {
    /// Queues a message with its sender's writer; waits while that queue is full (back-pressure on the sender's
    /// connection). Returns the submission if the writer has stopped.
    pub async fn submit(&self, submission: Submission) -> Result<(), Submission> {
        // Users ids are sequential, so the remainder spreads them evenly.
        let shard = submission.sender.unsigned_abs() as usize % self.shards.len().max(1);
        match self.shards.get(shard) {
            Some(tx) => tx.send(submission).await.map_err(|e| e.0),
            None => Err(submission),
        }
    }

    /// Messages waiting in every writer's queue.
    pub fn queued(&self) -> usize {
        self.shards
            .iter()
            .map(|tx| tx.max_capacity() - tx.capacity())
            .sum()
    }
}

/// Writer settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// How many writers (each one Postgres connection and one transaction at a time).
    pub writers: usize,
    pub batch_rows: usize,
    pub flush_interval: Duration,
    pub queue: usize,
    /// Whether 1:1 messages need friendship (`--require-friendship`), re-checked in every commit.
    pub require_friendship: bool,
}

/// Starts the writer tasks. The returned task ends once `drain` is cancelled and every queued message has been
/// committed or answered.
pub fn spawn(
    pool: Pool,
    pairs: Arc<PairCache>,
    settings: WriterSettings,
    committed: mpsc::Sender<Vec<Committed>>,
    metrics: Metrics,
    drain: CancellationToken,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let writers = settings.writers.max(1);
    let mut shards = Vec::with_capacity(writers);
    let mut tasks = Vec::with_capacity(writers);
    for shard in 0..writers {
        let (tx, rx) = mpsc::channel(settings.queue.div_ceil(writers).max(1));
        shards.push(tx);
        tasks.push(tokio::spawn(
            run(
                pool.clone(),
                pairs.clone(),
                settings,
                rx,
                committed.clone(),
                metrics.clone(),
                drain.clone(),
            )
            .instrument(info_span!("writer", shard)),
        ));
    }
    let all = tokio::spawn(async move {
        for task in tasks {
            let _ = task.await;
        }
    });
    (
        WriterHandle {
            shards: shards.into(),
        },
        all,
    )
}

async fn run(
    pool: Pool,
    pairs: Arc<PairCache>,
    settings: WriterSettings,
    mut rx: mpsc::Receiver<Submission>,
    committed: mpsc::Sender<Vec<Committed>>,
    metrics: Metrics,
    drain: CancellationToken,
) {
    let mut draining = false;
    loop {
        let first = tokio::select! {
            next = rx.recv() => next,
            _ = drain.cancelled(), if !draining => {
                // Refuse new submissions, keep what is queued.
                draining = true;
                rx.close();
                continue;
            }
        };
        let Some(first) = first else { break };
        let mut batch = Vec::with_capacity(settings.batch_rows.min(256));
        batch.push(first);
        let deadline = tokio::time::Instant::now() + settings.flush_interval;
        while batch.len() < settings.batch_rows {
            // Take what is already queued without waiting, then wait for more until the deadline.
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(next)) => batch.push(next),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        commit_batch(
            &pool,
            &pairs,
            settings.require_friendship,
            batch,
            &committed,
            &metrics,
        )
        .await;
    }
}
