//! The node: one stateless member of the cluster.
//!
//! `run` wires the pieces — Postgres pool and migrations, Redis lease, location registry and bus, the batched
//! writer, the router and bus tasks, the HTTP server — and drains them in order when the shutdown token fires:
//! stop accepting, kick every connection (`draining`, in waves over `--drain-spread-secs`), let the writer commit what is queued, let the router
//! publish it, release the lease, exit.

pub mod backend_tls;
pub mod chat;
pub mod clock;
pub mod config;
pub mod connection;
pub mod error;
pub mod fanout;
pub mod identity;
pub mod metrics;
pub mod observe;
pub mod peer;
pub mod rest;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod storage;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::KickReason;
use router::lease::LeaseState;
use router::{Bus, LocationRegistry, NodeLease, RedisSettings};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{During, Error};
use crate::fanout::local::LocalSessions;
use crate::state::NodeState;
use crate::storage::writer::{self, WriterSettings};

/// Runs the node until `shutdown` fires, then drains. Returns an error only for start-up failures.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    config.validate()?;
    let prometheus = metrics::install().during("installing the metrics recorder")?;
    observe::catalogue::describe_all();
    let metrics = metrics::Metrics::new(&config.node_name);
    let node_id = format!("{}-{:012x}", config.node_name, rand::random::<u64>() >> 16);
    info!(node_id, listen = %config.listen, "starting");

    // The connection-limit alert compares im_connections_open with this.
    ::metrics::gauge!("im_connections_max").set(config.max_connections as f64);

    let pool = postgres_pool(&config, config.postgres_pool)?;
    if config.run_migrations {
        let applied = migrate_with_retry(&pool, config.migration_timeouts()).await?;
        info!(applied, "migrations applied");
    } else {
        wait_for_schema(&pool).await?;
    }

    let settings = RedisSettings {
        url: config.redis_url.clone(),
        command_timeout: Duration::from_millis(config.redis_timeout_ms),
        pubsub_buffer: config.pubsub_buffer,
        tls: redis_tls(&config)?,
    };
    let redis = router::connect(&settings)
        .await
        .during("connecting to redis")?;
    let lease = NodeLease::new(redis.clone(), node_id.clone(), config.lease_ttl());
    lease.refresh().await.during("taking the node lease")?;
    let locations = LocationRegistry::new(redis.clone(), Duration::from_millis(500));
    let bus = Bus::new(redis.clone());
    let sessions = Arc::new(LocalSessions::default());

    let stop_background = CancellationToken::new();
    let (bus_tx, bus_rx) = mpsc::channel(config.pubsub_buffer);
    let subscriber = router::bus::subscribe(&settings, &node_id, bus_tx, stop_background.clone())
        .await
        .during("subscribing to the node channel")?;
    let delivery = fanout::delivery::Delivery {
        sessions: sessions.clone(),
        locations: locations.clone(),
        bus: bus.clone(),
        members: Arc::new(fanout::members::MemberCache::new(pool.clone())),
        node_id: node_id.clone(),
        metrics: metrics.clone(),
        push: push_queue(&config)?,
    };
    let pairs = Arc::new(storage::pair_cache::PairCache::new());
    let revocations = Arc::new(identity::revocation::Revocations::new(
        router::RevocationStore::new(redis.clone()),
        Duration::from_secs(config.revocation_recheck_secs),
    ));
    let bus_consumer = tokio::spawn(fanout::bus_inbox::run(
        bus_rx,
        delivery.clone(),
        pairs.clone(),
        revocations.clone(),
    ));
    let recheck_task = tokio::spawn(fanout::revoked::run_recheck(
        revocations.clone(),
        sessions.clone(),
        stop_background.clone(),
    ));
    let media = open_media_store(&config, &pool).await?;

    let (committed_tx, committed_rx) = mpsc::channel(1024);
    let drain_writer = CancellationToken::new();
    let (writer, writer_task) = writer::spawn(
        pool.clone(),
        pairs.clone(),
        WriterSettings {
            writers: config.writers,
            batch_rows: config.writer_batch_rows,
            flush_interval: Duration::from_micros(config.writer_flush_us),
            queue: config.writer_queue,
            require_friendship: config.require_friendship,
        },
        committed_tx,
        metrics.clone(),
        drain_writer.clone(),
    );
    let router_delivery = delivery.clone();
    let router_task = tokio::spawn(fanout::committed::run(
        committed_rx,
        router_delivery,
        config.compress_threshold,
    ));

    let auth = identity::auth::Authenticator::with_keys(
        config.token_key_list().map_err(Error::Config)?,
        Duration::from_secs(config.token_ttl_secs),
        config.argon2_memory_kib,
        config.argon2_iterations,
    )?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls::acceptor(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| Error::io(format!("binding {}", config.listen), error))?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|error| {
            Error::io(
                format!("binding the admin listener {}", config.admin_listen),
                error,
            )
        })?;
    let state = Arc::new(NodeState::new(
        config,
        node_id.clone(),
        pool,
        redis,
        auth,
        revocations,
        sessions.clone(),
        locations,
        bus,
        delivery,
        pairs,
        media,
        writer,
        metrics,
        prometheus.clone(),
    ));
    let lease_task = tokio::spawn(keep_lease(
        lease.clone(),
        state.clone(),
        stop_background.clone(),
    ));
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            prometheus.run_upkeep();
        }
    });
    // The admin listener outlives the client one: `/readyz` answers "draining" and metrics stay scrapeable
    // until the drain is over.
    let stop_admin = CancellationToken::new();
    let admin_task = tokio::spawn(observe::admin::serve(
        admin_listener,
        state.clone(),
        stop_admin.clone(),
    ));
    info!(
        listen = %state.config.listen,
        admin = %state.config.admin_listen,
        tls = tls.is_some(),
        "ready"
    );

    server::http::serve(listener, tls, state.clone(), shutdown.clone()).await;

    // Drain: decide (token fired), tell (kick), wait (bounded by the grace period).
    let grace = Duration::from_secs(state.config.drain_grace_secs);
    let deadline = tokio::time::Instant::now() + grace;
    state.draining.store(true, Ordering::Release);
    state.connections.close();
    let spread = Duration::from_secs(state.config.drain_spread_secs);
    let kicked =
        fanout::drain::kick_in_waves(sessions.all_devices(), KickReason::Draining, spread).await;
    info!(kicked, "draining: every connection asked to move");
    if tokio::time::timeout_at(deadline, state.connections.wait())
        .await
        .is_err()
    {
        warn!("connections still open at the end of the grace period");
    }
    drain_writer.cancel();
    if tokio::time::timeout_at(deadline, writer_task)
        .await
        .is_err()
    {
        warn!("writer did not finish in the grace period; unacknowledged messages will be retried by clients");
    }
    let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), router_task).await;
    stop_background.cancel();
    let _ = lease_task.await;
    let _ = recheck_task.await;
    if let Err(error) = lease.release().await {
        warn!(%error, "could not release the lease; it will expire");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), subscriber).await;
    bus_consumer.abort();
    upkeep.abort();
    stop_admin.cancel();
    let _ = admin_task.await;
    info!("stopped");
    Ok(())
}

