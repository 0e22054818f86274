//! Property tests: every frame round-trips, and no byte string makes the decoder panic.
#![allow(clippy::unwrap_used)]

use common::frame::*;
use common::{decode, encode, ClientFrame, CodecError, ErrorCode, KickReason, Limits, ServerFrame};
use proptest::prelude::*;

fn arb_msg() -> impl Strategy<Value = Msg> {
    (
        any::<i64>(),
        any::<i64>(),
        any::<i64>(),
        any::<i64>(),
        "[a-z0-9]{1,16}",
        ".{0,200}",
        any::<i64>(),
    )
        .prop_map(|(id, conv, seq, from, cid, body, ts)| Msg {
            id,
            conv,
            seq,
            from,
            cid,
            kind: "text".into(),
            body,
            ts,
            attrs: None,
            recalled: false,
        })
}

fn arb_client() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        ("[a-z0-9]{1,64}", any::<i64>(), ".{0,3000}").prop_map(
            |(cid, to, body)| ClientFrame::Send(Send {
                cid,
                to: Some(to),
                conv: None,
                kind: "text".into(),
                body,
                attrs: Some(Attrs {
                    media: Some("ab".repeat(32)),
                    amount: Some(5),
                    ..Attrs::default()
                }),
            })
        ),
        (any::<u32>(), any::<i64>(), any::<i64>(), any::<u32>()).prop_map(
            |(rid, conv, after_seq, limit)| ClientFrame::Sync(SyncRequest {
                rid,
                conv,
                after_seq,
                limit
            })
        ),
    ]
}

fn arb_server() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        arb_msg().prop_map(ServerFrame::Msg),
        (
            any::<u32>(),
            any::<i64>(),
            proptest::collection::vec(arb_msg(), 0..20),
            any::<bool>()
        )
            .prop_map(|(rid, conv, msgs, more)| ServerFrame::Synced(Synced {
                rid,
                conv,
                msgs,
                more
            })),
        (
            "[a-z0-9]{1,8}",
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            any::<i64>()
        )
            .prop_map(|(cid, id, conv, seq, ts)| ServerFrame::Ack(Ack {
                cid,
                id,
                conv,
                seq,
                ts
            })),
        Just(ServerFrame::Error(
            ErrorFrame::new(ErrorCode::RateLimited, "slow down").for_cid("c")
        )),
        (any::<i64>(), any::<i64>(), any::<i64>())
            .prop_map(|(conv, user, seq)| ServerFrame::Read(ReadState { conv, user, seq })),
        Just(ServerFrame::Notice(Notice {
            kind: "presence".into(),
            user: 7,
            request: None,
            note: None,
            online: Some(true),
            conv: Some(3)
        })),
        Just(ServerFrame::Kick(Kick {
            reason: KickReason::Draining,
            msg: "bye".into()
        })),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip(frame in arb_client(), threshold in prop_oneof![Just(0usize), Just(256), Just(usize::MAX)]) {
        let bytes = encode(&frame, threshold).unwrap();
        prop_assert_eq!(decode::<ClientFrame>(&bytes, &Limits::default()).unwrap(), frame);
    }

    #[test]
    fn server_frames_round_trip(frame in arb_server(), threshold in prop_oneof![Just(0usize), Just(256), Just(usize::MAX)]) {
        let bytes = encode(&frame, threshold).unwrap();
        prop_assert_eq!(decode::<ServerFrame>(&bytes, &Limits::default()).unwrap(), frame);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<ClientFrame>(&bytes, &Limits::default());
    }

    #[test]
    fn truncated_frames_are_errors(frame in arb_client(), cut in 0usize..64) {
        let bytes = encode(&frame, usize::MAX).unwrap();
        let keep = bytes.len().saturating_sub(cut + 1);
        let result = decode::<ClientFrame>(&bytes[..keep], &Limits::default());
        prop_assert!(result.is_err());
    }

    #[test]
    fn corrupted_frames_never_panic(frame in arb_client(), index in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&frame, 0).unwrap();
        let at = index.index(bytes.len());
        bytes[at] = byte;
        match decode::<ClientFrame>(&bytes, &Limits::default()) {
            Ok(_) => {}
            Err(error) => prop_assert!(error.code() != ErrorCode::Internal),
        }
    }
}

#[test]
fn deep_nesting_is_a_limit_error() {
    // 1,000 nested one-element arrays, then a value: deeper than the default limit of 16.
    let mut body = vec![0u8];
    body.extend(std::iter::repeat_n(0x91u8, 1000));
    body.push(0x01);
    assert!(matches!(
        decode::<ClientFrame>(&body, &Limits::default()),
        Err(CodecError::LimitExceeded(_))
    ));
}
