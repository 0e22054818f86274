//! A randomized fuzzer for the node's REST and upgrade input parsers on stable Rust, driven by proptest.
//!
//! Everything a client controls before a handler touches the database goes through `node::rest::input` (headers, query
//! strings, path values, JSON bodies), `Authenticator::verify` (the token) or `media::thumbnail` (uploaded image
//! bytes). Inputs are built from pieces that reach deep into each parser — real tokens and JSON bodies mutated
//! byte by byte, query strings of the routes' own keys with hostile values, deep nesting, huge numbers, stray
//! UTF-8. Properties: no parser panics or takes long, and what a parser accepts keeps its documented rule.
//!
//! Quick in the suite (`IM_FUZZ_CASES`, default 1000 per target, a tenth of it for images: a few seconds). On demand, for minutes:
//! `IM_FUZZ_CASES=200000 cargo test --release -p node --test fuzz_rest -- --nocapture` (`ops/fuzz.sh` does).
//! A failure prints the minimal input (proptest shrinks it); add it to `regressions` below as a fixed case.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::Uri;
use node::identity::auth::Authenticator;
use node::rest::input;
use node::rest::{conversations, friends, groups, profiles};
use proptest::prelude::*;
use proptest::test_runner::Config;

#[path = "../../common/tests/support/edits.rs"]
mod edits;
use edits::{apply_edit, Edit};

