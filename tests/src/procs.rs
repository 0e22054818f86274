//! Child processes: Postgres (shared), Redis and nodes (per cluster).

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::client::TestClient;
pub use crate::proxy::TcpProxy;

/// A free TCP port on 127.0.0.1 (the listener is dropped; the tiny reuse race is acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid/gid of the `postgres` system user, when running as root (Postgres refuses to run as root).
pub(crate) fn postgres_ids() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let output = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    let uid = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()?;
    let output = Command::new("id").args(["-g", "postgres"]).output().ok()?;
    let gid = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()?;
    Some((uid, gid))
}

/// Makes `command` run as `ids` (if any) and die with the thread that spawned it.
pub(crate) fn harden(command: &mut Command, ids: Option<(u32, u32)>) {
    // SAFETY: only async-signal-safe libc calls run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some((uid, gid)) = ids {
                if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Set after the uid change, which would clear it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub(crate) fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("IM_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install postgresql (see README)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .ok_or_else(|| anyhow!("no Postgres server binaries under /usr/lib/postgresql"))
}

fn scratch_root() -> PathBuf {
    std::env::temp_dir().join("im-tests")
}

/// A scratch directory for this test process, world-writable so the `postgres` user can use its part.
pub fn scratch_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = scratch_root().join(format!(
        "{}-{}-{}",
        std::process::id(),
        name,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Removes scratch directories of test processes that no longer exist.
fn sweep_stale_scratch() {
    let Ok(entries) = std::fs::read_dir(scratch_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The shared Postgres server of this test process.
pub struct Postgres {
    pub port: u16,
    databases: AtomicUsize,
}

static POSTGRES: OnceLock<Result<Postgres, String>> = OnceLock::new();

impl Postgres {
    /// Starts (once) and returns the shared server.
    pub fn shared() -> anyhow::Result<&'static Postgres> {
        POSTGRES
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    fn start() -> anyhow::Result<Postgres> {
        sweep_stale_scratch();
        let bin = postgres_bin_dir()?;
        let ids = postgres_ids();
        let dir = scratch_dir("pg");
        let data = init_data_dir(&bin, &dir, ids)?;
        let port = free_port();
        // The server must live as long as the test process, not as long as the test thread that first asked
        // for it: a dedicated thread spawns it and then parks forever, so the parent-death signal only fires
        // when the whole process ends.
        let (tx, rx) = std::sync::mpsc::channel();
        let socket_dir = dir.clone();
        let server_bin = bin.clone();
        std::thread::spawn(move || {
            let spawned = postgres_command(&server_bin, &data, port, &socket_dir, ids)
                .and_then(|mut command| Ok(command.spawn()?));
            let _ = tx.send(spawned.map(|_child| ()));
            loop {
                std::thread::park();
            }
        });
        rx.recv()?.context("starting postgres")?;
        wait_for_queries(&bin, port, &dir)?;
        Ok(Postgres {
            port,
            databases: AtomicUsize::new(0),
        })
    }

    /// Creates a fresh database and returns its connection string.
    pub async fn new_database(&self) -> anyhow::Result<String> {
        let name = format!("im_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(self.url(&name))
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=im dbname={database}",
            self.port
        )
    }
}

/// Runs initdb in `dir/data` (as the `postgres` user when root) and returns the data directory.
pub(crate) fn init_data_dir(
    bin: &Path,
    dir: &Path,
    ids: Option<(u32, u32)>,
) -> anyhow::Result<PathBuf> {
    let data = dir.join("data");
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .args(["-D"])
        .arg(&data)
        .args(["-A", "trust", "-U", "im", "--no-sync", "-E", "UTF8"]);
    initdb.stdout(Stdio::null()).stderr(Stdio::piped());
    harden(&mut initdb, ids);
    let output = initdb.output().context("running initdb")?;
    if !output.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(data)
}

/// The `postgres` server command for `data` on `port`, logging to `dir/postgres.log`.
pub(crate) fn postgres_command(
    bin: &Path,
    data: &Path,
    port: u16,
    dir: &Path,
    ids: Option<(u32, u32)>,
) -> anyhow::Result<Command> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))?;
    let mut command = Command::new(bin.join("postgres"));
    command
        .arg("-D")
        .arg(data)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
        ])
        // fsync off: tests check commit semantics, not survival of a power cut; keeps CI fast. An immediate
        // shutdown (a crash of the server, not of the machine) still keeps every committed transaction.
        .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
        .arg("-k")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log);
    harden(&mut command, ids);
    Ok(command)
}

