//! `imbench`'s library half: a protocol client built only on `common`, used by the load generator and by the
//! multi-process tests, so both speak the wire protocol exactly as a third-party client would.

pub mod client;
