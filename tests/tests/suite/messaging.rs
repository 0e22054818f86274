//! 1:1 messages across nodes: delivery after commit, offline sync, idempotency, ordering under two writers.

use std::collections::HashMap;
use std::time::Duration;

use common::frame::Msg;
use tests::client::WAIT;
use tests::Cluster;

#[tokio::test]
async fn cross_node_delivery_after_commit() {
    let cluster = Cluster::start(2).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let b = cluster.user("b").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let mut cb = cluster.connect(1, &b, "phone").await.unwrap();
    assert!(ca.hello.convs.is_empty());

    let sql = cluster.sql().await.unwrap();
    let ack = ca
        .send_and_ack(b.id, "first", "hello across nodes 👋")
        .await
        .unwrap();
    // The row is committed by the time the ack is out.
    let row = sql
        .query_one(
            "SELECT id, seq, body FROM messages WHERE sender = $1 AND cid = 'first'",
            &[&a.id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), ack.id);
    assert_eq!(row.get::<_, i64>(1), ack.seq);
    assert_eq!(row.get::<_, String>(2), "hello across nodes 👋");
    assert_eq!(ack.seq, 1);

    cb.wait_messages(ack.conv, 1, WAIT).await.unwrap();
    let msg: &Msg = &cb.convs[&ack.conv].msgs[&1];
    assert_eq!(
        (msg.id, msg.from, msg.body.as_str()),
        (ack.id, a.id, "hello across nodes 👋")
    );

    // And back.
    let back = cb.send_and_ack(a.id, "reply", "hi!").await.unwrap();
    assert_eq!((back.conv, back.seq), (ack.conv, 2));
    ca.wait_messages(ack.conv, 1, WAIT).await.unwrap();
    assert_eq!(ca.convs[&ack.conv].msgs[&2].body, "hi!");
}

#[tokio::test]
async fn offline_recipient_syncs_everything_in_order() {
    let cluster = Cluster::start(2).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let b = cluster.user("b").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    for i in 0..200 {
        ca.send_text(b.id, &format!("m{i}"), &format!("message {i}"))
            .await
            .unwrap();
    }
    for i in 0..200 {
        ca.wait_ack(&format!("m{i}"), WAIT).await.unwrap();
    }
    let conv = ca.acks["m0"].conv;

    let mut cb = cluster.connect(1, &b, "tablet").await.unwrap();
    let state = cb.hello.convs.iter().find(|c| c.conv == conv).unwrap();
    assert_eq!(
        (state.last_seq, state.read_seq, state.peer),
        (200, 0, Some(a.id))
    );
    cb.catch_up().await.unwrap();
    let log = &cb.convs[&conv];
    let bodies: Vec<String> = log.msgs.values().map(|m| m.body.clone()).collect();
    let expected: Vec<String> = (0..200).map(|i| format!("message {i}")).collect();
    assert_eq!(bodies, expected);
    assert_eq!(
        log.msgs.keys().copied().collect::<Vec<_>>(),
        (1..=200).collect::<Vec<i64>>()
    );

    // The sender's own read cursor moved with its messages.
    let mut ca2 = cluster.connect(1, &a, "laptop").await.unwrap();
    let mine = ca2.hello.convs.iter().find(|c| c.conv == conv).unwrap();
    assert_eq!(mine.read_seq, 200);
    ca2.drain(Duration::from_millis(100)).await.unwrap();
}

