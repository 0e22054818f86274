//! Media bytes: stored once per SHA-256 wherever `--media-store` says (`postgres.rs`: chunks in Postgres, the
//! default, so any node serves any medium; `s3.rs`: an S3-compatible object store; `local.rs`: a folder), written
//! from a reader part by part and read back as a stream of chunks; and thumbnails for images. `import.rs` copies an
//! old local folder into the configured store. What Postgres knows about a medium (size, type, who may use it) is
//! `media_meta.rs`'s.
//!
//! A store's failure (other than a missing object) is counted in `im_media_store_errors_total{store,op}` and logged
//! here, once; callers answer it as retryable (503).

use std::io::Cursor;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

pub mod import;
mod local;
mod postgres;
mod s3;

pub use local::LocalMediaStore;
pub use postgres::PostgresMedia;
pub use s3::{S3Media, S3Target};

/// Longest edge of a thumbnail, in pixels.
pub const THUMB_EDGE: u32 = 256;
/// Largest image (in pixels per side) we decode for a thumbnail; larger images are stored without one.
const MAX_DECODE_EDGE: u32 = 12_000;

/// MIME types accepted for upload.
pub const ALLOWED_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "application/zip",
    "application/octet-stream",
    "text/plain",
    "audio/mpeg",
    "audio/ogg",
    "video/mp4",
];

/// A medium's bytes as a stream of chunks, for a response body that never holds the whole file.
pub type ByteStream = futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>;

/// Where media bytes live (`--media-store`): Postgres by default, so every node serves every medium; an
/// S3-compatible object store; a local folder for a single node or a shared filesystem.
#[derive(Clone)]
pub enum MediaBytes {
    Postgres(PostgresMedia),
    Local(LocalMediaStore),
    S3(S3Media),
}

impl MediaBytes {
    /// The store's name in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            MediaBytes::Postgres(_) => "postgres",
            MediaBytes::Local(_) => "local",
            MediaBytes::S3(_) => "s3",
        }
    }

    /// Counts and logs a failure of the store; a missing object (`NotFound`) or bytes that failed their check
    /// (`InvalidData`, from the reader) are not the store's failures.
    fn observed<T>(&self, op: &'static str, result: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(error) = &result {
            if !matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData
            ) {
                let store = self.name();
                ::metrics::counter!("im_media_store_errors_total", "store" => store, "op" => op)
                    .increment(1);
                tracing::warn!(store, op, %error, "media store failed");
            }
        }
        result
    }

    /// Stores what `reader` yields under its hash, part by part; storing the same hash again stores the same bytes.
    /// If the reader fails, nothing is stored under the hash.
    pub async fn put<R: AsyncRead + Unpin + Send>(
        &self,
        hash: &str,
        reader: R,
    ) -> std::io::Result<()> {
        let result = match self {
            MediaBytes::Postgres(store) => store.put(hash, reader).await,
            MediaBytes::Local(store) => store.put(hash, reader).await,
            MediaBytes::S3(store) => store.put(hash, reader).await,
        };
        self.observed("put", result)
    }

    pub async fn put_thumb(&self, hash: &str, bytes: &[u8]) -> std::io::Result<()> {
        let result = match self {
            MediaBytes::Postgres(store) => store.put_thumb(hash, bytes).await,
            MediaBytes::Local(store) => store.put_thumb(hash, bytes).await,
            MediaBytes::S3(store) => store.put_thumb(hash, bytes).await,
        };
        self.observed("put_thumb", result)
    }

    /// Whether the medium's bytes are stored.
    pub async fn exists(&self, hash: &str) -> std::io::Result<bool> {
        let result = match self {
            MediaBytes::Postgres(store) => store.exists(hash).await,
            MediaBytes::Local(store) => store.exists(hash).await,
            MediaBytes::S3(store) => store.exists(hash).await,
        };
        self.observed("exists", result)
    }

    /// The medium's bytes as a stream; `NotFound` if none are stored.
    pub async fn stream(&self, hash: &str) -> std::io::Result<ByteStream> {
        let result = match self {
            MediaBytes::Postgres(store) => store.stream(hash).await,
            MediaBytes::Local(store) => store.stream(hash).await,
            MediaBytes::S3(store) => store.stream(hash).await,
        };
        self.observed("get", result)
    }

    pub async fn get_thumb(&self, hash: &str) -> std::io::Result<Vec<u8>> {
        let result = match self {
            MediaBytes::Postgres(store) => store.get_thumb(hash).await,
            MediaBytes::Local(store) => store.get_thumb(hash).await,
            MediaBytes::S3(store) => store.get_thumb(hash).await,
        };
        self.observed("get_thumb", result)
    }
}

/// The next at most `limit` bytes of `reader` (fewer only at its end; empty once it is exhausted).
pub(crate) async fn read_part<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> std::io::Result<bytes::Bytes> {
    let mut buffer = Vec::with_capacity(limit.min(1024 * 1024));
    reader.take(limit as u64).read_to_end(&mut buffer).await?;
    Ok(buffer.into())
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A PNG thumbnail no larger than `THUMB_EDGE` on either side, or `None` if the bytes are not a decodable image
/// within the decoder's limits. CPU-heavy: call it on the blocking pool.
pub fn thumbnail(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODE_EDGE);
    limits.max_image_height = Some(MAX_DECODE_EDGE);
    limits.max_alloc = Some(256 * 1024 * 1024);
    reader.limits(limits);
    let image = reader.decode().ok()?;
    let thumb = image.thumbnail(THUMB_EDGE, THUMB_EDGE);
    let mut out = Cursor::new(Vec::new());
    thumb.write_to(&mut out, image::ImageFormat::Png).ok()?;
    Some(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_are_small_and_garbage_is_refused() {
        let big = image::RgbImage::from_fn(800, 400, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        let mut png = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(big)
            .write_to(&mut png, image::ImageFormat::Png)
            .unwrap();
        let thumb = thumbnail(png.get_ref()).unwrap();
        let decoded = image::load_from_memory(&thumb).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (256, 128));
        assert!(thumbnail(b"not an image").is_none());
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
