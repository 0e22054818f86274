//! Handshake and transport security: token revocation across the cluster (close 1008, 401 everywhere, the periodic
//! re-check under a lost announcement), the WebSocket version (426), request-head size and time limits (431, cut
//! off), connection limits (429) and TLS (`wss://`, plain TCP refused). `docs/security.md` lists each case.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use benchmarks::client::{ConnectError, Connection, Incoming};
use common::{close_code, KickReason, ServerFrame};
use tests::{Cluster, ClusterOptions, TestClient, TestUser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "correct horse battery";

/// A parsed HTTP answer read off a raw socket.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    /// Header lines, names lower-cased.
    headers: Vec<(String, String)>,
    body: String,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends `request` on a fresh connection and reads one answer: the head, then `content-length` bytes of body.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawAnswer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length || status == 101 {
                let body = String::from_utf8_lossy(&bytes[end + 4..]).into_owned();
                return RawAnswer {
                    status,
                    headers,
                    body,
                };
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&chunk[..n]),
            other => panic!(
                "no complete answer ({other:?}); got {:?}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
}

/// A WebSocket upgrade request with the given version and token.
fn upgrade_request(addr: SocketAddr, token: &str, device: &str, version: &str) -> Vec<u8> {
    format!(
        "GET /v1/ws?device={device} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes()
}

/// Waits for the server to close `client`; returns the kick reason, the close code and the close reason.
async fn closed(client: &mut TestClient, limit: Duration) -> (Option<KickReason>, u16, String) {
    let deadline = Instant::now() + limit;
    let mut kick = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "not closed within {limit:?}");
        match client.next_incoming(left).await.unwrap() {
            Incoming::Frame(ServerFrame::Kick(k)) => kick = Some(k.reason),
            Incoming::Frame(_) => {}
            Incoming::Closed(code, reason) => return (kick, code, reason),
        }
    }
}

/// `GET /v1/users/me` with `token` on node `index`: the status.
async fn me_status(cluster: &Cluster, index: usize, token: &str) -> u16 {
    let (status, _) = benchmarks::client::http_json_auth(
        cluster.addr(index),
        "GET",
        "/v1/users/me",
        Some(token),
        None,
    )
    .await
    .unwrap();
    status.as_u16()
}

/// The status of a WebSocket handshake with `token` on node `index` (101 as 101).
async fn handshake_status(cluster: &Cluster, index: usize, token: &str, device: &str) -> u16 {
    match Connection::connect(cluster.addr(index), token, device).await {
        Ok(_) => 101,
        Err(ConnectError::Refused(status)) => status,
        Err(error) => panic!("handshake failed: {error}"),
    }
}

async fn post(
    cluster: &Cluster,
    index: usize,
    token: &str,
    path: &str,
) -> (u16, serde_json::Value) {
    let (status, body) =
        benchmarks::client::http_json_auth(cluster.addr(index), "POST", path, Some(token), None)
            .await
            .unwrap();
    (status.as_u16(), body)
}

/// Another token of the same user (a second login).
async fn second_token(cluster: &Cluster, user: &TestUser) -> TestUser {
    let token = benchmarks::client::login(cluster.addr(0), &user.name, PASSWORD)
        .await
        .unwrap();
    TestUser {
        token,
        ..user.clone()
    }
}

/// The token id (the sixth dot-separated field of a `v3` token).
fn token_id(token: &str) -> &str {
    assert!(token.starts_with("v3."), "unexpected token format {token}");
    token.split('.').nth(5).unwrap()
}

#[tokio::test]
async fn logout_closes_the_token_sockets_on_every_node_and_401s_it_everywhere() {
    let cluster = Cluster::start(2).await.unwrap();
    let user = cluster.user("logout").await.unwrap();
    let other_session = second_token(&cluster, &user).await;
    let mut on_a = cluster.connect(0, &user, "phone").await.unwrap();
    let mut on_b = cluster.connect(1, &user, "laptop").await.unwrap();
    // A connection of the same user with another token must survive.
    let mut unaffected = cluster.connect(1, &other_session, "tablet").await.unwrap();
    // Node B has checked (and cached) the token as good before the revocation.
    assert_eq!(me_status(&cluster, 1, &user.token).await, 200);

    let started = Instant::now();
    let (status, body) = post(&cluster, 0, &user.token, "/v1/auth/logout").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], "token");
    for client in [&mut on_a, &mut on_b] {
        let (kick, code, reason) = closed(client, Duration::from_secs(3)).await;
        assert_eq!(
            (kick, code, reason.as_str()),
            (
                Some(KickReason::Revoked),
                close_code::POLICY_VIOLATION,
                "revoked"
            )
        );
    }
    // Well inside the re-check period (30 s by default): the bus announcement did it.
    assert!(started.elapsed() < Duration::from_secs(3));

    for node in 0..2 {
        assert_eq!(me_status(&cluster, node, &user.token).await, 401);
        assert_eq!(
            handshake_status(&cluster, node, &user.token, "phone").await,
            401
        );
        assert_eq!(me_status(&cluster, node, &other_session.token).await, 200);
    }
    // Logging out twice is refused like any revoked token.
    assert_eq!(
        post(&cluster, 1, &user.token, "/v1/auth/logout").await.0,
        401
    );
    assert!(
        tokio::time::timeout(
            Duration::from_millis(300),
            unaffected.next_incoming(WAIT_LONG)
        )
        .await
        .is_err(),
        "the other session's connection must stay open"
    );
    // The revocation expires with the token (the cluster's default token lifetime, a day).
    let ttl: i64 = cluster
        .redis_cli(&["TTL", &format!("im:revoked:{}", token_id(&user.token))])
        .trim()
        .parse()
        .unwrap();
    assert!((86_000..=86_400).contains(&ttl), "TTL {ttl}");
    assert!(
        tests::probe::metric(cluster.admin_addr(1), "im_revoked_disconnects_total").await >= 1.0
    );
}

