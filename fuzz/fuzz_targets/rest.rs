//! libFuzzer target: the node's REST and upgrade input parsers (`node::rest::input`), token verification through the
//! `Authenticator`'s public API, and upload thumbnails, on arbitrary bytes. The first byte picks the parser, the rest
//! is its input. Nothing may panic, and what a parser accepts must keep its rule. The stable twin is
//! `node/tests/fuzz_rest.rs`.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::Uri;
use libfuzzer_sys::fuzz_target;
use node::rest::{conversations, friends, groups, profiles};
use node::identity::auth::Authenticator;
use node::rest::input;

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        Authenticator::new(
            "fuzz-secret-fuzz-secret-fuzz-secret",
            Duration::from_secs(3600),
            256,
            1,
        )
        .expect("valid fuzz settings")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match selector % 6 {
        0 => {
            if let Some(token) = input::bearer_token(Some(rest)) {
                assert_eq!(format!("Bearer {token}").as_bytes(), rest);
            }
            if let Ok(mime) = input::upload_media_type(Some(rest)) {
                assert!(node::storage::media::ALLOWED_TYPES.contains(&mime));
            }
            if let Ok(hash) = input::media_hash(&text) {
                assert_eq!(hash.len(), 64);
            }
            if let Ok(title) = input::group_title(&text) {
                assert!((1..=64).contains(&title.chars().count()));
            }
            if let Ok(device) = input::device_id(Some(&text)) {
                assert!(common::ids::is_valid_device_id(device));
            }
            if let Ok(platform) = input::platform(Some(&text)) {
                assert!(common::ids::PLATFORMS.contains(&platform));
            }
            assert!(input::user_list(&text, 500).len() <= 500);
        }
        1 => {
            if let Ok(uri) = format!("/v1/x?{text}").parse::<Uri>() {
                let _ = input::query::<conversations::ListQuery>(&uri);
                let _ = input::query::<conversations::HistoryQuery>(&uri);
                let _ = input::query::<conversations::ReadsQuery>(&uri);
                let _ = input::query::<profiles::Search>(&uri);
                let _ = input::query::<profiles::PresenceQuery>(&uri);
                let _ = input::query::<HashMap<String, String>>(&uri);
            }
        }
        2 => {
            let _ = input::json::<node::rest::accounts::Credentials>(rest);
            let _ = input::json::<groups::NewGroup>(rest);
            let _ = input::json::<groups::AddMembers>(rest);
            let _ = input::json::<groups::Rename>(rest);
            let _ = input::json::<groups::Transfer>(rest);
            let _ = input::json::<friends::NewRequest>(rest);
            let _ = input::json::<profiles::ProfileUpdate>(rest);
        }
        3 => {
            // Arbitrary text as a token: only a token we issued verifies.
            let _ = authenticator().verify(&text);
        }
        4 => {
            // A real token with the input spliced over its tail: never another user.
            let (token, _) = authenticator().issue(42);
            let keep = usize::from(rest.first().copied().unwrap_or(0)) % (token.len() + 1);
            let spliced = format!(
                "{}{}",
                &token[..keep],
                String::from_utf8_lossy(rest.get(1..).unwrap_or_default())
            );
            if let Ok(claims) = authenticator().verify(&spliced) {
                assert_eq!(claims.user, 42);
            }
        }
        _ => {
            if let Some(thumb) = node::storage::media::thumbnail(rest) {
                assert!(!thumb.is_empty());
            }
        }
    }
});
