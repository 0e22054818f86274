//! One batch's transaction, in the steps of the writer's module comment. Each step is one statement (two for
//! step 2), so the whole batch costs a handful of round trips whatever its size.

use std::collections::{BTreeMap, HashMap};

use common::ids::{ConvId, MsgId, Seq, UserId};
use common::ErrorCode;
use deadpool_postgres::{Pool, Transaction};

use super::directs::{resolve_directs, Directs};
use super::{Submission, Target};
use crate::clock::now_ms;
use crate::error::Refusal;
use crate::storage::pair_cache::pair;
use crate::storage::queries::KIND_DIRECT;
use crate::storage::relations::{self, blocked_between};
use crate::storage::StoreError;

/// Key of the idempotency constraint.
pub(super) type SendKey = (UserId, String);

/// A stored message's identity, answered in an `ack`.
#[derive(Clone, Copy)]
pub(super) struct Stored {
    pub id: MsgId,
    pub conv: ConvId,
    pub seq: Seq,
    pub ts: i64,
}

pub(super) struct Outcome {
    /// Per submission, in batch order: the stored message and whether this batch created it, or why it was refused.
    pub per_submission: Vec<Result<(Stored, bool), Refusal>>,
    pub new_count: usize,
    /// 1:1 pairs found allowed, with their conversation (for the `PairCache`).
    pub allowed: Vec<((UserId, UserId), ConvId)>,
    /// 1:1 pairs the commit refused although a node had routed them (a stale cache): forget them.
    pub refused_pairs: Vec<(UserId, UserId)>,
    /// 1:1 conversations the batch created.
    pub created: usize,
}

fn key_of(submission: &Submission) -> SendKey {
    (submission.sender, submission.cid.clone())
}

/// Commits what it can of `batch` in one transaction.
pub(super) async fn write(
    pool: &Pool,
    require_friendship: bool,
    batch: &[Submission],
) -> Result<Outcome, StoreError> {
    let now_ms = now_ms();
    // First occurrence of each idempotency key in the batch; later ones share its outcome.
    let mut first_index: HashMap<SendKey, usize> = HashMap::with_capacity(batch.len());
    for (index, submission) in batch.iter().enumerate() {
        first_index.entry(key_of(submission)).or_insert(index);
    }
    let mut unique: Vec<usize> = first_index.values().copied().collect();
    unique.sort_unstable();

    let mut client = pool.get().await?;
    let tx = client.transaction().await?;

    // Step 1: retries of messages already stored answer with the stored message.
    let mut stored = existing_keys(&tx, batch, &unique).await?;
    let new: Vec<usize> = unique
        .into_iter()
        .filter(|&i| !stored.contains_key(&key_of(&batch[i])))
        .collect();

    // Step 2: unrouted 1:1 sends, resolved for the whole batch at once.
    let directs = resolve_directs(&tx, require_friendship, wanted_pairs(batch, &new)).await?;
    let (conv_of, mut refused) = assign_conversations(batch, &new, &directs);
    let new: Vec<usize> = new.into_iter().filter(|&i| conv_of[i].is_some()).collect();

    let mut new_keys = HashMap::new();
    let mut refused_pairs = Vec::new();
    if !new.is_empty() {
        // Step 3: seqs, allocated under the conversations' row locks.
        let seqs = allocate_seqs(&tx, &new, &conv_of, now_ms).await?;
        // Step 4: keys, rows and read cursors, with the membership and 1:1 checks.
        new_keys = insert_messages(
            &tx,
            batch,
            &new,
            &conv_of,
            &seqs,
            now_ms,
            require_friendship,
        )
        .await?;
        let lost: Vec<usize> = new
            .iter()
            .copied()
            .filter(|&i| !new_keys.contains_key(&key_of(&batch[i])))
            .collect();
        if !lost.is_empty() {
            // A retry that raced through another node lost the insert: answer with the winner's row. Its seq stays
            // unused: a gap, which clients settle by sync.
            stored.extend(existing_keys(&tx, batch, &lost).await?);
            let unexplained: Vec<usize> = lost
                .into_iter()
                .filter(|&i| !stored.contains_key(&key_of(&batch[i])))
                .collect();
            refused_pairs = explain_refusals(
                &tx,
                batch,
                &unexplained,
                &conv_of,
                require_friendship,
                &mut refused,
            )
            .await?;
        }
        apply_side_effects(&tx, batch, &new, &conv_of, &new_keys).await?;
    }
    tx.commit().await?;

    let mut per_submission = Vec::with_capacity(batch.len());
    let mut new_count = 0;
    for (index, submission) in batch.iter().enumerate() {
        let key = key_of(submission);
        let first = first_index.get(&key).copied() == Some(index);
        match (new_keys.get(&key), stored.get(&key)) {
            (Some(created), _) => {
                new_count += usize::from(first);
                per_submission.push(Ok((*created, first)));
            }
            (None, Some(existing)) => per_submission.push(Ok((*existing, false))),
            (None, None) => per_submission.push(Err(refused
                .get(&key)
                .cloned()
                .unwrap_or_else(Refusal::not_member))),
        }
    }
    Ok(Outcome {
        per_submission,
        new_count,
        allowed: directs.conv.into_iter().collect(),
        refused_pairs,
        created: directs.created,
    })
}

