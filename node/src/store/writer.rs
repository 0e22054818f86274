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
//! Only then does each sender get its `ack` and are the new messages handed, in commit order, to delivery. A failed
//! transaction answers every sender of the batch with a retryable `store_unavailable`: nothing was stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::frame::{Ack, Attrs, ErrorFrame, Msg};
use common::ids::{ConvId, MsgId, Seq, UserId};
use common::ErrorCode;
use deadpool_postgres::{Pool, Transaction};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, warn, Instrument};

use super::queries::KIND_DIRECT;
use super::StoreError;
use crate::contacts::{pair, PairCache, PairPolicy};
use crate::metrics::Metrics;

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
        commit_batch(&pool, &pairs, batch, &committed, &metrics).await;
    }
}

/// Key of the idempotency constraint.
type SendKey = (UserId, String);

/// A stored message's identity, answered in an `ack`.
#[derive(Clone, Copy)]
struct Stored {
    id: MsgId,
    conv: ConvId,
    seq: Seq,
    ts: i64,
}

async fn commit_batch(
    pool: &Pool,
    pairs: &PairCache,
    batch: Vec<Submission>,
    committed: &mpsc::Sender<Vec<Committed>>,
    metrics: &Metrics,
) {
    let started = Instant::now();
    let rows = batch.len();
    match write(pool, pairs.require_friendship(), &batch).await {
        Ok(outcome) => {
            for (a, b, policy, conv) in outcome.learned {
                pairs.remember(a, b, policy, conv);
            }
            if outcome.created > 0 {
                metrics::counter!("im_direct_conversations_created_total")
                    .increment(outcome.created as u64);
            }
            metrics.batch_rows.record(rows as f64);
            metrics
                .flush_seconds
                .record(started.elapsed().as_secs_f64());
            let committed_at = Instant::now();
            let mut fresh = Vec::with_capacity(outcome.new_count);
            for (submission, result) in batch.into_iter().zip(outcome.per_submission) {
                let (stored, is_new) = match result {
                    Ok(pair) => pair,
                    Err((code, msg)) => {
                        let frame = ErrorFrame::new(code, msg).for_cid(submission.cid.clone());
                        submission.reply.answer(Err(frame), submission.received_at);
                        continue;
                    }
                };
                let ack = Ack {
                    cid: submission.cid.clone(),
                    id: stored.id,
                    conv: stored.conv,
                    seq: stored.seq,
                    ts: stored.ts,
                };
                submission.reply.answer(Ok(ack), submission.received_at);
                if is_new {
                    fresh.push(Committed {
                        msg: Msg {
                            id: stored.id,
                            conv: stored.conv,
                            seq: stored.seq,
                            from: submission.sender,
                            cid: submission.cid,
                            kind: submission.kind,
                            body: submission.body,
                            ts: stored.ts,
                            attrs: submission.attrs,
                            recalled: false,
                        },
                        members: submission.members,
                        sender_device: submission.sender_device,
                        committed_at,
                    });
                }
            }
            metrics.messages_accepted.increment(fresh.len() as u64);
            if !fresh.is_empty() && committed.send(fresh).await.is_err() {
                warn!("delivery stopped; committed messages will reach recipients through sync");
            }
        }
        Err(error) => {
            metrics::counter!("im_writer_errors_total").increment(1);
            warn!(%error, rows, "batch commit failed; senders told to retry");
            for submission in batch {
                let frame = ErrorFrame::new(
                    ErrorCode::StoreUnavailable,
                    "the message could not be stored; retry with the same cid",
                )
                .for_cid(submission.cid.clone());
                submission.reply.answer(Err(frame), submission.received_at);
            }
        }
    }
}

/// Reads `sender, cid, id, conv_id, seq, created_ms` of a stored message's key.
fn stored_from_row(row: &tokio_postgres::Row) -> Result<(SendKey, Stored), StoreError> {
    Ok((
        (row.try_get(0)?, row.try_get(1)?),
        Stored {
            id: row.try_get(2)?,
            conv: row.try_get(3)?,
            seq: row.try_get(4)?,
            ts: row.try_get(5)?,
        },
    ))
}

/// Why a submission was refused, as its error frame says it.
type Refusal = (ErrorCode, String);

struct Outcome {
    /// Per submission, in batch order: the stored message and whether this batch created it, or why it was refused.
    per_submission: Vec<Result<(Stored, bool), Refusal>>,
    new_count: usize,
    /// What the batch found out about 1:1 pairs: `(low, high, policy, conversation)`.
    learned: Vec<Learned>,
    /// 1:1 conversations the batch created.
    created: usize,
}

