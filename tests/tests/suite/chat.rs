//! Chat features across two nodes and several devices: friends, groups, kinds and media, read state, recall,
//! typing and presence, and a 10,000-member group whose fan-out costs Redis work per node, not per member.

use std::time::Duration;

use common::frame::{kinds, Attrs, ReadRequest, RecallRequest, TypingRequest};
use common::{ClientFrame, ErrorCode};
use serde_json::json;
use tests::client::WAIT;
use tests::{Cluster, ClusterOptions};

/// Sends 1:1 text with fresh cids until the outcome is `expected` (`None` = acked). Permission changes reach the
/// other nodes' caches through pub/sub, within milliseconds but not synchronously with the REST answer.
async fn eventually(
    client: &mut tests::TestClient,
    to: i64,
    tag: &str,
    expected: Option<ErrorCode>,
) {
    for attempt in 0..40 {
        let cid = format!("{tag}-{attempt}");
        client.send_text(to, &cid, "probe").await.unwrap();
        let outcome = match client.wait_ack(&cid, WAIT).await {
            Ok(_) => None,
            Err(_) => client.errors.get(&cid).map(|e| e.code),
        };
        if outcome == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{tag}: never reached {expected:?}");
}

fn friendship_required() -> ClusterOptions {
    ClusterOptions::default().arg("require-friendship", "true")
}

#[tokio::test]
async fn friends_requests_blocks_and_the_friendship_rule() {
    let cluster = Cluster::start_with(2, friendship_required()).await.unwrap();
    let a = cluster.user("fa").await.unwrap();
    let b = cluster.user("fb").await.unwrap();
    let c = cluster.user("fc").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let mut cb = cluster.connect(1, &b, "phone").await.unwrap();

    ca.send_text(b.id, "nf", "hello?").await.unwrap();
    assert_eq!(
        ca.wait_error(Some("nf"), WAIT).await.unwrap().code,
        ErrorCode::NotFriends
    );

    let (status, body) = cluster
        .api(
            0,
            &a,
            "POST",
            "/v1/friends/requests",
            Some(json!({"user": b.id, "note": "it's me"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let request = body["id"].as_i64().unwrap();
    let (status, _) = cluster
        .api(
            0,
            &a,
            "POST",
            "/v1/friends/requests",
            Some(json!({"user": b.id})),
        )
        .await
        .unwrap();
    assert_eq!(status, 409, "a second pending request is refused");
    // B is told in real time, across nodes.
    cb.wait_until(WAIT, |c| {
        c.notices
            .iter()
            .any(|n| n.kind == "friend_request" && n.user == a.id)
    })
    .await
    .unwrap();
    assert_eq!(cb.notices[0].note.as_deref(), Some("it's me"));
    let (_, pending) = cluster
        .api(1, &b, "GET", "/v1/friends/requests", None)
        .await
        .unwrap();
    assert_eq!(pending["incoming"][0]["id"], request);
    // Only the recipient answers.
    let (status, _) = cluster
        .api(
            0,
            &c,
            "POST",
            &format!("/v1/friends/requests/{request}/accept"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = cluster
        .api(
            1,
            &b,
            "POST",
            &format!("/v1/friends/requests/{request}/accept"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    ca.wait_until(WAIT, |c| {
        c.notices
            .iter()
            .any(|n| n.kind == "friend_accepted" && n.user == b.id)
    })
    .await
    .unwrap();
    let (_, friends) = cluster
        .api(0, &a, "GET", "/v1/friends", None)
        .await
        .unwrap();
    assert_eq!(friends["friends"][0]["id"], b.id);

    // Friends may talk (the other node's cache was told).
    eventually(&mut ca, b.id, "f1", None).await;
    let ack = ca.send_and_ack(b.id, "f1b", "friends now").await.unwrap();
    cb.wait_messages(ack.conv, 1, WAIT).await.unwrap();

    // A block refuses messages both ways, on every node; unblocking restores them.
    let (status, _) = cluster
        .api(1, &b, "PUT", &format!("/v1/blocks/{}", a.id), None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    eventually(&mut ca, b.id, "f2", Some(ErrorCode::Blocked)).await;
    let (status, _) = cluster
        .api(
            0,
            &a,
            "POST",
            "/v1/friends/requests",
            Some(json!({"user": b.id})),
        )
        .await
        .unwrap();
    assert_eq!(status, 409, "already friends");
    cluster
        .api(1, &b, "DELETE", &format!("/v1/blocks/{}", a.id), None)
        .await
        .unwrap();
    eventually(&mut ca, b.id, "f3", None).await;

    // Removing a friend ends messaging and tells the other side.
    let (status, _) = cluster
        .api(0, &a, "DELETE", &format!("/v1/friends/{}", b.id), None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    cb.wait_until(WAIT, |c| {
        c.notices.iter().any(|n| n.kind == "friend_removed")
    })
    .await
    .unwrap();
    eventually(&mut ca, b.id, "f4", Some(ErrorCode::NotFriends)).await;

    // A rejection reaches the requester; their outgoing list shows it.
    let (_, body) = cluster
        .api(
            0,
            &c,
            "POST",
            "/v1/friends/requests",
            Some(json!({"user": a.id})),
        )
        .await
        .unwrap();
    let request = body["id"].as_i64().unwrap();
    let (status, _) = cluster
        .api(
            0,
            &a,
            "POST",
            &format!("/v1/friends/requests/{request}/reject"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (_, mine) = cluster
        .api(0, &c, "GET", "/v1/friends/requests", None)
        .await
        .unwrap();
    assert_eq!(mine["outgoing"][0]["status"], "rejected");
    let (status, _) = cluster
        .api(0, &a, "GET", "/v1/friends", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // No token, no API.
    let (status, _) = benchmarks::client::http_json(cluster.addr(0), "GET", "/v1/friends", None)
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn groups_membership_roles_and_authorisation() {
    let cluster = Cluster::start(2).await.unwrap();
    let a = cluster.user("ga").await.unwrap();
    let b = cluster.user("gb").await.unwrap();
    let c = cluster.user("gc").await.unwrap();
    let d = cluster.user("gd").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let mut cb0 = cluster.connect(0, &b, "phone").await.unwrap();
    let mut cb1 = cluster.connect(1, &b, "laptop").await.unwrap();
    let mut cc = cluster.connect(1, &c, "phone").await.unwrap();
    let mut cd = cluster.connect(1, &d, "phone").await.unwrap();

    let (status, group) = cluster
        .api(
            0,
            &a,
            "POST",
            "/v1/groups",
            Some(json!({"title": "Lunch 🍜", "members": [b.id, c.id]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{group}");
    let conv = group["id"].as_i64().unwrap();
    for client in [&mut cb0, &mut cb1, &mut cc] {
        client.wait_messages(conv, 1, WAIT).await.unwrap();
        let created = &client.convs[&conv].msgs[&1];
        assert_eq!(created.kind, kinds::SYSTEM);
        assert_eq!(
            created.attrs.as_ref().unwrap().event.as_deref(),
            Some("created")
        );
    }

    let ack = ca
        .send_to_conv(conv, "g1", kinds::TEXT, "who's hungry?", None)
        .await
        .unwrap();
    for client in [&mut cb0, &mut cb1, &mut cc] {
        client.wait_messages(conv, 2, WAIT).await.unwrap();
        assert_eq!(client.convs[&conv].msgs[&ack.seq].body, "who's hungry?");
    }

    // An outsider can do nothing with the group.
    cd.send(&ClientFrame::Send(common::frame::Send {
        cid: "x1".into(),
        to: None,
        conv: Some(conv),
        kind: "text".into(),
        body: "let me in".into(),
        attrs: None,
    }))
    .await
    .unwrap();
    assert_eq!(
        cd.wait_error(Some("x1"), WAIT).await.unwrap().code,
        ErrorCode::NotMember
    );
    assert!(cd.sync_after(conv, 0).await.is_err());
    for path in [
        format!("/v1/groups/{conv}/members"),
        format!("/v1/conversations/{conv}/messages"),
        format!("/v1/conversations/{conv}/reads?seq=1"),
    ] {
        let (status, body) = cluster.api(1, &d, "GET", &path, None).await.unwrap();
        // Indistinguishable from a group that does not exist (see abuse.rs).
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    let (status, _) = cluster
        .api(
            1,
            &d,
            "POST",
            &format!("/v1/groups/{conv}/members"),
            Some(json!({"users": [d.id]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 404);

    // Any member adds; the new member gets the change and what follows.
    let (status, added) = cluster
        .api(
            1,
            &b,
            "POST",
            &format!("/v1/groups/{conv}/members"),
            Some(json!({"users": [d.id]})),
        )
        .await
        .unwrap();
    assert_eq!((status, added["added"][0].as_i64()), (200, Some(d.id)));
    cd.wait_until(WAIT, |c| {
        c.convs.get(&conv).is_some_and(|l| {
            l.msgs
                .values()
                .any(|m| m.attrs.as_ref().and_then(|a| a.event.as_deref()) == Some("members_added"))
        })
    })
    .await
    .unwrap();
    let ack = ca
        .send_to_conv(conv, "g2", kinds::TEXT, "welcome d", None)
        .await
        .unwrap();
    cd.wait_until(WAIT, |c| {
        c.convs
            .get(&conv)
            .is_some_and(|l| l.msgs.contains_key(&ack.seq))
    })
    .await
    .unwrap();

    // Roles: members cannot remove or rename; the owner can.
    let (status, _) = cluster
        .api(
            1,
            &b,
            "DELETE",
            &format!("/v1/groups/{conv}/members/{}", d.id),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, _) = cluster
        .api(
            1,
            &b,
            "PATCH",
            &format!("/v1/groups/{conv}"),
            Some(json!({"title": "mine"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, _) = cluster
        .api(
            0,
            &a,
            "PATCH",
            &format!("/v1/groups/{conv}"),
            Some(json!({"title": "Dinner"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = cluster
        .api(
            0,
            &a,
            "DELETE",
            &format!("/v1/groups/{conv}/members/{}", d.id),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 204);
    cd.wait_until(WAIT, |c| {
        c.convs[&conv]
            .msgs
            .values()
            .any(|m| m.attrs.as_ref().and_then(|a| a.event.as_deref()) == Some("member_removed"))
    })
    .await
    .unwrap();
    cd.send(&ClientFrame::Send(common::frame::Send {
        cid: "x2".into(),
        to: None,
        conv: Some(conv),
        kind: "text".into(),
        body: "still here?".into(),
        attrs: None,
    }))
    .await
    .unwrap();
    assert_eq!(
        cd.wait_error(Some("x2"), WAIT).await.unwrap().code,
        ErrorCode::NotMember
    );

    // C leaves; the owner must hand over before leaving.
    let (status, _) = cluster
        .api(1, &c, "POST", &format!("/v1/groups/{conv}/leave"), None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    let (status, _) = cluster
        .api(0, &a, "POST", &format!("/v1/groups/{conv}/leave"), None)
        .await
        .unwrap();
    assert_eq!(status, 409);
    let (status, _) = cluster
        .api(
            0,
            &a,
            "POST",
            &format!("/v1/groups/{conv}/owner"),
            Some(json!({"user": b.id})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (_, members) = cluster
        .api(0, &a, "GET", &format!("/v1/groups/{conv}/members"), None)
        .await
        .unwrap();
    let roles: Vec<(i64, String)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"].as_i64().unwrap(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        roles.contains(&(b.id, "owner".into())) && roles.contains(&(a.id, "admin".into())),
        "{roles:?}"
    );
    let (_, mine) = cluster.api(1, &b, "GET", "/v1/groups", None).await.unwrap();
    assert_eq!(mine["groups"][0]["title"], "Dinner");
    assert_eq!(mine["groups"][0]["member_count"], 2);

    // Every timeline agrees on the order of events.
    cb1.drain(Duration::from_millis(300)).await.unwrap();
    cb1.sync_after(conv, cb1.convs[&conv].last_seq)
        .await
        .unwrap();
    let events: Vec<String> = cb1.convs[&conv]
        .msgs
        .values()
        .filter_map(|m| m.attrs.as_ref().and_then(|a| a.event.clone()))
        .collect();
    assert_eq!(
        events,
        [
            "created",
            "members_added",
            "renamed",
            "member_removed",
            "member_left",
            "owner_changed"
        ]
    );
    assert_eq!(cb1.violations(), 0);
}

#[tokio::test]
async fn member_cap_is_enforced() {
    let cluster = Cluster::start_with(1, ClusterOptions::default().arg("group-member-cap", 3))
        .await
        .unwrap();
    let users = [
        cluster.user("ca").await.unwrap(),
        cluster.user("cb").await.unwrap(),
        cluster.user("cc").await.unwrap(),
        cluster.user("cd").await.unwrap(),
    ];
    let (status, _) = cluster
        .api(
            0,
            &users[0],
            "POST",
            "/v1/groups",
            Some(json!({"title": "big", "members": [users[1].id, users[2].id, users[3].id]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 409);
    let (status, group) = cluster
        .api(
            0,
            &users[0],
            "POST",
            "/v1/groups",
            Some(json!({"title": "ok", "members": [users[1].id, users[2].id]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    let conv = group["id"].as_i64().unwrap();
    let (status, body) = cluster
        .api(
            0,
            &users[0],
            "POST",
            &format!("/v1/groups/{conv}/members"),
            Some(json!({"users": [users[3].id]})),
        )
        .await
        .unwrap();
    assert_eq!((status, body["error"].as_str()), (409, Some("group_full")));
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7 % 256) as u8, (y * 3 % 256) as u8, 200])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

async fn upload(
    cluster: &Cluster,
    user: &tests::TestUser,
    mime: &str,
    bytes: Vec<u8>,
) -> (u16, serde_json::Value) {
    let (status, body) = benchmarks::client::http_raw(
        cluster.addr(0),
        "POST",
        "/v1/media",
        Some(&user.token),
        mime,
        bytes.into(),
    )
    .await
    .unwrap();
    (
        status.as_u16(),
        serde_json::from_slice(&body).unwrap_or_default(),
    )
}

async fn download(cluster: &Cluster, user: &tests::TestUser, path: &str) -> (u16, Vec<u8>) {
    let (status, body) = benchmarks::client::http_raw(
        cluster.addr(1),
        "GET",
        path,
        Some(&user.token),
        "application/json",
        Default::default(),
    )
    .await
    .unwrap();
    (status.as_u16(), body.to_vec())
}

#[tokio::test]
async fn message_kinds_and_media_with_access_control() {
    let cluster = Cluster::start(2).await.unwrap();
    let a = cluster.user("ma").await.unwrap();
    let b = cluster.user("mb").await.unwrap();
    let outsider = cluster.user("mo").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let mut cb = cluster.connect(1, &b, "phone").await.unwrap();

    let picture = png(640, 480);
    let (status, uploaded) = upload(&cluster, &a, "image/png", picture.clone()).await;
    assert_eq!(status, 201, "{uploaded}");
    let hash = uploaded["hash"].as_str().unwrap().to_string();
    assert_eq!(uploaded["thumbnail"], true);
    // Same bytes again: stored once, answered at once. Info is for media the caller may use: the uploaders get it,
    // anyone else gets the answer for a hash that does not exist.
    // The answer is the same as for a first upload, so it confirms nothing about other users' files.
    let (status, again) = upload(&cluster, &outsider, "image/png", picture.clone()).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again, uploaded);
    let (status, _) = cluster
        .api(1, &outsider, "GET", &format!("/v1/media/{hash}/info"), None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = cluster
        .api(1, &b, "GET", &format!("/v1/media/{hash}/info"), None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = cluster
        .api(
            1,
            &b,
            "GET",
            &format!("/v1/media/{}/info", "0".repeat(64)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = upload(&cluster, &a, "application/x-msdownload", b"MZ".to_vec()).await;
    assert_eq!(status, 415);
    let (status, _) = upload(&cluster, &a, "image/png", b"not a png at all".to_vec()).await;
    assert_eq!(status, 400);

    // B cannot fetch it until it is sent to B.
    let (status, _) = download(&cluster, &b, &format!("/v1/media/{hash}")).await;
    assert_eq!(status, 404);
    let ack = ca
        .send_to_conv_or_user(
            b.id,
            "img1",
            kinds::IMAGE,
            "our view",
            Some(Attrs {
                media: Some(hash.clone()),
                ..Attrs::default()
            }),
        )
        .await
        .unwrap();
    cb.wait_messages(ack.conv, 1, WAIT).await.unwrap();
    let msg = cb.convs[&ack.conv].msgs[&ack.seq].clone();
    let attrs = msg.attrs.unwrap();
    assert_eq!(
        (attrs.media.as_deref(), attrs.mime.as_deref(), attrs.size),
        (
            Some(hash.as_str()),
            Some("image/png"),
            Some(picture.len() as i64)
        )
    );
    let (status, bytes) = download(&cluster, &b, &format!("/v1/media/{hash}")).await;
    assert_eq!((status, bytes.len()), (200, picture.len()));
    let (status, thumb) = download(&cluster, &b, &format!("/v1/media/{hash}/thumb")).await;
    assert_eq!(status, 200);
    let thumb = image::load_from_memory(&thumb).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (256, 192));
    // The outsider uploaded the same bytes, so it may fetch them; a third user may not.
    let stranger = cluster.user("ms").await.unwrap();
    let (status, _) = download(&cluster, &stranger, &format!("/v1/media/{hash}")).await;
    assert_eq!(status, 404);

    // Other kinds and their rules.
    let ack = ca
        .send_to_conv_or_user(b.id, "emo", kinds::EMOJI, ":thumbs_up:", None)
        .await
        .unwrap();
    let custom = Attrs {
        custom_type: Some("red_packet".into()),
        memo: Some("happy new year".into()),
        amount: Some(888),
        ..Attrs::default()
    };
    let ack2 = ca
        .send_to_conv_or_user(b.id, "red", kinds::CUSTOM, "", Some(custom))
        .await
        .unwrap();
    let (_, file) = upload(&cluster, &a, "application/pdf", b"%PDF-1.4 tiny".to_vec()).await;
    let file_attrs = Attrs {
        media: file["hash"].as_str().map(String::from),
        name: Some("minutes.pdf".into()),
        ..Attrs::default()
    };
    let ack3 = ca
        .send_to_conv_or_user(b.id, "pdf", kinds::FILE, "", Some(file_attrs))
        .await
        .unwrap();
    cb.wait_until(WAIT, |c| c.convs[&ack.conv].msgs.contains_key(&ack3.seq))
        .await
        .unwrap();
    let log = &cb.convs[&ack.conv];
    assert_eq!(log.msgs[&ack.seq].body, ":thumbs_up:");
    assert_eq!(
        log.msgs[&ack2.seq].attrs.as_ref().unwrap().amount,
        Some(888)
    );
    assert_eq!(
        log.msgs[&ack3.seq].attrs.as_ref().unwrap().name.as_deref(),
        Some("minutes.pdf")
    );
    for (cid, kind, body, attrs, code) in [
        (
            "bad1",
            kinds::IMAGE,
            "",
            Some(Attrs {
                media: Some("f".repeat(64)),
                ..Attrs::default()
            }),
            ErrorCode::UnknownMedia,
        ),
        ("bad2", kinds::IMAGE, "", None, ErrorCode::InvalidRequest),
        (
            "bad3",
            kinds::IMAGE,
            "",
            file["hash"].as_str().map(|h| Attrs {
                media: Some(h.into()),
                ..Attrs::default()
            }),
            ErrorCode::InvalidRequest,
        ),
        ("bad4", kinds::EMOJI, "", None, ErrorCode::InvalidRequest),
        ("bad5", kinds::CUSTOM, "", None, ErrorCode::InvalidRequest),
        (
            "bad6",
            kinds::SYSTEM,
            "forged",
            None,
            ErrorCode::InvalidRequest,
        ),
    ] {
        ca.send(&ClientFrame::Send(common::frame::Send {
            cid: cid.into(),
            to: Some(b.id),
            conv: None,
            kind: kind.into(),
            body: body.into(),
            attrs,
        }))
        .await
        .unwrap();
        assert_eq!(
            ca.wait_error(Some(cid), WAIT).await.unwrap().code,
            code,
            "{cid}"
        );
    }
}

#[tokio::test]
async fn read_state_receipts_unread_counts_and_recall() {
    let cluster = Cluster::start(2).await.unwrap();
    let a = cluster.user("ra").await.unwrap();
    let b = cluster.user("rb").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let mut b_phone = cluster.connect(1, &b, "phone").await.unwrap();
    let mut b_laptop = cluster.connect(0, &b, "laptop").await.unwrap();
    for i in 0..5 {
        ca.send_and_ack(b.id, &format!("r{i}"), "unread")
            .await
            .unwrap();
    }
    let conv = ca.acks["r0"].conv;
    let (_, list) = cluster
        .api(1, &b, "GET", "/v1/conversations", None)
        .await
        .unwrap();
    assert_eq!(
        (
            list["total_unread"].as_i64(),
            list["conversations"][0]["unread"].as_i64()
        ),
        (Some(5), Some(5))
    );
    assert_eq!(list["conversations"][0]["last_message"]["seq"], 5);

    b_phone
        .send(&ClientFrame::Read(ReadRequest { conv, seq: 3 }))
        .await
        .unwrap();
    // B's other device and A (receipt) hear of it.
    b_laptop
        .wait_until(WAIT, |c| {
            c.reads
                .iter()
                .any(|r| r.conv == conv && r.user == b.id && r.seq == 3)
        })
        .await
        .unwrap();
    ca.wait_until(WAIT, |c| {
        c.reads.iter().any(|r| r.user == b.id && r.seq == 3)
    })
    .await
    .unwrap();
    // Never backwards, never past the end.
    b_phone
        .send(&ClientFrame::Read(ReadRequest { conv, seq: 1 }))
        .await
        .unwrap();
    b_phone
        .send(&ClientFrame::Read(ReadRequest { conv, seq: 99 }))
        .await
        .unwrap();
    b_laptop
        .wait_until(WAIT, |c| c.reads.iter().any(|r| r.seq == 5))
        .await
        .unwrap();
    assert!(b_laptop.reads.iter().all(|r| r.seq >= 3));
    let (_, list) = cluster
        .api(1, &b, "GET", "/v1/conversations", None)
        .await
        .unwrap();
    assert_eq!(list["total_unread"].as_i64(), Some(0));
    let (status, _) = cluster
        .api(
            0,
            &a,
            "GET",
            &format!("/v1/conversations/{conv}/reads?seq=5"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (_, reads) = cluster
        .api(
            0,
            &a,
            "GET",
            &format!("/v1/conversations/{conv}/reads?seq=5"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reads["read"], json!([b.id]));

    // History paging, newest first.
    let (_, page) = cluster
        .api(
            1,
            &b,
            "GET",
            &format!("/v1/conversations/{conv}/messages?before_seq=5&limit=2"),
            None,
        )
        .await
        .unwrap();
    let seqs: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!((seqs, page["more"].as_bool()), (vec![4, 3], Some(true)));

    // Recall: B cannot recall A's message; A can, and every device learns it from the timeline.
    b_phone
        .send(&ClientFrame::Recall(RecallRequest {
            cid: "rc0".into(),
            conv,
            seq: 2,
        }))
        .await
        .unwrap();
    assert_eq!(
        b_phone.wait_error(Some("rc0"), WAIT).await.unwrap().code,
        ErrorCode::Forbidden
    );
    ca.send(&ClientFrame::Recall(RecallRequest {
        cid: "rc1".into(),
        conv,
        seq: 2,
    }))
    .await
    .unwrap();
    let recall = ca.wait_ack("rc1", WAIT).await.unwrap();
    b_laptop.wait_messages(conv, 6, WAIT).await.unwrap();
    let notice = &b_laptop.convs[&conv].msgs[&recall.seq];
    assert_eq!(
        (
            notice.kind.as_str(),
            notice.attrs.as_ref().unwrap().target_seq
        ),
        (kinds::RECALL, Some(2))
    );
    let (_, page) = cluster
        .api(
            1,
            &b,
            "GET",
            &format!("/v1/conversations/{conv}/messages?before_seq=3&limit=1"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            page["messages"][0]["recalled"].as_bool(),
            page["messages"][0]["body"].as_str()
        ),
        (Some(true), Some(""))
    );
    ca.send(&ClientFrame::Recall(RecallRequest {
        cid: "rc2".into(),
        conv,
        seq: 2,
    }))
    .await
    .unwrap();
    assert_eq!(
        ca.wait_error(Some("rc2"), WAIT).await.unwrap().code,
        ErrorCode::Forbidden
    );
}

#[tokio::test]
async fn typing_and_presence() {
    let cluster = Cluster::start(2).await.unwrap();
    let a = cluster.user("pa").await.unwrap();
    let b = cluster.user("pb").await.unwrap();
    cluster.befriend(&a, &b).await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let ack = ca.send_and_ack(b.id, "p0", "hi").await.unwrap();
    let mut cb = cluster.connect(1, &b, "phone").await.unwrap();
    ca.wait_until(WAIT, |c| {
        c.notices
            .iter()
            .any(|n| n.kind == "presence" && n.user == b.id && n.online == Some(true))
    })
    .await
    .unwrap();
    let (_, online) = cluster
        .api(
            0,
            &a,
            "GET",
            &format!("/v1/presence?users={},{}", b.id, 999_999),
            None,
        )
        .await
        .unwrap();
    assert_eq!(online["online"], json!({ b.id.to_string(): true }));

    cb.send(&ClientFrame::Typing(TypingRequest { conv: ack.conv }))
        .await
        .unwrap();
    ca.wait_until(WAIT, |c| {
        c.typing
            .iter()
            .any(|t| t.conv == ack.conv && t.user == b.id)
    })
    .await
    .unwrap();

    cb.connection();
    drop(cb);
    ca.wait_until(WAIT, |c| {
        c.notices
            .iter()
            .any(|n| n.kind == "presence" && n.user == b.id && n.online == Some(false))
    })
    .await
    .unwrap();
}

/// One message to a 10,000-member group reaches every online member device on both nodes, and costs at most one
/// publish per other node.
#[tokio::test]
async fn ten_thousand_member_group_fans_out_per_node() {
    let cluster = Cluster::start_with(2, ClusterOptions::default().arg("group-member-cap", 10_001))
        .await
        .unwrap();
    let owner = cluster.user("big").await.unwrap();
    let online: Vec<tests::TestUser> = {
        let mut users = Vec::new();
        for _ in 0..40 {
            users.push(cluster.user("bigm").await.unwrap());
        }
        users
    };
    let sql = cluster.sql().await.unwrap();
    let bulk: Vec<i64> = sql
        .query("INSERT INTO users (username, password_hash) SELECT 'bulk-' || g, '!' FROM generate_series(1, 9959) g RETURNING id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (status, group) = cluster.api(0, &owner, "POST", "/v1/groups", Some(json!({"title": "everyone", "members": online.iter().map(|u| u.id).collect::<Vec<_>>()}))).await.unwrap();
    assert_eq!(status, 201);
    let conv = group["id"].as_i64().unwrap();
    for chunk in bulk.chunks(1000) {
        let (status, body) = cluster
            .api(
                0,
                &owner,
                "POST",
                &format!("/v1/groups/{conv}/members"),
                Some(json!({"users": chunk})),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let (_, members) = cluster
        .api(
            0,
            &owner,
            "GET",
            &format!("/v1/groups/{conv}/members"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 10_000);

    let mut clients = Vec::new();
    for (i, user) in online.iter().enumerate() {
        clients.push(cluster.connect(i % 2, user, "d").await.unwrap());
    }
    let mut sender = cluster.connect(0, &owner, "d").await.unwrap();
    // Let connection-time work (presence, registrations) settle, then count publishes around one message.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cluster.publish_count();
    let ack = sender
        .send_to_conv(conv, "all", kinds::TEXT, "hello, ten thousand", None)
        .await
        .unwrap();
    for client in &mut clients {
        client
            .wait_until(WAIT, |c| {
                c.convs
                    .get(&conv)
                    .is_some_and(|l| l.msgs.contains_key(&ack.seq))
            })
            .await
            .unwrap();
    }
    let after = cluster.publish_count();
    assert!(
        after - before <= 1,
        "one message to 10,000 members cost {} publishes with 2 nodes",
        after - before
    );
}
