//! What on-call sees of a node: its logs, its metrics and the admin listener that serves them.
//!
//! - `logging` installs the log subscriber: JSON lines (or text on a terminal), never colour codes in a file.
//! - `access` is the client router's outermost layer: a request id and span per REST call, the access log line,
//!   and the REST request metrics; it also applies `X-Forwarded-For` from trusted proxies (`peer.rs`).
//! - `catalogue` describes every metric family once at start, so each has a `# HELP` line.
//! - `admin` is the separate listener for `/metrics`, `/healthz` and `/readyz`, with the process and Postgres
//!   pool gauges refreshed on every scrape.
//!
//! Nothing here decides anything about chat traffic; it only records and reports.

pub mod access;
pub mod admin;
pub mod catalogue;
pub mod logging;
