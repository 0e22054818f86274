//! The node's whole configuration: one struct, every field a flag with an `IM_*` environment variable and a default.
//!
//! Nothing else in the node reads the environment. `validate` runs before any port is bound, so a bad setting stops
//! the process with a message instead of surfacing later as a strange failure.

use std::net::SocketAddr;

mod backend_tls;
mod s3;
mod validate;

pub use backend_tls::BackendTlsArgs;
pub use s3::S3Settings;

use clap::Parser;

use crate::observe::logging::LogFormat;
use crate::peer::TrustedProxies;

/// A node of the clustered IM server.
#[derive(Debug, Clone, Parser)]
#[command(name = "node", version, about)]
pub struct Config {
    /// Without a subcommand the node serves clients.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on for clients: REST and WebSocket.
    #[arg(long, env = "IM_LISTEN", default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,

    /// Address of the admin listener, which serves only `/metrics`, `/healthz` and `/readyz` (plain HTTP). Reach it
    /// from probes and Prometheus inside the cluster; never publish it.
    #[arg(long, env = "IM_ADMIN_LISTEN", default_value = "0.0.0.0:9464")]
    pub admin_listen: SocketAddr,

    /// A human-readable name for this node, used in logs and the `hello` frame. The cluster identity is this name
    /// plus a random suffix, so a restarted node never inherits its predecessor's registrations.
    #[arg(long, env = "IM_NODE_NAME", default_value = "node")]
    pub node_name: String,

