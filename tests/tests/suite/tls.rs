//! TLS from the node to its backends, against servers that speak nothing else: Postgres with `ssl=on` that rejects
//! every TCP connection without TLS and a client certificate, Redis with `--port 0 --tls-port` (no plaintext
//! listener at all), and an `https://` push webhook; all with certificates from a CA the test makes.

use std::time::{Duration, Instant};

use tests::client::WAIT;
use tests::tls_backends::{HttpsReceiver, TestPki, TlsPostgres, TlsRedis, TlsRedisCluster};
use tests::{Cluster, ClusterOptions};

/// Nodes on these backends (a `rediss://` or `rediss-cluster://` URL), trusting the test CA and presenting its
/// client certificate.
fn options(postgres: &TlsPostgres, redis_url: String, pki: &TestPki) -> ClusterOptions {
    let mut options = ClusterOptions::default()
        .single_redis()
        .arg("postgres-url", postgres.url())
        .arg("redis-url", redis_url);
    for (key, value) in pki.node_args() {
        options = options.arg(&key, value);
    }
    options
}

/// `node migrate` with the same settings as the nodes, as a separate process: it must reach Postgres over TLS.
fn migrate(postgres: &TlsPostgres, pki: &TestPki) -> std::process::Output {
    let binary = tests::procs::node_binary().unwrap();
    std::process::Command::new(binary)
        .env_clear()
        .env("IM_POSTGRES_URL", postgres.url())
        .env("IM_POSTGRES_CA_FILE", &pki.ca)
        .env("IM_POSTGRES_CLIENT_CERT", &pki.client_cert)
        .env("IM_POSTGRES_CLIENT_KEY", &pki.client_key)
        .arg("migrate")
        .output()
        .unwrap()
}