/// Waits until the server on `port` answers a trivial query (accepting TCP is not accepting queries yet).
fn wait_for_queries(bin: &Path, port: u16, dir: &Path) -> anyhow::Result<()> {
    wait_for_port(port, Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new(bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "im",
                "-d",
                "postgres",
                "-Atc",
                "SELECT 1",
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "postgres did not accept queries; see {}",
                dir.join("postgres.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Postgres server owned by one cluster, for tests that crash or restart it (the shared one must never go away).
/// Spawned from the calling thread: call it from the test's own thread, which outlives the server.
pub struct PrivatePostgres {
    pub server: Postgres,
    bin: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    ids: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PrivatePostgres {
    pub fn start() -> anyhow::Result<PrivatePostgres> {
        let bin = postgres_bin_dir()?;
        let ids = postgres_ids();
        let dir = scratch_dir("pg-private");
        let data = init_data_dir(&bin, &dir, ids)?;
        let mut private = PrivatePostgres {
            server: Postgres {
                port: free_port(),
                databases: AtomicUsize::new(0),
            },
            bin,
            data,
            dir,
            ids,
            child: None,
        };
        private.spawn()?;
        Ok(private)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command =
            postgres_command(&self.bin, &self.data, self.server.port, &self.dir, self.ids)?;
        self.child = Some(command.spawn().context("starting postgres")?);
        wait_for_queries(&self.bin, self.server.port, &self.dir)
    }

    /// Stops the server in immediate mode (SIGQUIT to the postmaster, what `pg_ctl stop -m immediate` sends: no
    /// checkpoint, open transactions aborted, crash recovery on the next start) and waits for it to exit.
    pub fn stop_immediate(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGQUIT);
            }
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data (crash recovery runs first).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}

pub(crate) fn wait_for_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listened on port {port} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A throwaway Redis server.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// Persistence settings (`--appendonly …`) and the folder they write to; none by default.
    persistence: Option<(Vec<String>, PathBuf)>,
}

impl Redis {
    pub fn start() -> anyhow::Result<Redis> {
        let port = free_port();
        let mut redis = Redis {
            port,
            child: None,
            persistence: None,
        };
        redis.spawn()?;
        Ok(redis)
    }

    /// A Redis run with these persistence settings (say, the shipped ones) in its own folder, which a restart keeps.
    pub fn start_persistent(settings: Vec<String>) -> anyhow::Result<Redis> {
        let port = free_port();
        let dir = scratch_dir(&format!("redis-{port}"));
        std::fs::create_dir_all(&dir)?;
        let mut redis = Redis {
            port,
            child: None,
            persistence: Some((settings, dir)),
        };
        redis.spawn()?;
        Ok(redis)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
        match &self.persistence {
            None => {
                command.args(["--save", "", "--appendonly", "no"]);
            }
            Some((settings, dir)) => {
                command.args(settings).arg("--dir").arg(dir);
            }
        }
        command.stdout(Stdio::null()).stderr(Stdio::null());
        harden(&mut command, None);
        self.child = Some(
            command
                .spawn()
                .context("starting redis-server (apt-get install redis-server)")?,
        );
        wait_for_port(self.port, Duration::from_secs(10))
    }

    /// Kills Redis (all data lost unless it runs with persistence) and starts it again on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Asks Redis to shut down as an orchestrator's stop does (SIGTERM: it writes what it must) and starts it again.
    pub fn restart_gracefully(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
        self.spawn()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throwaway Redis Cluster of N masters (no replicas), from the same `redis-server` binary.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: PathBuf,
}

/// A port whose cluster bus port (+10000) is free too.
pub(crate) fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port > 1024 && port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    pub fn start(masters: usize) -> anyhow::Result<RedisCluster> {
        let dir = scratch_dir("redis-cluster");
        let ports: Vec<u16> = (0..masters).map(|_| free_cluster_port()).collect();
        let mut cluster = RedisCluster {
            ports: ports.clone(),
            children: (0..masters).map(|_| None).collect(),
            dir,
        };
        for index in 0..masters {
            cluster.spawn(index)?;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()?;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        cluster.wait_ok(Duration::from_secs(20))?;
        Ok(cluster)
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let port = self.ports[index];
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .arg("--cluster-config-file")
            .arg(self.dir.join(format!("nodes-{port}.conf")))
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        harden(&mut command, None);
        self.children[index] = Some(
            command
                .spawn()
                .context("starting redis-server in cluster mode")?,
        );
        wait_for_port(port, Duration::from_secs(10))
    }

    /// Waits until every master reports `cluster_state:ok`.
    pub fn wait_ok(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let all_ok = self.ports.iter().all(|port| {
                Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                    .unwrap_or(false)
            });
            if all_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("redis cluster not ok within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills master `index` (its data is lost: no persistence) and starts it again with its cluster identity.
    pub fn restart_master(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn(index)?;
        self.wait_ok(Duration::from_secs(20))
    }

    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.ports[0]);
        for (i, port) in self.ports.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{port}"));
        }
        url
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether this test run uses a Redis Cluster (`IM_TEST_REDIS=cluster`) instead of a single Redis.
pub fn redis_cluster_mode() -> bool {
    std::env::var("IM_TEST_REDIS").is_ok_and(|v| v == "cluster")
}

/// Path of the node binary, built once per test process.
pub fn node_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Ok(path) = std::env::var("IM_NODE_BIN") {
                return Ok(PathBuf::from(path));
            }
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-q", "-p", "node", "--bin", "node"])
                .current_dir(&workspace)
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("building the node binary failed".into());
            }
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| workspace.join("target"));
            Ok(target.join("debug").join("node"))
        })
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

/// One node process.
pub struct NodeProc {
    /// The client listener: REST and WebSocket.
    pub addr: SocketAddr,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    args: Vec<(String, String)>,
    /// Environment variables besides `PATH` (secrets that have no flag).
    env: Vec<(String, String)>,
}

impl NodeProc {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(node_binary()?);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        for (key, value) in &self.args {
            // An empty value is a switch (`--conformance-echo`).
            command.arg(format!("--{key}"));
            if !value.is_empty() {
                command.arg(value);
            }
        }
        command.arg("--listen").arg(self.addr.to_string());
        command.arg("--admin-listen").arg(self.admin.to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        command.stdout(log.try_clone()?).stderr(log);
        harden(&mut command, None);
        self.child = Some(command.spawn().context("starting a node")?);
        Ok(())
    }

    /// Runs the node binary once with this node's settings (not its listeners) followed by `subcommand` (e.g.
    /// `media import --from …`), and returns what it printed and its exit status.
    pub fn run_command(&self, subcommand: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut command = Command::new(node_binary()?);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        for (key, value) in &self.args {
            command.arg(format!("--{key}"));
            if !value.is_empty() {
                command.arg(value);
            }
        }
        command.args(["--log-format", "text"]).args(subcommand);
        Ok(command.output()?)
    }

    /// Sets an environment variable for the next (re)start of this node.
    pub fn set_env(&mut self, key: &str, value: impl ToString) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Sets a node option for the next (re)start of this node.
    pub fn set_arg(&mut self, key: &str, value: impl ToString) {
        match self.args.iter_mut().find(|(k, _)| k == key) {
            Some(existing) => existing.1 = value.to_string(),
            None => self.args.push((key.to_string(), value.to_string())),
        }
    }

    /// Sends a signal to the node process.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// Waits for the process to exit; returns its exit code (None if killed by a signal or still running).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status.code());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the node stopped because its admin port was taken (its last log line says so).
    fn lost_its_admin_port(&mut self) -> bool {
        !self.is_running()
            && self
                .logs()
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|last| {
                    last.contains("binding the admin listener")
                        && last.contains("Address already in use")
                })
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Extra node flags for a cluster.
#[derive(Default, Clone)]
pub struct ClusterOptions {
    pub node_args: Vec<(String, String)>,
    /// Run the cluster on its own Postgres server (`Cluster::postgres`), which the test may crash and restart.
    pub private_postgres: bool,
    /// Nodes that reach Redis through a `TcpProxy` the test can cut (`Cluster::redis_proxies`).
    pub proxied_redis: Vec<usize>,
    /// Use the single Redis even when `IM_TEST_REDIS` asks for a cluster (tests that restart, cut or tap it).
    pub single_redis: bool,
    /// Use a 3-master Redis Cluster even when `IM_TEST_REDIS` does not ask for one.
    pub redis_cluster: bool,
    /// Run the single Redis with these persistence settings (implies `single_redis`).
    pub redis_persistence: Option<Vec<String>>,
    /// Environment variables of every node.
    pub node_env: Vec<(String, String)>,
    /// Start an S3-compatible server (`Cluster::s3`) and store media there (`--media-store s3`).
    pub s3_media: bool,
}

impl ClusterOptions {
    pub fn private_postgres(mut self) -> Self {
        self.private_postgres = true;
        self
    }

    /// The single Redis, with persistence settings (a restart keeps its data).
    pub fn redis_persistence(mut self, settings: Vec<String>) -> Self {
        self.single_redis = true;
        self.redis_persistence = Some(settings);
        self
    }

    pub fn single_redis(mut self) -> Self {
        self.single_redis = true;
        self
    }

    pub fn proxied_redis(mut self, node: usize) -> Self {
        self.proxied_redis.push(node);
        self
    }

    pub fn arg(mut self, key: &str, value: impl ToString) -> Self {
        self.node_args.push((key.to_string(), value.to_string()));
        self
    }

    /// An environment variable for every node.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.node_env.push((key.to_string(), value.to_string()));
        self
    }

    /// Media in a throwaway S3-compatible server (`Cluster::s3`) instead of the default store.
    pub fn s3_media(mut self) -> Self {
        self.s3_media = true;
        self
    }
}

/// A registered user with a valid token.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: i64,
    pub name: String,
    pub token: String,
}

