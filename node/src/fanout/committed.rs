//! The committed-message task: takes the writer's committed batches in commit order, encodes each message once and
//! hands it to `Delivery`.

use bytes::Bytes;
use common::ServerFrame;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::delivery::{Delivery, Push};
use crate::storage::writer::Committed;

/// Routes committed batches, in commit order, until the writer stops.
pub async fn run(
    mut committed: mpsc::Receiver<Vec<Committed>>,
    delivery: Delivery,
    compress_threshold: usize,
) {
    while let Some(batch) = committed.recv().await {
        let mut frames = Vec::with_capacity(batch.len());
        for item in &batch {
            match common::encode(&ServerFrame::Msg(item.msg.clone()), compress_threshold) {
                Ok(bytes) => frames.push((item, Bytes::from(bytes))),
                Err(error) => {
                    warn!(%error, "could not encode a committed message; recipients will get it by sync")
                }
            }
        }
        let routes: Vec<Push<'_>> = frames
            .iter()
            .map(|(item, frame)| Push {
                conv: Some(item.msg.conv),
                users: &item.members,
                skip: Some((item.msg.from, &*item.sender_device)),
                frame,
                msg: Some(&item.msg),
            })
            .collect();
        delivery.deliver(&routes).await;
        for item in &batch {
            delivery
                .metrics
                .route_latency
                .record(item.committed_at.elapsed().as_secs_f64());
        }
    }
    debug!("committed-message fan-out stopped");
}