#[tokio::test]
async fn nodes_reach_postgres_redis_and_the_webhook_over_verified_tls() {
    let pki = TestPki::create("backend-tls").unwrap();
    let mut postgres = TlsPostgres::start(&pki).unwrap();
    let redis = TlsRedis::start(&pki).unwrap();
    let mut receiver = HttpsReceiver::start(&pki).await.unwrap();

    // Migrations by `node migrate` over TLS; the nodes then only check the schema.
    let migrated = migrate(&postgres, &pki);
    assert!(
        migrated.status.success(),
        "node migrate over TLS failed: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let options = options(&postgres, redis.url(), &pki)
        .arg("run-migrations", "false")
        .arg("push-webhook-url", receiver.url())
        .arg("push-ca-file", pki.ca.display());
    let cluster = Cluster::start_with(2, options).await.unwrap();

    // A chat round trip across the two nodes: the committed message crosses Redis pub/sub (TLS only).
    let alice = cluster.user("tls-backend-a").await.unwrap();
    let bob = cluster.user("tls-backend-b").await.unwrap();
    let mut a = cluster.connect(0, &alice, "phone").await.unwrap();
    let mut b = cluster.connect(1, &bob, "phone").await.unwrap();
    let ack = a
        .send_and_ack(bob.id, "tls-1", "over TLS backends")
        .await
        .unwrap();
    b.wait_messages(ack.conv, 1, WAIT).await.unwrap();
    assert_eq!(b.convs[&ack.conv].msgs[&ack.seq].body, "over TLS backends");
    let reply = b.send_and_ack(alice.id, "tls-2", "and back").await.unwrap();
    a.wait_messages(reply.conv, 2, WAIT).await.unwrap();

    // Every backend of the nodes' connections is TLS, authenticated by the client certificate.
    let ssl = postgres
        .psql(
            "postgres",
            "SELECT count(*), count(*) FILTER (WHERE s.ssl AND s.client_dn = '/CN=im') \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = 'im' AND a.client_addr IS NOT NULL",
        )
        .unwrap();
    let counts: Vec<u64> = ssl.split('|').map(|n| n.parse().unwrap()).collect();
    assert!(counts[0] >= 2, "no node backends in pg_stat_ssl: {ssl}");
    assert_eq!(counts[0], counts[1], "a node backend without TLS: {ssl}");

    // A user with no device online: the push reaches the https:// receiver, which only the test CA vouches for.
    let carol = cluster.user("tls-backend-c").await.unwrap();
    let ack = a
        .send_and_ack(carol.id, "tls-3", "you are offline")
        .await
        .unwrap();
    let pushed = receiver
        .event_for(carol.id, Duration::from_secs(15))
        .await
        .expect("no push for the offline user over https");
    assert_eq!(pushed["seq"], ack.seq);
    assert_eq!(pushed["preview"], "you are offline");
    for index in 0..2 {
        assert_eq!(
            tests::probe::metric(cluster.admin_addr(index), "im_backend_tls_failures_total").await,
            0.0
        );
    }
}

#[tokio::test]
async fn an_http_webhook_still_works_and_is_warned_about() {
    let mut receiver = HttpsReceiver::start_plain().await.unwrap();
    let options = ClusterOptions::default().arg("push-webhook-url", receiver.url_plain());
    let cluster = Cluster::start_with(1, options).await.unwrap();
    assert!(
        cluster.nodes[0]
            .logs()
            .contains("--push-webhook-url is http://: message previews are sent unencrypted"),
        "{}",
        cluster.nodes[0].logs()
    );
    let alice = cluster.user("plain-push-a").await.unwrap();
    let carol = cluster.user("plain-push-c").await.unwrap();
    let mut a = cluster.connect(0, &alice, "phone").await.unwrap();
    // Two messages some time apart: the second reuses the kept connection (or opens a new one).
    for round in 0..2 {
        let ack = a
            .send_and_ack(carol.id, &format!("plain-{round}"), "in the clear")
            .await
            .unwrap();
        let pushed = receiver
            .event_for(carol.id, Duration::from_secs(15))
            .await
            .expect("no push over http");
        assert_eq!(pushed["seq"], ack.seq);
    }
}

#[tokio::test]
async fn nodes_use_a_redis_cluster_over_tls() {
    let pki = TestPki::create("backend-tls-cluster").unwrap();
    let postgres = TlsPostgres::start(&pki).unwrap();
    let redis = TlsRedisCluster::start(&pki).unwrap();
    let cluster = Cluster::start_with(2, options(&postgres, redis.url(), &pki))
        .await
        .unwrap();

    // Cross-node delivery goes through sharded pub/sub on the TLS-only shards.
    let alice = cluster.user("tls-shard-a").await.unwrap();
    let bob = cluster.user("tls-shard-b").await.unwrap();
    let mut a = cluster.connect(0, &alice, "phone").await.unwrap();
    let mut b = cluster.connect(1, &bob, "phone").await.unwrap();
    for round in 0..5 {
        let ack = a
            .send_and_ack(bob.id, &format!("shard-{round}"), "over TLS shards")
            .await
            .unwrap();
        b.wait_messages(ack.conv, round + 1, WAIT).await.unwrap();
    }
    // Both nodes' leases and the users' locations are on the shards (read through TLS too).
    let keys: usize = redis
        .ports
        .iter()
        .map(|port| {
            let output = redis
                .cli(&pki)
                .args(["-p", &port.to_string(), "DBSIZE"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse::<usize>()
                .unwrap_or(0)
        })
        .sum();
    assert!(
        keys >= 3,
        "expected the lease set and two locations, found {keys} keys"
    );
}

#[tokio::test]
async fn a_node_that_does_not_trust_a_backend_stops_at_once_naming_it() {
    let pki = TestPki::create("backend-tls-right").unwrap();
    let other = TestPki::create("backend-tls-wrong").unwrap();
    let postgres = TlsPostgres::start(&pki).unwrap();
    let redis = TlsRedis::start(&pki).unwrap();

    // Postgres' certificate from a CA the node does not trust: the start fails with the reason, no 30 s of retries.
    let text = refused_start(
        options(&postgres, redis.url(), &pki).arg("postgres-ca-file", other.ca.display()),
    )
    .await;
    for expected in [
        "connecting to postgres: TLS handshake failed",
        "UnknownIssuer",
        "the server's certificate was refused",
    ] {
        assert!(text.contains(expected), "{expected:?} missing: {text}");
    }

    // The same for Redis (Postgres trusted this time).
    let text = refused_start(
        options(&postgres, redis.url(), &pki).arg("redis-ca-file", other.ca.display()),
    )
    .await;
    for expected in [
        "connecting to redis: TLS handshake with redis at 127.0.0.1",
        "UnknownIssuer",
    ] {
        assert!(text.contains(expected), "{expected:?} missing: {text}");
    }

    // `sslmode=require` against a Postgres without TLS (the shared test server): refused at once, not retried.
    let shared = tokio::task::spawn_blocking(tests::procs::Postgres::shared)
        .await
        .unwrap()
        .unwrap();
    let text = refused_start(ClusterOptions::default().arg(
        "postgres-url",
        format!("{} sslmode=require", shared.url("postgres")),
    ))
    .await;
    assert!(
        text.contains("connecting to postgres: TLS handshake failed: error performing TLS handshake: server does not support TLS"),
        "{text}"
    );
}

/// Starts one node that must refuse to start within 15 s; returns the error it gave.
async fn refused_start(options: ClusterOptions) -> String {
    // The harness may still have to build the node binary: not part of the node's start.
    tokio::task::spawn_blocking(tests::procs::node_binary)
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    let error = Cluster::start_with(1, options)
        .await
        .err()
        .expect("a node that had to refuse its backend started");
    let text = format!("{error:#}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}: {text}",
        started.elapsed()
    );
    text
}
