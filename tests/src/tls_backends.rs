//! Backends that speak only TLS, for the tests of the node's own TLS connections: a throwaway PKI (a CA, a server
//! certificate for localhost and 127.0.0.1 (also a client one: cluster masters present it to each other), a client
//! certificate for the database user `im`; made with the
//! `openssl` command line), a Postgres that accepts TCP only over TLS with a client certificate, a Redis whose only
//! port is TLS (`--port 0`; also as a three-master Redis Cluster), and an `https://` receiver for the push webhook.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::procs::{
    free_cluster_port, free_port, harden, init_data_dir, postgres_bin_dir, postgres_command,
    postgres_ids, scratch_dir, wait_for_port,
};

/// The files of a test PKI.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !output.status.success() {
        bail!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

impl TestPki {
    /// A new CA with a server and a client certificate, in a fresh scratch folder.
    pub fn create(name: &str) -> anyhow::Result<TestPki> {
        let dir = scratch_dir(name);
        // A subject of its own: with two test CAs of one name, a certificate of one would be checked against the
        // other's key (a bad signature) instead of having no known issuer.
        let subject = format!("/CN=im test CA {name} {:08x}", rand::random::<u32>());
        let mut args = vec!["req", "-x509"];
        args.extend(EC);
        args.extend([
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subject,
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&args, &dir)?;
        for (name, subject, extensions) in [
            (
                "server",
                "/CN=localhost",
                "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            (
                "client",
                "/CN=im",
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
            ),
        ] {
            let (key, csr, cert, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            std::fs::write(dir.join(&ext), extensions)?;
            let mut args = vec!["req", "-new"];
            args.extend(EC);
            args.extend(["-nodes", "-subj", subject, "-keyout", &key, "-out", &csr]);
            openssl(&args, &dir)?;
            let serial = format!("0x{:016x}", rand::random::<u64>() >> 1);
            openssl(
                &[
                    "x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial",
                    &serial, "-days", "2", "-extfile", &ext, "-out", &cert,
                ],
                &dir,
            )?;
        }
        Ok(TestPki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            dir,
        })
    }

    /// The node flags that make it trust this CA and present this client certificate to Postgres and Redis.
    pub fn node_args(&self) -> Vec<(String, String)> {
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            ("postgres-ca-file".into(), path(&self.ca)),
            ("postgres-client-cert".into(), path(&self.client_cert)),
            ("postgres-client-key".into(), path(&self.client_key)),
            ("redis-ca-file".into(), path(&self.ca)),
            ("redis-client-cert".into(), path(&self.client_cert)),
            ("redis-client-key".into(), path(&self.client_key)),
        ]
    }
}

