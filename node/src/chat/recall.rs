//! Who may recall which message: your own within the recall window (`--recall-window-secs`), and group owners and
//! admins any message of their group; never a server message, a recall, or a message already recalled. Recalling
//! is allowed whatever the 1:1 relationship is now (taking back your own words is always allowed); membership is
//! checked by the lookup of the target.

use common::frame::kinds;
use common::ids::UserId;
use common::ErrorCode;

use crate::clock::now_ms;
use crate::error::Refusal;
use crate::storage::chat::RecallTarget;
use crate::storage::queries::KIND_GROUP;

/// Whether `user` may recall `target` now.
pub fn may_recall(target: &RecallTarget, user: UserId, window_secs: i64) -> Result<(), Refusal> {
    if target.kind == kinds::SYSTEM || target.kind == kinds::RECALL || target.recalled {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "this message cannot be recalled",
        ));
    }
    let own_in_time = target.sender == user && now_ms() - target.created_ms <= window_secs * 1000;
    let group_admin = target.conv_kind == KIND_GROUP && target.role >= 1;
    if !own_in_time && !group_admin {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "only your own messages, within the recall window",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(sender: UserId, age_ms: i64, conv_kind: i16, role: i16, kind: &str) -> RecallTarget {
        RecallTarget {
            sender,
            created_ms: now_ms() - age_ms,
            recalled: false,
            kind: kind.into(),
            conv_kind,
            role,
        }
    }

    #[test]
    fn own_messages_within_the_window_and_admins_any() {
        assert!(may_recall(&target(1, 1_000, 1, 0, kinds::TEXT), 1, 120).is_ok());
        assert!(may_recall(&target(1, 200_000, 1, 0, kinds::TEXT), 1, 120).is_err());
        assert!(may_recall(&target(2, 1_000, 1, 0, kinds::TEXT), 1, 120).is_err());
        assert!(may_recall(&target(2, 200_000, KIND_GROUP, 1, kinds::TEXT), 1, 120).is_ok());
        assert!(may_recall(&target(1, 0, KIND_GROUP, 2, kinds::SYSTEM), 1, 120).is_err());
    }
}
