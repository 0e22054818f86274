//! WebSocket connections: `upgrade` authenticates and registers a device before answering 101, `session` runs
//! the connection until it closes (its read loop, the `writer` task, and `handlers` for what each frame does), `frames` and `inbound` read and reassemble
//! frames under our limits, `outbox` is the connection's bounded outbound queue, `echo` the conformance endpoint.

pub mod echo;
pub mod frames;
pub mod handlers;
pub mod inbound;
pub mod outbox;
pub mod session;
pub mod upgrade;
pub mod writer;
