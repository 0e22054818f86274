//! Media storage: content-addressed files behind a small trait, with thumbnails for images.
//!
//! A medium is stored once per SHA-256, under `<dir>/<first two hex digits>/<hash>`, its thumbnail beside it as
//! `<hash>.thumb.png`. Writes go to a temporary name first and are renamed into place, so a crash never leaves a
//! partial file under a hash. An object store can replace `LocalMediaStore` by implementing `MediaStore`.

use std::future::Future;
use std::io::Cursor;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

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

pub trait MediaStore: Send + Sync {
    fn put(&self, hash: &str, bytes: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;
    fn put_thumb(
        &self,
        hash: &str,
        bytes: &[u8],
    ) -> impl Future<Output = std::io::Result<()>> + Send;
    fn get(&self, hash: &str) -> impl Future<Output = std::io::Result<Vec<u8>>> + Send;
    fn get_thumb(&self, hash: &str) -> impl Future<Output = std::io::Result<Vec<u8>>> + Send;
}

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

impl MediaStore for LocalMediaStore {
    async fn put(&self, hash: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.write(hash, "", bytes).await
    }

    async fn put_thumb(&self, hash: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.write(hash, ".thumb.png", bytes).await
    }

    async fn get(&self, hash: &str) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(self.path(hash, "")).await
    }

    async fn get_thumb(&self, hash: &str) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(self.path(hash, ".thumb.png")).await
    }
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
