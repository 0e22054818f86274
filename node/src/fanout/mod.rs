//! Getting committed messages and events to devices: this node's devices and its cluster delivery (`delivery`),
//! the cached member lists that route conversations (`members`), and the offline push webhook (`push`).
//!
//! Fan-out never decides who may see what: it delivers what the writer committed and what the chat policy allowed.

pub mod delivery;
pub mod members;
pub mod push;
