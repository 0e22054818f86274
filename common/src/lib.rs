//! The wire protocol shared by the node, the benchmarks and any Rust client.
//!
//! This crate owns the frame types (`frame`), the byte-level codec with its hard limits (`codec`), identifier
//! rules (`ids`) and the stable error and close codes (`error`). It must not depend on any other crate of the
//! workspace, nor do any I/O: everything here is pure functions over bytes, so it can be fuzzed and property-tested
//! in isolation.

pub mod codec;
pub mod error;
pub mod frame;
pub mod ids;
mod msgpack_limits;

pub use codec::{decode, encode, CodecError, Limits};
pub use error::{close_code, ErrorCode, KickReason};
pub use frame::{ClientFrame, ServerFrame};