const WAIT_LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn logout_all_revokes_every_earlier_token_and_not_later_ones() {
    let cluster = Cluster::start(2).await.unwrap();
    let first = cluster.user("logoutall").await.unwrap();
    let second = second_token(&cluster, &first).await;
    let mut on_a = cluster.connect(0, &first, "phone").await.unwrap();
    let mut on_b = cluster.connect(1, &second, "laptop").await.unwrap();

    let (status, body) = post(&cluster, 1, &second.token, "/v1/auth/logout-all").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], "all");
    assert!(body["not_before_ms"].as_u64().unwrap() > 0);
    for client in [&mut on_a, &mut on_b] {
        let (kick, code, _) = closed(client, Duration::from_secs(3)).await;
        assert_eq!((kick, code), (Some(KickReason::Revoked), 1008));
    }
    for node in 0..2 {
        for token in [&first.token, &second.token] {
            assert_eq!(me_status(&cluster, node, token).await, 401);
            assert_eq!(handshake_status(&cluster, node, token, "phone").await, 401);
        }
    }
    // A login after the logout works everywhere.
    let later = second_token(&cluster, &first).await;
    for node in 0..2 {
        assert_eq!(me_status(&cluster, node, &later.token).await, 200);
        assert_eq!(
            handshake_status(&cluster, node, &later.token, "phone").await,
            101
        );
    }
}

#[tokio::test]
async fn a_lost_revocation_announcement_is_caught_by_the_periodic_recheck() {
    let options = ClusterOptions::default().arg("revocation-recheck-secs", 1);
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let user = cluster.user("recheck").await.unwrap();
    let mut client = cluster.connect(0, &user, "phone").await.unwrap();
    // Revoked in Redis with no bus message at all: what a dropped pub/sub message looks like to a node.
    let key = format!("im:revoked:{}", token_id(&user.token));
    assert_eq!(
        cluster.redis_cli(&["SET", &key, "1", "EX", "600"]).trim(),
        "OK"
    );
    let started = Instant::now();
    let (kick, code, _) = closed(&mut client, Duration::from_secs(5)).await;
    assert_eq!((kick, code), (Some(KickReason::Revoked), 1008));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Cached answers are no older than the re-check period either.
    assert_eq!(me_status(&cluster, 0, &user.token).await, 401);
}

#[tokio::test]
async fn a_websocket_version_other_than_13_gets_426() {
    let cluster = Cluster::start(1).await.unwrap();
    let user = cluster.user("version").await.unwrap();
    let addr = cluster.addr(0);
    for version in ["8", "14", "thirteen"] {
        let answer = raw_exchange(addr, &upgrade_request(addr, &user.token, "d", version)).await;
        assert_eq!(answer.status, 426, "{answer:?}");
        assert_eq!(answer.header("sec-websocket-version"), Some("13"));
        assert_eq!(answer.json()["error"], "unsupported_websocket_version");
    }
    // Even before the token is judged: a client that cannot speak 13 learns that first.
    let answer = raw_exchange(addr, &upgrade_request(addr, "garbage", "d", "8")).await;
    assert_eq!(answer.status, 426);
    let answer = raw_exchange(addr, &upgrade_request(addr, &user.token, "d", "13")).await;
    assert_eq!(answer.status, 101);
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let cluster = Cluster::start(1).await.unwrap();
    let addr = cluster.addr(0);
    let request = |pad: usize| {
        format!(
            "GET /v1/users/me HTTP/1.1\r\nHost: {addr}\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(pad)
        )
        .into_bytes()
    };
    // Under the default cap of 16 KiB: served (and refused for want of a token).
    assert_eq!(raw_exchange(addr, &request(12 * 1024)).await.status, 401);
    assert_eq!(raw_exchange(addr, &request(17 * 1024)).await.status, 431);
    // Many small headers add up the same way.
    let many: String = (0..400)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(40)))
        .collect();
    let request = format!("GET /v1/users/me HTTP/1.1\r\nHost: {addr}\r\n{many}\r\n");
    assert_eq!(raw_exchange(addr, request.as_bytes()).await.status, 431);
    // The node counts the error when the connection's task ends, which may be just after the client read the 431.
    let counted = tests::probe::metric_reaching(
        cluster.admin_addr(0),
        "im_http_connection_errors_total{kind=\"header_too_large\"}",
        2.0,
    )
    .await;
    assert!(counted >= 2.0, "header_too_large counted {counted} times");
}

