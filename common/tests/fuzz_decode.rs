//! A mutation fuzzer for `common::decode` on stable Rust, driven by proptest.
//!
//! Each input starts from a real encoding (compressed or not) and goes through a chain of mutations that aim at the
//! decoder's layers: the header byte, zstd frames (the mutated body is re-compressed so it reaches MessagePack),
//! MessagePack markers with huge claimed lengths, deep nesting, truncation and splicing. Properties: decoding
//! never panics, never takes long, and anything it accepts re-encodes to something that decodes to the same frame.
//!
//! Quick in the suite (`IM_FUZZ_CASES`, default 3000). On demand, for minutes:
//! `IM_FUZZ_CASES=2000000 cargo test --release -p common --test fuzz_decode -- --nocapture`
//! A failure prints the minimal input (proptest shrinks it); add it to `proptest_codec.rs` as a fixed case.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use common::frame::{Send, SyncRequest};
use common::{decode, encode, ClientFrame, Limits, ServerFrame};
use proptest::prelude::*;
use proptest::test_runner::Config;

#[path = "support/edits.rs"]
mod edits;
use edits::{apply_edit, position, Edit};

/// One mutation step: a plain byte edit, or one that means something to the codec.
#[derive(Debug, Clone)]
enum Mutation {
    Edit(Edit),
    /// Insert a MessagePack marker that claims a huge length (array32, map32, bin32, str32, ext32).
    HugeLength(usize, u8),
    /// Insert many nested one-element arrays.
    Nest(usize, usize),
    /// Set the header byte.
    Header(u8),
    /// Re-compress the body (header bit set), so mutations of the MessagePack reach it through zstd.
    Compress,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Edit(Edit::Set(at, b))),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Edit(Edit::Insert(at, bytes))),
        (any::<usize>(), 1usize..32).prop_map(|(at, n)| Mutation::Edit(Edit::Remove(at, n))),
        (any::<usize>(), any::<usize>(), 1usize..64)
            .prop_map(|(from, to, n)| Mutation::Edit(Edit::Splice(from, to, n))),
        (
            any::<usize>(),
            prop::sample::select(vec![0xdd, 0xdf, 0xc6, 0xdb, 0xc9, 0xdc, 0xde])
        )
            .prop_map(|(at, marker)| Mutation::HugeLength(at, marker)),
        (any::<usize>(), 1usize..2000).prop_map(|(at, depth)| Mutation::Nest(at, depth)),
        any::<usize>().prop_map(|n| Mutation::Edit(Edit::Truncate(n))),
        any::<u8>().prop_map(Mutation::Header),
        Just(Mutation::Compress),
    ]
}

fn seed() -> impl Strategy<Value = Vec<u8>> {
    let send = (
        "[a-zA-Z0-9_.-]{1,64}",
        any::<i64>(),
        any::<bool>(),
        ".{0,400}",
    )
        .prop_map(|(cid, target, group, body)| {
            ClientFrame::Send(Send {
                cid,
                to: (!group).then_some(target),
                conv: group.then_some(target),
                kind: "text".into(),
                body,
                attrs: None,
            })
        });
    let sync = (any::<u32>(), any::<i64>(), any::<i64>(), any::<u32>()).prop_map(
        |(rid, conv, after_seq, limit)| {
            ClientFrame::Sync(SyncRequest {
                rid,
                conv,
                after_seq,
                limit,
            })
        },
    );
    (
        prop_oneof![send, sync],
        prop_oneof![Just(0usize), Just(usize::MAX)],
    )
        .prop_map(|(frame, threshold)| encode(&frame, threshold).unwrap())
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    match mutation {
        Mutation::Edit(edit) => apply_edit(bytes, edit),
        Mutation::HugeLength(i, marker) => {
            let p = position(*i, bytes.len());
            bytes.splice(p..p, [*marker, 0xff, 0xff, 0xff, 0xf0]);
        }
        Mutation::Nest(i, depth) => {
            let p = position(*i, bytes.len());
            bytes.splice(p..p, std::iter::repeat_n(0x91u8, *depth));
        }
        Mutation::Header(h) => {
            if let Some(first) = bytes.first_mut() {
                *first = *h;
            }
        }
        Mutation::Compress => {
            if bytes.len() > 1 {
                let body = zstd::bulk::compress(&bytes[1..], 1).unwrap();
                bytes.truncate(1);
                bytes[0] = common::codec::FLAG_ZSTD;
                bytes.extend_from_slice(&body);
            }
        }
    }
}

fn cases() -> u32 {
    std::env::var("IM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// Decodes under `limits`; checks time and the round trip of anything accepted.
fn check(bytes: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    let started = Instant::now();
    let client = decode::<ClientFrame>(bytes, limits);
    let _ = decode::<ServerFrame>(bytes, limits);
    prop_assert!(
        started.elapsed() < Duration::from_millis(500),
        "decoding {} bytes took {:?}",
        bytes.len(),
        started.elapsed()
    );
    if let Ok(frame) = client {
        let again = encode(&frame, 0).unwrap();
        prop_assert_eq!(
            decode::<ClientFrame>(&again, &Limits::default()).unwrap(),
            frame
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: cases(), failure_persistence: None, ..Config::default() })]

    #[test]
    fn mutated_frames_never_panic_and_round_trip(
        mut bytes in seed(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        check(&bytes, &Limits::default())?;
        // Tight limits take the error paths that defaults rarely reach.
        let tight = Limits { max_message_bytes: 256, max_decompressed_bytes: 256, max_depth: 3, max_collection_len: 4 };
        check(&bytes, &tight)?;
    }
}
