//! The multi-process test harness: throwaway Redis and Postgres servers from the system's binaries, real node
//! processes, and a test client that keeps the protocol's client-side rules (dedup by id, sync on gaps).
//!
//! Postgres is started once per test process (initdb costs about a second) and every cluster gets its own
//! database; Redis and the nodes are per cluster. Every child process is started with a parent-death signal, so
//! nothing outlives the test run even when a test panics or the runner is killed.

pub mod checker;
pub mod client;
pub mod haproxy;
pub mod observe;
pub mod probe;
pub mod procs;
pub mod proxy;
pub mod resp;
pub mod s3;
pub mod tls;
pub mod tls_backends;
pub mod traffic;

pub use client::TestClient;
pub use procs::{Cluster, ClusterOptions, TestUser};
