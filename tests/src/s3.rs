//! A throwaway S3-compatible object store for the media tests: the `s3s-fs` server (a real S3 implementation over
//! a folder, from crates.io; `ops/lib.sh` `ensure_s3s_fs` installs it under `target/s3s-fs`) on a free port, with
//! a scratch folder as its root and one bucket (a sub-folder). It checks SigV4 signatures with its own key pair.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::procs::{free_port, harden, scratch_dir, wait_for_port};

/// The bucket every test store has.
pub const BUCKET: &str = "im-media";

/// A running `s3s-fs`.
pub struct S3Server {
    pub port: u16,
    pub dir: PathBuf,
    pub access_key: String,
    pub secret_key: String,
    child: Option<Child>,
}

/// The `s3s-fs` binary: `IM_S3S_FS_BIN`, else the one `ops/lib.sh` installs under the workspace's `target/`, else
/// whatever `PATH` has.
fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("IM_S3S_FS_BIN") {
        return PathBuf::from(path);
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/s3s-fs/bin/s3s-fs");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("s3s-fs")
}

impl S3Server {
    pub fn start() -> anyhow::Result<S3Server> {
        let dir = scratch_dir("s3");
        std::fs::create_dir_all(dir.join(BUCKET))?;
        let port = free_port();
        let access_key = format!("AK{:016x}", rand::random::<u64>());
        let secret_key = format!("{:032x}", rand::random::<u128>());
        let mut command = Command::new(binary());
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &access_key, "--secret-key", &secret_key])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        harden(&mut command, None);
        let child = command.spawn().context(
            "starting s3s-fs (bash ops/test.sh installs it: ensure_s3s_fs in ops/lib.sh)",
        )?;
        let server = S3Server {
            port,
            dir,
            access_key,
            secret_key,
            child: Some(child),
        };
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The node flags selecting this store (the secret goes in the environment: `secret_env`).
    pub fn node_args(&self) -> Vec<(String, String)> {
        [
            ("media-store", "s3".to_string()),
            ("s3-endpoint", self.endpoint()),
            ("s3-bucket", BUCKET.to_string()),
            ("s3-access-key-id", self.access_key.clone()),
            ("s3-prefix", "media/".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The environment variable carrying the secret access key.
    pub fn secret_env(&self) -> (String, String) {
        (
            "IM_S3_SECRET_ACCESS_KEY".to_string(),
            self.secret_key.clone(),
        )
    }

    /// The bytes stored under `key` in the bucket, read from the server's folder (an object is a file there).
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(BUCKET).join(key)).ok()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
