//! An upload's body spooled to a temporary file while it arrives, hashed on the way, so an upload is never held
//! whole in memory: its SHA-256 (the medium's name) is known only at the end, and the store then reads it from the
//! file part by part. The file lives in the temporary directory (`TMPDIR`, else `/tmp`: the image's one writable
//! `VOLUME`) and is removed when the spool is dropped, whatever happened.

use std::path::PathBuf;

use axum::body::Body;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Why a body could not be spooled.
#[derive(Debug)]
pub enum SpoolError {
    /// Longer than the upload limit (`--max-media-bytes`).
    TooLarge,
    /// The client's body broke off.
    Body,
    /// The temporary file could not be written.
    Io(std::io::Error),
}

/// A body on disk, with its size and SHA-256.
pub struct Spooled {
    path: PathBuf,
    pub size: u64,
    pub hash: String,
}

impl Spooled {
    /// Reads `body` into a new temporary file, refusing it past `limit` bytes.
    pub async fn from_body(body: Body, limit: usize) -> Result<Spooled, SpoolError> {
        let path = std::env::temp_dir().join(format!("im-upload-{:032x}", rand::random::<u128>()));
        let mut spooled = Spooled {
            path,
            size: 0,
            hash: String::new(),
        };
        let mut file = tokio::fs::File::create(&spooled.path)
            .await
            .map_err(SpoolError::Io)?;
        let mut hasher = Sha256::new();
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| SpoolError::Body)?;
            spooled.size += chunk.len() as u64;
            if spooled.size > limit as u64 {
                return Err(SpoolError::TooLarge);
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(SpoolError::Io)?;
        }
        file.flush().await.map_err(SpoolError::Io)?;
        spooled.hash = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(spooled)
    }

    /// The bytes again, from the start, for the store to read part by part.
    pub async fn reader(&self) -> std::io::Result<tokio::fs::File> {
        tokio::fs::File::open(&self.path).await
    }

    /// The whole body in memory: only for images, whose thumbnail decoding needs all of it anyway.
    pub async fn bytes(&self) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(&self.path).await
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        // Best effort: a file that cannot be removed is in the temporary directory, which is emptied on restart.
        let _ = std::fs::remove_file(&self.path);
    }
}
