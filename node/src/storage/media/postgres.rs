//! Media bytes in Postgres: chunks of `--media-chunk-bytes` in `media_chunks`, thumbnails in `media_thumbnails`.
//!
//! Every node reads and writes the same tables, so a medium uploaded through one node is served by any other, and
//! a node's disk holds nothing. A medium's chunks are written in one transaction (whole or absent); a download
//! reads one chunk per query as the response is sent, so no node holds a whole file for a download.

use bytes::Bytes;
use deadpool_postgres::Pool;
use tokio::io::AsyncRead;

use super::{read_part, ByteStream};

#[derive(Clone)]
pub struct PostgresMedia {
    pool: Pool,
    chunk_bytes: usize,
}

fn io_error(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

fn not_found() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no stored bytes for this medium",
    )
}

impl PostgresMedia {
    pub fn new(pool: Pool, chunk_bytes: usize) -> Self {
        PostgresMedia {
            pool,
            chunk_bytes: chunk_bytes.max(1024),
        }
    }

    /// Reads and inserts one chunk at a time, all in one transaction: a failing reader rolls it back.
    pub async fn put<R: AsyncRead + Unpin>(
        &self,
        hash: &str,
        mut reader: R,
    ) -> std::io::Result<()> {
        let mut client = self.pool.get().await.map_err(io_error)?;
        let tx = client.transaction().await.map_err(io_error)?;
        let statement = tx
            .prepare_cached(
                "INSERT INTO media_chunks (hash, part, bytes) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(io_error)?;
        let mut part: i32 = 0;
        loop {
            let chunk = read_part(&mut reader, self.chunk_bytes).await?;
            if chunk.is_empty() {
                break;
            }
            tx.execute(&statement, &[&hash, &part, &chunk.as_ref()])
                .await
                .map_err(io_error)?;
            part = part
                .checked_add(1)
                .ok_or_else(|| io_error("too many chunks"))?;
        }
        tx.commit().await.map_err(io_error)
    }

    /// Whether the medium has stored chunks.
    pub async fn exists(&self, hash: &str) -> std::io::Result<bool> {
        self.one_value(
            "SELECT EXISTS (SELECT 1 FROM media_chunks WHERE hash = $1)",
            hash,
        )
        .await
    }

    /// The one value a one-row query about `hash` answers.
    async fn one_value<T>(&self, sql: &str, hash: &str) -> std::io::Result<T>
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        let client = self.pool.get().await.map_err(io_error)?;
        let statement = client.prepare_cached(sql).await.map_err(io_error)?;
        client
            .query_one(&statement, &[&hash])
            .await
            .map_err(io_error)?
            .try_get(0)
            .map_err(io_error)
    }

    pub async fn put_thumb(&self, hash: &str, bytes: &[u8]) -> std::io::Result<()> {
        let client = self.pool.get().await.map_err(io_error)?;
        let statement = client
            .prepare_cached(
                "INSERT INTO media_thumbnails (hash, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(io_error)?;
        client
            .execute(&statement, &[&hash, &bytes])
            .await
            .map_err(io_error)?;
        Ok(())
    }

    pub async fn get_thumb(&self, hash: &str) -> std::io::Result<Vec<u8>> {
        let client = self.pool.get().await.map_err(io_error)?;
        let statement = client
            .prepare_cached("SELECT bytes FROM media_thumbnails WHERE hash = $1")
            .await
            .map_err(io_error)?;
        match client
            .query_opt(&statement, &[&hash])
            .await
            .map_err(io_error)?
        {
            Some(row) => row.try_get(0).map_err(io_error),
            None => Err(not_found()),
        }
    }

    /// The chunks in order, each read by its own query as the stream is polled.
    pub async fn stream(&self, hash: &str) -> std::io::Result<ByteStream> {
        let parts: i64 = self
            .one_value("SELECT count(*) FROM media_chunks WHERE hash = $1", hash)
            .await?;
        if parts == 0 {
            return Err(not_found());
        }
        let pool = self.pool.clone();
        let hash = hash.to_string();
        let chunks = futures::stream::unfold(0i32, move |part| {
            let (pool, hash) = (pool.clone(), hash.clone());
            async move {
                if i64::from(part) >= parts {
                    return None;
                }
                let chunk = read_chunk(&pool, &hash, part).await;
                let next = if chunk.is_ok() { part + 1 } else { i32::MAX };
                Some((chunk, next))
            }
        });
        Ok(Box::pin(chunks))
    }
}

async fn read_chunk(pool: &Pool, hash: &str, part: i32) -> std::io::Result<Bytes> {
    let client = pool.get().await.map_err(io_error)?;
    let statement = client
        .prepare_cached("SELECT bytes FROM media_chunks WHERE hash = $1 AND part = $2")
        .await
        .map_err(io_error)?;
    let row = client
        .query_opt(&statement, &[&hash, &part])
        .await
        .map_err(io_error)?
        .ok_or_else(not_found)?;
    let bytes: Vec<u8> = row.try_get(0).map_err(io_error)?;
    Ok(Bytes::from(bytes))
}
