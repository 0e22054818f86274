//! Against a 3-master Redis Cluster: cross-node delivery over sharded pub/sub, and a master restarted with no
//! persistence (its shard's leases, locations and subscriptions gone) loses no acknowledged message.

use std::time::Duration;

use tests::client::WAIT;
use tests::{Cluster, ClusterOptions, TestClient, TestUser};

async fn reconnect(
    cluster: &Cluster,
    index: usize,
    user: &TestUser,
    device: &str,
    old: &TestClient,
) -> TestClient {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match cluster.connect(index, user, device).await {
            Ok(mut client) => {
                client.convs = old.convs.clone();
                client.acks = old.acks.clone();
                return client;
            }
            Err(error) if std::time::Instant::now() < deadline => {
                eprintln!("reconnect: {error:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("could not reconnect: {error:#}"),
        }
    }
}

/// Sends with the same cid until acked, reconnecting when the node closes the connection.
async fn send_until_acked(
    cluster: &Cluster,
    client: &mut TestClient,
    user: &TestUser,
    to: i64,
    cid: &str,
) {
    for _ in 0..50 {
        let sent = client.send_text(to, cid, "through a failover").await;
        if sent.is_ok() && client.wait_ack(cid, Duration::from_secs(3)).await.is_ok() {
            return;
        }
        client.errors.remove(cid);
        let replacement = reconnect(cluster, 0, user, "phone", client).await;
        *client = replacement;
    }
    panic!("{cid} never acknowledged");
}

/// Reconnects and catches up until a full catch-up succeeds (a node that finds its lease lapsed kicks everyone once).
async fn caught_up(
    cluster: &Cluster,
    index: usize,
    user: &TestUser,
    device: &str,
    old: &TestClient,
) -> TestClient {
    for _ in 0..20 {
        let mut client = reconnect(cluster, index, user, device, old).await;
        if client.catch_up().await.is_ok() && client.drain(Duration::from_millis(200)).await.is_ok()
        {
            return client;
        }
    }
    panic!("never caught up");
}

#[tokio::test]
async fn restarted_master_loses_nothing_acknowledged() {
    let options = ClusterOptions {
        redis_cluster: true,
        ..ClusterOptions::default()
    }
    .arg("lease-ttl-ms", 2000);
    let mut cluster = Cluster::start_with(2, options).await.unwrap();
    let a = cluster.user("rca").await.unwrap();
    let b = cluster.user("rcb").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let mut cb = cluster.connect(1, &b, "phone").await.unwrap();
    for i in 0..20 {
        ca.send_and_ack(b.id, &format!("pre{i}"), "before")
            .await
            .unwrap();
    }
    let conv = ca.acks["pre0"].conv;
    cb.wait_messages(conv, 20, WAIT).await.unwrap();

    // Restart every master in turn: each loses its shard's keys and subscriptions.
    for master in 0..3 {
        cluster
            .redis_cluster
            .as_mut()
            .unwrap()
            .restart_master(master)
            .unwrap();
        for i in 0..10 {
            send_until_acked(&cluster, &mut ca, &a, b.id, &format!("m{master}-{i}")).await;
        }
    }

    // Let the nodes notice any lapsed lease (they kick their clients once) and become ready again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for index in 0..2 {
        cluster
            .wait_ready(index, Duration::from_secs(30))
            .await
            .unwrap();
    }

    // B, kicked or not, reconnects (possibly to the other node) and catches up; nothing acknowledged is missing.
    cb.drain(Duration::from_millis(300)).await.ok();
    let cb = caught_up(&cluster, 0, &b, "tablet", &cb).await;
    let mut have = cb.ids(conv);
    have.sort_unstable();
    let mut acked: Vec<i64> = ca.acks.values().map(|ack| ack.id).collect();
    acked.sort_unstable();
    assert_eq!(have, acked);
    assert_eq!(cb.violations(), 0);
    // Seqs were never reused: one row per seq, as many rows as acks.
    let sql = cluster.sql().await.unwrap();
    let rows: i64 = sql
        .query_one("SELECT count(*) FROM messages WHERE conv_id = $1", &[&conv])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, acked.len());

    // Routing works again across nodes after the restarts.
    let mut delivered = false;
    for attempt in 0..5 {
        let mut fresh = caught_up(&cluster, 1, &b, "laptop", &cb).await;
        let cid = format!("after-{attempt}");
        send_until_acked(&cluster, &mut ca, &a, b.id, &cid).await;
        let seq = ca.acks[&cid].seq;
        let arrived = fresh
            .wait_until(WAIT, |c| {
                c.convs
                    .get(&conv)
                    .is_some_and(|l| l.msgs.contains_key(&seq))
            })
            .await;
        if arrived.is_ok() {
            delivered = true;
            break;
        }
    }
    assert!(
        delivered,
        "cross-node pushes did not resume after the restarts"
    );
}