/// `node migrate`: applies pending migrations and returns how many it applied.
pub async fn migrate(config: &Config) -> Result<usize, Error> {
    config.validate_migrate().map_err(Error::Config)?;
    let pool = postgres_pool(config, 1)?;
    migrate_with_retry(&pool, config.migration_timeouts()).await
}

/// The Postgres pool with the TLS the URL's `sslmode` and `--postgres-ca-file` etc. ask for.
fn postgres_pool(config: &Config, size: usize) -> Result<deadpool_postgres::Pool, Error> {
    storage::pool(&config.postgres_url, size, &config.backend_tls.postgres())
        .during("postgres configuration")
}

/// The rustls configuration for a `rediss://` URL (chain and host name checked), none for `redis://`.
fn redis_tls(config: &Config) -> Result<Option<Arc<tokio_rustls::rustls::ClientConfig>>, Error> {
    let tls = config.redis_url.starts_with("rediss://")
        || config.redis_url.starts_with("rediss-cluster://");
    if !tls {
        return Ok(None);
    }
    let files = config.backend_tls.redis();
    let client = backend_tls::client_config("redis", &files, backend_tls::Verify::Full)
        .map_err(Error::Config)?;
    Ok(Some(Arc::new(client)))
}

/// The offline push webhook's queue, if one is configured. Over `http://` the previews travel in the clear: said
/// once at start.
fn push_queue(config: &Config) -> Result<Option<fanout::push::PushQueue>, Error> {
    if config.push_webhook_url.is_empty() {
        return Ok(None);
    }
    let tls = if config.push_webhook_url.starts_with("https://") {
        let files = config.backend_tls.push();
        let client = backend_tls::client_config("push", &files, backend_tls::Verify::Full)
            .map_err(Error::Config)?;
        Some(Arc::new(client))
    } else {
        warn!("--push-webhook-url is http://: message previews are sent unencrypted; use https://");
        None
    };
    let settings = fanout::push::PushSettings {
        url: config.push_webhook_url.clone(),
        batch: config.push_batch,
        timeout: Duration::from_millis(config.push_timeout_ms),
        retries: config.push_retries,
        tls,
    };
    fanout::push::spawn(settings)
        .map(Some)
        .map_err(Error::Config)
}

