//! The node behind proxies: `X-Forwarded-For`, `X-Request-Id` and the PROXY v2 header believed only from
//! `--trusted-proxies`; and a real HAProxy running the shipped `ops/haproxy/haproxy.cfg` (test ports only), through
//! which the per-address login throttle locks out one client address and not another, the request id is the
//! proxy's, WebSockets work, and a connection refused by a dead node is retried on another.
//!
//! Clients get distinct source addresses by binding 127.0.0.2, 127.0.0.3, … before connecting (loopback has them
//! all); the proxies connect from 127.0.0.1, the only trusted address.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::haproxy::Haproxy;
use tests::probe::{connect_from, request, Reply};
use tests::{Cluster, ClusterOptions, TestClient, TestUser};

use crate::observability::{access_line, access_lines, json_lines};

const PASSWORD: &str = "correct horse battery";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Skips a HAProxy test when the binary is missing, except in CI (ops/test.sh installs it there).
fn haproxy_or_skip(test: &str) -> bool {
    if tests::haproxy::available() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "haproxy is not installed (ops/test.sh installs it)"
    );
    eprintln!(
        "SKIPPED {test}: haproxy not installed (apt-get install haproxy, or run ops/test.sh)"
    );
    false
}

/// A PROXY v2 header for a TCP connection from `client` to `server`.
fn proxy_header(client: &str, server: SocketAddr) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let client: SocketAddr = client.parse().unwrap();
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (client, server),
    )
    .build()
    .unwrap()
}

async fn get(addr: SocketAddr, source: Option<IpAddr>, headers: &[(&str, &str)]) -> Reply {
    request(addr, source, b"", "GET", "/v1/users/me", headers, None)
        .await
        .unwrap()
}

async fn login(addr: SocketAddr, source: IpAddr, name: &str, password: &str) -> Reply {
    let body = json!({"username": name, "password": password});
    request(
        addr,
        Some(source),
        b"",
        "POST",
        "/v1/sessions",
        &[],
        Some(&body),
    )
    .await
    .unwrap()
}

/// Every node's log lines.
fn cluster_log_lines(cluster: &Cluster) -> Vec<Value> {
    cluster
        .nodes
        .iter()
        .flat_map(|node| json_lines(&node.logs()))
        .collect()
}

#[tokio::test]
async fn forwarded_for_and_request_ids_are_believed_only_from_trusted_proxies() {
    let options = ClusterOptions::default().arg("trusted-proxies", "127.0.0.1");
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let addr = cluster.addr(0);
    let headers = [
        ("x-forwarded-for", "203.0.113.50, 198.51.100.7"),
        ("x-request-id", "lb-7f3a:0001"),
    ];
    // From the trusted proxy: the right-most forwarded address is the client, and the proxy's id is taken.
    let proxied = get(addr, Some(ip("127.0.0.1")), &headers).await;
    assert_eq!(proxied.status, 401);
    assert_eq!(proxied.header("x-request-id"), Some("lb-7f3a:0001"));
    // From anyone else: both headers are ignored.
    let direct = get(addr, Some(ip("127.0.0.2")), &headers).await;
    assert_eq!(direct.status, 401);
    let direct_id = direct.header("x-request-id").unwrap().to_string();
    assert_ne!(direct_id, "lb-7f3a:0001");
    // A malformed id from the trusted proxy is replaced, not logged.
    let malformed = get(addr, Some(ip("127.0.0.1")), &[("x-request-id", "a b")]).await;
    let malformed_id = malformed.header("x-request-id").unwrap().to_string();
    assert_ne!(malformed_id, "a b");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let lines = cluster_log_lines(&cluster);
    assert_eq!(
        access_line(&lines, "lb-7f3a:0001")["client"],
        "198.51.100.7"
    );
    assert_eq!(access_line(&lines, &direct_id)["client"], "127.0.0.2");
    assert_eq!(access_line(&lines, &malformed_id)["client"], "127.0.0.1");
}

