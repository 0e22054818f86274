//! `node media import --from <dir>`: copies the media of an old `local` store folder into the configured store.
//!
//! Walks Postgres' record of every medium (keyset pages, in hash order). A medium the store already holds is
//! skipped, so a re-run (or a run after an interrupted one) copies only what is left. Otherwise the folder's file
//! is streamed into the store through a reader that hashes what it yields and fails at the end if the SHA-256 or the
//! size differs from the record: every store commits only after its reader is exhausted without error, so a
//! mismatching file is never stored. The thumbnail goes first, so a stored medium always has its thumbnail.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use super::MediaBytes;
use crate::storage::media_meta;

/// Media listed per page.
const PAGE: i64 = 500;

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportCounts {
    /// Copied into the store.
    pub imported: u64,
    /// Already in the store: skipped.
    pub present: u64,
    /// Neither in the store nor in the folder (another node's folder may have it).
    pub missing: u64,
    /// In the folder, but its bytes do not match the record (hash or size): not copied.
    pub mismatched: u64,
    /// Thumbnails copied.
    pub thumbnails: u64,
}

/// Why an import stopped before walking every medium.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the media records: {0}")]
    Records(#[from] crate::storage::StoreError),
    #[error("{what} {hash}: {source}")]
    Io {
        what: &'static str,
        hash: String,
        source: std::io::Error,
    },
}

/// The `local` store's path of a medium (`<dir>/<2 hex digits>/<hash><suffix>`).
fn local_path(dir: &Path, hash: &str, suffix: &str) -> PathBuf {
    let prefix = hash.get(..2).unwrap_or("xx");
    dir.join(prefix).join(format!("{hash}{suffix}"))
}

/// Copies every recorded medium found in `from` that `store` does not hold yet.
pub async fn import(
    pool: &Pool,
    store: &MediaBytes,
    from: &Path,
) -> Result<ImportCounts, ImportError> {
    let mut counts = ImportCounts::default();
    let mut after = String::new();
    loop {
        let page = media_meta::media_after(pool, &after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.hash.clone();
        for medium in page {
            import_one(store, from, &medium, &mut counts).await?;
        }
    }
    Ok(counts)
}

async fn import_one(
    store: &MediaBytes,
    from: &Path,
    medium: &media_meta::ListedMedium,
    counts: &mut ImportCounts,
) -> Result<(), ImportError> {
    let hash = medium.hash.as_str();
    let failed = |what: &'static str| {
        move |source| ImportError::Io {
            what,
            hash: hash.to_string(),
            source,
        }
    };
    if store.exists(hash).await.map_err(failed("checking"))? {
        counts.present += 1;
        return Ok(());
    }
    let file = match tokio::fs::File::open(local_path(from, hash, "")).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                hash,
                "medium in neither the store nor the folder (another node's folder may hold it)"
            );
            counts.missing += 1;
            return Ok(());
        }
        Err(error) => return Err(failed("opening")(error)),
    };
    if medium.has_thumb {
        match tokio::fs::read(local_path(from, hash, ".thumb.png")).await {
            Ok(thumb) => {
                store
                    .put_thumb(hash, &thumb)
                    .await
                    .map_err(failed("storing the thumbnail of"))?;
                counts.thumbnails += 1;
            }
            Err(error) => tracing::warn!(hash, %error, "thumbnail not copied"),
        }
    }
    let reader = VerifyingReader::new(
        tokio::io::BufReader::with_capacity(64 * 1024, file),
        hash,
        medium.size,
    );
    match store.put(hash, reader).await {
        Ok(()) => counts.imported += 1,
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            tracing::warn!(hash, %error, "file does not match its record; not imported");
            counts.mismatched += 1;
        }
        Err(error) => return Err(failed("storing")(error)),
    }
    Ok(())
}

/// Passes bytes through, hashing them; at the end it fails (`InvalidData`) if the SHA-256 or the length differ from
/// what was expected, before the reader reports its end.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    expected_hash: String,
    expected_size: i64,
}

impl<R> VerifyingReader<R> {
    pub fn new(inner: R, expected_hash: &str, expected_size: i64) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
            expected_hash: expected_hash.to_string(),
            expected_size,
        }
    }

    fn check(&self) -> std::io::Result<()> {
        let hash: String = self
            .hasher
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if i64::try_from(self.read).ok() != Some(self.expected_size) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} bytes, the record says {}",
                    self.read, self.expected_size
                ),
            ));
        }
        if hash != self.expected_hash {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("SHA-256 is {hash}"),
            ));
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for VerifyingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let this = &mut *self;
                let fresh = &buf.filled()[before..];
                if fresh.is_empty() {
                    return Poll::Ready(this.check());
                }
                this.hasher.update(fresh);
                this.read += fresh.len() as u64;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn verifying_reader_fails_at_the_end_on_a_wrong_hash_or_size() {
        let bytes = b"some medium".to_vec();
        let hash = super::super::sha256_hex(&bytes);
        let mut out = Vec::new();
        let mut good = VerifyingReader::new(&bytes[..], &hash, bytes.len() as i64);
        good.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, bytes);

        let mut wrong_hash = VerifyingReader::new(&b"other bytes"[..], &hash, 11);
        let error = wrong_hash.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);

        let mut wrong_size = VerifyingReader::new(&bytes[..], &hash, 99);
        let error = wrong_size.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    }
}