/// Redis, a database on the shared Postgres, and N nodes.
pub struct Cluster {
    pub redis: Redis,
    /// The cluster's own Postgres, if `ClusterOptions::private_postgres` asked for one.
    pub postgres: Option<PrivatePostgres>,
    /// Node index → the proxy it reaches Redis through.
    pub redis_proxies: std::collections::HashMap<usize, TcpProxy>,
    /// Set in cluster mode (`IM_TEST_REDIS=cluster`): the nodes then use this instead of `redis`.
    pub redis_cluster: Option<RedisCluster>,
    pub postgres_url: String,
    pub nodes: Vec<NodeProc>,
    pub secret: String,
    pub dir: PathBuf,
    /// The object store of `ClusterOptions::s3_media`.
    pub s3: Option<crate::s3::S3Server>,
}

static USER_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Cluster {
    pub async fn start(nodes: usize) -> anyhow::Result<Cluster> {
        Self::start_with(nodes, ClusterOptions::default()).await
    }

    pub async fn start_with(nodes: usize, options: ClusterOptions) -> anyhow::Result<Cluster> {
        let private = if options.private_postgres {
            Some(PrivatePostgres::start()?)
        } else {
            None
        };
        let postgres_url = match &private {
            Some(private) => private.server.new_database().await?,
            None => {
                let shared = tokio::task::spawn_blocking(Postgres::shared).await??;
                shared.new_database().await?
            }
        };
        let redis = match &options.redis_persistence {
            Some(settings) => Redis::start_persistent(settings.clone())?,
            None => Redis::start()?,
        };
        let dir = scratch_dir("cluster");
        let secret = format!("test-secret-{:032x}", rand::random::<u128>());
        let redis_cluster =
            if !options.single_redis && (redis_cluster_mode() || options.redis_cluster) {
                Some(RedisCluster::start(3)?)
            } else {
                None
            };
        let mut cluster = Cluster {
            redis,
            postgres: private,
            redis_proxies: std::collections::HashMap::new(),
            redis_cluster,
            postgres_url,
            nodes: Vec::new(),
            secret,
            dir,
            s3: None,
        };
        let mut node_args = options.node_args.clone();
        let mut node_env = options.node_env.clone();
        if options.s3_media {
            let server = crate::s3::S3Server::start()?;
            // The test's own settings (say, a part size) win over these.
            node_args.splice(0..0, server.node_args());
            node_env.push(server.secret_env());
            cluster.s3 = Some(server);
        }
        // Pages served by one node may open WebSockets on the others (a browser failing over).
        let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let origins: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        for (index, port) in ports.iter().copied().enumerate() {
            let redis_url = if options.proxied_redis.contains(&index) {
                let proxy = TcpProxy::start(cluster.redis.port).await?;
                let url = format!("redis://{}", proxy.addr);
                cluster.redis_proxies.insert(index, proxy);
                url
            } else {
                cluster.redis_url()
            };
            let mut args = vec![
                ("node-name".to_string(), format!("n{index}")),
                ("redis-url".to_string(), redis_url),
                ("postgres-url".to_string(), cluster.postgres_url.clone()),
                ("token-secret".to_string(), cluster.secret.clone()),
                // Cheap hashes keep registration fast in tests; production keeps the defaults.
                ("argon2-memory-kib".to_string(), "256".to_string()),
                ("argon2-iterations".to_string(), "1".to_string()),
                ("send-burst".to_string(), "2000".to_string()),
                ("send-rate".to_string(), "2000".to_string()),
                ("lease-ttl-ms".to_string(), "3000".to_string()),
                ("log".to_string(), "info".to_string()),
                // Most tests exercise messaging, not friendship or group consent; the policy tests
                // (`policy.rs`, `trust.rs`, the friends tests) turn both back on, as a default server has them.
                ("require-friendship".to_string(), "false".to_string()),
                ("group-consent".to_string(), "false".to_string()),
                // A drain spreads its kicks over 1 s instead of the default 5, so the suite's many drains stay
                // quick; `failover.rs` measures the spread with a longer one.
                ("drain-spread-secs".to_string(), "1".to_string()),
                (
                    "media-dir".to_string(),
                    cluster.dir.join("media").display().to_string(),
                ),
                ("allowed-origins".to_string(), origins.join(",")),
            ];
            for (key, value) in &node_args {
                match args.iter_mut().find(|(k, _)| k == key) {
                    Some(existing) => existing.1 = value.clone(),
                    None => args.push((key.clone(), value.clone())),
                }
            }
            let node = NodeProc {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
                name: format!("n{index}"),
                child: None,
                log: cluster.dir.join(format!("node{index}.log")),
                args,
                env: node_env.clone(),
            };
            cluster.nodes.push(node);
        }
        // Build the binary once before spawning (OnceLock makes concurrent tests wait for the one build).
        tokio::task::spawn_blocking(node_binary).await??;
        for index in 0..nodes {
            cluster.start_node(index).await?;
        }
        Ok(cluster)
    }

    /// (Re)starts node `index` and waits until it is ready.
    ///
    /// The admin port was picked free when the cluster was made, but a concurrent test may take it before the node
    /// binds it: then the node exits naming it, and it is started again on another free admin port (the client port
    /// never changes: clients and proxies of the test know it).
    pub async fn start_node(&mut self, index: usize) -> anyhow::Result<()> {
        let mut attempts = 0;
        loop {
            self.nodes[index].spawn()?;
            match self.wait_ready(index, Duration::from_secs(30)).await {
                Err(_) if attempts < 3 && self.nodes[index].lost_its_admin_port() => {
                    attempts += 1;
                    self.nodes[index].admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
                }
                outcome => return outcome,
            }
        }
    }

    /// Waits until node `index` answers `/readyz` with 200 on its admin listener (plain HTTP, also when the client
    /// listener speaks TLS).
    pub async fn wait_ready(&mut self, index: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let ready =
                benchmarks::client::http_json(self.admin_addr(index), "GET", "/readyz", None)
                    .await
                    .is_ok_and(|(status, _)| status.is_success());
            if ready {
                return Ok(());
            }
            if !self.nodes[index].is_running() {
                bail!(
                    "node {index} exited during start:\n{}",
                    self.nodes[index].logs()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node {index} not ready in {limit:?}:\n{}",
                    self.nodes[index].logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `index`'s client listener (REST and WebSocket).
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.nodes[index].addr
    }

    /// Node `index`'s admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub fn admin_addr(&self, index: usize) -> SocketAddr {
        self.nodes[index].admin
    }

    /// Registers and logs in a new user (unique name per test process).
    pub async fn user(&self, prefix: &str) -> anyhow::Result<TestUser> {
        let name = format!(
            "{prefix}-user-{}",
            USER_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let password = "correct horse battery";
        let id = benchmarks::client::register(self.addr(0), &name, password).await?;
        let token = benchmarks::client::login(self.addr(0), &name, password).await?;
        Ok(TestUser { id, name, token })
    }

    /// Connects `user` as `device` to node `index` and reads its `hello`.
    pub async fn connect(
        &self,
        index: usize,
        user: &TestUser,
        device: &str,
    ) -> anyhow::Result<TestClient> {
        TestClient::connect(self.addr(index), user, device).await
    }

    /// The URL the nodes use: the Redis Cluster's in cluster mode, else the single Redis'.
    pub fn redis_url(&self) -> String {
        match &self.redis_cluster {
            Some(cluster) => cluster.url(),
            None => self.redis.url(),
        }
    }

    /// Every Redis server the nodes use (one, or each master).
    pub fn redis_ports(&self) -> Vec<u16> {
        match &self.redis_cluster {
            Some(cluster) => cluster.ports.clone(),
            None => vec![self.redis.port],
        }
    }

    /// Runs `redis-cli -c` (following cluster redirects) against the cluster's Redis and returns its output.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let port = self.redis_ports()[0].to_string();
        let output = Command::new("redis-cli")
            .args(["-c", "-p", &port])
            .args(args)
            .output();
        output
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// PUBLISH plus SPUBLISH calls served so far, summed over every Redis server.
    pub fn publish_count(&self) -> u64 {
        let mut total = 0;
        for port in self.redis_ports() {
            let output = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "INFO", "commandstats"])
                .output();
            let text = output
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for line in text.lines() {
                for prefix in ["cmdstat_publish:calls=", "cmdstat_spublish:calls="] {
                    if let Some(count) = line.strip_prefix(prefix).and_then(|r| r.split(',').next())
                    {
                        total += count.parse::<u64>().unwrap_or(0);
                    }
                }
            }
        }
        total
    }

    /// An authenticated JSON call to node `index`.
    pub async fn api(
        &self,
        index: usize,
        user: &TestUser,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let (status, value) = benchmarks::client::http_json_auth(
            self.addr(index),
            method,
            path,
            Some(&user.token),
            body,
        )
        .await?;
        Ok((status.as_u16(), value))
    }

    /// `GET /v1/users/me` with `token` on node `index`: the status (200 for a token the node accepts, 401 if not).
    pub async fn me_status(&self, index: usize, token: &str) -> anyhow::Result<u16> {
        let (status, _) = benchmarks::client::http_json_auth(
            self.addr(index),
            "GET",
            "/v1/users/me",
            Some(token),
            None,
        )
        .await?;
        Ok(status.as_u16())
    }

    /// Makes two users friends through the API (request by `a`, accept by `b`).
    pub async fn befriend(&self, a: &TestUser, b: &TestUser) -> anyhow::Result<()> {
        let (status, body) = self
            .api(
                0,
                a,
                "POST",
                "/v1/friends/requests",
                Some(serde_json::json!({"user": b.id, "note": "hi"})),
            )
            .await?;
        anyhow::ensure!(status == 201, "friend request: {status} {body}");
        let id = body["id"].as_i64().unwrap_or_default();
        let (status, body) = self
            .api(
                0,
                b,
                "POST",
                &format!("/v1/friends/requests/{id}/accept"),
                None,
            )
            .await?;
        anyhow::ensure!(status == 200, "accept: {status} {body}");
        Ok(())
    }

    /// A direct SQL connection to the cluster's database.
    pub async fn sql(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) =
            tokio_postgres::connect(&self.postgres_url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }
}
