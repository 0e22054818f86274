//! The multi-process suite: every test starts real Redis, uses the shared real Postgres, and runs real nodes.

mod abuse;
mod chat;
mod conformance;
mod deployment;
mod devices;
mod failover;
mod faults;
mod handshake;
mod http;
mod logouts;
mod media;
mod messaging;
mod observability;
mod openapi;
mod ops;
mod policy;
mod protocol;
mod proxy;
mod redis_cluster;
mod rotation;
mod security;
mod tls;
mod trust;
mod web;
