//! The batched writer: the only code that inserts messages.
//!
//! A node has one writer queue and up to `--writers` transactions in flight, each on its own pooled Postgres
//! connection (one transaction is one Postgres backend: one core). Batches form node-wide (`dispatch.rs`): a batch
//! leaves at once when no commit is in flight, otherwise when its oldest message has waited `--writer-flush-us` or
//! it is full, so under load batches grow with the rate. A batch never takes a message of a sender who has a batch
//! in flight, so one sender's messages are committed in the order they were sent. Two transactions touching one
//! conversation serialize on its row lock exactly as the writers of two nodes do.
//!
//! Sessions submit messages over a bounded channel. Each batch is committed in one transaction:
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
//! Files: `dispatch.rs` (the queue and when a batch leaves), `batch.rs` (a batch's outcome to its senders and to
//! delivery, the split on data errors), `commit.rs` (the transaction's steps), `directs.rs` (step 2).

use std::sync::Arc;
use std::time::{Duration, Instant};

mod batch;
mod commit;
mod directs;
mod dispatch;

use common::frame::{Ack, Attrs, ErrorFrame, Msg};
use common::ids::{ConvId, Seq, UserId};
use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use crate::metrics::Metrics;
use crate::storage::pair_cache::PairCache;
use batch::commit_batch;
use dispatch::Dispatch;

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

/// The sessions' handle on the writer.
#[derive(Clone)]
pub struct WriterHandle {
    intake: mpsc::Sender<Submission>,
}

impl WriterHandle {
    /// Queues a message for the node's writer; waits while the queue is full (back-pressure on the sender's
    /// connection). Returns the submission if the writer has stopped.
    pub async fn submit(&self, submission: Submission) -> Result<(), Submission> {
        self.intake.send(submission).await.map_err(|e| e.0)
    }

    /// Messages waiting in the writer's queue (not yet taken into a batch).
    pub fn queued(&self) -> usize {
        self.intake.max_capacity() - self.intake.capacity()
    }
}

/// Writer settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// Transactions in flight at most (each on one pooled Postgres connection).
    pub writers: usize,
    pub batch_rows: usize,
    pub flush_interval: Duration,
    pub queue: usize,
    /// Whether 1:1 messages need friendship (`--require-friendship`), re-checked in every commit.
    pub require_friendship: bool,
}

/// Starts the writer. The returned task ends once `drain` is cancelled and every queued message has been
/// committed or answered.
pub fn spawn(
    pool: Pool,
    pairs: Arc<PairCache>,
    settings: WriterSettings,
    committed: mpsc::Sender<Vec<Committed>>,
    metrics: Metrics,
    drain: CancellationToken,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (intake, rx) = mpsc::channel(settings.queue.max(1));
    let dispatch = Dispatch {
        slots: settings.writers.max(1),
        batch_rows: settings.batch_rows.max(1),
        flush_interval: settings.flush_interval,
    };
    let commit = move |batch: Vec<Submission>| {
        let (pool, pairs, committed, metrics) = (
            pool.clone(),
            pairs.clone(),
            committed.clone(),
            metrics.clone(),
        );
        async move {
            commit_batch(
                &pool,
                &pairs,
                settings.require_friendship,
                batch,
                &committed,
                &metrics,
            )
            .await
        }
        .instrument(info_span!("writer_batch"))
    };
    let task = tokio::spawn(dispatch::run(rx, dispatch, commit, drain));
    (WriterHandle { intake }, task)
}