/// Step 1 (and the lookup after a lost race): the stored messages of the submissions at `indices`.
async fn existing_keys(
    tx: &Transaction<'_>,
    batch: &[Submission],
    indices: &[usize],
) -> Result<HashMap<SendKey, Stored>, StoreError> {
    let senders: Vec<UserId> = indices.iter().map(|&i| batch[i].sender).collect();
    let cids: Vec<&str> = indices.iter().map(|&i| batch[i].cid.as_str()).collect();
    let statement = tx
        .prepare_cached(
            "SELECT m.sender, m.cid, m.id, m.conv_id, m.seq, m.created_ms FROM message_keys m
             JOIN unnest($1::bigint[], $2::text[]) AS k(sender, cid) ON m.sender = k.sender AND m.cid = k.cid",
        )
        .await?;
    let mut stored = HashMap::new();
    for row in tx.query(&statement, &[&senders, &cids]).await? {
        stored.insert(
            (row.try_get(0)?, row.try_get(1)?),
            Stored {
                id: row.try_get(2)?,
                conv: row.try_get(3)?,
                seq: row.try_get(4)?,
                ts: row.try_get(5)?,
            },
        );
    }
    Ok(stored)
}

/// The distinct 1:1 pairs of the new submissions the node sent unresolved.
fn wanted_pairs(batch: &[Submission], new: &[usize]) -> Vec<(UserId, UserId)> {
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
}

/// By batch index, the conversation of each new submission that has one, and the refusals of those that do not.
fn assign_conversations(
    batch: &[Submission],
    new: &[usize],
    directs: &Directs,
) -> (Vec<Option<ConvId>>, HashMap<SendKey, Refusal>) {
    let mut conv_of = vec![None; batch.len()];
    let mut refused = HashMap::new();
    for &i in new {
        let submission = &batch[i];
        match submission.target {
            Target::Conv(conv) => conv_of[i] = Some(conv),
            Target::Direct(to) => {
                let key = pair(submission.sender, to);
                if let Some(&conv) = directs.conv.get(&key) {
                    conv_of[i] = Some(conv);
                } else {
                    let refusal = directs.refused.get(&key).cloned().unwrap_or_else(|| {
                        Refusal::new(
                            ErrorCode::StoreUnavailable,
                            "the conversation could not be resolved; retry",
                        )
                    });
                    refused.insert(key_of(submission), refusal);
                }
            }
        }
    }
    (conv_of, refused)
}

/// Step 3: locks the batch's conversations in id order and advances their counters in one statement (the locks
/// are held to the commit). Returns, aligned with `new`, each submission's seq.
async fn allocate_seqs(
    tx: &Transaction<'_>,
    new: &[usize],
    conv_of: &[Option<ConvId>],
    now_ms: i64,
) -> Result<Vec<Seq>, StoreError> {
    let conv_at = |i: usize| conv_of[i].unwrap_or_default();
    let mut per_conv: BTreeMap<ConvId, i64> = BTreeMap::new();
    for &i in new {
        *per_conv.entry(conv_at(i)).or_default() += 1;
    }
    let conv_ids: Vec<ConvId> = per_conv.keys().copied().collect();
    let counts: Vec<i64> = per_conv.values().copied().collect();
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
    new.iter()
        .map(|&i| {
            let next = next_seq.get_mut(&conv_at(i)).ok_or_else(|| {
                StoreError::Invalid("seq allocation missed a conversation".into())
            })?;
            let seq = *next;
            *next += 1;
            Ok(seq)
        })
        .collect()
}

