//! Fault scenarios: steady cross-node traffic (users on every node, a user with two devices), one fault, then the
//! checker compares every device's final view and Postgres with every ack (`tests::checker`). Each scenario
//! prints its counts as a `FAULTS |…|` line (run with `--nocapture`); `docs/reliability.md` keeps the latest table.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use benchmarks::client::Connection;
use common::{close_code, KickReason};
use rand::distributions::{Alphanumeric, DistString};
use tests::checker::Counts;
use tests::probe::{http_get, metric};
use tests::resp::{self, Resp, Value};
use tests::traffic::{cross_node_plan, Traffic, TrafficSettings};
use tests::{Cluster, ClusterOptions, TestClient};

const USERS_PER_NODE: usize = 2;

/// Every scenario runs on one plain Redis, also when the suite runs against a Redis Cluster (`IM_TEST_REDIS`): the
/// faults restart, cut and tap that server. Redis Cluster failover is covered by `redis_cluster.rs`.
fn single_redis() -> ClusterOptions {
    ClusterOptions::default().single_redis()
}

async fn start_traffic(cluster: &Cluster) -> Traffic {
    let plans = cross_node_plan(cluster, USERS_PER_NODE).await.unwrap();
    let addrs = (0..cluster.nodes.len()).map(|i| cluster.addr(i)).collect();
    let traffic = Traffic::start(addrs, plans, TrafficSettings::default());
    traffic
        .wait_acks(30, Duration::from_secs(45))
        .await
        .unwrap();
    traffic
}

/// Stops traffic, checks, prints the counts and fails the test unless every count of the promise is zero.
async fn finish(name: &str, traffic: Traffic, cluster: &Cluster) -> Counts {
    let counts = traffic.finish(cluster).await.unwrap();
    println!("FAULTS |{name}|{counts}|");
    assert!(
        counts.passed(),
        "{name}: the delivery promise was broken: {counts}"
    );
    assert!(
        counts.acked > 0 && counts.delivered > 0,
        "{name}: no traffic: {counts}"
    );
    counts
}

async fn ready(addr: SocketAddr) -> u16 {
    http_get(addr, "/readyz")
        .await
        .map_or(0, |(status, _)| status)
}

/// Polls `check` every 100 ms until it holds; returns how long that took.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

