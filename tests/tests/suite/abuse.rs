//! Abuse at the behaviour level: a client that sends faster than its rate limit (refused, then disconnected), and a
//! client that probes ids of conversations, groups and media it is not part of (every answer is byte for byte the
//! answer for an id that does not exist).

use std::net::SocketAddr;
use std::time::Duration;

use benchmarks::client::{Connection, Incoming};
use bytes::Bytes;
use common::frame::{ReadRequest, RecallRequest, Send, SyncRequest, TypingRequest};
use common::{close_code, ClientFrame, ErrorCode, KickReason, ServerFrame};
use fastwebsockets::{OpCode, WebSocket};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tests::client::WAIT;
use tests::{Cluster, ClusterOptions, TestClient, TestUser};

fn text_to_conv(cid: &str, conv: i64) -> ClientFrame {
    ClientFrame::Send(Send {
        cid: cid.into(),
        to: None,
        conv: Some(conv),
        kind: "text".into(),
        body: "probe".into(),
        attrs: None,
    })
}

/// Waits for the answer to `cid` (ack: `None`, error: its code).
async fn outcome(client: &mut TestClient, cid: &str) -> Option<ErrorCode> {
    match client.wait_ack(cid, WAIT).await {
        Ok(_) => None,
        Err(_) => Some(
            client
                .errors
                .get(cid)
                .expect("an error frame for the cid")
                .code,
        ),
    }
}

#[tokio::test]
async fn sends_over_the_rate_are_refused_unstored_and_repeated_abuse_closes_1008() {
    // 5 at once, then one per 20 s (the test never waits that long); the 5th refusal within a minute closes.
    let options = ClusterOptions::default()
        .arg("send-rate", "0.05")
        .arg("send-burst", "5")
        .arg("send-strikes", "5")
        .arg("send-strike-window-secs", "60");
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let a = cluster.user("flood").await.unwrap();
    let b = cluster.user("target").await.unwrap();
    let bystander = cluster.user("bystander").await.unwrap();
    let mut phone = cluster.connect(0, &a, "phone").await.unwrap();
    let mut tablet = cluster.connect(0, &a, "tablet").await.unwrap();

    // The burst is the user's, shared by the devices: 3 from the phone and 2 from the tablet use it up.
    let first = phone.send_and_ack(b.id, "p1", "one").await.unwrap();
    let conv = first.conv;
    for cid in ["p2", "p3"] {
        phone.send_and_ack(b.id, cid, "more").await.unwrap();
    }
    for cid in ["t1", "t2"] {
        tablet.send_and_ack(b.id, cid, "more").await.unwrap();
    }
    // Over the limit: refused with the cid, retryable, on either device.
    tablet.send_text(b.id, "t3", "too fast").await.unwrap();
    let refusal = tablet.wait_error(Some("t3"), WAIT).await.unwrap();
    assert_eq!(
        (refusal.code, refusal.retry),
        (ErrorCode::RateLimited, true),
        "{refusal:?}"
    );
    phone.send_text(b.id, "p4", "too fast").await.unwrap();
    assert_eq!(
        outcome(&mut phone, "p4").await,
        Some(ErrorCode::RateLimited)
    );
    // Recalls are sends too.
    phone
        .send(&ClientFrame::Recall(RecallRequest {
            cid: "r1".into(),
            conv,
            seq: first.seq,
        }))
        .await
        .unwrap();
    assert_eq!(
        outcome(&mut phone, "r1").await,
        Some(ErrorCode::RateLimited)
    );
    // Another user is not affected.
    let mut other = cluster.connect(0, &bystander, "phone").await.unwrap();
    other.send_and_ack(b.id, "o1", "hello").await.unwrap();

    // The tablet keeps going: the 4th refusal is still an error frame; the 5th is answered by a kick and a close
    // 1008 instead (the unacknowledged cid is the client's to resend later).
    tablet.send_text(b.id, "t4", "again").await.unwrap();
    assert_eq!(
        outcome(&mut tablet, "t4").await,
        Some(ErrorCode::RateLimited)
    );
    tablet.send_text(b.id, "t5", "and again").await.unwrap();
    let mut kick = None;
    let (code, reason) = loop {
        match tablet.next_incoming(WAIT).await.unwrap() {
            Incoming::Frame(ServerFrame::Kick(k)) => kick = Some(k.reason),
            Incoming::Frame(ServerFrame::Ack(ack)) => {
                panic!("a send over the limit was stored: {ack:?}")
            }
            Incoming::Frame(_) => {}
            Incoming::Closed(code, reason) => break (code, reason),
        }
    };
    assert_eq!(kick, Some(KickReason::RateLimited));
    assert_eq!(
        (code, reason.as_str()),
        (close_code::POLICY_VIOLATION, "rate_limited")
    );

    // Nothing refused was stored: the conversation holds exactly the five accepted messages.
    let mut reader = cluster.connect(0, &b, "phone").await.unwrap();
    assert_eq!(reader.sync_after(conv, 0).await.unwrap(), 5);
    // The phone was not closed (its last send was refused, not its connection).
    assert_eq!(phone.sync_after(conv, 0).await.unwrap(), 5);

    let admin = cluster.admin_addr(0);
    assert_eq!(
        tests::probe::metric(admin, "im_rate_limited_total").await,
        5.0
    );
    assert_eq!(
        tests::probe::metric(admin, "im_rate_limit_closes_total").await,
        1.0
    );
}