/// The media store `--media-store` names. Contacts nothing but the local folder.
async fn open_media_store(
    config: &Config,
    pool: &deadpool_postgres::Pool,
) -> Result<storage::media::MediaBytes, Error> {
    use storage::media::{LocalMediaStore, MediaBytes, PostgresMedia, S3Media};
    Ok(match config.media_store {
        config::MediaStoreKind::Postgres => {
            MediaBytes::Postgres(PostgresMedia::new(pool.clone(), config.media_chunk_bytes))
        }
        config::MediaStoreKind::Local => MediaBytes::Local(
            LocalMediaStore::new(config.media_dir.clone())
                .await
                .map_err(|error| Error::io("preparing the media folder", error))?,
        ),
        config::MediaStoreKind::S3 => MediaBytes::S3(
            S3Media::new(&config.s3.target())
                .map_err(|error| Error::io("preparing the S3 client", error))?,
        ),
    })
}

/// `node media import --from <dir>`: copies an old local media folder into the configured store (see
/// `storage::media::import`). The schema must be current.
pub async fn media_import(
    config: &Config,
    from: &std::path::Path,
) -> Result<storage::media::import::ImportCounts, Error> {
    config.validate_media().map_err(Error::Config)?;
    let pool = postgres_pool(config, 2)?;
    wait_for_schema(&pool).await?;
    let store = open_media_store(config, &pool).await?;
    info!(store = store.name(), from = %from.display(), "importing media");
    storage::media::import::import(&pool, &store, from)
        .await
        .map_err(|error| Error::Internal(error.to_string()))
}

/// Postgres may still be starting (local cluster, container start order), or a lock timeout may have cut a
/// migration short: retry for a while.
async fn migrate_with_retry(
    pool: &deadpool_postgres::Pool,
    timeouts: storage::schema::MigrationTimeouts,
) -> Result<usize, Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match storage::schema::migrate(pool, timeouts).await {
            Ok(applied) => return Ok(applied),
            Err(error) if storage::tls::tls_failure(&error).is_some() => {
                return Err(postgres_tls_error(&error));
            }
            Err(error) if tokio::time::Instant::now() < deadline => {
                warn!(%error, "postgres not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).during("applying migrations"),
        }
    }
}

/// A failed TLS handshake with Postgres, named as such: no retry mends a refused certificate or a server without
/// TLS under `require`, so start-up stops at once.
fn postgres_tls_error(error: &storage::StoreError) -> Error {
    let reason = storage::tls::tls_failure(error).unwrap_or_default();
    Error::Startup {
        what: "connecting to postgres".into(),
        source: Box::new(Error::Store(storage::StoreError::Invalid(format!(
            "TLS handshake failed: {reason}"
        )))),
    }
}

/// With `--run-migrations false` someone else (`node migrate`) applies migrations: wait up to a minute for the
/// schema this build needs, so a node started alongside its migration job comes up once the job is done.
async fn wait_for_schema(pool: &deadpool_postgres::Pool) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let problem = match storage::schema::pending(pool).await {
            Ok(pending) if pending.is_empty() => return Ok(()),
            Ok(pending) => format!("migrations {pending:?} not applied yet (run `node migrate`)"),
            Err(error) if storage::tls::tls_failure(&error).is_some() => {
                return Err(postgres_tls_error(&error));
            }
            Err(error) => format!("postgres not ready: {error}"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Internal(format!(
                "the schema is not current after 60 s: {problem}"
            )));
        }
        warn!(%problem, "waiting for the schema");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Refreshes the lease every third of its TTL. If it had lapsed (the node was paused, or Redis lost it), other
/// nodes may have dropped this node's devices: every connection is kicked so clients reconnect and resync.
async fn keep_lease(lease: NodeLease, state: Arc<NodeState>, stop: CancellationToken) {
    let period = lease.ttl() / 3;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_success = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match lease.refresh().await {
            Ok(LeaseState::Held) => {
                last_success = tokio::time::Instant::now();
                state.lease_ok.store(true, Ordering::Release);
                ::metrics::gauge!("im_node_lease_held").set(1.0);
            }
            Ok(LeaseState::Reacquired) => {
                last_success = tokio::time::Instant::now();
                state.lease_ok.store(true, Ordering::Release);
                ::metrics::counter!("im_node_lease_lapses_total").increment(1);
                let kicked = state.sessions.kick_all(KickReason::LeaseLost);
                warn!(
                    kicked,
                    "lease had lapsed; connections kicked so clients resync"
                );
            }
            Err(error) => {
                warn!(%error, "lease refresh failed");
                if last_success.elapsed() >= lease.ttl() {
                    state.lease_ok.store(false, Ordering::Release);
                    ::metrics::gauge!("im_node_lease_held").set(0.0);
                }
            }
        }
    }
}
