//! A real HAProxy in front of test nodes, configured from the shipped `ops/haproxy/haproxy.cfg`.
//!
//! The shipped file is rewritten only where the test machine differs from the compose stack: the listeners bind
//! free ports of 127.0.0.1, the Docker DNS resolver goes, `maxconn` fits the test box's descriptor limit, and the
//! `server` lines name the test nodes with their own admin ports for the health check. Everything else — PROXY v2
//! to the nodes, retries on a refused connection, the readiness check, the request id, the timeouts — is the
//! shipped configuration, so a test through this proxy tests that file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::procs::{free_port, harden, scratch_dir};

pub struct Haproxy {
    /// The frontend clients use (REST and WebSocket).
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
}

/// Whether the `haproxy` binary is on the PATH (`ops/test.sh` installs it).
pub fn available() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The shipped configuration.
pub fn shipped_config() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/haproxy/haproxy.cfg");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `shipped` with the frontend on `front`, the stats page on `stats`, and one `server` per node: (client
/// listener, admin listener).
pub fn derive_config(
    shipped: &str,
    front: u16,
    stats: u16,
    nodes: &[(SocketAddr, SocketAddr)],
) -> String {
    let mut out = String::new();
    let mut in_resolvers = false;
    let mut servers_written = false;
    for line in shipped.lines() {
        let trimmed = line.trim();
        if !line.starts_with(char::is_whitespace) && !trimmed.is_empty() {
            in_resolvers = trimmed.starts_with("resolvers ");
        }
        if in_resolvers {
            continue;
        }
        let rewritten = if trimmed.starts_with("bind :8080") {
            format!("    bind 127.0.0.1:{front}")
        } else if trimmed.starts_with("bind :8404") {
            format!("    bind 127.0.0.1:{stats}")
        } else if trimmed.starts_with("maxconn ") {
            "    maxconn 2000".to_string()
        } else if trimmed.starts_with("default-server ") {
            // Without Docker's DNS: no resolvers; the port of each check is on its server line.
            let mut words = trimmed.split_whitespace();
            let mut kept = Vec::new();
            while let Some(word) = words.next() {
                if word == "resolvers" || word == "port" {
                    words.next();
                } else {
                    kept.push(word);
                }
            }
            format!("    {}", kept.join(" "))
        } else if trimmed.starts_with("server ") {
            if servers_written {
                continue;
            }
            servers_written = true;
            nodes
                .iter()
                .enumerate()
                .map(|(i, (addr, admin))| {
                    format!("    server node{} {addr} port {}", i + 1, admin.port())
                })
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            line.to_string()
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    out
}

impl Haproxy {
    /// Starts HAProxy in front of `nodes` (client listener, admin listener) and waits until it answers.
    pub fn start(nodes: &[(SocketAddr, SocketAddr)]) -> anyhow::Result<Haproxy> {
        let dir = scratch_dir("haproxy");
        let front = free_port();
        let config = derive_config(&shipped_config(), front, free_port(), nodes);
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, &config)?;
        let check = Command::new("haproxy")
            .args(["-c", "-q", "-f"])
            .arg(&config_path)
            .output()
            .context("running haproxy (apt-get install haproxy; ops/test.sh does)")?;
        if !check.status.success() {
            bail!(
                "the derived HAProxy configuration is invalid:\n{}\n{config}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let log = dir.join("haproxy.log");
        let output = std::fs::File::create(&log)?;
        let mut command = Command::new("haproxy");
        command
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdout(output.try_clone()?)
            .stderr(output);
        harden(&mut command, None);
        let child = command.spawn().context("starting haproxy")?;
        let mut haproxy = Haproxy {
            addr: SocketAddr::from(([127, 0, 0, 1], front)),
            log,
            child: Some(child),
        };
        haproxy.wait_listening(Duration::from_secs(10))?;
        Ok(haproxy)
    }

    fn wait_listening(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while std::net::TcpStream::connect(self.addr).is_err() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("haproxy exited ({status}):\n{}", self.logs());
                }
            }
            if Instant::now() > deadline {
                bail!("haproxy did not listen within {limit:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
