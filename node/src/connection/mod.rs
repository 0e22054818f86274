//! WebSocket connections: `upgrade` authenticates and registers a device before answering 101, `session` runs
//! the connection until it closes.

pub mod echo;
pub mod frames;
pub mod inbound;
pub mod session;
pub mod upgrade;