/// One REST call's status and exact body.
async fn rest(
    addr: SocketAddr,
    user: &TestUser,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Bytes) {
    let (status, bytes) = benchmarks::client::http_raw(
        addr,
        method,
        path,
        Some(&user.token),
        "application/json",
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap();
    (status.as_u16(), bytes)
}

/// A raw WebSocket of `user`, past its `hello`, whose answers are compared as bytes.
async fn raw_socket(
    addr: SocketAddr,
    user: &TestUser,
    device: &str,
) -> WebSocket<TokioIo<Upgraded>> {
    let mut ws = Connection::connect(addr, &user.token, device)
        .await
        .unwrap()
        .into_websocket();
    let hello = ws.read_frame().await.unwrap();
    assert_eq!(hello.opcode, OpCode::Binary);
    ws
}

/// Sends `frame` and returns the bytes of the first `error` frame that comes back.
async fn ws_answer(ws: &mut WebSocket<TokioIo<Upgraded>>, frame: &ClientFrame) -> Vec<u8> {
    let bytes = common::encode(frame, usize::MAX).unwrap();
    ws.write_frame(fastwebsockets::Frame::binary(
        fastwebsockets::Payload::Borrowed(&bytes),
    ))
    .await
    .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let frame = ws.read_frame().await.unwrap();
            if frame.opcode != OpCode::Binary {
                continue;
            }
            let payload = frame.payload.to_vec();
            let decoded: ServerFrame =
                common::decode(&payload, &common::Limits::default()).unwrap();
            if matches!(decoded, ServerFrame::Error(_)) {
                return payload;
            }
        }
    })
    .await
    .expect("an error frame")
}

