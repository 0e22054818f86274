//! The multi-process suite: every test starts real Redis, uses the shared real Postgres, and runs real nodes.

mod abuse;
mod chat;
mod conformance;
mod failover;
mod faults;
mod handshake;
mod http;
mod media;
mod messaging;
mod observability;
mod openapi;
mod ops;
mod protocol;
mod proxy;
mod redis_cluster;
mod security;
mod web;
