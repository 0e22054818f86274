//! The offline push hook: when a message's recipient has no online device anywhere, the node tells an
//! operator-supplied webhook (which may bridge to APNs or FCM). Off unless `--push-webhook-url` is set.
//!
//! Delivery never waits for it: recipients are queued on a bounded channel (overflow is counted and dropped), a
//! background task posts them in batches of JSON with a timeout, and retries a failed batch a few times with
//! backoff. The hook is at-most-once by design; it is a nudge, the message itself is safe in Postgres.

use std::time::Duration;

use bytes::Bytes;
use common::ids::{ConvId, MsgId, Seq, UserId};
use http_body_util::Full;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::warn;

/// One offline recipient of one message.
#[derive(Debug, Clone, Serialize)]
pub struct PushEvent {
    pub user: UserId,
    pub conv: ConvId,
    pub id: MsgId,
    pub seq: Seq,
    pub from: UserId,
    pub kind: String,
    /// The first characters of a text body (empty for other kinds).
    pub preview: String,
}

/// Hook settings.
#[derive(Debug, Clone)]
pub struct PushSettings {
    pub url: String,
    pub batch: usize,
    pub timeout: Duration,
    pub retries: u32,
}

/// The queue side of the hook.
#[derive(Clone)]
pub struct PushQueue {
    tx: mpsc::Sender<PushEvent>,
}

impl PushQueue {
    /// Queues without waiting; a full queue drops the event (counted).
    pub fn offer(&self, event: PushEvent) {
        if self.tx.try_send(event).is_err() {
            ::metrics::counter!("im_push_dropped_total").increment(1);
        }
    }
}

/// Starts the sender task; it ends when every `PushQueue` is dropped.
pub fn spawn(settings: PushSettings) -> PushQueue {
    let (tx, mut rx) = mpsc::channel::<PushEvent>(10_000);
    tokio::spawn(async move {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut batch = Vec::with_capacity(settings.batch);
        loop {
            let Some(first) = rx.recv().await else { break };
            batch.push(first);
            // Gather what else is queued within a short window, up to the batch size.
            let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
            while batch.len() < settings.batch {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(event)) => batch.push(event),
                    _ => break,
                }
            }
            post(&client, &settings, &batch).await;
            batch.clear();
        }
    });
    PushQueue { tx }
}

async fn post(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    settings: &PushSettings,
    batch: &[PushEvent],
) {
    let Ok(body) = serde_json::to_vec(&serde_json::json!({ "events": batch })) else {
        return;
    };
    let body = Bytes::from(body);
    for attempt in 0..=settings.retries {
        let request = Request::post(&settings.url)
            .header("content-type", "application/json")
            .body(Full::new(body.clone()));
        let Ok(request) = request else {
            warn!(url = %settings.url, "invalid push webhook URL");
            return;
        };
        match tokio::time::timeout(settings.timeout, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {
                ::metrics::counter!("im_push_events_total", "result" => "sent")
                    .increment(batch.len() as u64);
                return;
            }
            Ok(Ok(response)) => {
                warn!(status = %response.status(), attempt, "push webhook refused a batch")
            }
            Ok(Err(error)) => warn!(%error, attempt, "push webhook unreachable"),
            Err(_) => warn!(attempt, "push webhook timed out"),
        }
        tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
    }
    ::metrics::counter!("im_push_events_total", "result" => "failed").increment(batch.len() as u64);
}