#[tokio::test]
async fn same_cid_makes_one_message() {
    let cluster = Cluster::start(2).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let b = cluster.user("b").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let first = ca.send_and_ack(b.id, "dup-1", "once").await.unwrap();
    ca.acks.clear();
    let second = ca.send_and_ack(b.id, "dup-1", "once").await.unwrap();
    assert_eq!(first, second);

    // Twice in flight at once (likely one batch) and once more through the other node.
    ca.send_text(b.id, "dup-2", "x").await.unwrap();
    ca.send_text(b.id, "dup-2", "x").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        if let common::ServerFrame::Ack(ack) = ca.next(WAIT).await.unwrap() {
            seen.push(ack);
        }
    }
    assert_eq!(seen[0], seen[1]);
    let mut ca_other = cluster.connect(1, &a, "laptop").await.unwrap();
    let third = ca_other.send_and_ack(b.id, "dup-2", "x").await.unwrap();
    assert_eq!(third, seen[0]);

    let sql = cluster.sql().await.unwrap();
    let count: i64 = sql
        .query_one("SELECT count(*) FROM messages WHERE sender = $1", &[&a.id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
}

#[tokio::test]
async fn senders_other_devices_receive_their_own_messages() {
    let cluster = Cluster::start(2).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let b = cluster.user("b").await.unwrap();
    let mut phone = cluster.connect(0, &a, "phone").await.unwrap();
    let mut laptop = cluster.connect(1, &a, "laptop").await.unwrap();
    let mut desk = cluster.connect(0, &a, "desk").await.unwrap();
    let mut cb = cluster.connect(1, &b, "phone").await.unwrap();
    let ack = phone
        .send_and_ack(b.id, "own-1", "from my phone")
        .await
        .unwrap();
    for client in [&mut laptop, &mut desk, &mut cb] {
        client.wait_messages(ack.conv, 1, WAIT).await.unwrap();
        let msg = &client.convs[&ack.conv].msgs[&1];
        assert_eq!((msg.from, msg.cid.as_str()), (a.id, "own-1"));
    }
    // The sending device gets the ack, not a copy.
    phone.drain(Duration::from_millis(300)).await.unwrap();
    assert!(phone.convs.get(&ack.conv).is_none_or(|c| c.msgs.is_empty()));
}

#[tokio::test]
async fn unknown_recipient_and_bad_sends_are_answered() {
    let cluster = Cluster::start(1).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    ca.send_text(999_999, "u1", "anyone?").await.unwrap();
    let error = ca.wait_error(Some("u1"), WAIT).await.unwrap();
    assert_eq!(error.code, common::ErrorCode::UnknownUser);
    ca.send_text(a.id, "bad cid with spaces", "x")
        .await
        .unwrap();
    assert_eq!(
        ca.wait_error(None, WAIT).await.unwrap().code,
        common::ErrorCode::InvalidRequest
    );
    let long = "x".repeat(16 * 1024 + 1);
    ca.send_text(a.id, "big", &long).await.unwrap();
    assert_eq!(
        ca.wait_error(Some("big"), WAIT).await.unwrap().code,
        common::ErrorCode::LimitExceeded
    );
    // A note to self works.
    let ack = ca
        .send_and_ack(a.id, "self", "remember the milk")
        .await
        .unwrap();
    assert_eq!(ack.seq, 1);
}

/// Two nodes write one conversation as fast as they can; observers on both nodes apply the client rules and must
/// see every message, in seq order, with no message arriving below a gap they already settled.
#[tokio::test]
async fn two_writers_one_conversation_keeps_seq_order() {
    let cluster = Cluster::start(2).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let b = cluster.user("b").await.unwrap();
    let mut wa = cluster.connect(0, &a, "writer").await.unwrap();
    let mut wb = cluster.connect(1, &b, "writer").await.unwrap();
    let mut observers = vec![
        cluster.connect(1, &a, "obs1").await.unwrap(),
        cluster.connect(0, &a, "obs0").await.unwrap(),
        cluster.connect(0, &b, "obs0").await.unwrap(),
        cluster.connect(1, &b, "obs1").await.unwrap(),
    ];
    const PER_WRITER: usize = 400;
    let writer_a = tokio::spawn(async move {
        for i in 0..PER_WRITER {
            wa.send_text(b.id, &format!("a{i}"), "from a")
                .await
                .unwrap();
        }
        for i in 0..PER_WRITER {
            wa.wait_ack(&format!("a{i}"), WAIT).await.unwrap();
        }
        wa
    });
    let writer_b = tokio::spawn(async move {
        for i in 0..PER_WRITER {
            wb.send_text(a.id, &format!("b{i}"), "from b")
                .await
                .unwrap();
        }
        for i in 0..PER_WRITER {
            wb.wait_ack(&format!("b{i}"), WAIT).await.unwrap();
        }
        wb
    });
    let watchers: Vec<_> = observers
        .drain(..)
        .map(|mut observer| {
            tokio::spawn(async move {
                observer.drain(Duration::from_millis(1500)).await.unwrap();
                observer
            })
        })
        .collect();
    let wa = writer_a.await.unwrap();
    let wb = writer_b.await.unwrap();
    let conv = wa.acks["a0"].conv;
    let mut acked: Vec<i64> = wa
        .acks
        .values()
        .chain(wb.acks.values())
        .map(|ack| ack.id)
        .collect();
    acked.sort_unstable();
    // Within each writer, seqs follow send order.
    for writer in [&wa, &wb] {
        let prefix = if writer.user == wa.user { "a" } else { "b" };
        let seqs: Vec<i64> = (0..PER_WRITER)
            .map(|i| writer.acks[&format!("{prefix}{i}")].seq)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "seqs of one sender out of send order"
        );
    }
    for watcher in watchers {
        let mut observer = watcher.await.unwrap();
        let known = observer.convs.get(&conv).map_or(0, |c| c.last_seq);
        observer.sync_after(conv, known).await.unwrap();
        let log = &observer.convs[&conv];
        assert_eq!(
            log.violations, 0,
            "observer {} saw a message below a settled gap",
            observer.device
        );
        let mut ids = observer.ids(conv);
        ids.sort_unstable();
        assert_eq!(ids, acked, "observer {} misses messages", observer.device);
        assert_eq!(log.msgs.len(), 2 * PER_WRITER);
        assert!(log
            .msgs
            .keys()
            .zip(log.msgs.keys().skip(1))
            .all(|(x, y)| x < y));
    }
}

