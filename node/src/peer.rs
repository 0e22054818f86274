//! The client's address as a request carries it.

use std::net::SocketAddr;

/// The client's address, put into each request's extensions by the accept loop (the PROXY header's client behind a
/// trusted proxy) and refined by `observe::access` (`X-Forwarded-For` from trusted proxies).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);
