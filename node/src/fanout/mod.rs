//! Getting committed messages and events to devices: this node's devices (`local`), delivery anywhere in the cluster
//! (`delivery`), the task that fans out the writer's committed batches (`committed`), the inbox of what other nodes
//! published (`bus_inbox`), the cached member lists that route conversations (`members`), and the offline push
//! webhook (`push`); `revoked` closes connections whose token was revoked; `logouts` ends logins from elsewhere (a
//! revocation announced to every node, devices moved out by their owner or by the one-session-per-platform policy);
//! `drain` closes them all in waves when the node shuts down.
//!
//! Fan-out never decides who may see what: it delivers what the writer committed and what the chat policy allowed.

pub mod bus_inbox;
pub mod committed;
pub mod delivery;
pub mod drain;
pub mod local;
pub mod logouts;
pub mod members;
pub mod push;
pub mod revoked;