fn cases() -> u32 {
    std::env::var("IM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Fails when one parser call took far longer than any honest input needs. Every parser here answers in well
/// under a millisecond; the bound is loose because the machine may be busy (a descheduled thread once took 0.8 s),
/// and still catches anything quadratic in the input.
fn quick(started: Instant, what: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        started.elapsed() < Duration::from_secs(2),
        "{what} took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// One byte-level edit, with pieces that mean something to the REST parsers among the insertions.
fn mutation() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        (
            any::<usize>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 1..8),
                // Pieces that mean something to the parsers.
                prop::sample::select(vec![
                    b".".to_vec(),
                    b"%".to_vec(),
                    b"%ff".to_vec(),
                    b"\\u0000".to_vec(),
                    b"\\ud800".to_vec(),
                    b"99999999999999999999999".to_vec(),
                    b"-1".to_vec(),
                    b"1e400".to_vec(),
                    b"[".to_vec(),
                    b"{\"a\":".to_vec(),
                    "é".as_bytes().to_vec(),
                    b"\xff\xfe".to_vec(),
                ]),
            ]
        )
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        (any::<usize>(), 1usize..16).prop_map(|(at, n)| Edit::Remove(at, n)),
        (any::<usize>(), any::<usize>(), 1usize..32)
            .prop_map(|(from, to, n)| Edit::Splice(from, to, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn mutated(seed: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (seed, proptest::collection::vec(mutation(), 0..6)).prop_map(|(mut bytes, mutations)| {
        for mutation in &mutations {
            apply_edit(&mut bytes, mutation);
        }
        bytes
    })
}

/// Every JSON body a REST route parses, through the parser its extractor uses.
fn parse_every_body(bytes: &[u8]) -> Result<(), TestCaseError> {
    let started = Instant::now();
    let _ = input::json::<node::rest::accounts::Credentials>(bytes);
    let _ = input::json::<groups::NewGroup>(bytes);
    let _ = input::json::<groups::AddMembers>(bytes);
    let _ = input::json::<groups::Rename>(bytes);
    let _ = input::json::<groups::Transfer>(bytes);
    let _ = input::json::<friends::NewRequest>(bytes);
    let _ = input::json::<profiles::ProfileUpdate>(bytes);
    quick(started, "JSON bodies")
}

fn json_seed() -> impl Strategy<Value = Vec<u8>> {
    let user = any::<i64>();
    prop_oneof![
        ("[a-z0-9_.-]{0,40}", ".{0,40}")
            .prop_map(|(u, p)| serde_json::json!({"username": u, "password": p})),
        (".{0,80}", proptest::collection::vec(user, 0..20))
            .prop_map(|(t, m)| serde_json::json!({"title": t, "members": m})),
        proptest::collection::vec(user, 0..20).prop_map(|u| serde_json::json!({"users": u})),
        (user, ".{0,250}").prop_map(|(u, n)| serde_json::json!({"user": u, "note": n})),
        (
            proptest::option::of(".{0,80}"),
            proptest::option::of("[0-9a-f]{0,64}")
        )
            .prop_map(|(d, a)| serde_json::json!({"display_name": d, "avatar": a})),
    ]
    .prop_map(|value| serde_json::to_vec(&value).unwrap())
}

/// Query strings made of the routes' own keys and hostile values.
fn query_string() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "limit",
        "before_seq",
        "seq",
        "username",
        "users",
        "device",
        "token",
        "x",
        "",
        "limit[]",
        "%6c%69mit",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("99999999999999999999999999".to_string()),
        Just("-0".to_string()),
        Just("%00".to_string()),
        Just("%zz".to_string()),
        Just("%C3%A9".to_string()),
        Just("%ff%fe".to_string()),
        Just("1,2,,x, 3".to_string()),
        "[ -~]{0,20}".prop_map(|s| s.replace(['#', ' '], "+")),
    ];
    proptest::collection::vec((key, value, any::<bool>()), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v, with_value)| {
                if with_value {
                    format!("{k}={v}")
                } else {
                    k.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn parse_every_query(uri: &Uri) -> Result<(), TestCaseError> {
    let started = Instant::now();
    let _ = input::query::<conversations::ListQuery>(uri);
    let _ = input::query::<conversations::HistoryQuery>(uri);
    let _ = input::query::<conversations::ReadsQuery>(uri);
    let _ = input::query::<profiles::Search>(uri);
    let _ = input::query::<profiles::PresenceQuery>(uri);
    // The WebSocket upgrade's `device` and `token`.
    if let Ok(params) = input::query::<HashMap<String, String>>(uri) {
        if let Ok(device) = input::device_id(params.get("device").map(String::as_str)) {
            prop_assert!(common::ids::is_valid_device_id(device));
        }
        if let Ok(platform) = input::platform(params.get("platform").map(String::as_str)) {
            prop_assert!(common::ids::PLATFORMS.contains(&platform));
        }
    }
    quick(started, "query strings")
}

fn authenticator() -> Authenticator {
    Authenticator::new(
        "fuzz-secret-fuzz-secret-fuzz-secret",
        Duration::from_secs(3600),
        256,
        1,
    )
    .unwrap()
}

fn tiny_image() -> Vec<u8> {
    let image = image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn headers_and_path_values_keep_their_rules(raw in mutated(prop_oneof![
        Just(b"Bearer v1.1.2.abc".to_vec()),
        Just(b"image/png; charset=utf-8".to_vec()),
        "[0-9a-f]{64}".prop_map(String::into_bytes),
        "[A-Za-z0-9_.-]{1,64}".prop_map(String::into_bytes),
        ".{0,70}".prop_map(String::into_bytes),
    ])) {
        let started = Instant::now();
        if let Some(token) = input::bearer_token(Some(&raw)) {
            let rebuilt = format!("Bearer {token}");
            prop_assert_eq!(rebuilt.as_bytes(), &raw[..]);
        }
        if let Ok(mime) = input::upload_media_type(Some(&raw)) {
            prop_assert!(node::storage::media::ALLOWED_TYPES.contains(&mime));
        }
        let text = String::from_utf8_lossy(&raw);
        if let Ok(hash) = input::media_hash(&text) {
            prop_assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        if let Ok(title) = input::group_title(&text) {
            prop_assert!((1..=64).contains(&title.chars().count()));
            prop_assert!(!title.chars().any(char::is_control));
        }
        if let Ok(device) = input::device_id(Some(&text)) {
            prop_assert!(!device.is_empty() && device.len() <= 64);
        }
        if let Ok(platform) = input::platform(Some(&text)) {
            prop_assert!(common::ids::PLATFORMS.contains(&platform) && platform == text);
        }
        prop_assert!(input::user_list(&text, 5).len() <= 5);
        quick(started, "header and path parsers")?;
    }

    #[test]
    fn query_strings_never_panic(query in query_string()) {
        if let Ok(uri) = format!("/v1/x?{query}").parse::<Uri>() {
            parse_every_query(&uri)?;
        }
    }

    #[test]
    fn json_bodies_never_panic(bytes in mutated(json_seed())) {
        parse_every_body(&bytes)?;
    }

    #[test]
    fn deep_and_wide_json_is_refused_quickly(depth in 1usize..1000, width in 1usize..2000, open in prop::sample::select(vec![b'[', b'{'])) {
        let mut nested = vec![open; depth];
        if open == b'{' {
            nested = b"{\"title\":".repeat(depth);
        }
        parse_every_body(&nested)?;
        let wide = format!("{{\"users\":[{}]}}", vec!["1"; width].join(","));
        parse_every_body(wide.as_bytes())?;
    }

    #[test]
    fn mutated_tokens_never_verify_as_someone_else(user in 1i64..i64::MAX, mutations in proptest::collection::vec(mutation(), 0..6)) {
        let auth = authenticator();
        let (token, _) = auth.issue(user);
        let mut bytes = token.clone().into_bytes();
        for mutation in &mutations {
            apply_edit(&mut bytes, mutation);
        }
        let started = Instant::now();
        let text = String::from_utf8_lossy(&bytes);
        match auth.verify(&text) {
            Ok(verified) => prop_assert_eq!(verified.user, user, "{} verified as another user", text),
            Err(_) => prop_assert!(text != token, "the issued token was refused"),
        }
        quick(started, "token verification")?;
    }

}

proptest! {
    // Decoding images is slow in debug builds: a tenth of the cases.
    #![proptest_config(Config { cases: (cases() / 10).max(1), ..config() })]

    #[test]
    fn mutated_images_never_panic(bytes in mutated(Just(tiny_image()))) {
        let started = Instant::now();
        if let Some(thumb) = node::storage::media::thumbnail(&bytes) {
            let decoded = image::load_from_memory(&thumb).unwrap();
            prop_assert!(decoded.width() <= node::storage::media::THUMB_EDGE && decoded.height() <= node::storage::media::THUMB_EDGE);
        }
        prop_assert!(started.elapsed() < Duration::from_secs(5), "thumbnail took {:?}", started.elapsed());
    }
}

/// Inputs a fuzzer once found interesting, kept as fixed cases.
#[test]
fn regressions() {
    // Multi-byte characters whose byte length is 64: not a hash.
    assert!(input::media_hash(&"é".repeat(32)).is_err());
    // A JSON number past i64 for an id, and a lone surrogate escape.
    assert!(input::json::<groups::Transfer>(br#"{"user": 99999999999999999999}"#).is_err());
    assert!(input::json::<groups::Rename>(br#"{"title": "\ud800"}"#).is_err());
    // serde_json's recursion limit, not the stack, ends deep nesting.
    assert!(input::json::<groups::AddMembers>(&vec![b'['; 100_000]).is_err());
    let uri: Uri = "/v1/conversations/1/messages?limit=99999999999999999999"
        .parse()
        .unwrap();
    assert!(input::query::<conversations::HistoryQuery>(&uri).is_err());
    let auth = authenticator();
    assert!(auth.verify("").is_err());
    assert!(auth.verify(".").is_err());
    assert!(auth.verify("v1.1.99999999999.").is_err());
}
