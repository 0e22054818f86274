//! Who a client is: accounts (register, log in with a throttle against guessing, log out), password hashing and
//! signed tokens (`auth`), and token revocation shared by every node (`revocation`).
//!
//! Nothing here knows about conversations or messages.

pub mod accounts;
pub mod auth;
pub mod revocation;
