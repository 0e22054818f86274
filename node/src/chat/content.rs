//! Content rules: what a message of each kind may carry, and which text every path that writes refuses.
//!
//! Everything Postgres would refuse is refused here, before a message reaches the writer's shared batch: one
//! client's bad input must never fail a batch that carries other users' messages (the writer still splits a batch
//! that fails with a data error, as a backstop). Refusals are non-retryable and name the field.

use common::frame::{kinds, Attrs, Send};
use common::ids::UserId;
use common::ErrorCode;
use deadpool_postgres::Pool;
use tracing::warn;

use super::Refusal;

pub const MAX_EMOJI_BYTES: usize = 64;
pub const MAX_CAPTION_BYTES: usize = 1024;
pub const MAX_FILE_NAME_BYTES: usize = 255;
pub const MAX_CUSTOM_TYPE_BYTES: usize = 64;
pub const MAX_MEMO_BYTES: usize = 256;

/// Why a text cannot be stored, if it cannot: Postgres `text` and `jsonb` hold no U+0000.
pub fn storable_text(field: &str, value: &str) -> Result<(), Refusal> {
    if value.contains('\0') {
        return Err(Refusal::new(
            ErrorCode::InvalidRequest,
            format!("{field} contains U+0000, which cannot be stored"),
        ));
    }
    Ok(())
}

/// Bidirectional formatting characters (embeddings, overrides, isolates, marks): in a name they make text render
/// in an order other than the one stored, which lets one user impersonate another.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{061C}')
}

/// A name shown to other users (display names, group titles, file names): no control and no bidi characters.
pub fn is_displayable_name(value: &str) -> bool {
    !value.chars().any(|c| c.is_control() || is_bidi_control(c))
}

fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn too_long(what: &str, len: usize, max: usize) -> Refusal {
    Refusal::new(
        ErrorCode::LimitExceeded,
        format!("{what} of {len} bytes exceeds the limit of {max}"),
    )
}

/// Checks a `send`'s kind, body and attributes against the kind's rules; returns the attributes to store. Media
/// messages look their upload up (the sender must be able to see it).
pub async fn check_send(
    pool: &Pool,
    max_body: usize,
    user: UserId,
    send: &Send,
) -> Result<Option<Attrs>, Refusal> {
    storable_text("body", &send.body)?;
    let attrs = send.attrs.clone().unwrap_or_default();
    match send.kind.as_str() {
        kinds::TEXT => {
            if send.body.is_empty() {
                return Err(Refusal::new(
                    ErrorCode::InvalidRequest,
                    "a text message needs a body",
                ));
            }
            if send.body.len() > max_body {
                return Err(too_long("body", send.body.len(), max_body));
            }
            Ok(None)
        }
        kinds::EMOJI => {
            if send.body.is_empty() || send.body.len() > MAX_EMOJI_BYTES {
                return Err(Refusal::new(
                    ErrorCode::InvalidRequest,
                    format!("an emoji code is 1-{MAX_EMOJI_BYTES} bytes"),
                ));
            }
            Ok(None)
        }
        kinds::IMAGE | kinds::FILE => check_media(pool, user, send, attrs).await,
        kinds::CUSTOM => {
            if send.body.len() > max_body {
                return Err(too_long("body", send.body.len(), max_body));
            }
            let Some(custom_type) = attrs
                .custom_type
                .filter(|t| !t.is_empty() && t.len() <= MAX_CUSTOM_TYPE_BYTES)
            else {
                return Err(Refusal::new(
                    ErrorCode::InvalidRequest,
                    format!("attrs.custom_type must be 1-{MAX_CUSTOM_TYPE_BYTES} bytes"),
                ));
            };
            storable_text("attrs.custom_type", &custom_type)?;
            if let Some(memo) = &attrs.memo {
                if memo.len() > MAX_MEMO_BYTES {
                    return Err(Refusal::new(
                        ErrorCode::LimitExceeded,
                        format!("attrs.memo is at most {MAX_MEMO_BYTES} bytes"),
                    ));
                }
                storable_text("attrs.memo", memo)?;
            }
            Ok(Some(Attrs {
                custom_type: Some(custom_type),
                memo: attrs.memo,
                amount: attrs.amount,
                ..Attrs::default()
            }))
        }
        other => Err(Refusal::new(
            ErrorCode::InvalidRequest,
            format!(
                "unknown kind {other:?}; clients may send {}",
                kinds::CLIENT_KINDS.join(", ")
            ),
        )),
    }
}

async fn check_media(
    pool: &Pool,
    user: UserId,
    send: &Send,
    attrs: Attrs,
) -> Result<Option<Attrs>, Refusal> {
    if send.body.len() > MAX_CAPTION_BYTES {
        return Err(too_long("caption", send.body.len(), MAX_CAPTION_BYTES));
    }
    let Some(hash) = attrs.media.filter(|h| is_sha256_hex(h)) else {
        return Err(Refusal::new(
            ErrorCode::InvalidRequest,
            "attrs.media must be the SHA-256 (hex) of an upload",
        ));
    };
    let name = attrs.name.filter(|n| !n.is_empty());
    if let Some(name) = &name {
        if name.len() > MAX_FILE_NAME_BYTES {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!("file names are at most {MAX_FILE_NAME_BYTES} bytes"),
            ));
        }
        storable_text("attrs.name", name)?;
        if !is_displayable_name(name) {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                "attrs.name may not contain control or bidirectional-override characters",
            ));
        }
    }
    let found = crate::storage::media_meta::accessible_media(pool, &hash, user)
        .await
        .map_err(|error| {
            warn!(%error, "media lookup failed");
            Refusal::unavailable()
        })?;
    let Some((size, mime)) = found else {
        return Err(Refusal::new(
            ErrorCode::UnknownMedia,
            "no such upload (upload it first)",
        ));
    };
    if send.kind == kinds::IMAGE && !mime.starts_with("image/") {
        return Err(Refusal::new(
            ErrorCode::InvalidRequest,
            format!("an image message needs an image, not {mime}"),
        ));
    }
    Ok(Some(Attrs {
        media: Some(hash),
        name,
        size: Some(size),
        mime: Some(mime),
        ..Attrs::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_refused_and_named() {
        let refusal = storable_text("attrs.memo", "a\0b").unwrap_err();
        assert_eq!(refusal.code, ErrorCode::InvalidRequest);
        assert!(refusal.message.contains("attrs.memo"));
        assert!(storable_text("body", "ordinary text, emoji 🙂").is_ok());
    }

    #[test]
    fn names_refuse_controls_and_bidi_overrides() {
        assert!(is_displayable_name("Zoë Ångström 李"));
        assert!(!is_displayable_name("evil\u{202E}gnp.exe"));
        assert!(!is_displayable_name("tab\there"));
        assert!(!is_displayable_name("iso\u{2066}late"));
        assert!(!is_displayable_name("nul\0"));
    }
}