#[tokio::test]
async fn a_proxy_header_is_required_from_trusted_peers_and_names_the_client() {
    let options = ClusterOptions::default()
        .arg("trusted-proxies", "127.0.0.1")
        .arg("proxy-protocol", "true");
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let addr = cluster.addr(0);

    let header = proxy_header("198.51.100.9:4711", addr);
    let proxied = request(
        addr,
        Some(ip("127.0.0.1")),
        &header,
        "GET",
        "/v1/users/me",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(proxied.status, 401, "{proxied:?}");
    // The trusted peer without a header: closed unanswered.
    let bare = request(
        addr,
        Some(ip("127.0.0.1")),
        b"",
        "GET",
        "/v1/users/me",
        &[],
        None,
    )
    .await;
    assert!(bare.is_err(), "answered without a PROXY header: {bare:?}");
    // Other peers are direct clients.
    let direct = get(addr, Some(ip("127.0.0.2")), &[]).await;
    assert_eq!(direct.status, 401);
    assert!(
        tests::probe::metric_reaching(
            cluster.admin_addr(0),
            "im_proxy_protocol_errors_total{kind=\"invalid\"}",
            1.0
        )
        .await
            >= 1.0
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    let lines = cluster_log_lines(&cluster);
    let proxied_id = proxied.header("x-request-id").unwrap();
    assert_eq!(access_line(&lines, proxied_id)["client"], "198.51.100.9");
    let direct_id = direct.header("x-request-id").unwrap();
    assert_eq!(access_line(&lines, direct_id)["client"], "127.0.0.2");
}

/// Two nodes behind proxies they trust (127.0.0.1) with PROXY v2, and a HAProxy from the shipped file in front.
async fn cluster_behind_haproxy(extra: &[(&str, &str)]) -> (Cluster, Haproxy) {
    let mut options = ClusterOptions::default()
        .arg("trusted-proxies", "127.0.0.1")
        .arg("proxy-protocol", "true");
    for (key, value) in extra {
        options = options.arg(key, value);
    }
    let cluster = Cluster::start_with(2, options).await.unwrap();
    let nodes: Vec<(SocketAddr, SocketAddr)> = (0..2)
        .map(|i| (cluster.addr(i), cluster.admin_addr(i)))
        .collect();
    let shipped = tests::haproxy::shipped_config();
    for directive in [
        "send-proxy-v2",
        "retry-on conn-failure",
        "option redispatch",
        "option httpchk GET /readyz",
        "http-request set-header X-Request-Id",
    ] {
        assert!(
            shipped.contains(directive),
            "haproxy.cfg lost {directive:?}"
        );
    }
    let haproxy = Haproxy::start(&nodes).unwrap();
    // Answered through the proxy (by either node) once HAProxy runs its first checks.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match request(haproxy.addr, None, b"", "GET", "/v1/users/me", &[], None).await {
            Ok(reply) if reply.status == 401 => break,
            other if Instant::now() > deadline => {
                panic!(
                    "HAProxy does not pass requests: {other:?}\n{}",
                    haproxy.logs()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    (cluster, haproxy)
}

#[tokio::test]
async fn the_login_throttle_locks_out_one_client_address_through_haproxy_and_not_another() {
    if !haproxy_or_skip("login throttle through HAProxy") {
        return;
    }
    let (cluster, haproxy) = cluster_behind_haproxy(&[
        ("login-max-failures-per-ip", "3"),
        ("login-max-failures-per-user", "100"),
    ])
    .await;
    let front = haproxy.addr;
    let name = "throttled-through-haproxy";
    let id = benchmarks::client::register(front, name, PASSWORD)
        .await
        .unwrap();
    let (guesser, bystander) = (ip("127.0.0.2"), ip("127.0.0.3"));

    for _ in 0..3 {
        assert_eq!(
            login(front, guesser, name, "wrong password").await.status,
            401
        );
    }
    // The guesser's address is locked out, even with the right password, on whichever node HAProxy picks.
    for _ in 0..2 {
        let refused = login(front, guesser, name, PASSWORD).await;
        assert_eq!(refused.status, 429, "{refused:?}");
        assert_eq!(refused.json()["error"], "too_many_failures");
    }
    // Another address behind the same proxy is not.
    let admitted = login(front, bystander, name, PASSWORD).await;
    assert_eq!(admitted.status, 200, "{admitted:?}");
    let throttled: f64 = {
        let mut sum = 0.0;
        for index in 0..2 {
            sum += tests::probe::metric(
                cluster.admin_addr(index),
                "im_login_throttled_total{scope=\"ip\"}",
            )
            .await;
        }
        sum
    };
    assert_eq!(throttled, 2.0);

    // The request id is HAProxy's, not the client's, and the node logs it with the real client address.
    let reply = request(
        front,
        Some(bystander),
        b"",
        "GET",
        "/v1/users/me",
        &[("x-request-id", "chosen-by-client")],
        None,
    )
    .await
    .unwrap();
    let proxy_id = reply.header("x-request-id").unwrap().to_string();
    assert_ne!(proxy_id, "chosen-by-client");
    // HAProxy writes its log line after the reply went out: give it a moment.
    for _ in 0..50 {
        if haproxy.logs().contains(&proxy_id) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        haproxy.logs().contains(&proxy_id),
        "HAProxy's log lacks {proxy_id}"
    );

    // A WebSocket through HAProxy, from the bystander's address.
    let token = admitted.json()["token"].as_str().unwrap().to_string();
    let user = TestUser {
        id,
        name: name.into(),
        token,
    };
    let stream = connect_from(front, Some(bystander)).await.unwrap();
    let connection = benchmarks::client::Connection::connect_over(stream, front, &user.token, "ws")
        .await
        .unwrap();
    let client = TestClient::over(connection, &user, "ws").await.unwrap();
    assert_eq!(client.hello.user, id);
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let lines = cluster_log_lines(&cluster);
    assert_eq!(access_line(&lines, &proxy_id)["client"], "127.0.0.3");
    // Every login's access line names its real client (the lines of two nodes, so not in order).
    let mut logins: Vec<&str> = access_lines(&lines)
        .into_iter()
        .filter(|line| line["route"] == "/v1/sessions")
        .map(|line| line["client"].as_str().unwrap())
        .collect();
    logins.sort_unstable();
    assert_eq!(
        logins,
        [["127.0.0.2"; 5].as_slice(), &["127.0.0.3"]].concat()
    );
    let upgrade = access_lines(&lines)
        .into_iter()
        .find(|line| line["route"] == "/v1/ws")
        .expect("the upgrade's access line");
    assert_eq!(upgrade["client"], "127.0.0.3");
    assert_eq!(upgrade["status"], 101);
}

#[tokio::test]
async fn haproxy_retries_a_connection_a_dead_node_refuses_on_another_node() {
    if !haproxy_or_skip("HAProxy retry") {
        return;
    }
    let (mut cluster, haproxy) = cluster_behind_haproxy(&[]).await;
    // A server HAProxy has just started checking goes down on its first failed check; after one more passed check
    // (`inter 2s`, first checks spread over that interval) it takes two failures (`fall 2`), 2 s apart.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    // Killed, not drained: HAProxy still counts it up until two checks fail.
    cluster.nodes[0].signal(libc::SIGKILL);
    assert!(cluster.nodes[0].wait_exit(Duration::from_secs(5)).is_some());
    let started = Instant::now();
    for attempt in 0..20 {
        let reply = get(haproxy.addr, None, &[]).await;
        assert_eq!(
            reply.status,
            401,
            "attempt {attempt}: {reply:?}\n{}",
            haproxy.logs()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the requests took {:?}: HAProxy may have marked the node down before they ran",
        started.elapsed()
    );
    // At least one request was sent to the dead node first and redispatched (`+1` retries in the log line).
    let retried = haproxy
        .logs()
        .lines()
        .filter(|line| line.contains("GET /v1/users/me") && line.contains("/+1 "))
        .count();
    assert!(
        retried >= 1,
        "no retried request in HAProxy's log:\n{}",
        haproxy.logs()
    );
}
