//! Versioned SQL migrations, applied by `node migrate` or on start (`--run-migrations`).
//!
//! Several nodes may start at once: each takes a transaction-scoped advisory lock before reading the applied
//! versions, so exactly one applies a migration and the others then see it recorded. A migration and its record
//! commit together, so a crash mid-way leaves nothing half-applied. Every migration transaction runs under a lock
//! timeout and a statement timeout: a migration that would queue behind a long transaction (and make every query
//! of the running nodes queue behind it) fails and is retried instead.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::StoreError;

/// Arbitrary constant naming the migration lock.
const MIGRATION_LOCK: i64 = 0x494d_5f4d_4947;

/// (version, SQL), in order. Never edit a released migration: add a new one.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_core.sql")),
    (2, include_str!("../../migrations/0002_chat.sql")),
    (
        3,
        include_str!("../../migrations/0003_partitioned_messages.sql"),
    ),
    (
        4,
        include_str!("../../migrations/0004_group_invitations.sql"),
    ),
    (5, include_str!("../../migrations/0005_media_chunks.sql")),
    (6, include_str!("../../migrations/0006_devices.sql")),
];

/// Limits of every migration transaction (`SET LOCAL`, so pooled connections keep their defaults afterwards).
#[derive(Debug, Clone, Copy)]
pub struct MigrationTimeouts {
    /// `lock_timeout`: also bounds the wait for the migration advisory lock.
    pub lock: Duration,
    /// `statement_timeout`.
    pub statement: Duration,
}

impl MigrationTimeouts {
    async fn apply(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
        let lock = format!("{}ms", self.lock.as_millis());
        let statement = format!("{}ms", self.statement.as_millis());
        tx.execute(
            "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)",
            &[&lock, &statement],
        )
        .await?;
        Ok(())
    }
}

/// Applies every migration not yet recorded; returns how many it applied.
pub async fn migrate(pool: &Pool, timeouts: MigrationTimeouts) -> Result<usize, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    timeouts.apply(&tx).await?;
    let created = tx
        .batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        .await;
    match created {
        Ok(()) => tx.commit().await?,
        // Two nodes racing on CREATE TABLE IF NOT EXISTS can collide on the type's unique index; the table
        // exists either way.
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            tx.rollback().await?
        }
        Err(error) => return Err(error.into()),
    }
    let mut applied = 0;
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        timeouts.apply(&tx).await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?;
        if done.is_none() {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            applied += 1;
        }
        tx.commit().await?;
    }
    Ok(applied)
}

/// The versions this build needs that the database has not recorded (all of them before the first migration).
pub async fn pending(pool: &Pool) -> Result<Vec<i32>, StoreError> {
    let client = pool.get().await?;
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    let applied: Vec<i32> = if exists {
        client
            .query("SELECT version FROM schema_migrations", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect()
    } else {
        Vec::new()
    };
    Ok(MIGRATIONS
        .iter()
        .map(|(version, _)| *version)
        .filter(|version| !applied.contains(version))
        .collect())
}
