//! Issue 12, "one chat policy on every path, one bad message never fails another's": one multi-process test per
//! numbered finding of the issue — several for item 6 (friendship, then group membership) and item 7 (each small
//! leak) — and the poison test. The contract is the spec; the policy matrix (`policy.rs`) covers every
//! relationship × action once, these tests go deeper on each finding: races against the change, concurrency, every
//! field a client can fill.
//!
//! "After the change" always means: the send or request was written after the change's REST call had returned.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benchmarks::client::Incoming;
use bytes::Bytes;
use common::frame::{
    kinds, Ack, Attrs, ErrorFrame, RecallRequest, Send, SyncRequest, TypingRequest,
};
use common::ids::ConvId;
use common::{close_code, ClientFrame, ErrorCode, KickReason, ServerFrame};
use http_body_util::{BodyExt, Full};
use rand::Rng;
use serde_json::{json, Value};
use tests::client::WAIT;
use tests::observe::{answer, bare_error, until, within};
use tests::{Cluster, ClusterOptions, TestClient, TestUser};

/// How long something that must not arrive is waited for.
const QUIET: Duration = Duration::from_millis(500);

fn friendship_required() -> ClusterOptions {
    ClusterOptions::default()
        .arg("require-friendship", "true")
        .arg("group-consent", "true")
}

fn message(
    cid: &str,
    to: Option<i64>,
    conv: Option<ConvId>,
    kind: &str,
    body: &str,
    attrs: Option<Attrs>,
) -> ClientFrame {
    ClientFrame::Send(Send {
        cid: cid.into(),
        to,
        conv,
        kind: kind.into(),
        body: body.into(),
        attrs,
    })
}

fn text(cid: &str, to: Option<i64>, conv: Option<ConvId>) -> ClientFrame {
    message(cid, to, conv, kinds::TEXT, &format!("trust {cid}"), None)
}

/// Sends and returns the answer (ack or error frame).
async fn send(client: &mut TestClient, frame: &ClientFrame) -> Result<Ack, ErrorFrame> {
    let ClientFrame::Send(send) = frame else {
        panic!("not a send")
    };
    client.send(frame).await.unwrap();
    answer(client, &send.cid, WAIT).await.unwrap()
}

async fn acked(client: &mut TestClient, frame: &ClientFrame) -> Ack {
    send(client, frame)
        .await
        .unwrap_or_else(|e| panic!("refused: {e:?}"))
}

async fn status(
    cluster: &Cluster,
    node: usize,
    user: &TestUser,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    cluster.api(node, user, method, path, body).await.unwrap()
}

async fn stored_with_cids(sql: &tokio_postgres::Client, sender: i64, cids: &[String]) -> i64 {
    sql.query_one(
        "SELECT count(*) FROM messages WHERE sender = $1 AND cid = ANY($2)",
        &[&sender, &cids],
    )
    .await
    .unwrap()
    .get(0)
}

/// One send of a stream that runs while a change is made: whether the change's REST call had returned before the
/// send was written, and the answer.
struct Try {
    cid: String,
    after_change: bool,
    outcome: Result<Ack, ErrorFrame>,
}

