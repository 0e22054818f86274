//! Media bytes in a local folder: `<dir>/<first two hex digits>/<hash>`, the thumbnail beside it as
//! `<hash>.thumb.png`. Writes go to a temporary name first and are renamed into place, so a crash never leaves a
//! partial file under a hash. Only right for a single node or a folder every node shares.

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::ByteStream;

/// Media in a local folder.
#[derive(Clone)]
pub struct LocalMediaStore {
    dir: PathBuf,
}

impl LocalMediaStore {
    pub async fn new(dir: PathBuf) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(&dir).await?;
        Ok(LocalMediaStore { dir })
    }

    fn path(&self, hash: &str, suffix: &str) -> PathBuf {
        let prefix = hash.get(..2).unwrap_or("xx");
        self.dir.join(prefix).join(format!("{hash}{suffix}"))
    }

    async fn write(&self, hash: &str, suffix: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path(hash, suffix);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let temporary = path.with_extension(format!("tmp{}", rand::random::<u32>()));
        tokio::fs::write(&temporary, bytes).await?;
        tokio::fs::rename(&temporary, &path).await
    }
}

impl LocalMediaStore {
    /// Copies the reader to a temporary file, renamed into place only once the reader is exhausted without error.
    pub async fn put<R: AsyncRead + Unpin>(
        &self,
        hash: &str,
        mut reader: R,
    ) -> std::io::Result<()> {
        let path = self.path(hash, "");
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let temporary = path.with_extension(format!("tmp{}", rand::random::<u32>()));
        let copied = async {
            let mut file = tokio::fs::File::create(&temporary).await?;
            tokio::io::copy(&mut reader, &mut file).await?;
            file.flush().await
        }
        .await;
        if let Err(error) = copied {
            let _ = tokio::fs::remove_file(&temporary).await;
            return Err(error);
        }
        tokio::fs::rename(&temporary, &path).await
    }

    pub async fn exists(&self, hash: &str) -> std::io::Result<bool> {
        tokio::fs::try_exists(self.path(hash, "")).await
    }

    pub async fn put_thumb(&self, hash: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.write(hash, ".thumb.png", bytes).await
    }

    /// The file in chunks of 64 KiB, read as the response is sent.
    pub async fn stream(&self, hash: &str) -> std::io::Result<ByteStream> {
        let file = tokio::fs::File::open(self.path(hash, "")).await?;
        let chunks = futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buffer = vec![0u8; 64 * 1024];
            match file.read(&mut buffer).await {
                Ok(0) => None,
                Ok(n) => {
                    buffer.truncate(n);
                    Some((Ok(bytes::Bytes::from(buffer)), Some(file)))
                }
                Err(error) => Some((Err(error), None)),
            }
        });
        Ok(Box::pin(chunks))
    }

    pub async fn get_thumb(&self, hash: &str) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(self.path(hash, ".thumb.png")).await
    }
}
