//! The S3-compatible object store settings of `--media-store s3`: endpoint, bucket, region, addressing style, key
//! prefix, part size, timeout and the access key id. The secret access key is read from `IM_S3_SECRET_ACCESS_KEY`
//! only: it is no flag (so it is never in a process list) and `--help` never shows it.

use std::time::Duration;

/// Environment variable holding the S3 secret access key.
pub const SECRET_ENV: &str = "IM_S3_SECRET_ACCESS_KEY";

/// The smallest part S3 accepts in a multipart upload (all parts but the last).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

/// Settings of the `s3` media store; unused by the other stores.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Settings {
    /// Endpoint URL of the S3-compatible object store (`https://s3.eu-west-1.amazonaws.com`,
    /// `http://minio.internal:9000`), for `--media-store s3`.
    #[arg(long, env = "IM_S3_ENDPOINT", default_value = "")]
    pub s3_endpoint: String,

    /// Bucket holding the media; it must exist (the node never creates or lists buckets).
    #[arg(long, env = "IM_S3_BUCKET", default_value = "")]
    pub s3_bucket: String,

    /// Region the requests are signed for (S3-compatible stores usually accept `us-east-1`).
    #[arg(long, env = "IM_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// Path-style addressing (`<endpoint>/<bucket>/<key>`), which most S3-compatible stores need; `false`:
    /// virtual-hosted style (`<bucket>.<endpoint host>/<key>`), AWS' preferred one.
    #[arg(long, env = "IM_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,

    /// Prefix of every object key (e.g. `im/`), for a bucket shared with other data. Keys are `<prefix><hash>`
    /// and `<prefix><hash>.thumb.png`.
    #[arg(long, env = "IM_S3_PREFIX", default_value = "")]
    pub s3_prefix: String,

    /// Access key id. The secret access key is read from the environment variable `IM_S3_SECRET_ACCESS_KEY`
    /// only (no flag, never printed).
    #[arg(long, env = "IM_S3_ACCESS_KEY_ID", default_value = "")]
    pub s3_access_key_id: String,

    /// Size of one part of a multipart upload, in bytes (at least 5 MiB, S3's minimum). A medium up to this size
    /// is one `PUT`; a larger one is sent part by part, never more than one part in memory.
    #[arg(long, env = "IM_S3_PART_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub s3_part_bytes: usize,

    /// Longest one request to the object store may take to answer (its headers), in milliseconds; then it fails
    /// and the client is told to retry (503).
    #[arg(long, env = "IM_S3_TIMEOUT_MS", default_value_t = 30_000)]
    pub s3_timeout_ms: u64,
}

impl S3Settings {
    /// The secret access key from `IM_S3_SECRET_ACCESS_KEY` (the only place it is read).
    pub fn secret_access_key(&self) -> String {
        std::env::var(SECRET_ENV).unwrap_or_default()
    }

    /// The storage room's view of these settings.
    pub fn target(&self) -> crate::storage::media::S3Target {
        crate::storage::media::S3Target {
            endpoint: self.s3_endpoint.clone(),
            bucket: self.s3_bucket.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            prefix: self.s3_prefix.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.secret_access_key(),
            part_bytes: self.s3_part_bytes,
            timeout: Duration::from_millis(self.s3_timeout_ms),
        }
    }

    /// The first rule the settings break; the message names the flag and never a value of the secret.
    pub fn problems(&self) -> Result<(), String> {
        if !(self.s3_endpoint.starts_with("http://") || self.s3_endpoint.starts_with("https://")) {
            return Err("--media-store s3 needs --s3-endpoint, an http:// or https:// URL".into());
        }
        if self.s3_bucket.is_empty() {
            return Err("--media-store s3 needs --s3-bucket".into());
        }
        if self.s3_access_key_id.is_empty() || self.secret_access_key().is_empty() {
            return Err(format!(
                "--media-store s3 needs --s3-access-key-id and the environment variable {SECRET_ENV}"
            ));
        }
        if self.s3_part_bytes < MIN_PART_BYTES {
            return Err("--s3-part-bytes must be at least 5 MiB (5242880)".into());
        }
        if self.s3_timeout_ms == 0 {
            return Err("--s3-timeout-ms must be positive".into());
        }
        Ok(())
    }
}
