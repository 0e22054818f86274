//! The state every request and session shares: configuration, pools, the writer and routing handles.
//!
//! Built once by `lib::run`; read-only after that except for the small caches and flags declared here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::Limits;
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use router::{Bus, LocationRegistry};
use tokio_util::task::TaskTracker;

use crate::chat::policy::Policy;
use crate::chat::rate_limit::SendLimiter;
use crate::config::Config;
use crate::fanout::delivery::Delivery;
use crate::fanout::local::LocalSessions;
use crate::identity::auth::Authenticator;
use crate::identity::revocation::Revocations;
use crate::metrics::Metrics;
use crate::storage::media::MediaBytes;
use crate::storage::pair_cache::PairCache;
use crate::storage::writer::WriterHandle;

pub struct NodeState {
    pub config: Config,
    /// Cluster identity: name plus a random suffix, unique per process start.
    pub node_id: String,
    pub limits: Limits,
    pub pool: Pool,
    pub redis: router::RedisClient,
    pub auth: Authenticator,
    pub revocations: Arc<Revocations>,
    pub sessions: Arc<LocalSessions>,
    pub locations: LocationRegistry,
    pub bus: Bus,
    pub delivery: Delivery,
    pub pairs: Arc<PairCache>,
    /// The chat policy: the one place that decides who may do what (`chat::policy`).
    pub policy: Policy,
    pub media: MediaBytes,
    pub writer: WriterHandle,
    /// The per-user send rate limit (`ratelimit.rs`).
    pub send_limiter: SendLimiter,
    /// Upload thumbnails decoding at once (`--thumbnail-concurrency`).
    pub thumbnail_permits: tokio::sync::Semaphore,
    pub metrics: Metrics,
    pub prometheus: PrometheusHandle,
    /// Every connection task (HTTP and WebSocket), so a drain can wait for them.
    pub connections: TaskTracker,
    /// Set when the node starts draining: no new upgrades, `/readyz` fails.
    pub draining: AtomicBool,
    /// Whether the last lease refresh succeeded.
    pub lease_ok: AtomicBool,
    next_conn_id: AtomicU64,
}

impl NodeState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        node_id: String,
        pool: Pool,
        redis: router::RedisClient,
        auth: Authenticator,
        revocations: Arc<Revocations>,
        sessions: Arc<LocalSessions>,
        locations: LocationRegistry,
        bus: Bus,
        delivery: Delivery,
        pairs: Arc<PairCache>,
        media: MediaBytes,
        writer: WriterHandle,
        metrics: Metrics,
        prometheus: PrometheusHandle,
    ) -> Self {
        NodeState {
            policy: Policy::new(
                pool.clone(),
                pairs.clone(),
                delivery.members.clone(),
                config.require_friendship,
            ),
            limits: config.limits(),
            send_limiter: SendLimiter::new(config.send_limits()),
            thumbnail_permits: tokio::sync::Semaphore::new(config.thumbnail_concurrency),
            config,
            node_id,
            pool,
            redis,
            auth,
            revocations,
            sessions,
            locations,
            bus,
            delivery,
            pairs,
            media,
            writer,
            metrics,
            prometheus,
            connections: TaskTracker::new(),
            draining: AtomicBool::new(false),
            lease_ok: AtomicBool::new(true),
            next_conn_id: AtomicU64::new(1),
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
