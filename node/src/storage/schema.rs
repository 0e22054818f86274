//! Versioned SQL migrations, applied on start.
//!
//! Several nodes may start at once: each takes a transaction-scoped advisory lock before reading the applied
//! versions, so exactly one applies a migration and the others then see it recorded. A migration and its record
//! commit together, so a crash mid-way leaves nothing half-applied.

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
];

/// Applies every migration not yet recorded; returns how many it applied.
pub async fn migrate(pool: &Pool) -> Result<usize, StoreError> {
    let mut client = pool.get().await?;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        .await
        .or_else(|error| {
            // Two nodes racing on CREATE TABLE IF NOT EXISTS can collide on the type's unique index; the table
            // exists either way.
            if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(error)
            }
        })?;
    let mut applied = 0;
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
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