/// Sends `frames(n)` one after another (each waits for its answer) until `after` sends were written after `changed`
/// was set, and returns every try.
async fn stream_until_after(
    client: &mut TestClient,
    changed: &AtomicBool,
    after: usize,
    frames: impl Fn(usize) -> ClientFrame,
) -> Vec<Try> {
    let mut tries = Vec::new();
    let mut written_after = 0;
    for n in 0.. {
        let after_change = changed.load(Ordering::SeqCst);
        let frame = frames(n);
        let ClientFrame::Send(s) = &frame else {
            unreachable!()
        };
        let cid = s.cid.clone();
        let outcome = send(client, &frame).await;
        tries.push(Try {
            cid,
            after_change,
            outcome,
        });
        if after_change {
            written_after += 1;
            if written_after >= after {
                break;
            }
        }
        assert!(n < 5_000, "the change never completed");
        // Paced, so a slow change does not pile up thousands of messages (the races looked for are around the
        // change, not in the send rate).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tries
}

/// Runs `change` (a REST call through node 0) while `client` keeps sending; sets the flag when the call returned.
async fn during<F: std::future::Future<Output = ()>>(
    client: &mut TestClient,
    change: F,
    frames: impl Fn(usize) -> ClientFrame,
) -> Vec<Try> {
    let changed = AtomicBool::new(false);
    let (tries, ()) = tokio::join!(stream_until_after(client, &changed, 10, frames), async {
        // Let the stream run first, so node 1 has decided (and cached) the old state.
        tokio::time::sleep(Duration::from_millis(30)).await;
        change.await;
        changed.store(true, Ordering::SeqCst);
    });
    tries
}

fn refusals_after(tries: &[Try], expected: ErrorCode, what: &str) -> Vec<String> {
    let mut cids = Vec::new();
    for (index, t) in tries.iter().enumerate().filter(|(_, t)| t.after_change) {
        match &t.outcome {
            Err(error) if error.code == expected && !error.retry => cids.push(t.cid.clone()),
            other => panic!("{what}: send #{index} ({}), written after the change returned, answered {other:?}; expected {expected:?} (retry: false)", t.cid),
        }
    }
    cids
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Blocks and unfriending hold on every path: `send{conv}` and `typing`, not only `send{to}`.
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn blocks_and_unfriending_hold_for_send_by_conv_and_typing() {
    let cluster = Cluster::start_with(2, friendship_required()).await.unwrap();
    let sql = cluster.sql().await.unwrap();
    for (tag, change, expected) in [
        ("block", "block", ErrorCode::Blocked),
        ("unfriend", "unfriend", ErrorCode::NotFriends),
    ] {
        let a = cluster.user(&format!("{tag}-a")).await.unwrap();
        let b = cluster.user(&format!("{tag}-b")).await.unwrap();
        cluster.befriend(&a, &b).await.unwrap();
        let mut a1 = cluster.connect(1, &a, "phone").await.unwrap();
        let mut bc = cluster.connect(0, &b, "phone").await.unwrap();
        let conv = acked(&mut a1, &text("first", Some(b.id), None)).await.conv;
        let (path, method) = match change {
            "block" => (format!("/v1/blocks/{}", a.id), "PUT"),
            _ => (format!("/v1/friends/{}", a.id), "DELETE"),
        };
        // A keeps sending, by `conv` and by `to` in turn, while B changes the relationship through node 0.
        let tries = during(
            &mut a1,
            async {
                let (code, body) = status(&cluster, 0, &b, method, &path, None).await;
                assert_eq!(code, 204, "{tag}: {body}");
            },
            |n| {
                if n % 2 == 0 {
                    text(&format!("c{n}"), None, Some(conv))
                } else {
                    text(&format!("t{n}"), Some(b.id), None)
                }
            },
        )
        .await;
        let refused = refusals_after(&tries, expected, tag);
        assert_eq!(
            stored_with_cids(&sql, a.id, &refused).await,
            0,
            "{tag}: refused sends were stored"
        );
        let leaked = within(&mut bc, QUIET, |f| match f {
            ServerFrame::Msg(m) if refused.contains(&m.cid) => Some(m.cid.clone()),
            _ => None,
        })
        .await
        .unwrap();
        assert_eq!(leaked, None, "{tag}: B received a refused message");

        // Typing is refused the same way and never reaches B.
        a1.send(&ClientFrame::Typing(TypingRequest { conv }))
            .await
            .unwrap();
        let error = bare_error(&mut a1, WAIT).await.unwrap();
        assert_eq!(
            (error.code, error.retry),
            (expected, false),
            "{tag}: typing answered {error:?}"
        );
        let typed = within(&mut bc, QUIET, |f| {
            matches!(f, ServerFrame::Typing(t) if t.conv == conv).then_some(())
        })
        .await
        .unwrap();
        assert_eq!(typed, None, "{tag}: typing was relayed to B");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Input the database would refuse (U+0000) is refused before the writer, by field, non-retryable, and fails
//    nobody else's message.
// ---------------------------------------------------------------------------------------------------------------

/// One poisoned send of each field a client can fill: (kind, body, attrs, the field the refusal must name).
fn poisoned(cid: &str, to: i64, which: usize, media: &str) -> (ClientFrame, &'static str) {
    let custom = |custom_type: &str, memo: Option<&str>| Attrs {
        custom_type: Some(custom_type.into()),
        memo: memo.map(String::from),
        amount: Some(1),
        ..Attrs::default()
    };
    let file = |name: &str| Attrs {
        media: Some(media.into()),
        name: Some(name.into()),
        ..Attrs::default()
    };
    let (kind, body, attrs, field) = match which % 7 {
        0 => (kinds::TEXT, "before\0after", None, "body"),
        1 => (kinds::EMOJI, ":smile\0:", None, "body"),
        2 => (
            kinds::CUSTOM,
            "red packet",
            Some(custom("red\0packet", None)),
            "custom_type",
        ),
        3 => (
            kinds::CUSTOM,
            "red packet",
            Some(custom("red_packet", Some("happy\0new year"))),
            "memo",
        ),
        4 => (
            kinds::CUSTOM,
            "caption\0",
            Some(custom("red_packet", None)),
            "body",
        ),
        5 => (kinds::FILE, "", Some(file("minutes\0.pdf")), "name"),
        _ => (
            kinds::FILE,
            "a caption\0",
            Some(file("minutes.pdf")),
            "body",
        ),
    };
    (message(cid, Some(to), None, kind, body, attrs), field)
}

fn assert_names_field(error: &ErrorFrame, cid: &str, field: &str) {
    assert_eq!(
        (error.code, error.retry, error.cid.as_deref()),
        (ErrorCode::InvalidRequest, false, Some(cid)),
        "a poisoned {field}: {error:?}"
    );
    assert!(
        error.msg.contains(field),
        "the refusal names the field {field}: {error:?}"
    );
}

async fn upload_pdf(cluster: &Cluster, user: &TestUser) -> String {
    let bytes = format!("%PDF-1.4 trust {:032x}", rand::random::<u128>()).into_bytes();
    let (code, body) = upload(cluster.addr(0), user, "application/pdf", bytes).await;
    assert!(code == 200 || code == 201, "upload: {code} {body}");
    body["hash"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_nul_character_is_refused_by_field_and_fails_no_other_message() {
    // One writer: every sender shares the poisoned sender's batches.
    let cluster = Cluster::start_with(1, ClusterOptions::default().arg("writers", 1))
        .await
        .unwrap();
    let sql = cluster.sql().await.unwrap();
    let attacker = cluster.user("nul").await.unwrap();
    let victim = cluster.user("nul-victim").await.unwrap();
    let mut bad = cluster.connect(0, &attacker, "phone").await.unwrap();
    let media = upload_pdf(&cluster, &attacker).await;
    let mut good = Vec::new();
    for i in 0..6 {
        let user = cluster.user(&format!("nul-good{i}")).await.unwrap();
        let client = cluster.connect(0, &user, "phone").await.unwrap();
        good.push((user, client));
    }
    let mut good_cids = Vec::new();
    for which in 0..7 {
        // Good messages in flight from everyone, the poisoned one among them, then every answer.
        for (i, (_, client)) in good.iter_mut().enumerate() {
            for k in 0..3 {
                let cid = format!("g{which}-{i}-{k}");
                client
                    .send(&text(&cid, Some(victim.id), None))
                    .await
                    .unwrap();
            }
        }
        let cid = format!("bad{which}");
        let (frame, field) = poisoned(&cid, victim.id, which, &media);
        bad.send(&frame).await.unwrap();
        let error = answer(&mut bad, &cid, WAIT)
            .await
            .unwrap()
            .expect_err("a poisoned message was acked");
        assert_names_field(&error, &cid, field);
        for (i, (_, client)) in good.iter_mut().enumerate() {
            for k in 0..3 {
                let cid = format!("g{which}-{i}-{k}");
                let outcome = answer(client, &cid, WAIT).await.unwrap();
                assert!(
                    outcome.is_ok(),
                    "a good message sent alongside a poisoned {field} was refused: {outcome:?}"
                );
                good_cids.push(cid);
            }
        }
        // The poisoned sender's connection keeps working.
        acked(
            &mut bad,
            &text(&format!("after{which}"), Some(victim.id), None),
        )
        .await;
    }
    let bad_cids: Vec<String> = (0..7).map(|w| format!("bad{w}")).collect();
    assert_eq!(
        stored_with_cids(&sql, attacker.id, &bad_cids).await,
        0,
        "nothing poisoned is stored"
    );

    // REST: fields the database would refuse are refused as bad input (400), naming the field — not 503.
    let mut answers = Vec::new();
    answers.push((
        "display_name",
        status(
            &cluster,
            0,
            &attacker,
            "PATCH",
            "/v1/users/me",
            Some(json!({"display_name": "Eve\u{0}"})),
        )
        .await,
    ));
    answers.push((
        "title",
        status(
            &cluster,
            0,
            &attacker,
            "POST",
            "/v1/groups",
            Some(json!({"title": "club\u{0}", "members": []})),
        )
        .await,
    ));
    let (_, club) = status(
        &cluster,
        0,
        &attacker,
        "POST",
        "/v1/groups",
        Some(json!({"title": "club", "members": []})),
    )
    .await;
    let rename = format!("/v1/groups/{}", club["id"]);
    answers.push((
        "title",
        status(
            &cluster,
            0,
            &attacker,
            "PATCH",
            &rename,
            Some(json!({"title": "cl\u{0}ub"})),
        )
        .await,
    ));
    answers.push((
        "note",
        status(
            &cluster,
            0,
            &attacker,
            "POST",
            "/v1/friends/requests",
            Some(json!({"user": victim.id, "note": "hi\u{0}"})),
        )
        .await,
    ));
    for (field, (code, body)) in answers {
        let text = body["message"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .replace(' ', "_");
        assert_eq!(code, 400, "a U+0000 in {field}: {body}");
        assert!(
            text.contains(field) || body["error"].as_str().is_some_and(|e| e.contains(field)),
            "the refusal names {field}: {body}"
        );
    }
}

/// The poison test: 20 users sending concurrently through one node (one writer) while another user sends messages
/// with U+0000 in a field at random times. Every good message is acknowledged and stored; every bad one is answered
/// `invalid_request`, `retry: false`, naming the field, and nothing of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_never_fail_anyone_elses() {
    const SENDERS: usize = 20;
    const PER_SENDER: usize = 40;
    const WINDOW: usize = 8;
    let cluster = Arc::new(
        Cluster::start_with(1, ClusterOptions::default().arg("writers", 1))
            .await
            .unwrap(),
    );
    let mut users = Vec::new();
    for i in 0..SENDERS {
        users.push(cluster.user(&format!("poison-good{i}")).await.unwrap());
    }
    let attacker = cluster.user("poison-bad").await.unwrap();
    let media = upload_pdf(&cluster, &attacker).await;
    let done = Arc::new(AtomicBool::new(false));
    let mut senders = tokio::task::JoinSet::new();
    for (i, user) in users.iter().enumerate() {
        let to = users[(i + 1) % SENDERS].id;
        let mut client = cluster.connect(0, user, "phone").await.unwrap();
        senders.spawn(async move {
            let mut refused = Vec::new();
            for window in 0..PER_SENDER / WINDOW {
                let cids: Vec<String> = (0..WINDOW)
                    .map(|k| format!("m{}", window * WINDOW + k))
                    .collect();
                for cid in &cids {
                    client.send(&text(cid, Some(to), None)).await.unwrap();
                }
                for cid in &cids {
                    if let Err(error) = answer(&mut client, cid, WAIT).await.unwrap() {
                        refused.push(error);
                    }
                }
            }
            refused
        });
    }
    let mut bad = cluster.connect(0, &attacker, "phone").await.unwrap();
    let victim = users[0].id;
    let poisoner = {
        let done = done.clone();
        let media = media.clone();
        tokio::spawn(async move {
            let (mut sent, mut answers) = (0, Vec::new());
            while !done.load(Ordering::SeqCst) || sent < 8 {
                let pause = rand::thread_rng().gen_range(0..15);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let cid = format!("bad{sent}");
                let (frame, field) = poisoned(&cid, victim, sent, &media);
                bad.send(&frame).await.unwrap();
                answers.push((
                    cid.clone(),
                    field,
                    answer(&mut bad, &cid, WAIT).await.unwrap(),
                ));
                sent += 1;
            }
            answers
        })
    };
    let mut refused = Vec::new();
    while let Some(result) = senders.join_next().await {
        refused.extend(result.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    let poisoned = poisoner.await.unwrap();
    assert!(
        refused.is_empty(),
        "{} of {} good messages were refused while poisoned ones were sent: first {:?}",
        refused.len(),
        SENDERS * PER_SENDER,
        refused.first()
    );
    let sql = cluster.sql().await.unwrap();
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let stored: i64 = sql
        .query_one(
            "SELECT count(*) FROM messages WHERE sender = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored,
        (SENDERS * PER_SENDER) as i64,
        "every good message is stored once"
    );
    let bad_stored: i64 = sql
        .query_one(
            "SELECT count(*) FROM messages WHERE sender = $1",
            &[&attacker.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        bad_stored,
        0,
        "nothing of the {} poisoned messages is stored",
        poisoned.len()
    );
    for (cid, field, outcome) in &poisoned {
        let error = outcome.as_ref().expect_err("a poisoned message was acked");
        assert_names_field(error, cid, field);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Groups need consent: friends are added, anyone else is invited; someone who blocked you never sees it.
// ---------------------------------------------------------------------------------------------------------------

fn ids(list: &Value) -> BTreeSet<i64> {
    list.as_array()
        .map(|items| items.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

fn invitations(list: &Value) -> Vec<i64> {
    list["invitations"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["group"].as_i64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn groups_need_consent_and_blockers_never_see_the_invitation() {
    let cluster = Cluster::start_with(2, friendship_required()).await.unwrap();
    let owner = cluster.user("g-owner").await.unwrap();
    let friend = cluster.user("g-friend").await.unwrap();
    let stranger = cluster.user("g-stranger").await.unwrap();
    let blocker = cluster.user("g-blocker").await.unwrap();
    let late = cluster.user("g-late").await.unwrap();
    cluster.befriend(&owner, &friend).await.unwrap();
    let (code, _) = status(
        &cluster,
        0,
        &blocker,
        "PUT",
        &format!("/v1/blocks/{}", owner.id),
        None,
    )
    .await;
    assert_eq!(code, 204);
    let mut oc = cluster.connect(1, &owner, "phone").await.unwrap();
    let mut fc = cluster.connect(0, &friend, "phone").await.unwrap();
    let mut sc = cluster.connect(0, &stranger, "phone").await.unwrap();
    let mut kc = cluster.connect(0, &blocker, "phone").await.unwrap();

    let (code, created) = status(
        &cluster,
        1,
        &owner,
        "POST",
        "/v1/groups",
        Some(json!({"title": "book club", "members": [friend.id, stranger.id, blocker.id]})),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let group = created["id"].as_i64().unwrap();
    assert_eq!(
        ids(&created["members"]),
        BTreeSet::from([owner.id, friend.id]),
        "only the friend is added: {created}"
    );
    assert_eq!(
        ids(&created["invited"]),
        BTreeSet::from([stranger.id, blocker.id]),
        "the others are invited: {created}"
    );

    // The stranger is told at once and sees the invitation; the blocker sees nothing at all.
    until(&mut sc, WAIT, |f| {
        matches!(f, ServerFrame::Notice(n) if n.kind == "group_invitation" && n.user == owner.id && n.conv == Some(group))
            .then_some(())
    })
    .await
    .expect("the invitee gets a group_invitation notice");
    let (code, list) = status(&cluster, 1, &stranger, "GET", "/v1/invitations", None).await;
    assert_eq!((code, invitations(&list)), (200, vec![group]), "{list}");
    let invitation = &list["invitations"][0];
    assert_eq!(
        (invitation["from"].as_i64(), invitation["title"].as_str()),
        (Some(owner.id), Some("book club"))
    );
    assert!(invitation["created_ms"].is_i64(), "{invitation}");
    let (code, list) = status(&cluster, 1, &blocker, "GET", "/v1/invitations", None).await;
    assert_eq!(
        (code, invitations(&list)),
        (200, vec![]),
        "the blocker never sees it: {list}"
    );
    let noticed = within(&mut kc, QUIET, |f| {
        matches!(f, ServerFrame::Notice(n) if n.kind == "group_invitation").then_some(())
    })
    .await
    .unwrap();
    assert_eq!(noticed, None, "the blocker got a notice");

    // Only members get the group's messages; the invited are not members yet.
    let first = acked(&mut oc, &text("hello-all", None, Some(group))).await;
    until(&mut fc, WAIT, |f| {
        matches!(f, ServerFrame::Msg(m) if m.cid == "hello-all").then_some(())
    })
    .await
    .unwrap();
    for (who, client) in [("stranger", &mut sc), ("blocker", &mut kc)] {
        let got = within(client, QUIET, |f| {
            matches!(f, ServerFrame::Msg(m) if m.conv == group).then_some(())
        })
        .await
        .unwrap();
        assert_eq!(got, None, "the invited {who} received a group message");
    }
    sc.send(&ClientFrame::Sync(SyncRequest {
        rid: 7,
        conv: group,
        after_seq: 0,
        limit: 10,
    }))
    .await
    .unwrap();
    let refused = until(&mut sc, WAIT, |f| match f {
        ServerFrame::Error(e) if e.rid == Some(7) => Some(e.code),
        ServerFrame::Synced(s) if s.rid == 7 => Some(ErrorCode::Internal),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        refused,
        ErrorCode::NotMember,
        "an invitee may not sync the group"
    );
    let (code, _) = status(
        &cluster,
        1,
        &blocker,
        "POST",
        &format!("/v1/invitations/{group}/accept"),
        None,
    )
    .await;
    assert_eq!(code, 404, "the blocker has no invitation to accept");

    // Accepting (through node 1) makes the stranger a member at once, on node 0 too.
    let (code, body) = status(
        &cluster,
        1,
        &stranger,
        "POST",
        &format!("/v1/invitations/{group}/accept"),
        None,
    )
    .await;
    assert_eq!((code, body["id"].as_i64()), (200, Some(group)), "{body}");
    let synced = {
        sc.send(&ClientFrame::Sync(SyncRequest {
            rid: 8,
            conv: group,
            after_seq: 0,
            limit: 50,
        }))
        .await
        .unwrap();
        until(&mut sc, WAIT, |f| match f {
            ServerFrame::Synced(s) if s.rid == 8 => Some(Ok(s.clone())),
            ServerFrame::Error(e) if e.rid == Some(8) => Some(Err(e.clone())),
            _ => None,
        })
        .await
        .unwrap()
        .expect("a member may sync")
    };
    assert!(
        synced.msgs.iter().any(|m| m.seq == first.seq),
        "the member sees the history"
    );
    assert!(
        synced.msgs.iter().any(|m| m.kind == kinds::SYSTEM
            && m.attrs
                .as_ref()
                .is_some_and(|a| a.event.as_deref() == Some("members_added")
                    && a.users.as_ref().is_some_and(|u| u.contains(&stranger.id)))),
        "accepting records members_added with the new member"
    );
    let (code, list) = status(&cluster, 0, &stranger, "GET", "/v1/invitations", None).await;
    assert_eq!(
        (code, invitations(&list)),
        (200, vec![]),
        "an accepted invitation is gone: {list}"
    );
    acked(&mut oc, &text("welcome", None, Some(group))).await;
    until(&mut sc, WAIT, |f| {
        matches!(f, ServerFrame::Msg(m) if m.cid == "welcome").then_some(())
    })
    .await
    .unwrap();

    // Adding follows the same rule, for any member: a stranger is invited and may decline; a blocker is "invited"
    // without ever knowing.
    let (code, added) = status(
        &cluster,
        0,
        &friend,
        "POST",
        &format!("/v1/groups/{group}/members"),
        Some(json!({"users": [late.id]})),
    )
    .await;
    assert_eq!(code, 200, "{added}");
    assert_eq!(
        (ids(&added["added"]), ids(&added["invited"])),
        (BTreeSet::new(), BTreeSet::from([late.id])),
        "{added}"
    );
    let (code, _) = status(
        &cluster,
        1,
        &late,
        "POST",
        &format!("/v1/invitations/{group}/decline"),
        None,
    )
    .await;
    assert_eq!(code, 204);
    let (code, _) = status(
        &cluster,
        1,
        &late,
        "POST",
        &format!("/v1/invitations/{group}/decline"),
        None,
    )
    .await;
    assert_eq!(code, 404, "a declined invitation is gone");
    let (code, _) = status(
        &cluster,
        1,
        &late,
        "POST",
        &format!("/v1/invitations/{group}/accept"),
        None,
    )
    .await;
    assert_eq!(code, 404, "a declined invitation cannot be accepted");
    let (code, _) = status(
        &cluster,
        1,
        &late,
        "GET",
        &format!("/v1/conversations/{group}/messages"),
        None,
    )
    .await;
    assert_eq!(code, 404, "who declined is not a member");

    let (code, again) = status(
        &cluster,
        1,
        &owner,
        "POST",
        &format!("/v1/groups/{group}/members"),
        Some(json!({"users": [blocker.id]})),
    )
    .await;
    assert_eq!(code, 200, "{again}");
    assert!(
        ids(&again["invited"]).contains(&blocker.id) && !ids(&again["added"]).contains(&blocker.id),
        "{again}"
    );
    let (_, list) = status(&cluster, 0, &blocker, "GET", "/v1/invitations", None).await;
    assert_eq!(
        invitations(&list),
        Vec::<i64>::new(),
        "the blocker never sees it: {list}"
    );
    let (code, _) = status(
        &cluster,
        0,
        &blocker,
        "GET",
        &format!("/v1/conversations/{group}/messages"),
        None,
    )
    .await;
    assert_eq!(code, 404);

    // An invitation from someone the invitee blocks afterwards disappears: not listed, not acceptable.
    let second = cluster.user("g-second").await.unwrap();
    let path = format!("/v1/groups/{group}/members");
    let (code, body) = status(
        &cluster,
        0,
        &owner,
        "POST",
        &path,
        Some(json!({"users": [second.id]})),
    )
    .await;
    assert_eq!(
        (code, ids(&body["invited"])),
        (200, BTreeSet::from([second.id])),
        "{body}"
    );
    let (_, list) = status(&cluster, 1, &second, "GET", "/v1/invitations", None).await;
    assert_eq!(invitations(&list), vec![group], "{list}");
    let block = format!("/v1/blocks/{}", owner.id);
    assert_eq!(
        status(&cluster, 0, &second, "PUT", &block, None).await.0,
        204
    );
    let (_, list) = status(&cluster, 1, &second, "GET", "/v1/invitations", None).await;
    assert_eq!(
        invitations(&list),
        Vec::<i64>::new(),
        "an invitation from a blocked user: {list}"
    );
    let accept = format!("/v1/invitations/{group}/accept");
    assert_eq!(
        status(&cluster, 1, &second, "POST", &accept, None).await.0,
        404
    );

    // Already-members are ignored; admins remove plain members, not the owner.
    let members = format!("/v1/groups/{group}/members");
    let (code, body) = status(
        &cluster,
        1,
        &owner,
        "POST",
        &members,
        Some(json!({"users": [friend.id]})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        ids(&body["added"]).is_empty() && ids(&body["invited"]).is_empty(),
        "{body}"
    );
    let admins = format!("/v1/groups/{group}/admins/{}", friend.id);
    assert_eq!(
        status(&cluster, 0, &owner, "PUT", &admins, None).await.0,
        200
    );
    let remove = |user: i64| format!("/v1/groups/{group}/members/{user}");
    assert_eq!(
        status(&cluster, 1, &friend, "DELETE", &remove(owner.id), None)
            .await
            .0,
        403
    );
    assert_eq!(
        status(&cluster, 1, &friend, "DELETE", &remove(stranger.id), None)
            .await
            .0,
        204
    );
    assert_eq!(
        status(&cluster, 1, &stranger, "DELETE", &remove(friend.id), None)
            .await
            .0,
        404
    );

    // Users that do not exist are refused as such.
    let (code, body) = status(
        &cluster,
        1,
        &owner,
        "POST",
        "/v1/groups",
        Some(json!({"title": "ghosts", "members": [i64::MAX - 7]})),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("unknown_user")),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 4. The login throttle counts atomically.
// ---------------------------------------------------------------------------------------------------------------

async fn login(addr: SocketAddr, name: &str, password: &str) -> u16 {
    let body = json!({"username": name, "password": password});
    let (code, _) = benchmarks::client::http_json(addr, "POST", "/v1/sessions", Some(body))
        .await
        .unwrap();
    code.as_u16()
}

#[tokio::test]
async fn concurrent_wrong_passwords_never_pass_the_failure_limit() {
    // The default limit: 10 failures per username.
    let cluster = Cluster::start(2).await.unwrap();
    let victim = cluster.user("race-victim").await.unwrap();
    let attempts = (0..20).map(|i| login(cluster.addr(i % 2), &victim.name, "wrong password"));
    let answers = futures_join_all(attempts).await;
    let checked = answers.iter().filter(|&&s| s == 401).count();
    let throttled = answers.iter().filter(|&&s| s == 429).count();
    assert_eq!(checked + throttled, 20, "only 401 or 429: {answers:?}");
    assert!(checked <= 10, "{checked} of 20 concurrent wrong passwords were checked against a limit of 10: {answers:?}");
    assert_eq!(
        login(cluster.addr(1), &victim.name, "correct horse battery").await,
        429
    );
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let futures: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut pending: Vec<_> = futures.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(index, future)| match future.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => {
                outputs[*index] = Some(output);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// 5. The typing throttle cannot be reset.
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_typing_throttle_survives_unknown_conversation_ids() {
    let cluster = Cluster::start(1).await.unwrap();
    let a = cluster.user("typist").await.unwrap();
    let b = cluster.user("reader").await.unwrap();
    let mut ac = cluster.connect(0, &a, "phone").await.unwrap();
    let mut bc = cluster.connect(0, &b, "phone").await.unwrap();
    let conv = acked(&mut ac, &text("hi", Some(b.id), None)).await.conv;
    let started = Instant::now();
    for round in 0..10i64 {
        ac.send(&ClientFrame::Typing(TypingRequest { conv }))
            .await
            .unwrap();
        for k in 0..70i64 {
            let unknown = 9_000_000_000_000 + round * 1000 + k;
            ac.send(&ClientFrame::Typing(TypingRequest { conv: unknown }))
                .await
                .unwrap();
        }
    }
    let elapsed = started.elapsed();
    let mut relayed = 0;
    while within(&mut bc, Duration::from_millis(1500), |f| {
        matches!(f, ServerFrame::Typing(t) if t.conv == conv && t.user == a.id).then_some(())
    })
    .await
    .unwrap()
    .is_some()
    {
        relayed += 1;
    }
    let allowed = 1 + elapsed.as_secs() as usize;
    assert!(
        (1..=allowed).contains(&relayed),
        "{relayed} typing events relayed for 10 typings within {elapsed:?} (at most 1 per second: {allowed})"
    );
    let error = bare_error(&mut ac, WAIT).await.unwrap();
    assert_eq!(
        error.code,
        ErrorCode::NotMember,
        "an unknown conversation is answered not_member"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Friendship and group membership changes are read-your-writes across nodes.
// ---------------------------------------------------------------------------------------------------------------

/// Both users of a pair keep sending to each other through node 1 while `change` runs through node 0; every send
/// written after the change returned must be answered `expected` (None: acked).
async fn both_ways_during(
    pair: &mut (TestUser, TestUser, TestClient, TestClient),
    change: impl std::future::Future<Output = ()>,
    phase: &str,
    expected: Option<ErrorCode>,
) -> Vec<String> {
    let (a, b, ac, bc) = pair;
    let changed = AtomicBool::new(false);
    let (to_b, to_a, ()) = tokio::join!(
        stream_until_after(ac, &changed, 3, |n| text(
            &format!("{phase}-ab{n}"),
            Some(b.id),
            None
        )),
        stream_until_after(bc, &changed, 3, |n| text(
            &format!("{phase}-ba{n}"),
            Some(a.id),
            None
        )),
        async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            change.await;
            changed.store(true, Ordering::SeqCst);
        }
    );
    let mut wrong = Vec::new();
    for (direction, tries) in [("A→B", to_b), ("B→A", to_a)] {
        for (index, t) in tries.iter().enumerate().filter(|(_, t)| t.after_change) {
            let got = t.outcome.as_ref().err().map(|e| (e.code, e.retry));
            if got != expected.map(|code| (code, false)) {
                wrong.push(format!(
                    "{phase} {direction} send #{index} ({}) after the change: {:?}",
                    t.cid, t.outcome
                ));
            }
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friendship_changes_hold_on_the_other_node_for_the_very_next_send() {
    let cluster = Arc::new(Cluster::start_with(2, friendship_required()).await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..12 {
        let cluster = cluster.clone();
        tasks.spawn(async move {
            let a = cluster.user(&format!("ryw{p}-a")).await.unwrap();
            let b = cluster.user(&format!("ryw{p}-b")).await.unwrap();
            let ac = cluster.connect(1, &a, "phone").await.unwrap();
            let bc = cluster.connect(1, &b, "phone").await.unwrap();
            let (code, body) = status(
                &cluster,
                0,
                &a,
                "POST",
                "/v1/friends/requests",
                Some(json!({"user": b.id})),
            )
            .await;
            assert_eq!(code, 201, "{body}");
            let request = body["id"].as_i64().unwrap();
            let mut pair = (a.clone(), b.clone(), ac, bc);
            let mut wrong = Vec::new();
            let c = &cluster;
            wrong.extend(
                both_ways_during(
                    &mut pair,
                    async {
                        let (code, body) = status(
                            c,
                            0,
                            &b,
                            "POST",
                            &format!("/v1/friends/requests/{request}/accept"),
                            None,
                        )
                        .await;
                        assert_eq!(code, 200, "{body}");
                    },
                    "accept",
                    None,
                )
                .await,
            );
            wrong.extend(
                both_ways_during(
                    &mut pair,
                    async {
                        assert_eq!(
                            status(c, 0, &b, "PUT", &format!("/v1/blocks/{}", a.id), None)
                                .await
                                .0,
                            204
                        );
                    },
                    "block",
                    Some(ErrorCode::Blocked),
                )
                .await,
            );
            wrong.extend(
                both_ways_during(
                    &mut pair,
                    async {
                        assert_eq!(
                            status(c, 0, &b, "DELETE", &format!("/v1/blocks/{}", a.id), None)
                                .await
                                .0,
                            204
                        );
                    },
                    "unblock",
                    None,
                )
                .await,
            );
            wrong.extend(
                both_ways_during(
                    &mut pair,
                    async {
                        assert_eq!(
                            status(c, 0, &a, "DELETE", &format!("/v1/friends/{}", b.id), None)
                                .await
                                .0,
                            204
                        );
                    },
                    "unfriend",
                    Some(ErrorCode::NotFriends),
                )
                .await,
            );
            wrong
        });
    }
    let mut wrong = Vec::new();
    while let Some(result) = tasks.join_next().await {
        wrong.extend(result.unwrap());
    }
    assert!(
        wrong.is_empty(),
        "{} sends after a change saw the old state:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// The member keeps reading the group's history through node 1 until `after` reads were made after `changed` was
/// set; returns (made after the change, status) per read.
async fn read_history_until_after(
    cluster: &Cluster,
    member: &TestUser,
    conv: ConvId,
    changed: &AtomicBool,
    after: usize,
) -> Vec<(bool, u16)> {
    let path = format!("/v1/conversations/{conv}/messages?limit=1");
    let mut reads = Vec::new();
    let mut made_after = 0;
    while made_after < after {
        let was = changed.load(Ordering::SeqCst);
        let (code, _) = status(cluster, 1, member, "GET", &path, None).await;
        reads.push((was, code));
        made_after += usize::from(was);
    }
    reads
}

/// What a membership change is called in reports, the prefix of the owner's cids meanwhile, and whether the user
/// is a member afterwards.
struct Phase {
    tag: String,
    cid_prefix: String,
    member_after: bool,
}

/// One membership change of `removal_run`, made through node 0 while the member reads the history and the owner
/// posts, both through node 1. Returns what went wrong.
async fn membership_phase(
    cluster: &Cluster,
    member: &TestUser,
    owner_client: &mut TestClient,
    conv: ConvId,
    phase: Phase,
    change: impl std::future::Future<Output = ()>,
) -> (Vec<String>, Vec<String>) {
    let Phase {
        tag,
        cid_prefix,
        member_after,
    } = phase;
    let changed = AtomicBool::new(false);
    let (reads, more_reads, sends, ()) = tokio::join!(
        read_history_until_after(cluster, member, conv, &changed, 3),
        read_history_until_after(cluster, member, conv, &changed, 3),
        stream_until_after(owner_client, &changed, 3, |n| {
            text(&format!("{cid_prefix}-{n}"), None, Some(conv))
        }),
        async {
            change.await;
            changed.store(true, Ordering::SeqCst);
        }
    );
    let expected = if member_after { 200 } else { 404 };
    let mut wrong = Vec::new();
    for (index, (after, code)) in reads.iter().chain(&more_reads).enumerate() {
        if *after && *code != expected {
            wrong.push(format!(
                "{tag}: history read #{index}, made after the change, answered {code}"
            ));
        }
    }
    for t in sends.iter().filter(|t| t.after_change) {
        if let Err(error) = &t.outcome {
            wrong.push(format!(
                "{tag}: the owner's {} after the change was refused: {error:?}",
                t.cid
            ));
        }
    }
    let posted_after = sends
        .iter()
        .filter(|t| t.after_change)
        .map(|t| t.cid.clone())
        .collect();
    (wrong, posted_after)
}

/// One group of `group_membership_changes_hold_on_the_other_node_for_the_very_next_request`: the owner adds the
/// member and the member leaves (or is removed) again, three times; returns what went wrong.
async fn removal_run(cluster: Arc<Cluster>, g: usize) -> Vec<String> {
    let owner = cluster.user(&format!("rm{g}-owner")).await.unwrap();
    let member = cluster.user(&format!("rm{g}-member")).await.unwrap();
    cluster.befriend(&owner, &member).await.unwrap();
    let (code, group) = status(
        &cluster,
        0,
        &owner,
        "POST",
        "/v1/groups",
        Some(json!({"title": "busy", "members": []})),
    )
    .await;
    assert_eq!(code, 201, "{group}");
    let conv = group["id"].as_i64().unwrap();
    let leaves = g % 2 == 1;
    let how = if leaves { "left" } else { "was removed" };
    let mut oc = cluster.connect(1, &owner, "phone").await.unwrap();
    let mut mc = cluster.connect(1, &member, "phone").await.unwrap();
    let members = format!("/v1/groups/{conv}/members");
    let mut wrong = Vec::new();
    for cycle in 0..3 {
        let (mut found, _) = membership_phase(
            &cluster,
            &member,
            &mut oc,
            conv,
            Phase {
                tag: format!("group {g} cycle {cycle}, the member joined"),
                cid_prefix: format!("g{g}c{cycle}in"),
                member_after: true,
            },
            async {
                let add = json!({"users": [member.id]});
                let (code, body) = status(&cluster, 0, &owner, "POST", &members, Some(add)).await;
                assert!(
                    code == 200 && ids(&body["added"]).contains(&member.id),
                    "{body}"
                );
            },
        )
        .await;
        wrong.append(&mut found);
        let tag = format!("group {g} cycle {cycle}, the member {how}");
        let (mut found, posted_after) = membership_phase(
            &cluster,
            &member,
            &mut oc,
            conv,
            Phase {
                tag: tag.clone(),
                cid_prefix: format!("g{g}c{cycle}out"),
                member_after: false,
            },
            async {
                let code = if leaves {
                    status(
                        &cluster,
                        0,
                        &member,
                        "POST",
                        &format!("/v1/groups/{conv}/leave"),
                        None,
                    )
                    .await
                    .0
                } else {
                    let path = format!("/v1/groups/{conv}/members/{}", member.id);
                    status(&cluster, 0, &owner, "DELETE", &path, None).await.0
                };
                assert_eq!(code, 204);
            },
        )
        .await;
        wrong.append(&mut found);
        // Nothing sent after the change reaches whoever is no longer in the group.
        while let Some(cid) = within(&mut mc, QUIET, |f| match f {
            ServerFrame::Msg(m) if m.conv == conv => Some(m.cid.clone()),
            _ => None,
        })
        .await
        .unwrap()
        {
            if posted_after.contains(&cid) {
                wrong.push(format!(
                    "{tag}: the member received {cid}, sent after the change"
                ));
            }
        }
        if !wrong.is_empty() {
            // Say whether node 1 corrects itself or keeps the old member list.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let path = format!("/v1/conversations/{conv}/messages");
            let (code, _) = status(&cluster, 1, &member, "GET", &path, None).await;
            wrong.push(format!(
                "group {g}: 2 s later, the member's history through node 1 answers {code}"
            ));
            break;
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_membership_changes_hold_on_the_other_node_for_the_very_next_request() {
    let cluster = Arc::new(Cluster::start_with(2, friendship_required()).await.unwrap());
    let mut runs = tokio::task::JoinSet::new();
    for g in 0..6 {
        runs.spawn(removal_run(cluster.clone(), g));
    }
    let mut wrong = Vec::new();
    while let Some(result) = runs.join_next().await {
        wrong.extend(result.unwrap());
    }
    assert!(
        wrong.is_empty(),
        "{} requests after a membership change saw the old state:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 7. Small leaks.
// ---------------------------------------------------------------------------------------------------------------

async fn upload(addr: SocketAddr, user: &TestUser, mime: &str, bytes: Vec<u8>) -> (u16, Value) {
    let (code, body) = benchmarks::client::http_raw(
        addr,
        "POST",
        "/v1/media",
        Some(&user.token),
        mime,
        bytes.into(),
    )
    .await
    .unwrap();
    (
        code.as_u16(),
        serde_json::from_slice(&body).unwrap_or_default(),
    )
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 5 % 256) as u8, (y * 9 % 256) as u8, 77])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[tokio::test]
async fn uploads_answer_alike_whether_or_not_the_bytes_exist_and_are_type_checked_every_time() {
    let cluster = Cluster::start(2).await.unwrap();
    let first = cluster.user("up-first").await.unwrap();
    let second = cluster.user("up-second").await.unwrap();
    let private = format!(
        "%PDF-1.4 someone's private contract {:032x}",
        rand::random::<u128>()
    )
    .into_bytes();

    let (fresh_status, fresh) =
        upload(cluster.addr(0), &first, "application/pdf", private.clone()).await;
    assert!(fresh_status == 200 || fresh_status == 201, "{fresh}");
    let (again_status, again) =
        upload(cluster.addr(1), &second, "application/pdf", private.clone()).await;
    assert_eq!(
        again_status, fresh_status,
        "the same bytes again answer with the same status: {again} vs {fresh}"
    );
    assert_eq!(
        keys(&again),
        keys(&fresh),
        "and the same fields: {again} vs {fresh}"
    );
    assert_eq!(
        again["deduplicated"], fresh["deduplicated"],
        "nothing says the bytes existed: {again} vs {fresh}"
    );
    let (other_status, other) = upload(
        cluster.addr(1),
        &second,
        "application/pdf",
        format!("%PDF-1.4 {:032x}", rand::random::<u128>()).into_bytes(),
    )
    .await;
    assert_eq!(
        (other_status, keys(&other)),
        (fresh_status, keys(&fresh)),
        "a fresh upload looks the same: {other}"
    );

    // The declared type is checked against the bytes every time: the PDF's bytes are no image, known or not.
    let (mismatch_status, mismatch) = upload(
        cluster.addr(0),
        &second,
        "image/png",
        format!("%PDF-1.4 {:032x}", rand::random::<u128>()).into_bytes(),
    )
    .await;
    assert_eq!(
        mismatch_status, 400,
        "a fresh mismatched upload: {mismatch}"
    );
    let (known_status, known) =
        upload(cluster.addr(0), &second, "image/png", private.clone()).await;
    assert_eq!(
        (known_status, &known["error"]),
        (mismatch_status, &mismatch["error"]),
        "known bytes declared as another type are refused like unknown ones: {known}"
    );

    // And a real image re-uploaded by someone else still answers like a fresh one.
    let picture = png(40, 30);
    let (s1, b1) = upload(cluster.addr(0), &first, "image/png", picture.clone()).await;
    let (s2, b2) = upload(cluster.addr(1), &second, "image/png", picture).await;
    assert_eq!(
        (s2, keys(&b2), &b2["deduplicated"]),
        (s1, keys(&b1), &b1["deduplicated"]),
        "{b2} vs {b1}"
    );
}

#[tokio::test]
async fn a_friend_request_to_someone_who_blocked_you_answers_like_any_other() {
    let cluster = Cluster::start_with(2, friendship_required()).await.unwrap();
    let blocked = cluster.user("fr-blocked").await.unwrap();
    let other = cluster.user("fr-other").await.unwrap();
    let target = cluster.user("fr-target").await.unwrap();
    let mut tc = cluster.connect(1, &target, "phone").await.unwrap();
    assert_eq!(
        status(
            &cluster,
            0,
            &target,
            "PUT",
            &format!("/v1/blocks/{}", blocked.id),
            None
        )
        .await
        .0,
        204
    );
    let request = json!({"user": target.id, "note": "hello"});
    let (s1, b1) = status(
        &cluster,
        0,
        &blocked,
        "POST",
        "/v1/friends/requests",
        Some(request.clone()),
    )
    .await;
    let (s2, b2) = status(
        &cluster,
        0,
        &other,
        "POST",
        "/v1/friends/requests",
        Some(request),
    )
    .await;
    assert_eq!(s2, 201, "{b2}");
    assert_eq!(
        (s1, keys(&b1)),
        (s2, keys(&b2)),
        "a blocked requester cannot tell: {b1} vs {b2}"
    );
    // The target sees the other request, never the blocked one.
    until(&mut tc, WAIT, |f| {
        matches!(f, ServerFrame::Notice(n) if n.kind == "friend_request" && n.user == other.id)
            .then_some(())
    })
    .await
    .unwrap();
    let leaked = within(&mut tc, QUIET, |f| {
        matches!(f, ServerFrame::Notice(n) if n.kind == "friend_request" && n.user == blocked.id)
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        leaked, None,
        "the target was told of a blocked user's request"
    );
    let (_, list) = status(&cluster, 1, &target, "GET", "/v1/friends/requests", None).await;
    let from: Vec<i64> = list["incoming"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["from"].as_i64())
        .collect();
    assert_eq!(from, vec![other.id], "{list}");
}

#[tokio::test]
async fn display_names_refuse_control_and_bidi_override_characters() {
    let cluster = Cluster::start(2).await.unwrap();
    let user = cluster.user("names").await.unwrap();
    for bad in [
        "gnp.\u{202E}exe",
        "bell\u{7}",
        "tab\there",
        "line\nbreak",
        "\u{1b}[31mred",
        "\u{2066}isolate\u{2069}",
        "mark\u{200F}",
        "\u{200E}mark",
        "\u{202A}embed",
        "del\u{7f}",
    ] {
        let (code, body) = status(
            &cluster,
            0,
            &user,
            "PATCH",
            "/v1/users/me",
            Some(json!({"display_name": bad})),
        )
        .await;
        assert_eq!(
            (code, body["error"].as_str()),
            (400, Some("bad_display_name")),
            "{bad:?}: {body}"
        );
    }
    for good in ["Zoë 李雷 🙂", "O'Brien-Smith", "مرحبا"] {
        let (code, body) = status(
            &cluster,
            0,
            &user,
            "PATCH",
            "/v1/users/me",
            Some(json!({"display_name": good})),
        )
        .await;
        assert_eq!(code, 200, "{good:?}: {body}");
        let (_, me) = status(&cluster, 1, &user, "GET", "/v1/users/me", None).await;
        assert_eq!(me["display_name"], good);
    }
}

/// A GET whose response headers matter.
async fn get_headers(addr: SocketAddr, path: &str, token: &str) -> (u16, hyper::HeaderMap) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let code = response.status().as_u16();
    let headers = response.headers().clone();
    let _ = response.into_body().collect().await;
    (code, headers)
}

#[tokio::test]
async fn media_downloads_say_nosniff_and_how_to_show_them() {
    let cluster = Cluster::start(2).await.unwrap();
    let user = cluster.user("dl").await.unwrap();
    let (_, image) = upload(cluster.addr(0), &user, "image/png", png(64, 48)).await;
    let image = image["hash"].as_str().unwrap().to_string();
    let (_, pdf) = upload(
        cluster.addr(0),
        &user,
        "application/pdf",
        b"%PDF-1.4 <script>alert(1)</script>".to_vec(),
    )
    .await;
    let pdf = pdf["hash"].as_str().unwrap().to_string();
    let header = |headers: &hyper::HeaderMap, name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    for (path, inline) in [
        (format!("/v1/media/{image}"), true),
        (format!("/v1/media/{image}/thumb"), true),
        (format!("/v1/media/{pdf}"), false),
    ] {
        let (code, headers) = get_headers(cluster.addr(1), &path, &user.token).await;
        assert_eq!(code, 200, "{path}");
        assert_eq!(
            header(&headers, "x-content-type-options"),
            "nosniff",
            "{path}: {headers:?}"
        );
        let disposition = header(&headers, "content-disposition");
        if inline {
            assert!(
                disposition.starts_with("inline"),
                "{path}: an image is shown inline: {disposition:?}"
            );
        } else {
            assert!(
                disposition.starts_with("attachment"),
                "{path}: anything else is downloaded: {disposition:?}"
            );
        }
    }
    let (_, headers) =
        get_headers(cluster.addr(1), &format!("/v1/media/{image}"), &user.token).await;
    assert!(
        header(&headers, "content-disposition").contains(&format!("{image}.png")),
        "{headers:?}"
    );
}

#[tokio::test]
async fn rate_limit_refusals_queued_before_the_kick_are_delivered_before_it() {
    // One send at once and then one per 20 s; the 5th refusal within a minute closes.
    let options = ClusterOptions::default()
        .arg("send-rate", "0.05")
        .arg("send-burst", "1")
        .arg("send-strikes", "5")
        .arg("send-strike-window-secs", "60");
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let a = cluster.user("kicked").await.unwrap();
    let b = cluster.user("kick-target").await.unwrap();
    let mut client = cluster.connect(0, &a, "phone").await.unwrap();
    acked(&mut client, &text("ok", Some(b.id), None)).await;
    // Five sends written back to back, nothing read in between.
    for n in 1..=5 {
        client
            .send(&text(&format!("s{n}"), Some(b.id), None))
            .await
            .unwrap();
    }
    let mut refused = Vec::new();
    let mut kick = None;
    let close = loop {
        match client.next_incoming(WAIT).await.unwrap() {
            Incoming::Frame(ServerFrame::Error(e)) if e.code == ErrorCode::RateLimited => {
                assert!(kick.is_none(), "an error frame came after the kick");
                refused.push(e.cid.unwrap_or_default());
            }
            Incoming::Frame(ServerFrame::Kick(k)) => kick = Some(k.reason),
            Incoming::Frame(ServerFrame::Ack(ack)) => {
                panic!("a send over the limit was stored: {ack:?}")
            }
            Incoming::Frame(_) => {}
            Incoming::Closed(code, _) => break code,
        }
    };
    assert_eq!(
        refused,
        vec!["s1", "s2", "s3", "s4"],
        "every refusal before the kick is delivered, in order"
    );
    assert_eq!(
        (kick, close),
        (Some(KickReason::RateLimited), close_code::POLICY_VIOLATION)
    );
}

#[tokio::test]
async fn an_invalid_cid_is_echoed_so_the_client_can_match_the_refusal() {
    let cluster = Cluster::start(1).await.unwrap();
    let a = cluster.user("cid").await.unwrap();
    let b = cluster.user("cid-peer").await.unwrap();
    let mut client = cluster.connect(0, &a, "phone").await.unwrap();
    let ack = acked(&mut client, &text("fine", Some(b.id), None)).await;
    let long = "x".repeat(100);
    let accents = "é".repeat(40);
    let edge = format!("{}é", "a".repeat(63));
    let cases: Vec<(String, String)> = vec![
        ("has space".into(), "has space".into()),
        ("semi;colon".into(), "semi;colon".into()),
        (long, "x".repeat(64)),
        (accents, "é".repeat(32)),
        (edge, "a".repeat(63)),
    ];
    for (cid, echoed) in &cases {
        client
            .send(&ClientFrame::Send(Send {
                cid: cid.clone(),
                to: Some(b.id),
                conv: None,
                kind: kinds::TEXT.into(),
                body: "hello".into(),
                attrs: None,
            }))
            .await
            .unwrap();
        let error = until(&mut client, WAIT, |f| match f {
            ServerFrame::Error(e) if e.code == ErrorCode::InvalidRequest => Some(e.clone()),
            _ => None,
        })
        .await
        .unwrap();
        assert_eq!(
            (error.cid.as_deref(), error.retry),
            (Some(echoed.as_str()), false),
            "cid {cid:?}: {error:?}"
        );
    }
    client
        .send(&ClientFrame::Recall(RecallRequest {
            cid: "recall me".into(),
            conv: ack.conv,
            seq: ack.seq,
        }))
        .await
        .unwrap();
    let error = until(&mut client, WAIT, |f| match f {
        ServerFrame::Error(e) if e.code == ErrorCode::InvalidRequest => Some(e.clone()),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        error.cid.as_deref(),
        Some("recall me"),
        "a recall's invalid cid too: {error:?}"
    );
}
