//! A batch's outcome: acks and refusals to its senders, new messages to delivery, what it learned to the
//! `PairCache` — and fault isolation: a batch that fails on one submission's data is split until the offender is
//! alone, so one client's bad input never fails another client's message.

use std::time::Instant;

use common::frame::{Ack, ErrorFrame, Msg};
use common::ErrorCode;
use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::commit::{write, Outcome};
use super::{Committed, Submission};
use crate::error::Refusal;
use crate::metrics::Metrics;
use crate::storage::pair_cache::PairCache;
use crate::storage::StoreError;

/// How a failed transaction is treated.
enum Failure {
    /// Caused by what one submission carries (a data exception or integrity violation, or a conversation that
    /// does not exist): isolate it by splitting the batch.
    Data(Refusal),
    /// Postgres is unreachable or overloaded: everyone retries.
    Infrastructure,
}

fn classify(error: &StoreError) -> Failure {
    match error {
        StoreError::Postgres(error) => match error.as_db_error() {
            Some(db)
                if db.code().code().starts_with("22") || db.code().code().starts_with("23") =>
            {
                Failure::Data(Refusal::new(
                    ErrorCode::InvalidRequest,
                    format!("the message's content cannot be stored: {}", db.message()),
                ))
            }
            _ => Failure::Infrastructure,
        },
        StoreError::Invalid(_) => Failure::Data(Refusal::not_member()),
        StoreError::Pool(_) => Failure::Infrastructure,
    }
}

/// Commits a batch, splitting it in halves while a part fails on its data. Halves are committed in order, so one
/// sender's messages keep their order.
pub(super) async fn commit_batch(
    pool: &Pool,
    pairs: &PairCache,
    require_friendship: bool,
    batch: Vec<Submission>,
    committed: &mpsc::Sender<Vec<Committed>>,
    metrics: &Metrics,
) {
    let mut pending = vec![batch];
    while let Some(batch) = pending.pop() {
        let started = Instant::now();
        let rows = batch.len();
        match write(pool, require_friendship, &batch).await {
            Ok(outcome) => {
                metrics.batch_rows.record(rows as f64);
                metrics
                    .flush_seconds
                    .record(started.elapsed().as_secs_f64());
                deliver(pairs, batch, outcome, committed, metrics).await;
            }
            Err(error) => match classify(&error) {
                Failure::Data(_) if rows > 1 => {
                    metrics::counter!("im_writer_batch_splits_total").increment(1);
                    info!(%error, rows, "batch failed on its data; retrying it in halves");
                    let mut first = batch;
                    let second = first.split_off(rows / 2);
                    pending.push(second);
                    pending.push(first);
                }
                Failure::Data(refusal) => {
                    metrics::counter!("im_writer_refused_total").increment(1);
                    info!(%error, "a message the database refuses was answered invalid");
                    refuse_all(batch, &refusal);
                }
                Failure::Infrastructure => {
                    metrics::counter!("im_writer_errors_total").increment(1);
                    warn!(%error, rows, "batch commit failed; senders told to retry");
                    refuse_all(
                        batch,
                        &Refusal::new(
                            ErrorCode::StoreUnavailable,
                            "the message could not be stored; retry with the same cid",
                        ),
                    );
                }
            },
        }
    }
}

fn refuse_all(batch: Vec<Submission>, refusal: &Refusal) {
    for submission in batch {
        let frame =
            ErrorFrame::new(refusal.code, refusal.message.clone()).for_cid(submission.cid.clone());
        submission.reply.answer(Err(frame), submission.received_at);
    }
}

/// After a commit: what the batch learned goes to the cache, each sender gets its answer, and the new messages go
/// to delivery in commit order.
async fn deliver(
    pairs: &PairCache,
    batch: Vec<Submission>,
    outcome: Outcome,
    committed: &mpsc::Sender<Vec<Committed>>,
    metrics: &Metrics,
) {
    for ((a, b), conv) in outcome.allowed {
        pairs.remember(a, b, conv);
    }
    for (a, b) in outcome.refused_pairs {
        pairs.invalidate(a, b);
    }
    if outcome.created > 0 {
        metrics::counter!("im_direct_conversations_created_total")
            .increment(outcome.created as u64);
    }
    let committed_at = Instant::now();
    let mut fresh = Vec::with_capacity(outcome.new_count);
    for (submission, result) in batch.into_iter().zip(outcome.per_submission) {
        let (stored, is_new) = match result {
            Ok(pair) => pair,
            Err(refusal) => {
                let frame = refusal.frame().for_cid(submission.cid.clone());
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