fn strings(value: Value) -> Vec<String> {
    match value {
        Value::Array(Some(items)) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Bulk(Some(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The lease holders in `im:nodes` (expired ones included until someone sweeps them).
async fn lease_members(port: u16) -> Vec<String> {
    let Ok(mut redis) = Resp::connect(port).await else {
        return Vec::new();
    };
    redis
        .call(&[b"ZRANGE", b"im:nodes", b"0", b"-1"])
        .await
        .map(strings)
        .unwrap_or_default()
}

/// Every `(user key, device, node)` of the location registry.
async fn locations(port: u16) -> Vec<(String, String, String)> {
    let Ok(mut redis) = Resp::connect(port).await else {
        return Vec::new();
    };
    let keys = redis
        .call(&[b"KEYS", b"im:loc:*"])
        .await
        .map(strings)
        .unwrap_or_default();
    let mut all = Vec::new();
    for key in keys {
        let fields = redis
            .call(&[b"HGETALL", key.as_bytes()])
            .await
            .map(strings)
            .unwrap_or_default();
        for pair in fields.chunks(2) {
            if let [device, node] = pair {
                all.push((key.clone(), device.clone(), node.clone()));
            }
        }
    }
    all
}

/// Whether the server side of the TCP connection `server_port` ↔ `client_port` is still owned by the server process
/// (ESTABLISHED or CLOSE_WAIT). A socket the process closed with unsent data lingers as an orphan in FIN_WAIT, which
/// does not count.
fn server_socket_open(server_port: u16, client_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{server_port:04X}");
    let remote = format!(":{client_port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3
            && fields[1].ends_with(&local)
            && fields[2].ends_with(&remote)
            && matches!(fields[3], "01" | "08")
    })
}

/// (1) A node is SIGKILLed under traffic: its clients reconnect to the others and catch up; it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_sigkill_node() {
    let mut cluster = Cluster::start_with(3, single_redis()).await.unwrap();
    let traffic = start_traffic(&cluster).await;
    cluster.nodes[1].signal(libc::SIGKILL);
    assert!(cluster.nodes[1].wait_exit(Duration::from_secs(5)).is_some());
    traffic
        .wait_acks(60, Duration::from_secs(45))
        .await
        .unwrap();
    cluster.start_node(1).await.unwrap();
    traffic
        .wait_acks(30, Duration::from_secs(45))
        .await
        .unwrap();
    let counts = finish("sigkill_node", traffic, &cluster).await;
    assert!(counts.reconnects > 0, "nobody had to reconnect: {counts}");
}

/// (2) A node is paused past its lease, then resumed: while paused it is dead to the others; on resume its lease
/// keeper finds the lapse, kicks every session (its stale sockets close) and no stale location points at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_sigstop_past_lease() {
    let options = single_redis().arg("lease-ttl-ms", 2000);
    let cluster = Cluster::start_with(3, options).await.unwrap();
    let redis_port = cluster.redis.port;
    let traffic = start_traffic(&cluster).await;
    let paused_id = lease_members(redis_port)
        .await
        .into_iter()
        .find(|id| id.starts_with("n1-"))
        .expect("n1 holds a lease");
    let paused_admin = cluster.admin_addr(1);

    cluster.nodes[1].signal(libc::SIGSTOP);
    // The others sweep the expired lease; traffic keeps flowing without the paused node.
    wait_until(
        "paused node's lease swept",
        Duration::from_secs(8),
        || async { !lease_members(redis_port).await.contains(&paused_id) },
    )
    .await;
    traffic
        .wait_acks(40, Duration::from_secs(45))
        .await
        .unwrap();
    cluster.nodes[1].signal(libc::SIGCONT);

    wait_until(
        "resumed node saw its lease lapse",
        Duration::from_secs(8),
        || async { metric(paused_admin, "im_node_lease_lapses_total").await >= 1.0 },
    )
    .await;
    // Every stale socket closes, and no location names the resumed node for a device that is not on it.
    wait_until("stale sockets closed", Duration::from_secs(10), || async {
        metric(paused_admin, "im_connections_open").await == 0.0
    })
    .await;
    wait_until("no stale location", Duration::from_secs(5), || async {
        !locations(redis_port)
            .await
            .iter()
            .any(|(_, _, node)| *node == paused_id)
    })
    .await;
    traffic
        .wait_acks(30, Duration::from_secs(45))
        .await
        .unwrap();
    let counts = finish("sigstop_past_lease", traffic, &cluster).await;
    assert!(counts.reconnects > 0, "nobody had to reconnect: {counts}");
}

/// (3) Redis restarts empty: within a bounded time every node holds its lease again, is subscribed to its channel
/// and every device is registered again; sends are acknowledged after recovery; no seq is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_restart_without_data() {
    let mut cluster = Cluster::start_with(3, single_redis()).await.unwrap();
    let traffic = start_traffic(&cluster).await;
    let devices_before = locations(cluster.redis.port).await.len();
    assert!(devices_before >= 7, "devices registered: {devices_before}");

    cluster.redis.restart().unwrap();
    let port = cluster.redis.port;
    let recovered = wait_until(
        "leases, subscriptions and locations back",
        Duration::from_secs(15),
        || async {
            let leases = lease_members(port).await.len();
            let subscribed = match Resp::connect(port).await {
                Ok(mut redis) => redis
                    .call(&[b"PUBSUB", b"CHANNELS", b"im:node:*"])
                    .await
                    .map(strings)
                    .map_or(0, |c| c.len()),
                Err(_) => 0,
            };
            let devices = locations(port).await.len();
            leases == 3 && subscribed == 3 && devices >= devices_before
        },
    )
    .await;
    println!("FAULTS redis_restart recovered in {recovered:?}");
    traffic
        .wait_acks(40, Duration::from_secs(45))
        .await
        .unwrap();
    finish("redis_restart_without_data", traffic, &cluster).await;
}

