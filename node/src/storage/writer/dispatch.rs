//! Node-wide group commit: one queue for the whole node, up to `--writers` transactions in flight, and batches
//! that form while a commit is in flight.
//!
//! The profile that motivated it: with each writer owning a slice of the senders, a batch only formed from the
//! messages that reached *that* writer during its previous commit, so at 1,000–2,000 msg/s eight writers committed
//! 2.2 messages per transaction and each transaction's fixed cost (statements, round trips, the commit's fsync)
//! dominated the database's CPU. Here every message waits in one queue, and a batch leaves when
//! - no commit is in flight (an idle node commits at once: no added latency), or
//! - its oldest message has waited `--writer-flush-us`, or it is full (`--writer-batch-rows`),
//!
//! and a transaction slot is free. Under load the batches therefore grow with the rate instead of being cut into
//! `--writers` slices.
//!
//! One sender's messages keep their order: a batch never takes a message whose sender has a batch in flight (nor
//! any later message of that sender), so a sender's messages commit one batch after another, in the order sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;

use common::ids::UserId;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::Submission;

/// How batches leave the queue.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dispatch {
    /// Transactions in flight at most.
    pub slots: usize,
    /// Messages per batch at most.
    pub batch_rows: usize,
    /// Longest a message waits for its batch while another commit is in flight.
    pub flush_interval: Duration,
}