/// A private Postgres with `ssl=on` whose TCP connections must be TLS with a client certificate signed by the
/// test CA for the user they log in as (`hostssl … clientcert=verify-full`, every other TCP connection
/// rejected); the test itself inspects it over the Unix socket.
pub struct TlsPostgres {
    pub port: u16,
    socket_dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

impl TlsPostgres {
    pub fn start(pki: &TestPki) -> anyhow::Result<TlsPostgres> {
        let bin = postgres_bin_dir()?;
        let ids = postgres_ids();
        let dir = scratch_dir("pg-tls");
        let data = init_data_dir(&bin, &dir, ids)?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust clientcert=verify-full\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             host all all ::/0 reject\n",
        )?;
        // The key must belong to the server's user and be private to it.
        let key = dir.join("server.key");
        std::fs::copy(&pki.server_key, &key)?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&key, Some(uid), Some(gid))?;
        }
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let port = free_port();
        let mut command = postgres_command(&bin, &data, port, &dir, ids)?;
        command.args(["-c", "ssl=on"]);
        command
            .arg("-c")
            .arg(format!("ssl_cert_file={}", pki.server_cert.display()));
        command
            .arg("-c")
            .arg(format!("ssl_key_file={}", key.display()));
        command
            .arg("-c")
            .arg(format!("ssl_ca_file={}", pki.ca.display()));
        let mut server = TlsPostgres {
            port,
            socket_dir: dir,
            bin,
            child: Some(command.spawn().context("starting postgres with ssl=on")?),
        };
        wait_for_port(port, Duration::from_secs(30))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.psql("postgres", "SELECT 1").is_err() {
            if Instant::now() > deadline {
                bail!(
                    "postgres with ssl=on did not accept queries; see {}",
                    server.socket_dir.join("postgres.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        server.psql("postgres", "CREATE DATABASE im")?;
        Ok(server)
    }

    /// Runs one statement over the Unix socket (no TLS needed there) and returns psql's unaligned output.
    pub fn psql(&mut self, database: &str, sql: &str) -> anyhow::Result<String> {
        let output = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "im",
                "-d",
                database,
                "-Atc",
                sql,
            ])
            .output()?;
        if !output.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// The connection string a node uses: TLS with the host name checked.
    pub fn url(&self) -> String {
        format!(
            "host=localhost port={} user=im dbname=im sslmode=verify-full",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid (SIGQUIT: immediate shutdown).
            unsafe {
                libc::kill(child.id() as i32, libc::SIGQUIT);
            }
            let _ = child.wait();
        }
    }
}

/// A Redis whose only listener is TLS (`--port 0 --tls-port …`), requiring a client certificate from the CA.
pub struct TlsRedis {
    pub port: u16,
    child: Option<Child>,
}

/// A `redis-server` that speaks only TLS on `port` (no plaintext port), with the test PKI's server certificate,
/// client certificates required, and nothing persisted.
fn tls_redis_server(pki: &TestPki, port: u16) -> Command {
    let mut command = Command::new("redis-server");
    command
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(&pki.server_cert)
        .arg("--tls-key-file")
        .arg(&pki.server_key)
        .arg("--tls-ca-cert-file")
        .arg(&pki.ca)
        .args([
            "--tls-auth-clients",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

impl TlsRedis {
    pub fn start(pki: &TestPki) -> anyhow::Result<TlsRedis> {
        let port = free_port();
        let mut command = tls_redis_server(pki, port);
        harden(&mut command, None);
        let child = command.spawn().context(
            "starting redis-server with --tls-port (Debian's redis-server has TLS built in)",
        )?;
        let redis = TlsRedis {
            port,
            child: Some(child),
        };
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster of three masters whose only listeners, client and cluster bus, are TLS (`--port 0
/// --tls-port … --tls-cluster yes`).
pub struct TlsRedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
}

impl TlsRedisCluster {
    pub fn start(pki: &TestPki) -> anyhow::Result<TlsRedisCluster> {
        let dir = scratch_dir("redis-cluster-tls");
        let ports: Vec<u16> = (0..3).map(|_| free_cluster_port()).collect();
        let mut cluster = TlsRedisCluster {
            ports: ports.clone(),
            children: Vec::new(),
        };
        for port in &ports {
            let mut command = tls_redis_server(pki, *port);
            command
                .args(["--tls-cluster", "yes", "--cluster-enabled", "yes"])
                .args(["--cluster-node-timeout", "2000"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(&dir);
            harden(&mut command, None);
            cluster.children.push(
                command
                    .spawn()
                    .context("starting redis-server in cluster mode with TLS")?,
            );
            wait_for_port(*port, Duration::from_secs(10))?;
        }
        let mut create = cluster.cli(pki);
        create.args(["--cluster", "create"]);
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        // redis-cli waits for the masters to meet without end: bounded here.
        let mut creating = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = creating.try_wait()? {
                if !status.success() {
                    bail!("redis-cli --tls --cluster create failed: {status}");
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = creating.kill();
                let _ = creating.wait();
                bail!("redis-cli --tls --cluster create did not finish in 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all_ok = ports.iter().all(|port| {
                cluster
                    .cli(pki)
                    .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                    .unwrap_or(false)
            });
            if all_ok {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                bail!("TLS redis cluster not ok within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis-cli` speaking TLS with the test CA and the client certificate.
    pub fn cli(&self, pki: &TestPki) -> Command {
        let mut command = Command::new("redis-cli");
        command
            .arg("--tls")
            .arg("--cacert")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.client_cert)
            .arg("--key")
            .arg(&pki.client_key);
        command
    }

    pub fn url(&self) -> String {
        let mut url = format!("rediss-cluster://127.0.0.1:{}", self.ports[0]);
        for (i, port) in self.ports.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{port}"));
        }
        url
    }
}

impl Drop for TlsRedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An `https://` (or plain) receiver for the push webhook: every POST body (JSON) is sent on `bodies`, answered
/// 200.
pub struct HttpsReceiver {
    pub addr: SocketAddr,
    pub bodies: mpsc::UnboundedReceiver<serde_json::Value>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsReceiver {
    pub async fn start(pki: &TestPki) -> anyhow::Result<HttpsReceiver> {
        let certs =
            CertificateDer::pem_file_iter(&pki.server_cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&pki.server_key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    /// The same receiver over plain HTTP (`url_plain`).
    pub async fn start_plain() -> anyhow::Result<HttpsReceiver> {
        Self::serve(None).await
    }

    async fn serve(acceptor: Option<tokio_rustls::TlsAcceptor>) -> anyhow::Result<HttpsReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, bodies) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            async move {
                                let body =
                                    request.into_body().collect().await.map(|b| b.to_bytes());
                                if let Ok(Ok(value)) = body.map(|b| serde_json::from_slice(&b)) {
                                    let _ = tx.send(value);
                                }
                                Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                    Bytes::from_static(b"{}"),
                                )))
                            }
                        },
                    );
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        // A client that refuses the certificate ends at `accept`.
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Ok(HttpsReceiver { addr, bodies, task })
    }

    /// The webhook URL of a plain receiver.
    pub fn url_plain(&self) -> String {
        format!("http://127.0.0.1:{}/push", self.addr.port())
    }

    /// The next event for `user`, waiting up to `limit`.
    pub async fn event_for(&mut self, user: i64, limit: Duration) -> Option<serde_json::Value> {
        tokio::time::timeout(limit, async {
            loop {
                let body = self.bodies.recv().await?;
                let events = body["events"].as_array().cloned().unwrap_or_default();
                if let Some(event) = events.into_iter().find(|e| e["user"] == user) {
                    return Some(event);
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The webhook URL for a node (the certificate names localhost).
    pub fn url(&self) -> String {
        format!("https://localhost:{}/push", self.addr.port())
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