    /// Redis URL (redis://[user:pass@]host:port/db); `rediss://` for TLS (see `--redis-ca-file`), and
    /// `redis-cluster://` / `rediss-cluster://` for a Redis Cluster.
    #[arg(
        long,
        env = "IM_REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Postgres connection string (key=value or postgres:// URL). Its `sslmode` (`disable`, `prefer` (default),
    /// `require`, `verify-ca`, `verify-full`) says whether TLS is used and what is checked; see
    /// `--postgres-ca-file`.
    #[arg(
        long,
        env = "IM_POSTGRES_URL",
        hide_env_values = true,
        default_value = "host=127.0.0.1 port=5432 user=im dbname=im"
    )]
    pub postgres_url: String,

    /// Whether a starting node applies pending migrations. With `false` (migrations run by `node migrate`, e.g. a
    /// Kubernetes Job) the node waits up to a minute for the schema it needs and then exits with a message.
    #[arg(long, env = "IM_RUN_MIGRATIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_migrations: bool,

    /// Longest a migration waits for a table lock, in seconds; then it fails (and is retried) instead of queueing
    /// every query of the running nodes behind it.
    #[arg(long, env = "IM_MIGRATION_LOCK_TIMEOUT_SECS", default_value_t = 10)]
    pub migration_lock_timeout_secs: u64,

    /// Longest one migration statement may run, in seconds.
    #[arg(
        long,
        env = "IM_MIGRATION_STATEMENT_TIMEOUT_SECS",
        default_value_t = 300
    )]
    pub migration_statement_timeout_secs: u64,

    /// Size of the Postgres connection pool (the writer uses one connection; sync, accounts and hello the rest).
    #[arg(long, env = "IM_POSTGRES_POOL", default_value_t = 16)]
    pub postgres_pool: usize,

    /// Secret for signing session tokens; every node of a cluster needs the same one. At least 32 bytes. Needed
    /// to serve unless `--token-keys` is set; `node migrate` does not need it.
    #[arg(
        long,
        env = "IM_TOKEN_SECRET",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub token_secret: String,

    /// Token keys with ids, `id:secret,id:secret` (each secret at least 32 bytes): the first signs new tokens,
    /// every listed key verifies. Rotate by putting a new key first, waiting one token lifetime, then removing the
    /// old one; nobody is logged out. Replaces `--token-secret` when set.
    #[arg(
        long,
        env = "IM_TOKEN_KEYS",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub token_keys: String,

    /// How long a session token stays valid, in seconds.
    #[arg(long, env = "IM_TOKEN_TTL_SECS", default_value_t = 86_400)]
    pub token_ttl_secs: u64,

    /// Argon2 memory cost in KiB for password hashes (OWASP's minimum recommendation is 19456).
    #[arg(long, env = "IM_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,

    /// Argon2 iterations.
    #[arg(long, env = "IM_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Node lease time-to-live in milliseconds; refreshed every third of it. A node silent for longer is dead.
    #[arg(long, env = "IM_LEASE_TTL_MS", default_value_t = 6_000)]
    pub lease_ttl_ms: u64,

    /// Timeout of one Redis command, in milliseconds.
    #[arg(long, env = "IM_REDIS_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_timeout_ms: u64,

    /// Capacity of the Redis pub/sub receive buffer (messages); overflow is counted and recovered through sync.
    #[arg(long, env = "IM_PUBSUB_BUFFER", default_value_t = 65_536)]
    pub pubsub_buffer: usize,

    /// Largest WebSocket message accepted, in bytes (also the cap on a reassembled fragmented message). Larger:
    /// close 1009.
    #[arg(long, env = "IM_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Largest frame body after zstd decompression, in bytes.
    #[arg(long, env = "IM_MAX_DECOMPRESSED_BYTES", default_value_t = 256 * 1024)]
    pub max_decompressed_bytes: usize,

    /// Deepest MessagePack nesting accepted.
    #[arg(long, env = "IM_MAX_DEPTH", default_value_t = 16)]
    pub max_depth: usize,

    /// Most entries in one MessagePack array or map.
    #[arg(long, env = "IM_MAX_COLLECTION_LEN", default_value_t = 1024)]
    pub max_collection_len: usize,

    /// Longest message body, in bytes of UTF-8.
    #[arg(long, env = "IM_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// Server frames whose MessagePack body is at least this many bytes are zstd-compressed (when that makes them
    /// smaller). Measured: below ~200 bytes zstd without a dictionary makes chat frames bigger.
    #[arg(long, env = "IM_COMPRESS_THRESHOLD", default_value_t = 256)]
    pub compress_threshold: usize,

    /// Frames queued for one connection before it is disconnected as a slow consumer.
    #[arg(long, env = "IM_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Seconds between server WebSocket pings.
    #[arg(long, env = "IM_PING_INTERVAL_SECS", default_value_t = 20)]
    pub ping_interval_secs: u32,

    /// A connection that sends nothing (pongs included) for this many seconds is closed.
    #[arg(long, env = "IM_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u32,

    /// Seconds a client has to send its HTTP request head (and, with TLS, to finish the TLS handshake first); a
    /// slower one is disconnected without an answer.
    #[arg(long, env = "IM_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,

    /// Largest HTTP request head (request line plus headers) accepted, in bytes; larger: 431 and the connection is
    /// closed.
    #[arg(long, env = "IM_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Most WebSocket connections one user may hold on this node (counted per node, not cluster-wide); past it the
    /// upgrade is refused with 429. A device connecting again replaces its connection and does not count twice.
    #[arg(long, env = "IM_MAX_CONNS_PER_USER", default_value_t = 32)]
    pub max_conns_per_user: usize,

    /// Most WebSocket connections this node holds; past it upgrades are refused with 429. Keep it below the
    /// process' file-descriptor limit minus what REST, Redis and Postgres need.
    #[arg(long, env = "IM_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// Seconds between re-checks of every live connection's token against the shared revocation list (the bound
    /// on how late a revocation closes a connection when its bus announcement was lost), and how long a node
    /// trusts a cached token check.
    #[arg(long, env = "IM_REVOCATION_RECHECK_SECS", default_value_t = 30)]
    pub revocation_recheck_secs: u64,

    /// PEM file with the TLS certificate chain. With `--tls-key`, the listener speaks TLS only (`https://`,
    /// `wss://`); without both, plain TCP (put a TLS-terminating proxy in front).
    #[arg(long, env = "IM_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM file with the TLS private key (PKCS#8, PKCS#1 or SEC1) for `--tls-cert`.
    #[arg(long, env = "IM_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,

    /// TLS to Postgres, Redis and the push webhook: CA files and client certificates.
    #[command(flatten)]
    pub backend_tls: BackendTlsArgs,

    /// Proxies whose word on the client's address is believed, comma-separated IP addresses or CIDR networks (e.g.
    /// `10.0.0.0/8,192.0.2.7`): their `X-Forwarded-For` (walked from the right, up to the first untrusted hop),
    /// their PROXY v2 header (with `--proxy-protocol`) and their `X-Request-Id`. Empty: every peer is a client.
    #[arg(long, env = "IM_TRUSTED_PROXIES", default_value = "", value_parser = TrustedProxies::parse)]
    pub trusted_proxies: TrustedProxies,

    /// Expect a PROXY protocol v2 header at the start of every connection from a `--trusted-proxies` peer (HAProxy
    /// `send-proxy-v2`); such a connection without a valid header is closed. Other peers are served as direct
    /// clients.
    #[arg(long, env = "IM_PROXY_PROTOCOL", default_value_t = false, action = clap::ArgAction::Set)]
    pub proxy_protocol: bool,

    /// Sends (and recalls) per second one user may make on this node, sustained; the user's devices on the node
    /// share it. Over it: `error{rate_limited}`, nothing stored.
    #[arg(long, env = "IM_SEND_RATE", default_value_t = 50.0)]
    pub send_rate: f64,

    /// Sends one user may make on this node in a burst above the sustained rate.
    #[arg(long, env = "IM_SEND_BURST", default_value_t = 200.0)]
    pub send_burst: f64,

    /// Sends refused for rate within `--send-strike-window-secs` after which the connection is closed (1008).
    #[arg(long, env = "IM_SEND_STRIKES", default_value_t = 100)]
    pub send_strikes: u32,

    /// Length of the window in which rate refusals are counted towards a close, in seconds.
    #[arg(long, env = "IM_SEND_STRIKE_WINDOW_SECS", default_value_t = 10)]
    pub send_strike_window_secs: u64,

    /// Writer transactions in flight at most, each on its own Postgres connection (a sender's messages are never in
    /// two at once). One transaction is one Postgres backend, so one core of the database server.
    #[arg(long, env = "IM_WRITERS", default_value_t = 4)]
    pub writers: usize,

    /// Most messages committed in one writer transaction.
    #[arg(long, env = "IM_WRITER_BATCH_ROWS", default_value_t = 1000)]
    pub writer_batch_rows: usize,

    /// Longest a message waits for its batch while another writer transaction is in flight, in microseconds (with
    /// none in flight a batch leaves at once).
    #[arg(long, env = "IM_WRITER_FLUSH_US", default_value_t = 1000)]
    pub writer_flush_us: u64,

    /// Messages waiting for the writer before senders are slowed down.
    #[arg(long, env = "IM_WRITER_QUEUE", default_value_t = 20_000)]
    pub writer_queue: usize,

    /// Platforms on which a user keeps one login at a time ("one session per platform"): a device connecting with
    /// a new login moves the user's devices of an older login on the same platform out (`kick{replaced}`, and that
    /// login's token is revoked). Comma-separated among web, desktop, android, ios, other; empty: off. Each user
    /// may override it (`PUT /v1/devices/policy`).
    #[arg(
        long,
        env = "IM_ONE_SESSION_PLATFORMS",
        value_delimiter = ',',
        default_value = "android,ios"
    )]
    pub one_session_platforms: Vec<String>,

    /// Most conversations listed in the `hello` frame.
    #[arg(long, env = "IM_HELLO_CONVERSATIONS", default_value_t = 1000)]
    pub hello_conversations: i64,

    /// Most messages one `sync` returns.
    #[arg(long, env = "IM_MAX_SYNC_LIMIT", default_value_t = 500)]
    pub max_sync_limit: u32,

    /// Seconds a draining node waits for connections to close and the writer to flush before it exits anyway.
    #[arg(long, env = "IM_DRAIN_GRACE_SECS", default_value_t = 10)]
    pub drain_grace_secs: u64,

    /// Seconds over which a draining node closes its connections, in equal slices every 100 ms, so the other nodes
    /// take the reconnect-and-sync wave a slice at a time. 0 closes them all at once. Must be below
    /// `--drain-grace-secs` (the rest of the grace lets the writer commit what is queued).
    #[arg(long, env = "IM_DRAIN_SPREAD_SECS", default_value_t = 5)]
    pub drain_spread_secs: u64,

    /// Serve `GET /v1/echo`, an unauthenticated WebSocket echo for protocol-conformance runs (Autobahn). Never in
    /// production.
    #[arg(long, env = "IM_CONFORMANCE_ECHO", default_value_t = false)]
    pub conformance_echo: bool,

    /// Browser origins allowed to open WebSockets, comma-separated (e.g. `https://chat.example.com`); `*` allows
    /// any. The node's own origin (pages it served) is always allowed. An upgrade that carries any other `Origin` is
    /// refused (403); one without `Origin` (a native client, not a browser) is not affected.
    #[arg(long, env = "IM_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Failed logins for one username, cluster-wide, before its logins are refused (429) for the rest of the window.
    #[arg(long, env = "IM_LOGIN_MAX_FAILURES_PER_USER", default_value_t = 10)]
    pub login_max_failures_per_user: i64,

    /// Failed logins from one client address, cluster-wide, before its logins are refused for the rest of the window.
    #[arg(long, env = "IM_LOGIN_MAX_FAILURES_PER_IP", default_value_t = 100)]
    pub login_max_failures_per_ip: i64,

    /// Length of the login-failure window, in seconds, counted from the first failure.
    #[arg(long, env = "IM_LOGIN_FAILURE_WINDOW_SECS", default_value_t = 900)]
    pub login_failure_window_secs: u64,
    /// Whether 1:1 messages require the two users to be friends.
    #[arg(long, env = "IM_REQUIRE_FRIENDSHIP", default_value_t = true, action = clap::ArgAction::Set)]
    pub require_friendship: bool,
    /// Whether adding someone to a group needs their consent: friends (no block either way) are added directly,
    /// anyone else is invited and joins only by accepting. Without it anyone not blocked either way is added.
    #[arg(long, env = "IM_GROUP_CONSENT", default_value_t = true, action = clap::ArgAction::Set)]
    pub group_consent: bool,

    /// How long after sending a user may recall a message, in seconds (group admins may recall any message).
    #[arg(long, env = "IM_RECALL_WINDOW_SECS", default_value_t = 120)]
    pub recall_window_secs: i64,

    /// Most members a group may have.
    #[arg(long, env = "IM_GROUP_MEMBER_CAP", default_value_t = 2000)]
    pub group_member_cap: i64,

    /// Where media bytes are stored: `postgres` (chunks in the database every node uses, so any node serves any
    /// medium), `s3` (an S3-compatible object store, the `--s3-*` settings) or `local` (the folder `--media-dir`,
    /// right only for one node or a folder all nodes share).
    #[arg(long, env = "IM_MEDIA_STORE", value_enum, default_value_t = MediaStoreKind::Postgres)]
    pub media_store: MediaStoreKind,

    /// Size of one stored chunk of a medium in the `postgres` media store, in bytes.
    #[arg(long, env = "IM_MEDIA_CHUNK_BYTES", default_value_t = 256 * 1024)]
    pub media_chunk_bytes: usize,

    /// Folder of the `local` media store (content-addressed by SHA-256); unused by the `postgres` store.
    #[arg(long, env = "IM_MEDIA_DIR", default_value = "data/media")]
    pub media_dir: std::path::PathBuf,

    #[command(flatten)]
    pub s3: S3Settings,

    /// Largest accepted upload, in bytes.
    #[arg(long, env = "IM_MAX_MEDIA_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_media_bytes: usize,

    /// Upload thumbnails decoded at once; each may use up to 256 MiB while decoding. Further image uploads wait.
    #[arg(long, env = "IM_THUMBNAIL_CONCURRENCY", default_value_t = 2)]
    pub thumbnail_concurrency: usize,

    /// Offline push webhook (`https://…`, checked against `--push-ca-file` or the system's trust store; `http://`
    /// works but sends message previews in the clear, and is warned about at start): called with batches of JSON
    /// when a recipient has no online device. Off when empty.
    #[arg(
        long,
        env = "IM_PUSH_WEBHOOK_URL",
        hide_env_values = true,
        default_value = ""
    )]
    pub push_webhook_url: String,

    /// Most events in one webhook call.
    #[arg(long, env = "IM_PUSH_BATCH", default_value_t = 100)]
    pub push_batch: usize,

    /// Timeout of one webhook call, in milliseconds.
    #[arg(long, env = "IM_PUSH_TIMEOUT_MS", default_value_t = 2000)]
    pub push_timeout_ms: u64,

    /// Retries of a failed webhook call.
    #[arg(long, env = "IM_PUSH_RETRIES", default_value_t = 3)]
    pub push_retries: u32,

    /// Folder of the built web app (`web/dist`), served at `/`; skipped with a log line when missing.
    #[arg(long, env = "IM_WEB_DIR", default_value = "web/dist")]
    pub web_dir: std::path::PathBuf,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `node=debug,info`; `access=warn` silences the
    /// access log.
    #[arg(long, env = "IM_LOG", default_value = "info")]
    pub log: String,

    /// Log format: `json` (one object per line), `text`, or `auto`: json when standard output is not a terminal.
    /// Colour codes only on a terminal.
    #[arg(long, env = "IM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

/// What the binary does besides serving.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Apply pending database migrations (under `--migration-lock-timeout-secs` and
    /// `--migration-statement-timeout-secs`) and exit: 0 when the schema is current. Reads the same `IM_*`
    /// settings as the node; only `IM_POSTGRES_URL` matters.
    Migrate,
    /// Media maintenance.
    #[command(subcommand)]
    Media(MediaCommand),
}

/// `node media …`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum MediaCommand {
    /// Copy the media of an old `local` media folder into the configured store (`--media-store` and its
    /// settings, read like the node's), checking each file's SHA-256 and size against Postgres' record of it.
    /// Idempotent: what the store already holds is skipped. Prints the counts; exits 1 if any file did not match.
    Import {
        /// The `local` store's folder (`<dir>/<2 hex digits>/<hash>`, thumbnails as `<hash>.thumb.png`).
        #[arg(long)]
        from: std::path::PathBuf,
    },
}

/// Where media bytes live (`--media-store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MediaStoreKind {
    Postgres,
    Local,
    S3,
}
