//! A connection's outbound side: the bounded queue of encoded frames its writer task sends (`OutboundRx` is the
//! writer's end) and the `Outbox` every producer pushes to — delivery, the session's own answers, the writer's acks —
//! with the switch that closes the connection (a kick). A full queue kicks its connection as a slow consumer, so
//! no producer ever waits on a slow client.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use common::frame::{Ack, ErrorFrame, Kick};
use common::{KickReason, ServerFrame};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::fanout::local::Device;
use crate::metrics::{self, Metrics};
use crate::storage::writer::AckSink;

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
            KickReason::Replaced => {
                "replaced: this device connected again elsewhere, or a newer login on the same platform moved it out"
            }
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

impl Device for Outbox {
    fn push(&self, frame: Bytes) -> bool {
        Outbox::push(self, frame)
    }

    fn kick(&self, reason: KickReason) -> bool {
        Outbox::kick(self, reason)
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