/// Takes submissions from `intake` and commits them with `commit` (one call per batch, at most `slots` at once)
/// until `drain` fires and everything queued is committed or answered.
pub(super) async fn run<F, Fut>(
    mut intake: mpsc::Receiver<Submission>,
    dispatch: Dispatch,
    commit: F,
    drain: CancellationToken,
) where
    F: Fn(Vec<Submission>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut queue = Queue::default();
    let mut commits: JoinSet<()> = JoinSet::new();
    let mut senders_of: HashMap<tokio::task::Id, Vec<UserId>> = HashMap::new();
    let mut open = true;
    let mut draining = false;
    // Submissions held here at most; beyond that they wait in `intake`, whose bound slows their senders.
    let hold = dispatch.batch_rows.saturating_mul(dispatch.slots).max(1);
    loop {
        // Whether everything waiting belongs to senders in flight: then only a finished commit can free a batch.
        let mut blocked = false;
        while commits.len() < dispatch.slots && queue.due(commits.is_empty(), !open, dispatch) {
            let (batch, senders) = queue.take_batch(dispatch.batch_rows);
            if batch.is_empty() {
                blocked = true;
                break;
            }
            let handle = commits.spawn(commit(batch));
            senders_of.insert(handle.id(), senders);
        }
        if !open && queue.is_empty() && commits.is_empty() {
            break;
        }
        let wake = queue
            .oldest()
            .filter(|_| !blocked && commits.len() < dispatch.slots && !commits.is_empty())
            .map(|oldest| oldest + dispatch.flush_interval);
        tokio::select! {
            biased;
            Some(done) = commits.join_next_with_id(), if !commits.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(failure) => {
                        error!(%failure, "a writer transaction task failed; its senders get no answer and will retry");
                        failure.id()
                    }
                };
                for sender in senders_of.remove(&id).unwrap_or_default() {
                    queue.in_flight.remove(&sender);
                }
            }
            next = intake.recv(), if open && queue.len() < hold => match next {
                Some(submission) => {
                    queue.push(submission);
                    // Whatever else is already waiting joins without another turn of the loop.
                    while queue.len() < hold {
                        match intake.try_recv() {
                            Ok(submission) => queue.push(submission),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            _ = sleep_until(wake), if wake.is_some() => {}
            _ = drain.cancelled(), if !draining => {
                // Refuse new submissions, commit what is queued.
                draining = true;
                intake.close();
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// The submissions waiting for a batch, and the senders with a batch in flight.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<(Instant, Submission)>,
    in_flight: HashSet<UserId>,
}

impl Queue {
    fn push(&mut self, submission: Submission) {
        self.waiting.push_back((Instant::now(), submission));
    }

    fn len(&self) -> usize {
        self.waiting.len()
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    fn oldest(&self) -> Option<Instant> {
        self.waiting.front().map(|(at, _)| *at)
    }

    /// Whether a batch should leave now.
    fn due(&self, idle: bool, closing: bool, dispatch: Dispatch) -> bool {
        let Some(oldest) = self.oldest() else {
            return false;
        };
        idle || closing
            || self.waiting.len() >= dispatch.batch_rows
            || oldest.elapsed() >= dispatch.flush_interval
    }

    /// Up to `rows` submissions in queue order, none from a sender with a batch in flight (nor after a message
    /// of such a sender that had to stay); their senders become in flight.
    fn take_batch(&mut self, rows: usize) -> (Vec<Submission>, Vec<UserId>) {
        let mut batch = Vec::with_capacity(rows.min(self.waiting.len()));
        let mut senders: HashSet<UserId> = HashSet::new();
        let mut held_back: HashSet<UserId> = HashSet::new();
        let mut staying = VecDeque::new();
        while let Some((at, submission)) = self.waiting.pop_front() {
            if batch.len() >= rows {
                staying.push_back((at, submission));
                staying.extend(self.waiting.drain(..));
                break;
            }
            let sender = submission.sender;
            if held_back.contains(&sender) || self.in_flight.contains(&sender) {
                held_back.insert(sender);
                staying.push_back((at, submission));
                continue;
            }
            senders.insert(sender);
            batch.push(submission);
        }
        self.waiting = staying;
        self.in_flight.extend(senders.iter().copied());
        (batch, senders.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use common::frame::{Ack, ErrorFrame};

    use super::*;
    use crate::storage::writer::{AckSink, Target};

    struct Nobody;
    impl AckSink for Nobody {
        fn answer(&self, _: Result<Ack, ErrorFrame>, _: std::time::Instant) {}
    }

    fn submission(sender: UserId, cid: &str) -> Submission {
        Submission {
            sender,
            sender_device: "d".into(),
            cid: cid.into(),
            target: Target::Direct(sender + 1000),
            members: Arc::from(Vec::new()),
            kind: "text".into(),
            body: String::new(),
            attrs: None,
            system: false,
            recall_target: None,
            reply: Arc::new(Nobody),
            received_at: std::time::Instant::now(),
        }
    }

    /// A committed batch as (sender, message number) pairs.
    type Batch = Vec<(UserId, usize)>;

    fn cids(batch: &[Submission]) -> Vec<String> {
        batch.iter().map(|s| s.cid.clone()).collect()
    }

    #[test]
    fn a_batch_skips_senders_in_flight_and_everything_after_their_first_held_message() {
        let mut queue = Queue::default();
        for (sender, cid) in [(1, "a1"), (2, "b1"), (1, "a2"), (3, "c1"), (2, "b2")] {
            queue.push(submission(sender, cid));
        }
        queue.in_flight.insert(2);
        let (batch, mut senders) = queue.take_batch(10);
        senders.sort_unstable();
        assert_eq!(cids(&batch), ["a1", "a2", "c1"]);
        assert_eq!(senders, [1, 3]);
        // Sender 2 stays in order; it goes once its batch is done.
        assert_eq!(queue.take_batch(10).0.len(), 0);
        queue.in_flight.clear();
        assert_eq!(cids(&queue.take_batch(10).0), ["b1", "b2"]);
    }

    #[test]
    fn a_batch_stops_at_its_row_limit_and_keeps_the_rest_in_order() {
        let mut queue = Queue::default();
        for i in 0..5 {
            queue.push(submission(i, &format!("m{i}")));
        }
        assert_eq!(cids(&queue.take_batch(2).0), ["m0", "m1"]);
        assert_eq!(cids(&queue.take_batch(2).0), ["m2", "m3"]);
        assert_eq!(cids(&queue.take_batch(2).0), ["m4"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_leaves_at_once_when_idle_and_waits_for_the_flush_interval_behind_a_commit() {
        let dispatch = Dispatch {
            slots: 4,
            batch_rows: 100,
            flush_interval: Duration::from_millis(5),
        };
        let mut queue = Queue::default();
        queue.push(submission(1, "x"));
        assert!(
            queue.due(true, false, dispatch),
            "an idle writer commits at once"
        );
        assert!(
            !queue.due(false, false, dispatch),
            "behind a commit, a young batch waits"
        );
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(
            queue.due(false, false, dispatch),
            "the flush interval is the longest wait"
        );
        assert!(
            !Queue::default().due(true, true, dispatch),
            "nothing waiting, nothing due"
        );
    }

    /// The whole loop with a commit that takes 10 ms: every message is committed once, a sender's messages in the
    /// order sent, never more than `slots` commits at once, and batches grow while commits are in flight.
    #[tokio::test(start_paused = true)]
    async fn under_load_batches_grow_and_one_senders_messages_stay_in_order() {
        let dispatch = Dispatch {
            slots: 2,
            batch_rows: 50,
            flush_interval: Duration::from_millis(2),
        };
        let committed: Arc<Mutex<Vec<Batch>>> = Arc::default();
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most_running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel(10_000);
        let drain = CancellationToken::new();
        let commit = {
            let (committed, running, most_running) =
                (committed.clone(), running.clone(), most_running.clone());
            move |batch: Vec<Submission>| {
                let (committed, running, most_running) =
                    (committed.clone(), running.clone(), most_running.clone());
                async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = running.fetch_add(1, SeqCst) + 1;
                    most_running.fetch_max(now, SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let rows = batch
                        .iter()
                        .map(|s| (s.sender, s.cid.parse().unwrap_or(usize::MAX)))
                        .collect();
                    committed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(rows);
                    running.fetch_sub(1, SeqCst);
                }
            }
        };
        let task = tokio::spawn(run(rx, dispatch, commit, drain.clone()));
        // 100 senders, 6 messages each, 10 messages every millisecond (10,000/s; the timer's resolution is 1 ms).
        let mut sent = 0;
        for n in 0..6 {
            for sender in 0..100 {
                tx.send(submission(sender, &n.to_string())).await.ok();
                sent += 1;
                if sent % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        drain.cancel();
        task.await.ok();
        let batches = committed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let total: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(total, 600);
        let mut next: HashMap<UserId, usize> = HashMap::new();
        for (sender, n) in batches.iter().flatten() {
            let expected = next.entry(*sender).or_default();
            assert_eq!(n, expected, "sender {sender} out of order");
            *expected += 1;
        }
        assert!(most_running.load(std::sync::atomic::Ordering::SeqCst) <= 2);
        let largest = batches.iter().map(Vec::len).max().unwrap_or(0);
        assert!(
            batches.len() < 100 && largest >= 20,
            "{} batches, largest {largest}: batches did not grow under load",
            batches.len()
        );
    }
}