/// (4) One node is cut off from Redis (a proxy between them drops every connection): it reports not-ready, its
/// memory stays bounded, and it recovers when the link returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_node_cut_off_from_redis() {
    let options = single_redis().proxied_redis(1).arg("lease-ttl-ms", 2000);
    let cluster = Cluster::start_with(3, options).await.unwrap();
    let traffic = start_traffic(&cluster).await;
    let admin = cluster.admin_addr(1);
    let rss_before = cluster.nodes[1].rss_kib().unwrap_or(0);

    cluster.redis_proxies[&1].cut();
    wait_until("cut-off node not ready", Duration::from_secs(8), || async {
        ready(admin).await == 503
    })
    .await;
    // The rest of the cluster keeps working, and the cut-off node stays not-ready and bounded meanwhile.
    traffic
        .wait_acks(60, Duration::from_secs(45))
        .await
        .unwrap();
    assert_eq!(ready(admin).await, 503);
    let rss_during = cluster.nodes[1].rss_kib().unwrap_or(0);
    assert!(
        rss_during < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_during} KiB while cut off"
    );

    cluster.redis_proxies[&1].restore();
    let recovered = wait_until("node ready again", Duration::from_secs(15), || async {
        ready(admin).await == 200
    })
    .await;
    println!(
        "FAULTS redis_cut: rss {rss_before} -> {rss_during} KiB, ready again after {recovered:?}"
    );
    traffic
        .wait_acks(40, Duration::from_secs(45))
        .await
        .unwrap();
    finish("node_cut_off_from_redis", traffic, &cluster).await;
}

/// (5) Postgres stops in immediate mode while batches are being written, then comes back: nothing uncommitted is
/// acknowledged, retries with the same cid make exactly one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_postgres_immediate_restart() {
    let options = single_redis()
        .private_postgres()
        .arg("writer-flush-us", 5000);
    let mut cluster = Cluster::start_with(3, options).await.unwrap();
    let traffic = start_traffic(&cluster).await;
    let postgres = cluster.postgres.as_mut().expect("private postgres");
    postgres.stop_immediate();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    postgres.start_again().unwrap();
    traffic
        .wait_acks(60, Duration::from_secs(30))
        .await
        .unwrap();
    let mut failed_batches = 0.0;
    for index in 0..3 {
        failed_batches += metric(cluster.admin_addr(index), "im_writer_errors_total").await;
    }
    let counts = finish("postgres_immediate_restart", traffic, &cluster).await;
    assert!(failed_batches >= 1.0, "no batch was hit by the restart");
    assert!(counts.retries > 0, "no send was retried: {counts}");
}

/// (6) Every cross-node publish is delivered twice: recipients show each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_publish_delivered_twice() {
    let cluster = Cluster::start_with(3, single_redis()).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let duplicator = tokio::spawn(resp::duplicate_publishes(cluster.redis.port, stopped));
    let traffic = start_traffic(&cluster).await;
    traffic
        .wait_acks(120, Duration::from_secs(30))
        .await
        .unwrap();
    let _ = stop.send(true);
    let doubled = duplicator.await.unwrap().unwrap();
    let counts = finish("publish_delivered_twice", traffic, &cluster).await;
    assert!(
        doubled > 0 && counts.dedup_dropped > 0,
        "no duplicate reached a client: doubled {doubled}, {counts}"
    );
}

/// (7) A client stops reading: its queue stays bounded, it is closed with `slow_consumer`, a peer that never
/// reads at all has its socket closed anyway, and everyone else is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_slow_consumer() {
    let options = single_redis().arg("outbound-queue", 16);
    let cluster = Cluster::start_with(3, options).await.unwrap();
    let traffic = start_traffic(&cluster).await;
    let slow = cluster.user("slow").await.unwrap();
    let flooder = cluster.user("flood").await.unwrap();
    let addr = cluster.addr(0);
    // Two devices that stop reading right after connecting: one reads again later, one never does.
    let mut late_reader = TestClient::connect(addr, &slow, "phone").await.unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let never_port = stream.local_addr().unwrap().port();
    let _never_reads = Connection::connect_over(stream, addr, &slow.token, "tablet")
        .await
        .unwrap();
    assert!(server_socket_open(addr.port(), never_port));
    let mut sender = TestClient::connect(cluster.addr(1), &flooder, "phone")
        .await
        .unwrap();
    let mut sent = 0;
    while metric(cluster.admin_addr(0), "im_slow_consumer_disconnects_total").await < 2.0 {
        assert!(
            sent < 4000,
            "no slow-consumer kick after {sent} large messages"
        );
        let mut cids = Vec::new();
        for _ in 0..10 {
            sent += 1;
            let cid = format!("flood-{sent}");
            let body = Alphanumeric.sample_string(&mut rand::thread_rng(), 12_000);
            traffic
                .checker
                .sent(flooder.id, "phone", &cid, &[flooder.id, slow.id]);
            sender.send_text(slow.id, &cid, &body).await.unwrap();
            cids.push(cid);
        }
        for cid in cids {
            let ack = sender
                .wait_ack(&cid, Duration::from_secs(10))
                .await
                .unwrap();
            traffic.checker.acked(flooder.id, &ack);
        }
    }
    // The late reader gets its backlog, then the kick and the close.
    let (kick, code) = late_reader
        .expect_close(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (kick, code),
        (Some(KickReason::SlowConsumer), close_code::SLOW_CONSUMER)
    );
    // The one that never reads cannot hold its connection: the node gives up on the blocked write.
    wait_until(
        "never-reading connection closed",
        Duration::from_secs(15),
        || async { !server_socket_open(addr.port(), never_port) },
    )
    .await;
    assert!(metric(cluster.admin_addr(0), "im_ws_writer_aborted_total").await >= 1.0);
    println!("FAULTS slow_consumer: kicked after {sent} messages of 12 kB");
    let counts = finish("slow_consumer", traffic, &cluster).await;
    assert_eq!(
        counts.reconnects, 0,
        "other clients were disturbed: {counts}"
    );
}

