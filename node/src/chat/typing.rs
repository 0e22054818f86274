//! The typing throttle: at most one relayed `typing` per conversation per second from one connection.
//!
//! Entries are only ever dropped once they are older than the throttle period, so no input — unknown conversation
//! ids, many conversations — can reset a conversation's throttle early. The map is bounded: a connection that
//! names more than `CAPACITY` conversations within one period has the excess dropped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::ids::ConvId;

const PERIOD: Duration = Duration::from_secs(1);
/// Conversations tracked per connection (an entry is ~24 bytes).
const CAPACITY: usize = 64;

#[derive(Default)]
pub struct TypingThrottle {
    last: HashMap<ConvId, Instant>,
}

impl TypingThrottle {
    /// Whether a `typing` for `conv` at `now` may be relayed; if so it is counted.
    pub fn admit(&mut self, conv: ConvId, now: Instant) -> bool {
        if self
            .last
            .get(&conv)
            .is_some_and(|at| now.duration_since(*at) < PERIOD)
        {
            return false;
        }
        if self.last.len() >= CAPACITY && !self.last.contains_key(&conv) {
            self.last.retain(|_, at| now.duration_since(*at) < PERIOD);
            if self.last.len() >= CAPACITY {
                return false;
            }
        }
        self.last.insert(conv, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_conversations_do_not_reset_the_throttle() {
        let mut throttle = TypingThrottle::default();
        let start = Instant::now();
        assert!(throttle.admit(1, start));
        for junk in 1000..1000 + 10 * CAPACITY as i64 {
            throttle.admit(junk, start + Duration::from_millis(10));
            assert!(!throttle.admit(1, start + Duration::from_millis(20)));
        }
        assert!(throttle.admit(1, start + PERIOD));
    }

    #[test]
    fn bounded() {
        let mut throttle = TypingThrottle::default();
        let start = Instant::now();
        for conv in 0..1000 {
            throttle.admit(conv, start);
        }
        assert!(throttle.last.len() <= CAPACITY);
        assert!(throttle.admit(5000, start + PERIOD));
    }
}