/// The encoded error frame with the echoed id `conv` in its text replaced by a placeholder.
fn without_id(encoded: &[u8], conv: i64) -> Vec<u8> {
    match common::decode::<ServerFrame>(encoded, &common::Limits::default()).unwrap() {
        ServerFrame::Error(mut error) => {
            error.msg = error.msg.replace(&conv.to_string(), "{conv}");
            common::encode(&ServerFrame::Error(error), usize::MAX).unwrap()
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn png() -> Vec<u8> {
    let image = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[tokio::test]
async fn foreign_conversations_groups_and_media_answer_exactly_like_missing_ones() {
    let cluster = Cluster::start(1).await.unwrap();
    let addr = cluster.addr(0);
    let owner = cluster.user("idor-owner").await.unwrap();
    let member = cluster.user("idor-member").await.unwrap();
    let outsider = cluster.user("idor-outsider").await.unwrap();

    // A group and a 1:1 conversation the outsider is not in, each with a message; an image shared in the group.
    let (status, group) = cluster
        .api(
            0,
            &owner,
            "POST",
            "/v1/groups",
            Some(json!({"title": "private", "members": [member.id]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{group}");
    let group = group["id"].as_i64().unwrap();
    let mut owner_ws = cluster.connect(0, &owner, "phone").await.unwrap();
    let direct = owner_ws
        .send_and_ack(member.id, "d1", "just us")
        .await
        .unwrap()
        .conv;
    let (status, uploaded) = benchmarks::client::http_raw(
        addr,
        "POST",
        "/v1/media",
        Some(&owner.token),
        "image/png",
        png().into(),
    )
    .await
    .unwrap();
    assert_eq!(status.as_u16(), 201);
    let uploaded: serde_json::Value = serde_json::from_slice(&uploaded).unwrap();
    let hash = uploaded["hash"].as_str().unwrap().to_string();
    owner_ws
        .send_to_conv(
            group,
            "g1",
            "image",
            "",
            Some(common::frame::Attrs {
                media: Some(hash.clone()),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let missing = group.max(direct) + 1_000_000;
    let missing_hash = format!("{:064x}", rand::random::<u128>());

    // Control: the member sees what the outsider must not, so the ids below are real.
    let (status, _) = rest(
        addr,
        &member,
        "GET",
        &format!("/v1/conversations/{group}/messages"),
        "",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = rest(addr, &member, "GET", &format!("/v1/media/{hash}"), "").await;
    assert_eq!(status, 200);

    let rest_calls = |conv: i64| -> Vec<(&'static str, String, String)> {
        let (o, m, x) = (owner.id, member.id, outsider.id);
        vec![
            (
                "GET",
                format!("/v1/conversations/{conv}/messages"),
                String::new(),
            ),
            (
                "GET",
                format!("/v1/conversations/{conv}/messages?before_seq=5&limit=3"),
                String::new(),
            ),
            (
                "GET",
                format!("/v1/conversations/{conv}/reads?seq=1"),
                String::new(),
            ),
            ("GET", format!("/v1/groups/{conv}/members"), String::new()),
            (
                "POST",
                format!("/v1/groups/{conv}/members"),
                json!({"users": [x]}).to_string(),
            ),
            (
                "DELETE",
                format!("/v1/groups/{conv}/members/{m}"),
                String::new(),
            ),
            (
                "DELETE",
                format!("/v1/groups/{conv}/members/{x}"),
                String::new(),
            ),
            ("POST", format!("/v1/groups/{conv}/leave"), String::new()),
            (
                "PATCH",
                format!("/v1/groups/{conv}"),
                json!({"title": "mine now"}).to_string(),
            ),
            (
                "POST",
                format!("/v1/groups/{conv}/owner"),
                json!({"user": o}).to_string(),
            ),
            (
                "PUT",
                format!("/v1/groups/{conv}/admins/{o}"),
                String::new(),
            ),
            (
                "DELETE",
                format!("/v1/groups/{conv}/admins/{o}"),
                String::new(),
            ),
        ]
    };
    let expected_conv = br#"{"error":"not_found","message":"no such conversation"}"#;
    let expected_group = br#"{"error":"not_found","message":"no such group"}"#;
    for foreign in [group, direct] {
        for ((method, path, body), (_, missing_path, _)) in
            rest_calls(foreign).into_iter().zip(rest_calls(missing))
        {
            let seen = rest(addr, &outsider, method, &path, &body).await;
            let absent = rest(addr, &outsider, method, &missing_path, &body).await;
            assert_eq!(
                seen, absent,
                "{method} {path} tells a foreign id from a missing one"
            );
            let expected: &[u8] = if path.starts_with("/v1/groups") {
                expected_group
            } else {
                expected_conv
            };
            assert_eq!(
                (seen.0, seen.1.as_ref()),
                (404, expected),
                "{method} {path}"
            );
        }
    }
    for suffix in ["", "/thumb", "/info"] {
        let seen = rest(
            addr,
            &outsider,
            "GET",
            &format!("/v1/media/{hash}{suffix}"),
            "",
        )
        .await;
        let absent = rest(
            addr,
            &outsider,
            "GET",
            &format!("/v1/media/{missing_hash}{suffix}"),
            "",
        )
        .await;
        assert_eq!(seen, absent, "media{suffix}");
        assert_eq!(seen.0, 404, "media{suffix}");
    }
    // Nothing the outsider tried changed the group.
    let (_, members) = cluster
        .api(
            0,
            &owner,
            "GET",
            &format!("/v1/groups/{group}/members"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(members["members"].as_array().map(Vec::len), Some(2));

    // The WebSocket operations: same frames, byte for byte (same cid or rid on both sides).
    let mut ws = raw_socket(addr, &outsider, "probe").await;
    for foreign in [group, direct] {
        let frames = |conv: i64| {
            vec![
                ClientFrame::Sync(SyncRequest {
                    rid: 7,
                    conv,
                    after_seq: 0,
                    limit: 10,
                }),
                ClientFrame::Read(ReadRequest { conv, seq: 1 }),
                ClientFrame::Typing(TypingRequest { conv }),
                ClientFrame::Recall(RecallRequest {
                    cid: "rc".into(),
                    conv,
                    seq: 1,
                }),
                text_to_conv("sc", conv),
            ]
        };
        for (seen_frame, missing_frame) in frames(foreign).into_iter().zip(frames(missing)) {
            let mut seen = ws_answer(&mut ws, &seen_frame).await;
            let mut absent = ws_answer(&mut ws, &missing_frame).await;
            if matches!(seen_frame, ClientFrame::Send(_)) {
                // `send`'s answer names the conversation id the client gave; that echo is no leak.
                seen = without_id(&seen, foreign);
                absent = without_id(&absent, missing);
            }
            assert_eq!(
                seen, absent,
                "{seen_frame:?} tells a foreign id from a missing one"
            );
            match common::decode::<ServerFrame>(&seen, &common::Limits::default()).unwrap() {
                ServerFrame::Error(error) => assert_eq!(error.code, ErrorCode::NotMember),
                other => panic!("unexpected {other:?}"),
            }
        }
        // Typing is relayed at most once a second per conversation; let the next round through.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
}

#[tokio::test]
async fn malformed_rest_input_is_answered_with_json_errors() {
    let cluster = Cluster::start(1).await.unwrap();
    let addr = cluster.addr(0);
    let user = cluster.user("malformed").await.unwrap();
    let cases: Vec<(&str, &str, &str, &str, u16, &str)> = vec![
        // method, path, content type, body, status, code
        (
            "GET",
            "/v1/groups/abc/members",
            "application/json",
            "",
            400,
            "bad_path",
        ),
        (
            "GET",
            "/v1/groups/99999999999999999999/members",
            "application/json",
            "",
            400,
            "bad_path",
        ),
        (
            "DELETE",
            "/v1/groups/1/members/-x",
            "application/json",
            "",
            400,
            "bad_path",
        ),
        (
            "GET",
            "/v1/conversations/1/messages?limit=x",
            "application/json",
            "",
            400,
            "bad_query",
        ),
        (
            "GET",
            "/v1/conversations?limit=99999999999999999999",
            "application/json",
            "",
            400,
            "bad_query",
        ),
        (
            "GET",
            "/v1/conversations/1/reads",
            "application/json",
            "",
            400,
            "bad_query",
        ),
        (
            "GET",
            "/v1/presence",
            "application/json",
            "",
            400,
            "bad_query",
        ),
        (
            "POST",
            "/v1/groups",
            "application/json",
            "{",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/groups",
            "application/json",
            "[[[[[[[[[[[[",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/groups",
            "application/json",
            r#"{"title":"t","members":[1e400]}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/groups",
            "application/json",
            r#"{"title":"a\u0007b"}"#,
            400,
            "bad_title",
        ),
        (
            "POST",
            "/v1/media",
            "image/svg+xml",
            "<svg/>",
            415,
            "unsupported_type",
        ),
        ("POST", "/v1/media", "image/png", "", 400, "empty"),
        (
            "POST",
            "/v1/media",
            "image/png",
            "not a png",
            400,
            "bad_image",
        ),
        (
            "GET",
            "/v1/media/ABC",
            "application/json",
            "",
            400,
            "bad_hash",
        ),
        (
            "GET",
            "/v1/ws?device=a%20b",
            "application/json",
            "",
            400,
            "bad_device",
        ),
    ];
    for (method, path, content_type, body, status, code) in cases {
        let (got, bytes) = benchmarks::client::http_raw(
            addr,
            method,
            path,
            Some(&user.token),
            content_type,
            Bytes::from(body.to_string()),
        )
        .await
        .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {bytes:?}"));
        assert_eq!(
            (got.as_u16(), answer["error"].as_str()),
            (status, Some(code)),
            "{method} {path}: {answer}"
        );
    }
    // Tokens: missing, empty, another scheme, forged.
    for token in [None, Some(""), Some("v1.1.99999999999.AAAA")] {
        let (got, bytes) = benchmarks::client::http_raw(
            addr,
            "GET",
            "/v1/groups",
            token,
            "application/json",
            Bytes::new(),
        )
        .await
        .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (got.as_u16(), answer["error"].as_str()),
            (401, Some("unauthorized"))
        );
    }
    assert!(
        tests::probe::metric(cluster.admin_addr(0), "im_http_input_rejected_total").await >= 10.0
    );
}

#[tokio::test]
async fn a_sender_field_in_a_send_frame_is_ignored() {
    let cluster = Cluster::start(1).await.unwrap();
    let a = cluster.user("spoofer").await.unwrap();
    let b = cluster.user("victim").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let mut cb = cluster.connect(0, &b, "phone").await.unwrap();
    // A `send` with an extra `from: b` key: the map header grows by one entry, the pair goes at the end.
    let mut bytes = common::encode(
        &ClientFrame::Send(Send {
            cid: "spoof".into(),
            to: Some(b.id),
            conv: None,
            kind: "text".into(),
            body: "it was b".into(),
            attrs: None,
        }),
        usize::MAX,
    )
    .unwrap();
    assert_eq!(bytes[1] & 0xf0, 0x80, "a fixmap");
    bytes[1] += 1;
    bytes.extend_from_slice(&[0xa4, b'f', b'r', b'o', b'm', 0xd3]);
    bytes.extend_from_slice(&b.id.to_be_bytes());
    ca.connection().send_raw(&bytes).await.unwrap();
    let ack = ca.wait_ack("spoof", WAIT).await.unwrap();
    cb.wait_messages(ack.conv, 1, WAIT).await.unwrap();
    assert_eq!(cb.convs[&ack.conv].msgs[&ack.seq].from, a.id);
}