type Learned = (UserId, UserId, PairPolicy, Option<ConvId>);

/// The conversations and refusals of the batch's unrouted 1:1 sends (see the module comment, step 2).
struct Directs {
    conv: HashMap<(UserId, UserId), ConvId>,
    /// Conversations this batch created.
    created: usize,
    refused: HashMap<(UserId, UserId), Refusal>,
    learned: Vec<Learned>,
}

async fn resolve_directs(
    tx: &Transaction<'_>,
    require_friendship: bool,
    wanted: Vec<(UserId, UserId)>,
) -> Result<Directs, StoreError> {
    let mut directs = Directs {
        conv: HashMap::with_capacity(wanted.len()),
        created: 0,
        refused: HashMap::new(),
        learned: Vec::with_capacity(wanted.len()),
    };
    if wanted.is_empty() {
        return Ok(directs);
    }
    let (lows, highs): (Vec<UserId>, Vec<UserId>) = wanted.iter().copied().unzip();
    let check_stmt = tx
        .prepare_cached(
            "SELECT v.lo, v.hi,
                 EXISTS (SELECT 1 FROM users u WHERE u.id = v.lo) AND EXISTS (SELECT 1 FROM users u WHERE u.id = v.hi),
                 v.lo <> v.hi AND EXISTS (SELECT 1 FROM blocks b WHERE (b.user_id = v.lo AND b.blocked_id = v.hi)
                                                                  OR (b.user_id = v.hi AND b.blocked_id = v.lo)),
                 v.lo = v.hi OR EXISTS (SELECT 1 FROM friendships f WHERE f.user_id = v.lo AND f.friend_id = v.hi),
                 c.id
             FROM unnest($1::bigint[], $2::bigint[]) AS v(lo, hi)
             LEFT JOIN conversations c ON c.direct_low = v.lo AND c.direct_high = v.hi",
        )
        .await?;
    let mut create: Vec<(UserId, UserId)> = Vec::new();
    for row in tx.query(&check_stmt, &[&lows, &highs]).await? {
        let (low, high): (UserId, UserId) = (row.try_get(0)?, row.try_get(1)?);
        let known: bool = row.try_get(2)?;
        let blocked: bool = row.try_get(3)?;
        let friends: bool = row.try_get(4)?;
        let conv: Option<ConvId> = row.try_get(5)?;
        let policy = if !known {
            directs.refused.insert(
                (low, high),
                (
                    ErrorCode::UnknownUser,
                    "the recipient does not exist".into(),
                ),
            );
            continue;
        } else if blocked {
            PairPolicy::Blocked
        } else if friends || !require_friendship {
            PairPolicy::Allowed
        } else {
            PairPolicy::NotFriends
        };
        match (policy, conv) {
            (PairPolicy::Allowed, Some(conv)) => {
                directs.conv.insert((low, high), conv);
            }
            (PairPolicy::Allowed, None) => create.push((low, high)),
            (PairPolicy::Blocked, _) => {
                directs.refused.insert(
                    (low, high),
                    (
                        ErrorCode::Blocked,
                        "messages between you are blocked".into(),
                    ),
                );
            }
            (PairPolicy::NotFriends, _) => {
                directs.refused.insert(
                    (low, high),
                    (
                        ErrorCode::NotFriends,
                        "you are not friends with this user".into(),
                    ),
                );
            }
        }
        directs.learned.push((low, high, policy, conv));
    }
    if !create.is_empty() {
        // Inserted in pair order, so two batches creating overlapping pairs wait on each other in one order only.
        create.sort_unstable();
        let (lows, highs): (Vec<UserId>, Vec<UserId>) = create.iter().copied().unzip();
        let create_stmt = tx
            .prepare_cached(
                "WITH ins AS (
                     INSERT INTO conversations (kind, direct_low, direct_high)
                     SELECT $1, lo, hi FROM unnest($2::bigint[], $3::bigint[]) AS v(lo, hi) ORDER BY lo, hi
                     ON CONFLICT (direct_low, direct_high) DO NOTHING
                     RETURNING id, direct_low, direct_high
                 ), joined AS (
                     INSERT INTO conversation_members (conv_id, user_id)
                     SELECT id, direct_low FROM ins UNION SELECT id, direct_high FROM ins
                     ON CONFLICT DO NOTHING
                 )
                 SELECT id, direct_low, direct_high FROM ins",
            )
            .await?;
        let mut found = HashMap::with_capacity(create.len());
        for row in tx
            .query(&create_stmt, &[&KIND_DIRECT, &lows, &highs])
            .await?
        {
            found.insert((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?);
        }
        directs.created = found.len();
        // A pair created meanwhile by another node's batch (committed while this one waited on it).
        let raced: Vec<(UserId, UserId)> = create
            .iter()
            .copied()
            .filter(|p| !found.contains_key(p))
            .collect();
        if !raced.is_empty() {
            let (lows, highs): (Vec<UserId>, Vec<UserId>) = raced.iter().copied().unzip();
            let raced_stmt = tx
                .prepare_cached(
                    "SELECT c.id, c.direct_low, c.direct_high FROM conversations c
                     JOIN unnest($1::bigint[], $2::bigint[]) AS v(lo, hi)
                       ON c.direct_low = v.lo AND c.direct_high = v.hi",
                )
                .await?;
            for row in tx.query(&raced_stmt, &[&lows, &highs]).await? {
                found.insert((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?);
            }
        }
        for (low, high) in create {
            let Some(&conv) = found.get(&(low, high)) else {
                return Err(StoreError::Invalid(format!(
                    "the conversation of {low} and {high} was neither created nor found"
                )));
            };
            directs.conv.insert((low, high), conv);
            directs
                .learned
                .push((low, high, PairPolicy::Allowed, Some(conv)));
        }
    }
    Ok(directs)
}

async fn write(
    pool: &Pool,
    require_friendship: bool,
    batch: &[Submission],
) -> Result<Outcome, StoreError> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);

    // First occurrence of each idempotency key in the batch; later ones share its outcome.
    let mut first_index: HashMap<SendKey, usize> = HashMap::with_capacity(batch.len());
    for (index, submission) in batch.iter().enumerate() {
        first_index
            .entry((submission.sender, submission.cid.clone()))
            .or_insert(index);
    }
    let unique: Vec<usize> = {
        let mut indices: Vec<usize> = first_index.values().copied().collect();
        indices.sort_unstable();
        indices
    };

    let mut client = pool.get().await?;
    let tx = client.transaction().await?;

    let senders: Vec<UserId> = unique.iter().map(|&i| batch[i].sender).collect();
    let cids: Vec<&str> = unique.iter().map(|&i| batch[i].cid.as_str()).collect();
    let existing_stmt = tx
        .prepare_cached(
            "SELECT m.sender, m.cid, m.id, m.conv_id, m.seq, m.created_ms FROM message_keys m
             JOIN unnest($1::bigint[], $2::text[]) AS k(sender, cid) ON m.sender = k.sender AND m.cid = k.cid",
        )
        .await?;
    let mut stored: HashMap<SendKey, Stored> = HashMap::new();
    for row in tx.query(&existing_stmt, &[&senders, &cids]).await? {
        let (key, value) = stored_from_row(&row)?;
        stored.insert(key, value);
    }

    let new: Vec<usize> = unique
        .into_iter()
        .filter(|&i| !stored.contains_key(&(batch[i].sender, batch[i].cid.clone())))
        .collect();

    // Each new submission's conversation; unrouted 1:1 sends resolved for the whole batch at once.
    let wanted: Vec<(UserId, UserId)> = {
        let mut pairs: Vec<(UserId, UserId)> = new
            .iter()
            .filter_map(|&i| match batch[i].target {
                Target::Direct(to) => Some(pair(batch[i].sender, to)),
                Target::Conv(_) => None,
            })
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        pairs
    };
    let directs = resolve_directs(&tx, require_friendship, wanted).await?;
    let mut refused: HashMap<SendKey, Refusal> = HashMap::new();
    // By batch index: the conversation of each new submission that has one.
    let mut conv_of: Vec<Option<ConvId>> = vec![None; batch.len()];
    for &i in &new {
        let s = &batch[i];
        match s.target {
            Target::Conv(conv) => conv_of[i] = Some(conv),
            Target::Direct(to) => {
                let key = pair(s.sender, to);
                if let Some(&conv) = directs.conv.get(&key) {
                    conv_of[i] = Some(conv);
                } else {
                    let refusal = directs.refused.get(&key).cloned().unwrap_or((
                        ErrorCode::StoreUnavailable,
                        "the conversation could not be resolved; retry".into(),
                    ));
                    refused.insert((s.sender, s.cid.clone()), refusal);
                }
            }
        }
    }
    let new: Vec<usize> = new.into_iter().filter(|&i| conv_of[i].is_some()).collect();
    let conv_at = |i: usize| conv_of[i].unwrap_or_default();

    let mut new_keys: HashMap<SendKey, Stored> = HashMap::new();
    if !new.is_empty() {
        // Allocate seqs: conversations locked in id order, counters advanced in the same transaction.
        let mut per_conv: BTreeMap<ConvId, i64> = BTreeMap::new();
        for &i in &new {
            *per_conv.entry(conv_at(i)).or_default() += 1;
        }
        let conv_ids: Vec<ConvId> = per_conv.keys().copied().collect();
        let counts: Vec<i64> = per_conv.values().copied().collect();
        // One statement locks the rows in id order (LockRows above the sort) and advances them: the locks are held
        // from here to the commit, so everything after this is kept to one more round trip.
        let advance_stmt = tx
            .prepare_cached(
                "WITH locked AS (SELECT id FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE)
                 UPDATE conversations c SET last_seq = c.last_seq + v.n, last_msg_ms = $3
                 FROM unnest($1::bigint[], $2::bigint[]) AS v(id, n) JOIN locked l ON l.id = v.id
                 WHERE c.id = v.id
                 RETURNING c.id, c.last_seq",
            )
            .await?;
        let mut next_seq: HashMap<ConvId, Seq> = HashMap::with_capacity(conv_ids.len());
        for row in tx
            .query(&advance_stmt, &[&conv_ids, &counts, &now_ms])
            .await?
        {
            let conv: ConvId = row.try_get(0)?;
            let last: Seq = row.try_get(1)?;
            next_seq.insert(conv, last - per_conv.get(&conv).copied().unwrap_or(0) + 1);
        }
        if next_seq.len() != conv_ids.len() {
            return Err(StoreError::Invalid(
                "a message names a conversation that does not exist".into(),
            ));
        }

        let mut col_conv = Vec::with_capacity(new.len());
        let mut col_seq = Vec::with_capacity(new.len());
        let mut col_sender = Vec::with_capacity(new.len());
        let mut col_device: Vec<&str> = Vec::with_capacity(new.len());
        let mut col_cid: Vec<&str> = Vec::with_capacity(new.len());
        let mut col_kind: Vec<&str> = Vec::with_capacity(new.len());
        let mut col_body: Vec<&str> = Vec::with_capacity(new.len());
        let mut col_attrs: Vec<Option<String>> = Vec::with_capacity(new.len());
        let mut col_system: Vec<bool> = Vec::with_capacity(new.len());

        // Highest own seq per (conversation, sender): the sender has read their own messages.
        let mut own_read: HashMap<(ConvId, UserId), Seq> = HashMap::new();
        for &i in &new {
            let s = &batch[i];
            let conv = conv_at(i);
            let seq = match next_seq.get_mut(&conv) {
                Some(next) => {
                    let seq = *next;
                    *next += 1;
                    seq
                }
                None => {
                    return Err(StoreError::Invalid(
                        "seq allocation missed a conversation".into(),
                    ))
                }
            };
            col_conv.push(conv);
            col_seq.push(seq);
            col_sender.push(s.sender);
            col_device.push(&s.sender_device);
            col_cid.push(s.cid.as_str());
            col_kind.push(s.kind.as_str());
            col_body.push(s.body.as_str());
            col_attrs.push(s.attrs.as_ref().and_then(|a| serde_json::to_string(a).ok()));
            col_system.push(s.system);

            let read = own_read.entry((conv, s.sender)).or_insert(seq);
            *read = (*read).max(seq);
        }
        // First the idempotency keys (with the message ids): a key already taken by a retry racing through another
        // node is skipped here, and only rows whose key was taken by this batch are then inserted.
        let (read_convs, (read_users, read_seqs)): (Vec<ConvId>, (Vec<UserId>, Vec<Seq>)) =
            own_read
                .into_iter()
                .map(|((conv, user), seq)| (conv, (user, seq)))
                .unzip();
        // One round trip for the rest of the locked section: the idempotency keys (with the message ids; a key
        // already taken by a retry racing through another node is skipped), the rows of the keys this batch took,
        // and the senders' read cursors.
        let insert_stmt = tx
            .prepare_cached(
                "WITH v AS (
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bool[],
                                          $6::text[], $7::text[], $8::text[], $9::text[]) AS v(u, k, c, s, sys, d, t, b, a)
                 ), taken AS (
                     INSERT INTO message_keys (sender, cid, conv_id, seq, id, created_ms)
                     SELECT u, k, c, s, nextval('message_ids'), $10 FROM v
                     WHERE v.sys OR EXISTS (SELECT 1 FROM conversation_members m WHERE m.conv_id = v.c AND m.user_id = v.u)
                     ON CONFLICT (sender, cid) DO NOTHING
                     RETURNING sender, cid, id, conv_id, seq
                 ), stored AS (
                     INSERT INTO messages (conv_id, seq, id, sender, sender_device, cid, kind, body, attrs, created_ms)
                     SELECT taken.conv_id, taken.seq, taken.id, taken.sender, v.d, taken.cid, v.t, v.b, v.a::jsonb, $10
                     FROM taken JOIN v ON v.u = taken.sender AND v.k = taken.cid
                 ), read AS (
                     UPDATE conversation_members m SET read_seq = GREATEST(m.read_seq, r.seq)
                     FROM unnest($11::bigint[], $12::bigint[], $13::bigint[]) AS r(conv, usr, seq)
                     WHERE m.conv_id = r.conv AND m.user_id = r.usr
                 )
                 SELECT sender, cid, id, conv_id, seq FROM taken",
            )
            .await?;
        let taken = tx
            .query(
                &insert_stmt,
                &[
                    &col_sender,
                    &col_cid,
                    &col_conv,
                    &col_seq,
                    &col_system,
                    &col_device,
                    &col_kind,
                    &col_body,
                    &col_attrs,
                    &now_ms,
                    &read_convs,
                    &read_users,
                    &read_seqs,
                ],
            )
            .await?;
        for row in taken {
            new_keys.insert(
                (row.try_get(0)?, row.try_get(1)?),
                Stored {
                    id: row.try_get(2)?,
                    conv: row.try_get(3)?,
                    seq: row.try_get(4)?,
                    ts: now_ms,
                },
            );
        }

        // A retry that raced through another node lost the insert here; answer with the winner's row. Its seq
        // allocated above stays unused: a gap, which clients settle by sync.
        let raced: Vec<usize> = new
            .iter()
            .copied()
            .filter(|&i| !new_keys.contains_key(&(batch[i].sender, batch[i].cid.clone())))
            .collect();
        if !raced.is_empty() {
            let senders: Vec<UserId> = raced.iter().map(|&i| batch[i].sender).collect();
            let cids: Vec<&str> = raced.iter().map(|&i| batch[i].cid.as_str()).collect();
            for row in tx.query(&existing_stmt, &[&senders, &cids]).await? {
                let (key, value) = stored_from_row(&row)?;
                stored.insert(key, value);
            }
        }

        // Side effects of the messages just inserted: recalls erase their target, media become visible in the
        // conversation they were sent to.
        let mut recall_convs = Vec::new();
        let mut recall_seqs = Vec::new();
        let mut media_convs = Vec::new();
        let mut media_hashes: Vec<&str> = Vec::new();
        for &i in &new {
            let s = &batch[i];
            if !new_keys.contains_key(&(s.sender, s.cid.clone())) {
                continue;
            }
            if let Some(target) = s.recall_target {
                recall_convs.push(conv_at(i));
                recall_seqs.push(target);
            }
            if let Some(hash) = s.attrs.as_ref().and_then(|a| a.media.as_deref()) {
                media_convs.push(conv_at(i));
                media_hashes.push(hash);
            }
        }
        if !recall_convs.is_empty() {
            let recall_stmt = tx
                .prepare_cached(
                    "UPDATE messages m SET recalled = true, body = '', attrs = NULL
                     FROM unnest($1::bigint[], $2::bigint[]) AS v(c, s) WHERE m.conv_id = v.c AND m.seq = v.s",
                )
                .await?;
            tx.execute(&recall_stmt, &[&recall_convs, &recall_seqs])
                .await?;
        }
        if !media_convs.is_empty() {
            let media_stmt = tx
                .prepare_cached(
                    "INSERT INTO conversation_media (conv_id, hash) SELECT * FROM unnest($1::bigint[], $2::text[])
                     ON CONFLICT DO NOTHING",
                )
                .await?;
            tx.execute(&media_stmt, &[&media_convs, &media_hashes])
                .await?;
        }
    }
    tx.commit().await?;

    let mut per_submission = Vec::with_capacity(batch.len());
    let mut new_count = 0;
    for (index, submission) in batch.iter().enumerate() {
        let key = (submission.sender, submission.cid.clone());
        let first = first_index.get(&key).copied() == Some(index);
        match (new_keys.get(&key), stored.get(&key)) {
            (Some(created), _) => {
                new_count += usize::from(first);
                per_submission.push(Ok((*created, first)));
            }
            (None, Some(existing)) => per_submission.push(Ok((*existing, false))),
            // Neither inserted nor stored before: the 1:1 checks or the membership check in the INSERT refused it.
            (None, None) => per_submission.push(Err(refused.get(&key).cloned().unwrap_or((
                ErrorCode::NotMember,
                "not a member of this conversation".into(),
            )))),
        }
    }
    Ok(Outcome {
        per_submission,
        new_count,
        learned: directs.learned,
        created: directs.created,
    })
}