/// (8) SIGTERM drains a node; then every node in turn is drained and restarted (a rolling restart) under traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_rolling_restart() {
    let mut cluster = Cluster::start_with(3, single_redis()).await.unwrap();
    let traffic = start_traffic(&cluster).await;
    for index in 0..3 {
        cluster.nodes[index].signal(libc::SIGTERM);
        assert_eq!(
            cluster.nodes[index].wait_exit(Duration::from_secs(15)),
            Some(Some(0)),
            "node {index} did not drain cleanly"
        );
        cluster.start_node(index).await.unwrap();
        traffic
            .wait_acks(25, Duration::from_secs(45))
            .await
            .unwrap();
    }
    let counts = finish("rolling_restart", traffic, &cluster).await;
    assert!(
        counts.reconnects >= 3,
        "drains did not move clients: {counts}"
    );
}

/// The checker is not vacuous: on a real run's records, each kind of breach it must catch is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_each_kind_of_breach() {
    let cluster = Cluster::start_with(2, single_redis()).await.unwrap();
    let traffic = start_traffic(&cluster).await;
    let (checker, devices) = traffic.collect().await.unwrap();
    let sql = cluster.sql().await.unwrap();
    let clean = checker.verify(&devices, &sql).await.unwrap();
    assert!(clean.passed() && clean.acked >= 30, "{clean}");

    // A device, one of its conversations with at least two messages, and a message it received from the peer.
    let (d, conv, first_seq) = devices
        .iter()
        .enumerate()
        .find_map(|(d, device)| {
            device.convs.iter().find_map(|(conv, log)| {
                let received = log
                    .msgs
                    .values()
                    .find(|m| m.from != device.user && m.kind == "text")?;
                (log.msgs.len() >= 2).then_some((d, *conv, received.seq))
            })
        })
        .expect("a device with received messages");

    let mut lost = devices.clone();
    lost[d]
        .convs
        .get_mut(&conv)
        .unwrap()
        .msgs
        .remove(&first_seq);
    assert!(checker.verify(&lost, &sql).await.unwrap().lost >= 1);

    let mut reordered = devices.clone();
    reordered[d].convs.get_mut(&conv).unwrap().shown.reverse();
    assert!(checker.verify(&reordered, &sql).await.unwrap().reordered >= 1);

    let mut unexpected = devices.clone();
    let log = unexpected[d].convs.get_mut(&conv).unwrap();
    let mut stranger = log.msgs[&first_seq].clone();
    stranger.cid = "never-sent".into();
    stranger.seq = 1_000_000;
    stranger.id = -1;
    log.msgs.insert(stranger.seq, stranger);
    assert!(checker.verify(&unexpected, &sql).await.unwrap().unexpected >= 1);

    let mut duplicated = devices.clone();
    let log = duplicated[d].convs.get_mut(&conv).unwrap();
    let mut twin = log.msgs[&first_seq].clone();
    twin.seq = 1_000_001;
    twin.id = -2;
    log.msgs.insert(twin.seq, twin);
    assert!(checker.verify(&duplicated, &sql).await.unwrap().duplicated >= 1);

    // An acked message missing from the store.
    let id = devices[d].convs[&conv].msgs[&first_seq].id;
    sql.execute("DELETE FROM messages WHERE id = $1", &[&id])
        .await
        .unwrap();
    assert!(checker.verify(&devices, &sql).await.unwrap().lost >= 1);
}