#[tokio::test]
async fn a_request_head_sent_too_slowly_is_cut_off() {
    let options = ClusterOptions::default().arg("handshake-timeout-secs", 2);
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let addr = cluster.addr(0);
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    // One header line every 250 ms: each read makes progress, the whole head never completes.
    let dribble = tokio::spawn(async move {
        if write
            .write_all(format!("GET /v1/users/me HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if write
                .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(8), read.read_to_end(&mut answer)).await;
    let elapsed = started.elapsed();
    dribble.abort();
    assert!(outcome.is_ok(), "the connection stayed open");
    assert!(
        elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 401"),
        "the slow request was served"
    );
    // A prompt client on the same node is served.
    let request = format!("GET /v1/users/me HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert_eq!(raw_exchange(addr, request.as_bytes()).await.status, 401);
    assert!(
        tests::probe::metric_reaching(
            cluster.admin_addr(0),
            "im_http_connection_errors_total{kind=\"header_timeout\"}",
            1.0
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn connections_over_the_limits_get_429_before_the_upgrade() {
    let options = ClusterOptions::default()
        .arg("max-conns-per-user", 2)
        .arg("max-connections", 3);
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let addr = cluster.addr(0);
    let alice = cluster.user("limit-a").await.unwrap();
    let bob = cluster.user("limit-b").await.unwrap();
    let carol = cluster.user("limit-c").await.unwrap();

    let _a1 = cluster.connect(0, &alice, "d1").await.unwrap();
    let _a2 = cluster.connect(0, &alice, "d2").await.unwrap();
    let answer = raw_exchange(addr, &upgrade_request(addr, &alice.token, "d3", "13")).await;
    assert_eq!(answer.status, 429, "{answer:?}");
    assert_eq!(answer.header("retry-after"), Some("30"));
    assert_eq!(answer.json()["error"], "too_many_connections");
    assert!(answer.json()["message"].as_str().unwrap().contains("user"));
    // A device connecting again replaces its connection: not a third one.
    let _a1_again = cluster.connect(0, &alice, "d1").await.unwrap();

    let bob_conn = cluster.connect(0, &bob, "d1").await.unwrap();
    let answer = raw_exchange(addr, &upgrade_request(addr, &carol.token, "d1", "13")).await;
    assert_eq!(answer.status, 429, "{answer:?}");
    assert_eq!(answer.header("retry-after"), Some("5"));
    assert!(answer.json()["message"].as_str().unwrap().contains("node"));

    // A connection that goes frees its place.
    drop(bob_conn);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match handshake_status(&cluster, 0, &carol.token, "d1").await {
            101 => break,
            429 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("carol still refused: {other}"),
        }
    }
    assert!(
        tests::probe::metric(
            cluster.admin_addr(0),
            "im_handshake_failures_total{reason=\"user_connection_limit\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn wss_is_served_directly_and_plain_tcp_is_refused() {
    let dir = tests::procs::scratch_dir("tls");
    let (cert, key) = tests::tls::self_signed(&dir).unwrap();
    let options = ClusterOptions::default()
        .arg("tls-cert", cert.display())
        .arg("tls-key", key.display())
        .arg("handshake-timeout-secs", 2);
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let addr = cluster.addr(0);
    let tls = tests::tls::client_config(&cert).unwrap();

    // REST over HTTPS: register and log in two users.
    let mut users = Vec::new();
    for name in ["tls-alice", "tls-bob"] {
        let credentials = serde_json::json!({"username": name, "password": PASSWORD});
        let (status, body) = tests::tls::https_json(
            addr,
            &tls,
            "POST",
            "/v1/users",
            None,
            Some(credentials.clone()),
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_i64().unwrap();
        let (status, body) =
            tests::tls::https_json(addr, &tls, "POST", "/v1/sessions", None, Some(credentials))
                .await
                .unwrap();
        assert_eq!(status, 200, "{body}");
        let token = body["token"].as_str().unwrap().to_string();
        users.push(TestUser {
            id,
            name: name.into(),
            token,
        });
    }

    // wss:// handshake, hello, and a message from one TLS connection to another.
    let mut clients = Vec::new();
    for user in &users {
        let stream = tests::tls::connect(addr, &tls).await.unwrap();
        let conn = Connection::connect_stream(stream, addr, &user.token, "tls")
            .await
            .unwrap();
        let client = TestClient::over(conn, user, "tls").await.unwrap();
        assert_eq!(client.hello.user, user.id);
        clients.push(client);
    }
    let ack = clients[0]
        .send_and_ack(users[1].id, "tls-1", "over TLS")
        .await
        .unwrap();
    clients[1]
        .wait_messages(ack.conv, 1, Duration::from_secs(10))
        .await
        .unwrap();
    let received = &clients[1].convs[&ack.conv].msgs[&ack.seq];
    assert_eq!(received.body, "over TLS");

    // Plain TCP gets no HTTP answer and the connection is closed.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(format!("GET /v1/users/me HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let outcome =
        tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(outcome.is_ok(), "the plain connection stayed open");
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
        "plain HTTP was answered: {answer:?}"
    );
    assert!(
        benchmarks::client::http_json(addr, "GET", "/v1/users/me", None)
            .await
            .is_err()
    );
    // A client that opens TCP and never starts TLS is cut off after the handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut nothing = Vec::new();
    let outcome =
        tokio::time::timeout(Duration::from_secs(8), silent.read_to_end(&mut nothing)).await;
    assert!(outcome.is_ok(), "the silent connection stayed open");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
    // The admin listener stays plain HTTP while the client listener speaks TLS.
    assert!(tests::probe::metric(cluster.admin_addr(0), "im_tls_handshakes_total").await >= 3.0);
    // A client that does not trust the certificate cannot connect either.
    let other_dir = tests::procs::scratch_dir("tls-other");
    let (other_cert, _) = tests::tls::self_signed(&other_dir).unwrap();
    let untrusting = tests::tls::client_config(&other_cert).unwrap();
    assert!(tests::tls::connect(addr, &untrusting).await.is_err());
}

#[tokio::test]
async fn malformed_upgrades_are_refused_before_the_upgrade() {
    let cluster = Cluster::start(1).await.unwrap();
    let user = cluster.user("malformed").await.unwrap();
    let addr = cluster.addr(0);
    let request = |auth: &str, query: &str, upgrade: bool| {
        let upgrade = if upgrade {
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        format!("GET /v1/ws?{query} HTTP/1.1\r\nHost: {addr}\r\n{upgrade}{auth}\r\n").into_bytes()
    };
    let bearer = format!("Authorization: Bearer {}\r\n", user.token);
    // No token at all.
    let answer = raw_exchange(addr, &request("", "device=d", true)).await;
    assert_eq!(
        (answer.status, answer.json()["error"].as_str()),
        (401, Some("unauthorized"))
    );
    // A plain GET, not an upgrade.
    let answer = raw_exchange(addr, &request(&bearer, "device=d", false)).await;
    assert_eq!(
        (answer.status, answer.json()["error"].as_str()),
        (400, Some("not_websocket"))
    );
    // No device.
    let answer = raw_exchange(addr, &request(&bearer, "", true)).await;
    assert_eq!(
        (answer.status, answer.json()["error"].as_str()),
        (400, Some("bad_device"))
    );
    // The token as a query parameter (browsers) works like the header.
    let query = format!("device=d&token={}", user.token);
    assert_eq!(
        raw_exchange(addr, &request("", &query, true)).await.status,
        101
    );
}

#[tokio::test]
async fn a_token_whose_revocation_cannot_be_checked_is_refused_with_503() {
    let options = ClusterOptions::default()
        .single_redis()
        .proxied_redis(0)
        .arg("redis-timeout-ms", 500);
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let checked = cluster.user("cut-checked").await.unwrap();
    let never_checked = second_token(&cluster, &checked).await;
    // Checked once, so the node has a recent answer for this token.
    assert_eq!(me_status(&cluster, 0, &checked.token).await, 200);

    cluster.redis_proxies[&0].cut();
    let (status, body) = benchmarks::client::http_json_auth(
        cluster.addr(0),
        "GET",
        "/v1/users/me",
        Some(&never_checked.token),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (503, Some("unavailable"))
    );
    // The recent answer still serves: REST keeps working for tokens in use.
    assert_eq!(me_status(&cluster, 0, &checked.token).await, 200);

    cluster.redis_proxies[&0].restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    while me_status(&cluster, 0, &never_checked.token).await != 200 {
        assert!(
            Instant::now() < deadline,
            "still refused after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
