//! Who a client is: password hashing and signed tokens (`auth`), the login throttle against guessing
//! (`login_throttle`), and token revocation shared by every node (`revocation`). The REST handlers of accounts
//! (register, log in, log out) are `rest::accounts`.
//!
//! Nothing here knows about conversations or messages.

pub mod auth;
pub mod login_throttle;
pub mod revocation;
