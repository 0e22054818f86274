//! The chat rules: who may do what in a conversation (`policy`, the one decision point), what a message may carry (`content`), how often a user may send (`rate_limit`), who may recall what (`recall`) and
//! how often typing is relayed (`typing`).
//!
//! Nothing here talks to sockets: the connection and the REST handlers ask, and answer the client with the
//! `Refusal` they get.

pub mod content;
pub mod policy;
pub mod rate_limit;
pub mod recall;
pub mod typing;

pub use crate::error::Refusal;
