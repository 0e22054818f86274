//! Bad input on a live connection: each gets a clear answer and the connection's other state survives.

use common::codec::FLAG_ZSTD;
use common::{close_code, ErrorCode, KickReason};
use fastwebsockets::{Frame, OpCode, Payload};
use tests::client::WAIT;
use tests::Cluster;

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_connection_survives() {
    let cluster = Cluster::start(1).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let b = cluster.user("b").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let ack = ca
        .send_and_ack(b.id, "before", "state to keep")
        .await
        .unwrap();

    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (vec![], ErrorCode::BadFrame),
        (vec![0x00, 0x92, 0x01], ErrorCode::BadFrame), // truncated array
        (vec![0x80, 0x80], ErrorCode::BadFrame),       // reserved header bit
        (vec![FLAG_ZSTD, 1, 2, 3, 4], ErrorCode::BadFrame), // not zstd
        (
            vec![0x00, 0x81, 0xa1, b't', 0xa4, b'j', b'u', b'm', b'p'],
            ErrorCode::UnknownFrame,
        ),
        (vec![0x00, 0x81, 0xa1, b't', 0x07], ErrorCode::BadFrame), // t is not a string
        (
            vec![0x00, 0xdd, 0xff, 0xff, 0xff, 0xff],
            ErrorCode::LimitExceeded,
        ),
    ];
    for (bytes, code) in cases {
        ca.connection().send_raw(&bytes).await.unwrap();
        let error = ca.wait_error(None, WAIT).await.unwrap();
        assert_eq!(error.code, code, "for input {bytes:02x?}: {}", error.msg);
    }
    // A zstd bomb: 10 MiB of zeros in a few hundred bytes.
    let bomb = zstd_bomb();
    ca.connection().send_raw(&bomb).await.unwrap();
    assert_eq!(
        ca.wait_error(None, WAIT).await.unwrap().code,
        ErrorCode::LimitExceeded
    );
    // Deep nesting.
    let mut deep = vec![0u8];
    deep.extend(std::iter::repeat_n(0x91u8, 100));
    deep.push(1);
    ca.connection().send_raw(&deep).await.unwrap();
    assert_eq!(
        ca.wait_error(None, WAIT).await.unwrap().code,
        ErrorCode::LimitExceeded
    );

    // Still the same connection, still working, same conversation.
    let after = ca.send_and_ack(b.id, "after", "still here").await.unwrap();
    assert_eq!((after.conv, after.seq), (ack.conv, ack.seq + 1));
}

fn zstd_bomb() -> Vec<u8> {
    // A compressed frame: header byte, then zstd of 10 MiB of zeros (a valid frame that inflates far past the cap).
    let zeros = vec![0u8; 10 << 20];
    let mut message = vec![FLAG_ZSTD];
    message.extend(zstd_compress(&zeros));
    message
}

fn zstd_compress(data: &[u8]) -> Vec<u8> {
    // The codec compresses anything past the threshold; encode a byte string through it and strip the header.
    #[derive(serde::Serialize)]
    struct Blob<'a>(#[serde(with = "serde_bytes")] &'a [u8]);
    let encoded = common::encode(&Blob(data), 0).unwrap();
    assert_eq!(encoded[0], FLAG_ZSTD);
    encoded[1..].to_vec()
}

#[tokio::test]
async fn oversize_message_closes_with_1009() {
    let cluster = Cluster::start(1).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    ca.connection()
        .send_raw(&vec![0u8; 64 * 1024 + 1])
        .await
        .unwrap();
    let (kick, code) = ca.expect_close(WAIT).await.unwrap();
    assert_eq!(code, close_code::MESSAGE_TOO_BIG);
    assert_eq!(kick, Some(KickReason::ProtocolError));

    // Fragments that are each small but add up past the cap are refused the same way.
    let mut cb = cluster.connect(0, &a, "tablet").await.unwrap();
    let chunk = vec![0u8; 16 * 1024];
    cb.connection()
        .send_frame(Frame::new(
            false,
            OpCode::Binary,
            None,
            Payload::Borrowed(&chunk),
        ))
        .await
        .unwrap();
    for _ in 0..4 {
        cb.connection()
            .send_frame(Frame::new(
                false,
                OpCode::Continuation,
                None,
                Payload::Borrowed(&chunk),
            ))
            .await
            .unwrap();
    }
    let (_, code) = cb.expect_close(WAIT).await.unwrap();
    assert_eq!(code, close_code::MESSAGE_TOO_BIG);
}

#[tokio::test]
async fn text_frames_are_refused_with_1003() {
    let cluster = Cluster::start(1).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    ca.connection()
        .send_frame(Frame::text(Payload::Borrowed(b"{\"t\":\"send\"}")))
        .await
        .unwrap();
    let (_, code) = ca.expect_close(WAIT).await.unwrap();
    assert_eq!(code, close_code::UNSUPPORTED_DATA);
}

#[tokio::test]
async fn fragmented_message_within_the_cap_is_accepted() {
    let cluster = Cluster::start(1).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let frame = common::ClientFrame::Send(common::frame::Send {
        cid: "frag".into(),
        to: Some(a.id),
        conv: None,
        kind: "text".into(),
        body: "in pieces".into(),
        attrs: None,
    });
    let bytes = common::encode(&frame, usize::MAX).unwrap();
    let (head, tail) = bytes.split_at(5);
    ca.connection()
        .send_frame(Frame::new(
            false,
            OpCode::Binary,
            None,
            Payload::Borrowed(head),
        ))
        .await
        .unwrap();
    ca.connection()
        .send_frame(Frame::new(
            true,
            OpCode::Continuation,
            None,
            Payload::Borrowed(tail),
        ))
        .await
        .unwrap();
    ca.wait_ack("frag", WAIT).await.unwrap();
}