/// Step 4, one round trip: the idempotency keys (a key already taken by a retry racing through another node is
/// skipped), the rows of the keys this batch took, and the senders' read cursors. A key is only taken for a sender
/// who is a member and, in a 1:1 conversation, whose pair is allowed now (recalls and server messages excepted).
async fn insert_messages(
    tx: &Transaction<'_>,
    batch: &[Submission],
    new: &[usize],
    conv_of: &[Option<ConvId>],
    seqs: &[Seq],
    now_ms: i64,
    require_friendship: bool,
) -> Result<HashMap<SendKey, Stored>, StoreError> {
    let n = new.len();
    let (mut col_conv, mut col_seq, mut col_sender) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut col_device, mut col_cid, mut col_kind, mut col_body): (
        Vec<&str>,
        Vec<&str>,
        Vec<&str>,
        Vec<&str>,
    ) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut col_attrs: Vec<Option<String>> = Vec::with_capacity(n);
    let (mut col_system, mut col_recall): (Vec<bool>, Vec<bool>) =
        (Vec::with_capacity(n), Vec::with_capacity(n));
    // Highest own seq per (conversation, sender): the sender has read their own messages.
    let mut own_read: HashMap<(ConvId, UserId), Seq> = HashMap::new();
    for (&i, &seq) in new.iter().zip(seqs) {
        let s = &batch[i];
        let conv = conv_of[i].unwrap_or_default();
        col_conv.push(conv);
        col_seq.push(seq);
        col_sender.push(s.sender);
        col_device.push(&*s.sender_device);
        col_cid.push(s.cid.as_str());
        col_kind.push(s.kind.as_str());
        col_body.push(s.body.as_str());
        col_attrs.push(s.attrs.as_ref().and_then(|a| serde_json::to_string(a).ok()));
        col_system.push(s.system);
        col_recall.push(s.recall_target.is_some());
        let read = own_read.entry((conv, s.sender)).or_insert(seq);
        *read = (*read).max(seq);
    }
    let (read_convs, (read_users, read_seqs)): (Vec<ConvId>, (Vec<UserId>, Vec<Seq>)) = own_read
        .into_iter()
        .map(|((conv, user), seq)| (conv, (user, seq)))
        .unzip();
    let insert_stmt = tx
        .prepare_cached(concat!(
            "WITH v AS (
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bool[],
                                      $6::text[], $7::text[], $8::text[], $9::text[], $14::bool[])
                          AS v(u, k, c, s, sys, d, t, b, a, rc)
             ), taken AS (
                 INSERT INTO message_keys (sender, cid, conv_id, seq, id, created_ms)
                 SELECT u, k, c, s, nextval('message_ids'), $10 FROM v
                 WHERE v.sys OR (
                     EXISTS (SELECT 1 FROM conversation_members m WHERE m.conv_id = v.c AND m.user_id = v.u)
                     AND (v.rc OR NOT EXISTS (
                         SELECT 1 FROM conversations x
                         WHERE x.id = v.c AND x.kind = $16 AND x.direct_low <> x.direct_high
                           AND (",
            blocked_between!("x.direct_low", "x.direct_high"),
            "
                                OR ($15 AND NOT EXISTS (SELECT 1 FROM friendships f
                                                        WHERE f.user_id = x.direct_low AND f.friend_id = x.direct_high))))))
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
             SELECT sender, cid, id, conv_id, seq FROM taken"
        ))
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
                &col_recall,
                &require_friendship,
                &KIND_DIRECT,
            ],
        )
        .await?;
    let mut new_keys = HashMap::with_capacity(taken.len());
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
    Ok(new_keys)
}

/// Why the commit refused the submissions at `indices` (not a member, or a 1:1 pair refused now). Returns the
/// refused pairs, which some node had cached as allowed.
async fn explain_refusals(
    tx: &Transaction<'_>,
    batch: &[Submission],
    indices: &[usize],
    conv_of: &[Option<ConvId>],
    require_friendship: bool,
    refused: &mut HashMap<SendKey, Refusal>,
) -> Result<Vec<(UserId, UserId)>, StoreError> {
    if indices.is_empty() {
        return Ok(Vec::new());
    }
    let convs: Vec<ConvId> = indices
        .iter()
        .map(|&i| conv_of[i].unwrap_or_default())
        .collect();
    let senders: Vec<UserId> = indices.iter().map(|&i| batch[i].sender).collect();
    let facts = relations::refusal_facts(tx, &convs, &senders, require_friendship).await?;
    let mut reasons: HashMap<(ConvId, UserId), Refusal> = HashMap::new();
    let mut pairs = Vec::new();
    for (conv, sender, member, direct) in facts {
        let refusal = match direct {
            _ if !member => Refusal::not_member(),
            Some((low, high, policy)) => match policy.refusal() {
                Some(refusal) => {
                    pairs.push((low, high));
                    refusal
                }
                // Allowed again by the time of this read: the client may simply retry.
                None => Refusal::new(
                    ErrorCode::StoreUnavailable,
                    "the relationship changed while sending; retry",
                ),
            },
            None => Refusal::not_member(),
        };
        reasons.insert((conv, sender), refusal);
    }
    for &i in indices {
        let submission = &batch[i];
        let reason = reasons
            .get(&(conv_of[i].unwrap_or_default(), submission.sender))
            .cloned()
            .unwrap_or_else(Refusal::not_member);
        refused.insert(key_of(submission), reason);
    }
    Ok(pairs)
}

/// Side effects of the messages just inserted: recalls erase their target, media become visible in the
/// conversation they were sent to.
async fn apply_side_effects(
    tx: &Transaction<'_>,
    batch: &[Submission],
    new: &[usize],
    conv_of: &[Option<ConvId>],
    new_keys: &HashMap<SendKey, Stored>,
) -> Result<(), StoreError> {
    let mut recall_convs = Vec::new();
    let mut recall_seqs = Vec::new();
    let mut media_convs = Vec::new();
    let mut media_hashes: Vec<&str> = Vec::new();
    for &i in new {
        let s = &batch[i];
        if !new_keys.contains_key(&key_of(s)) {
            continue;
        }
        let conv = conv_of[i].unwrap_or_default();
        if let Some(target) = s.recall_target {
            recall_convs.push(conv);
            recall_seqs.push(target);
        }
        if let Some(hash) = s.attrs.as_ref().and_then(|a| a.media.as_deref()) {
            media_convs.push(conv);
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
    Ok(())
}
