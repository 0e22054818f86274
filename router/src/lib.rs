//! The Redis side of the cluster.
//!
//! Five pieces, each over one Redis deployment:
//! - `lease`: every node holds a lease (a member of a sorted set scored by its expiry, in Redis' own clock); a node
//!   whose lease lapsed is dead to the others.
//! - `locations`: the user → {device → node} registry, written on connect, removed on disconnect only while it
//!   still points at the remover, and read through the lease set so a dead node's entries are ignored.
//! - `bus`: one pub/sub channel per node; a publish carries one already-encoded frame for many local users, so a
//!   message costs one publish per target node, not per recipient.
//! - `revocations` and `throttle`: small shared security state (revoked tokens, failed-login counters), every key
//!   with its own expiry.
//!
//! This crate knows nothing of sessions, sockets or Postgres. Redis pub/sub is at-most-once: nothing here may be
//! relied on for completeness, which comes from the store and `sync`.

pub mod bus;
pub mod lease;
pub mod locations;
pub mod revocations;
pub mod throttle;

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{TlsConfig, TlsConnector, TlsHostMapping};
use tokio_rustls::rustls;

pub use bus::{Bus, BusMessage};
pub use lease::NodeLease;
pub use locations::LocationRegistry;
pub use revocations::{RevocationStore, TokenStatus};
pub use throttle::FailureCounters;

/// What can go wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("bus message: {0}")]
    Envelope(String),
    /// The TLS handshake with Redis failed (a refused certificate, no TLS on that port): a setting to fix, not
    /// something a retry mends.
    #[error("TLS handshake with redis at {server} failed: {reason}")]
    Tls { server: String, reason: String },
    #[error("redis URL: {0}")]
    Url(String),
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    /// How long one command may wait (including while reconnecting) before it fails.
    pub command_timeout: Duration,
    /// Capacity of the pub/sub receive buffer; fred's default of 32 drops messages under load.
    pub pubsub_buffer: usize,
    /// The TLS client configuration for a `rediss://` URL (required with one, refused without).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Parses the URL and applies the TLS setting. fred would build its own rustls configuration (system roots only)
/// for `rediss`; the URL is parsed as plain and ours is set instead, so the CA file and client certificate apply.
fn fred_config(settings: &RedisSettings) -> Result<Config, RouterError> {
    let tls_scheme =
        settings.url.starts_with("rediss://") || settings.url.starts_with("rediss-cluster://");
    let plain_url = if tls_scheme {
        settings.url.replacen("rediss", "redis", 1)
    } else {
        settings.url.clone()
    };
    let mut config = Config::from_url(&plain_url)?;
    match (&settings.tls, tls_scheme) {
        (Some(tls), true) => {
            config.tls = Some(TlsConfig {
                connector: TlsConnector::Rustls(tokio_rustls::TlsConnector::from(tls.clone())),
                // A cluster answers CLUSTER SLOTS with addresses; check each node's certificate for the name the
                // URL used (or the hostname the cluster announces), as a shared cluster certificate names them.
                hostnames: if config.server.is_clustered() {
                    TlsHostMapping::DefaultHost
                } else {
                    TlsHostMapping::None
                },
            });
        }
        (None, false) => {}
        (None, true) => {
            return Err(RouterError::Url(
                "a rediss:// URL needs a TLS configuration".into(),
            ))
        }
        (Some(_), false) => {
            return Err(RouterError::Url(
                "TLS is configured but the URL is not rediss://".into(),
            ))
        }
    }
    Ok(config)
}

/// With TLS, one handshake with the first server before fred connects: a refused certificate then stops the
/// start at once with the reason (fred would only log it and retry). A server that does not accept TCP yet is left
/// to the retries.
async fn check_tls(config: &Config, settings: &RedisSettings) -> Result<(), RouterError> {
    let Some(tls) = &settings.tls else {
        return Ok(());
    };
    let Some(server) = config.server.hosts().into_iter().next() else {
        return Ok(());
    };
    let address = format!("{}:{}", server.host, server.port);
    let connect = tokio::net::TcpStream::connect(address.as_str());
    let Ok(Ok(tcp)) = tokio::time::timeout(settings.command_timeout, connect).await else {
        return Ok(());
    };
    let name = rustls::pki_types::ServerName::try_from(server.host.to_string())
        .map_err(|e| RouterError::Url(format!("{} is no TLS server name: {e}", server.host)))?;
    let handshake = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp);
    match tokio::time::timeout(settings.command_timeout, handshake).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(error)) => Err(RouterError::Tls {
            server: address,
            reason: error.to_string(),
        }),
        Err(_) => Err(RouterError::Tls {
            server: address,
            reason: "timed out (is that port TLS?)".into(),
        }),
    }
}

/// Builds a client with the settings every router client shares: bounded command time, endless reconnects with
/// backoff, and a large pub/sub buffer.
pub(crate) fn builder(settings: &RedisSettings) -> Result<Builder, RouterError> {
    let config = fred_config(settings)?;
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|perf| {
            perf.default_command_timeout = settings.command_timeout;
            perf.broadcast_channel_capacity = settings.pubsub_buffer;
        })
        .with_connection_config(|conn| {
            conn.connection_timeout = settings.command_timeout;
            // Commands are not retried across reconnects more than once: a re-sent PUBLISH is a duplicate.
            conn.max_command_attempts = 1;
        })
        // max_attempts 0 = reconnect forever; 100 ms doubling up to 2 s.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    Ok(builder)
}

/// Connects a command client, retrying the first connection for up to five command timeouts.
pub async fn connect(settings: &RedisSettings) -> Result<Client, RouterError> {
    check_tls(&fred_config(settings)?, settings).await?;
    let client = builder(settings)?.build()?;
    init_with_retry(&client, settings).await?;
    Ok(client)
}

/// Runs fred's `init` (which subscribes to the connect event before connecting, so the first connection cannot be
/// missed) until it succeeds or the start-up deadline passes.
pub(crate) async fn init_with_retry<C: ClientLike>(
    client: &C,
    settings: &RedisSettings,
) -> Result<(), RouterError> {
    let deadline = tokio::time::Instant::now() + settings.command_timeout * 5;
    loop {
        let attempt = tokio::time::timeout_at(deadline, client.init()).await;
        match attempt {
            Ok(Ok(_connection_task)) => return Ok(()),
            Ok(Err(error))
                if tokio::time::Instant::now() + Duration::from_millis(200) < deadline =>
            {
                tracing::warn!(%error, url = %settings.url, "redis not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => {
                return Err(RouterError::Redis(fred::error::Error::new(
                    ErrorKind::Timeout,
                    format!("could not connect to {} in time", settings.url),
                )))
            }
        }
    }
}

/// The Redis client type the node passes around (re-exported so the node needs no direct fred dependency).
pub use fred::clients::Client as RedisClient;

/// Round-trips a PING (readiness checks).
pub async fn ping(client: &Client) -> Result<(), RouterError> {
    let _: String = client.ping(None).await?;
    Ok(())
}