/// Messages are hash-partitioned by conversation; the sync and history queries read exactly one partition.
#[tokio::test]
async fn sync_and_history_read_one_partition() {
    let cluster = Cluster::start(1).await.unwrap();
    let sql = cluster.sql().await.unwrap();
    let partitions: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'messages'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(partitions, 16);
    for query in [
        "EXPLAIN SELECT id FROM messages WHERE conv_id = 42 AND seq > 0 ORDER BY seq LIMIT 100",
        "EXPLAIN SELECT id FROM messages WHERE conv_id = 42 AND seq < 1000 ORDER BY seq DESC LIMIT 50",
    ] {
        let plan: Vec<String> = sql.query(query, &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        let plan = plan.join("\n");
        // One scan node, on one partition ("… on messages_pN messages").
        let scanned = plan.lines().filter(|line| line.contains(" on messages_p")).count();
        assert_eq!(scanned, 1, "{query} should touch one partition:\n{plan}");
    }
}

/// Every pair of a group of users writes its first message at the same moment, from both ends, through both nodes:
/// the writer checks each pair and creates its conversation inside the batches (several pairs per batch, the same
/// pair racing through two nodes). Every send is acknowledged, both ends of a pair land in one conversation, and
/// Postgres holds exactly one conversation with two members per pair.
#[tokio::test]
async fn first_contacts_in_one_burst_make_one_conversation_per_pair() {
    let cluster = Cluster::start(2).await.unwrap();
    const USERS: usize = 12;
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(cluster.user(&format!("burst{i}")).await.unwrap());
    }
    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        clients.push(cluster.connect(i % 2, user, "d").await.unwrap());
    }
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let ids = ids.clone();
            tokio::spawn(async move {
                for (j, &to) in ids.iter().enumerate() {
                    if j != i {
                        client.send_text(to, &format!("to{j}"), "hi").await.unwrap();
                    }
                }
                let mut convs = Vec::new();
                for (j, &to) in ids.iter().enumerate() {
                    if j != i {
                        let ack = client.wait_ack(&format!("to{j}"), WAIT).await.unwrap();
                        convs.push((to, ack.conv));
                    }
                }
                (ids[i], convs)
            })
        })
        .collect();
    let mut conv_of_pair: HashMap<(i64, i64), i64> = HashMap::new();
    for task in tasks {
        let (from, convs) = task.await.unwrap();
        for (to, conv) in convs {
            let key = (from.min(to), from.max(to));
            let seen = *conv_of_pair.entry(key).or_insert(conv);
            assert_eq!(
                seen, conv,
                "the two ends of pair {key:?} landed in different conversations"
            );
        }
    }
    assert_eq!(conv_of_pair.len(), USERS * (USERS - 1) / 2);
    let sql = cluster.sql().await.unwrap();
    let row = sql
        .query_one(
            "SELECT count(DISTINCT c.id), count(*) FROM conversations c
             JOIN conversation_members m ON m.conv_id = c.id
             WHERE c.kind = 1 AND c.direct_low = ANY($1) AND c.direct_high = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap();
    let (convs, members): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        convs as usize,
        USERS * (USERS - 1) / 2,
        "one conversation per pair"
    );
    assert_eq!(members, 2 * convs, "two members per conversation");
}

/// Six members on one node write into one group at once, each pipelining its sends: the node's writers (one per
/// sender shard) race on the conversation's row lock, and still every seq is used once, 1..N without gaps, and each
/// sender's messages carry increasing seqs in the order they were sent.
#[tokio::test]
async fn senders_on_several_writers_share_one_conversation_in_order() {
    let cluster = Cluster::start_with(1, tests::ClusterOptions::default().arg("writers", 4))
        .await
        .unwrap();
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(cluster.user(&format!("shard{i}")).await.unwrap());
    }
    let members: Vec<i64> = users[1..].iter().map(|u| u.id).collect();
    let (status, group) = cluster
        .api(
            0,
            &users[0],
            "POST",
            "/v1/groups",
            Some(serde_json::json!({"title": "race", "members": members})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{group}");
    let conv = group["id"].as_i64().unwrap();
    const PER_SENDER: usize = 60;
    let mut tasks = Vec::new();
    for user in &users {
        let mut client = cluster.connect(0, user, "d").await.unwrap();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_SENDER {
                let frame = common::ClientFrame::Send(common::frame::Send {
                    cid: format!("m{i}"),
                    to: None,
                    conv: Some(conv),
                    kind: "text".into(),
                    body: format!("{i}"),
                    attrs: None,
                });
                client.send(&frame).await.unwrap();
            }
            let mut seqs = Vec::new();
            for i in 0..PER_SENDER {
                seqs.push(client.wait_ack(&format!("m{i}"), WAIT).await.unwrap().seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one sender's seqs out of send order: {seqs:?}"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    // seq 1 is the group's `created` system message.
    let expected: Vec<i64> = (2..2 + (6 * PER_SENDER) as i64).collect();
    assert_eq!(all, expected, "every seq used once, no gaps");
}
