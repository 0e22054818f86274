//! Identifiers and the rules a client-chosen identifier must follow.
//!
//! Server-made identifiers (users, conversations, messages, sequence numbers) are 64-bit signed integers because
//! that is what Postgres `bigint` stores; they are always positive. Client-chosen ones (device ids, `cid`
//! idempotency keys) are short strings checked here, once, before anything stores or routes them.

/// A registered user.
pub type UserId = i64;
/// A conversation (1:1 or group); messages are keyed by `(ConvId, Seq)`.
pub type ConvId = i64;
/// A message's globally unique id; clients drop duplicates by it.
pub type MsgId = i64;
/// Position of a message inside its conversation: strictly increasing, never reused, gaps possible.
pub type Seq = i64;

/// Longest accepted device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Longest accepted client idempotency key (`cid`), in bytes.
pub const MAX_CID_LEN: usize = 64;

/// A device id is 1..=64 characters of `[A-Za-z0-9_.-]`; it is used in Redis hash fields and log lines, so nothing
/// else is allowed in.
pub fn is_valid_device_id(device: &str) -> bool {
    is_token_like(device, MAX_DEVICE_ID_LEN)
}

/// The platforms a device may name when it connects (`platform=` on `/v1/ws`); anything else is refused.
pub const PLATFORMS: &[&str] = &["web", "desktop", "android", "ios", "other"];

/// A `cid` follows the same alphabet as a device id (UUIDs, ULIDs and decimal counters all fit).
pub fn is_valid_cid(cid: &str) -> bool {
    is_token_like(cid, MAX_CID_LEN)
}

fn is_token_like(value: &str, max_len: usize) -> bool {
    !value.is_empty()
        && value.len() <= max_len
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_cid_rules() {
        assert!(is_valid_device_id("phone-1"));
        assert!(is_valid_cid("01HZX3.abc_9"));
        assert!(!is_valid_device_id(""));
        assert!(!is_valid_device_id("a b"));
        assert!(!is_valid_cid(&"x".repeat(65)));
        assert!(is_valid_cid(&"x".repeat(64)));
        assert!(!is_valid_cid("é"));
    }
}
