//! Postgres and media bytes: every SQL statement of the node lives in this folder, each file owning one subject.
//!
//! Postgres is the source of truth for every message; Redis only ever holds routing state. This module must not
//! know about sockets or Redis: the writer hands committed messages to `fanout` through a channel, and callers
//! tell other nodes about a change after storage has committed it. Every function returns a typed result or
//! outcome, with `StoreError` for a failure of Postgres (the media byte stores in `media/` answer `std::io::Error`,
//! whichever backend holds the bytes); a change that must be atomic is one function owning its transaction. Rows
//! are read with `try_get` only, so a schema mismatch is an error, never a panic.
//!
//! Files: `schema.rs` (migrations), `writer/` (the only code that inserts messages), `queries.rs` (accounts, the
//! `hello` list, `sync`), `chat.rs` (read cursors, recall targets), `relations.rs` (the facts the chat policy
//! decides on), `members.rs` (who is in a conversation), `conversations.rs` (REST list, history, read receipts),
//! `devices.rs` (where each user is logged in), `groups.rs`, `invitations.rs`, `friends.rs` (requests, friendships, blocks), `profiles.rs`, `media_meta.rs`
//! (what Postgres knows about media) and `media/` (the bytes: chunks in Postgres or a local folder),
//! `pair_cache.rs` (allowed 1:1 pairs the writer found), `tls.rs` (`sslmode` and the TLS connector).

pub mod chat;
pub mod conversations;
pub mod devices;
pub mod friends;
pub mod groups;
pub mod invitations;
pub mod media;
pub mod media_meta;
pub mod members;
pub mod pair_cache;
pub mod profiles;
pub mod queries;
pub mod relations;
pub mod schema;
pub mod tls;
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

/// Builds the connection pool (connections are opened lazily), with TLS as the URL's `sslmode` and `tls` say
/// (`tls.rs`).
pub fn pool(
    url: &str,
    size: usize,
    tls: &crate::backend_tls::TlsFiles,
) -> Result<Pool, StoreError> {
    let (config, mode, connector) = tls::settings(url, tls)?;
    tracing::info!(
        sslmode = ?mode,
        ca_file = tls.ca.is_some(),
        client_cert = tls.cert.is_some(),
        "postgres connection settings"
    );
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match connector {
        Some(connector) => Manager::from_config(config, connector, manager_config),
        None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
    };
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Invalid(e.to_string()))
}

/// The first column of every row: the shape of the id-list queries (friends, blocks, members, invitations).
pub(crate) fn first_column<'a, T: tokio_postgres::types::FromSql<'a>>(
    rows: &'a [tokio_postgres::Row],
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
}
