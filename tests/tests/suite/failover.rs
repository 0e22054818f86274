//! Node loss and drain: SIGKILL loses nothing acknowledged, SIGTERM drains cleanly, a device connecting twice
//! replaces its old connection.

use std::time::Duration;

use benchmarks::client::Incoming;
use common::ServerFrame;
use common::{close_code, KickReason};
use tests::client::WAIT;
use tests::Cluster;

#[tokio::test]
async fn sigkill_of_a_node_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let b = cluster.user("b").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let mut cb = cluster.connect(1, &b, "phone").await.unwrap();
    for i in 0..50 {
        ca.send_and_ack(b.id, &format!("pre{i}"), "before the crash")
            .await
            .unwrap();
    }
    let conv = ca.acks["pre0"].conv;
    cb.wait_messages(conv, 50, WAIT).await.unwrap();

    cluster.nodes[1].signal(libc::SIGKILL);
    assert!(cluster.nodes[1].wait_exit(Duration::from_secs(5)).is_some());
    // B's connection drops; A keeps sending meanwhile.
    assert!(cb.next_incoming(WAIT).await.is_err());
    for i in 0..50 {
        ca.send_and_ack(b.id, &format!("post{i}"), "after the crash")
            .await
            .unwrap();
    }
    // B reconnects to the surviving node and catches up from where it was.
    let known = cb.convs.clone();
    let mut cb = cluster.connect(0, &b, "phone").await.unwrap();
    cb.convs = known;
    cb.catch_up().await.unwrap();
    let mut ids = cb.ids(conv);
    ids.sort_unstable();
    let mut acked: Vec<i64> = ca.acks.values().map(|ack| ack.id).collect();
    acked.sort_unstable();
    assert_eq!(ids, acked);
    assert_eq!(cb.violations(), 0);

    // The restarted node rejoins and routes again.
    cluster.start_node(1).await.unwrap();
    let mut cb2 = cluster.connect(1, &b, "laptop").await.unwrap();
    let ack = ca
        .send_and_ack(b.id, "rejoined", "welcome back")
        .await
        .unwrap();
    cb2.wait_messages(conv, 1, WAIT).await.unwrap();
    assert_eq!(cb2.convs[&conv].msgs[&ack.seq].id, ack.id);
}

#[tokio::test]
async fn sigterm_drains_kicks_and_exits_cleanly() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let b = cluster.user("b").await.unwrap();
    let mut ca = cluster.connect(1, &a, "phone").await.unwrap();
    let mut cb = cluster.connect(0, &b, "phone").await.unwrap();
    ca.send_and_ack(b.id, "d0", "x").await.unwrap();
    // A burst in flight while the node drains: whatever was acked must be stored and delivered.
    for i in 1..100 {
        ca.send_text(b.id, &format!("d{i}"), "in flight")
            .await
            .unwrap();
    }
    cluster.nodes[1].signal(libc::SIGTERM);
    let (kick, code) = ca.expect_close(Duration::from_secs(15)).await.unwrap();
    assert_eq!(kick, Some(KickReason::Draining));
    assert_eq!(code, close_code::SERVICE_RESTART);
    assert_eq!(
        cluster.nodes[1].wait_exit(Duration::from_secs(15)),
        Some(Some(0)),
        "{}",
        cluster.nodes[1].logs()
    );

    let conv = ca.acks["d0"].conv;
    let acked: Vec<i64> = ca.acks.values().map(|ack| ack.id).collect();
    cb.drain(Duration::from_millis(500)).await.unwrap();
    let known = cb.convs.get(&conv).map_or(0, |c| c.last_seq);
    cb.sync_after(conv, known).await.unwrap();
    let have = cb.ids(conv);
    for id in acked {
        assert!(have.contains(&id), "acked message {id} missing after drain");
    }
    assert_eq!(cb.violations(), 0);

    // The lease is released at once, not left to expire.
    let nodes = cluster.redis_cli(&["ZRANGE", "im:nodes", "0", "-1"]);
    assert!(
        !nodes.contains("n1-"),
        "drained node still holds a lease: {nodes}"
    );
}

