//! Postgres: the schema and its migrations, the queries sessions and the REST API run, and the batched writer.
//!
//! Postgres is the source of truth for every message; Redis only ever holds routing state. This module must not
//! know about sockets or Redis: the writer hands committed messages to `delivery` through a channel.

pub mod chat;
pub mod media;
pub mod pair_cache;
pub mod queries;
pub mod relations;
pub mod schema;
pub mod writer;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{0}")]
    Invalid(String),
}

/// Builds the connection pool (connections are opened lazily).
pub fn pool(url: &str, size: usize) -> Result<Pool, StoreError> {
    let config: tokio_postgres::Config = url.parse()?;
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Invalid(e.to_string()))
}
