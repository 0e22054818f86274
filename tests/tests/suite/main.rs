//! The multi-process suite: every test starts real Redis, uses the shared real Postgres, and runs real nodes.

mod conformance;
mod failover;
mod faults;
mod http;
mod messaging;
mod protocol;
mod security;