#[tokio::test]
async fn a_device_connecting_again_replaces_its_old_connection() {
    let cluster = Cluster::start(2).await.unwrap();
    let a = cluster.user("a").await.unwrap();
    let b = cluster.user("b").await.unwrap();
    let mut old = cluster.connect(0, &a, "phone").await.unwrap();
    let mut new = cluster.connect(1, &a, "phone").await.unwrap();
    let (kick, code) = old.expect_close(WAIT).await.unwrap();
    assert_eq!(
        (kick, code),
        (Some(KickReason::Replaced), close_code::REPLACED)
    );
    // Messages now reach the new connection.
    let mut cb = cluster.connect(0, &b, "phone").await.unwrap();
    let ack = cb.send_and_ack(a.id, "r1", "to the new one").await.unwrap();
    new.wait_messages(ack.conv, 1, WAIT).await.unwrap();

    // Same device twice on one node.
    let mut again = cluster.connect(1, &a, "phone").await.unwrap();
    let (kick, _) = new.expect_close(WAIT).await.unwrap();
    assert_eq!(kick, Some(KickReason::Replaced));
    let ack = cb.send_and_ack(a.id, "r2", "to the newest").await.unwrap();
    again.wait_messages(ack.conv, 1, WAIT).await.unwrap();
}

/// A draining node asks its clients to move over `--drain-spread-secs`, not all at once: the kicks of 40
/// connections arrive spread over the window, no half-second holds most of them, and a connection not yet asked to
/// move keeps sending (acked and delivered) while the others leave.
#[tokio::test]
async fn a_drain_spreads_its_kicks_over_the_configured_window() {
    const CLIENTS: usize = 40;
    let options = tests::ClusterOptions::default()
        .arg("drain-spread-secs", 3)
        .arg("drain-grace-secs", 10);
    let mut cluster = Cluster::start_with(2, options).await.unwrap();
    let observer = cluster.user("drain-observer").await.unwrap();
    let mut watcher = cluster.connect(0, &observer, "phone").await.unwrap();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let user = cluster.user(&format!("drain-{i}")).await.unwrap();
        clients.push(cluster.connect(1, &user, "phone").await.unwrap());
    }
    let started = tokio::time::Instant::now();
    cluster.nodes[1].signal(libc::SIGTERM);
    let mut waiting = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let to = observer.id;
        waiting.push(tokio::spawn(async move {
            // Until its kick, a client keeps talking to the draining node: each send waits for its ack, and the
            // kick may arrive at any point.
            let mut acked = 0;
            let mut kick = None;
            'talking: for round in 0.. {
                let cid = format!("w{i}-{round}");
                if client.send_text(to, &cid, "still here").await.is_err() {
                    break;
                }
                let pause = tokio::time::Instant::now() + Duration::from_millis(200);
                let mut waiting_ack = true;
                while waiting_ack || tokio::time::Instant::now() < pause {
                    let limit = if waiting_ack {
                        WAIT
                    } else {
                        pause - tokio::time::Instant::now()
                    };
                    match client.next_incoming(limit).await {
                        Ok(Incoming::Frame(ServerFrame::Kick(k))) => {
                            kick = Some((k.reason, tokio::time::Instant::now()));
                            break 'talking;
                        }
                        Ok(Incoming::Frame(ServerFrame::Ack(ack))) if ack.cid == cid => {
                            acked += 1;
                            waiting_ack = false;
                        }
                        Ok(Incoming::Frame(_)) => {}
                        Ok(Incoming::Closed(..)) => break 'talking,
                        Err(_) if !waiting_ack => {}
                        Err(_) => break 'talking,
                    }
                }
            }
            (kick, acked)
        }));
    }
    let mut kicks = Vec::new();
    let mut acked = 0;
    for task in waiting {
        let (kick, sent) = task.await.unwrap();
        let (reason, at) = kick.expect("every client is kicked before its connection closes");
        assert_eq!(reason, KickReason::Draining);
        kicks.push(at.duration_since(started));
        acked += sent;
    }
    kicks.sort();
    let first = kicks[0];
    let last = kicks[CLIENTS - 1];
    let busiest = kicks
        .iter()
        .map(|start| {
            kicks
                .iter()
                .filter(|k| **k >= *start && **k < *start + Duration::from_millis(500))
                .count()
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "drain: first kick {first:?}, last {last:?}, busiest 500 ms window {busiest} of {CLIENTS}, {acked} sends acked while draining"
    );
    assert!(
        last - first >= Duration::from_millis(2_400),
        "kicks not spread over the 3 s window: first {first:?}, last {last:?}"
    );
    assert!(
        busiest <= CLIENTS / 4,
        "{busiest} of {CLIENTS} kicks within one 500 ms window"
    );
    assert!(
        acked >= CLIENTS,
        "clients waiting for their turn could not send: {acked} acked"
    );
    assert_eq!(
        cluster.nodes[1].wait_exit(Duration::from_secs(15)),
        Some(Some(0)),
        "{}",
        cluster.nodes[1].logs()
    );
    // Everything acked during the drain reached the observer on the other node.
    watcher.drain(Duration::from_millis(500)).await.unwrap();
    let received: usize = watcher.convs.values().map(|c| c.msgs.len()).sum();
    assert!(
        received >= acked,
        "observer saw {received} of {acked} acked messages"
    );
}
