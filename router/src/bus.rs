//! The cross-node bus: node `N` subscribes to `im:node:N`; others publish there what N must deliver.
//!
//! On a Redis Cluster (a `redis-cluster://` URL) the same channels are shard channels (`SPUBLISH`/`SSUBSCRIBE`, Redis
//! 7+), so publish load spreads over the shards instead of being broadcast to every one.
//!
//! A `BusMessage` is MessagePack. `Deliver` carries the frame already encoded for the wire, so the receiving node
//! pushes the same bytes to every local device without decoding them.

use std::time::Duration;

use common::ids::{ConvId, UserId};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use metrics::counter;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{RedisSettings, RouterError};

/// What one node asks another to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BusMessage {
    /// Push `frame` to every local device of `users`, except the one named by `skip`.
    Deliver {
        users: Vec<UserId>,
        skip: Option<(UserId, String)>,
        #[serde(with = "serde_bytes")]
        frame: Vec<u8>,
    },
    /// Close the local connection of this device with `kick{replaced}`: it connected again elsewhere, or a newer
    /// login on its platform moved it out.
    KickDevice { user: UserId, device: String },
    /// Push `frame` to every local device of every member of `conv` (except `skip`). Sent to every live node for
    /// large conversations, so the cost is one publish per node whatever the member count.
    DeliverConv {
        conv: ConvId,
        skip: Option<(UserId, String)>,
        #[serde(with = "serde_bytes")]
        frame: Vec<u8>,
    },
    /// The membership of `conv` changed: drop cached member lists.
    ConvChanged { conv: ConvId },
    /// Friendship or blocking between two users changed: drop cached send permissions.
    PairChanged { a: UserId, b: UserId },
    /// Tokens of `user` were revoked: the one with id `token` (hex), and/or every one issued at or before
    /// `not_before_ms`. Sent to every live node, which closes the affected connections (close 1008) and updates its
    /// cache. Already stored in Redis, so a node that misses this finds it on its periodic re-check.
    TokensRevoked {
        user: UserId,
        token: Option<String>,
        not_before_ms: Option<u64>,
    },
    /// Never published: the subscriber itself reports that this node may have missed messages (it reconnected,
    /// or its receive buffer overflowed), so every cache kept fresh by invalidations must be dropped.
    MayHaveMissed,
}

impl BusMessage {
    pub fn to_bytes(&self) -> Result<Vec<u8>, RouterError> {
        rmp_serde::to_vec(self).map_err(|e| RouterError::Envelope(e.to_string()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RouterError> {
        rmp_serde::from_slice(bytes).map_err(|e| RouterError::Envelope(e.to_string()))
    }
}

pub fn channel(node_id: &str) -> String {
    format!("im:node:{node_id}")
}

/// Publishes to other nodes.
#[derive(Clone)]
pub struct Bus {
    client: Client,
}

impl Bus {
    pub fn new(client: Client) -> Self {
        Bus { client }
    }

    /// One publish to one node. Returns how many subscribers received it (0 = that node is gone).
    pub async fn publish(&self, node_id: &str, message: &BusMessage) -> Result<i64, RouterError> {
        let bytes = message.to_bytes()?;
        let result = if self.client.is_clustered() {
            self.client
                .spublish::<i64, _, _>(channel(node_id), bytes.as_slice())
                .await
        } else {
            self.client
                .publish::<i64, _, _>(channel(node_id), bytes.as_slice())
                .await
        };
        match result {
            Ok(receivers) => {
                counter!("im_redis_publish_total").increment(1);
                Ok(receivers)
            }
            Err(error) => {
                counter!("im_redis_publish_errors_total").increment(1);
                Err(error.into())
            }
        }
    }
}

impl Bus {
    /// Publishes many messages in one pipeline (one round trip); order is kept per target node. Returns how many
    /// failed.
    pub async fn publish_many(&self, messages: &[(String, BusMessage)]) -> usize {
        // Issued concurrently: fred pipelines them per connection (keeping their order per target channel), and on
        // a Redis Cluster each SPUBLISH goes to the shard that owns its channel.
        let publishes = messages.iter().map(|(node_id, message)| async move {
            let bytes = message.to_bytes()?;
            let receivers: i64 = if self.client.is_clustered() {
                self.client
                    .spublish(channel(node_id), bytes.as_slice())
                    .await?
            } else {
                self.client
                    .publish(channel(node_id), bytes.as_slice())
                    .await?
            };
            Ok::<i64, RouterError>(receivers)
        });
        let failed = futures::future::join_all(publishes)
            .await
            .iter()
            .filter(|r| r.is_err())
            .count();
        counter!("im_redis_publish_total").increment(messages.len() as u64);
        if failed > 0 {
            counter!("im_redis_publish_errors_total").increment(failed as u64);
        }
        failed
    }
}

/// Subscribes to this node's channel and forwards decoded messages into `sink` until `cancel` fires.
///
/// fred's `manage_subscriptions` re-subscribes after every reconnect. If the receive buffer overflows (`Lagged`),
/// the lost messages are counted; recipients recover them through `sync` when they notice the gap.
pub async fn subscribe(
    settings: &RedisSettings,
    node_id: &str,
    sink: mpsc::Sender<BusMessage>,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, RouterError> {
    let subscriber: SubscriberClient = crate::builder(settings)?.build_subscriber_client()?;
    crate::init_with_retry(&subscriber, settings).await?;
    let mut messages = subscriber.message_rx();
    let _manager = subscriber.manage_subscriptions();
    if subscriber.is_clustered() {
        subscriber.ssubscribe(channel(node_id)).await?;
    } else {
        subscriber.subscribe(channel(node_id)).await?;
    }
    let mut reconnects = subscriber.reconnect_rx();
    let handle = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = reconnects.recv() => {
                    counter!("im_redis_reconnects_total", "client" => "subscriber").increment(1);
                    let _ = sink.try_send(BusMessage::MayHaveMissed);
                }
                received = messages.recv() => match received {
                    Ok(message) => {
                        counter!("im_redis_messages_received_total").increment(1);
                        let Some(bytes) = message.value.as_bytes() else { continue };
                        match BusMessage::from_bytes(bytes) {
                            Ok(decoded) => {
                                if sink.try_send(decoded).is_err() {
                                    counter!("im_redis_messages_dropped_total", "why" => "node_busy").increment(1);
                                }
                            }
                            Err(error) => {
                                counter!("im_redis_messages_dropped_total", "why" => "undecodable").increment(1);
                                tracing::warn!(%error, "undecodable bus message");
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(lost)) => {
                        counter!("im_redis_messages_dropped_total", "why" => "lagged").increment(lost);
                        let _ = sink.try_send(BusMessage::MayHaveMissed);
                        tracing::warn!(lost, "pub/sub receive buffer overflowed; recipients will resync");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), subscriber.quit()).await;
    });
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_message_round_trip() {
        let message = BusMessage::Deliver {
            users: vec![1, 2],
            skip: Some((1, "phone".into())),
            frame: vec![0, 1, 2],
        };
        let bytes = message.to_bytes().unwrap();
        assert_eq!(BusMessage::from_bytes(&bytes).unwrap(), message);
        assert!(BusMessage::from_bytes(&[0xc1]).is_err());
        let revoked = BusMessage::TokensRevoked {
            user: 7,
            token: Some("ab".repeat(16)),
            not_before_ms: Some(1_764_000_000_000),
        };
        assert_eq!(
            BusMessage::from_bytes(&revoked.to_bytes().unwrap()).unwrap(),
            revoked
        );
    }
}
