//! Accounts, authentication at the upgrade, health, readiness and metrics (on the admin listener).

use benchmarks::client::{http_json, ConnectError, Connection};
use tests::Cluster;

#[tokio::test]
async fn register_login_and_refusals() {
    let cluster = Cluster::start(1).await.unwrap();
    let addr = cluster.addr(0);
    let body = serde_json::json!({"username": "alice", "password": "long enough"});
    let (status, created) = http_json(addr, "POST", "/v1/users", Some(body.clone()))
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let (status, error) = http_json(addr, "POST", "/v1/users", Some(body.clone()))
        .await
        .unwrap();
    assert_eq!(status, 409);
    assert_eq!(error["error"], "username_taken");
    let (status, _) = http_json(
        addr,
        "POST",
        "/v1/users",
        Some(serde_json::json!({"username": "Bad Name", "password": "long enough"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    let (status, _) = http_json(
        addr,
        "POST",
        "/v1/users",
        Some(serde_json::json!({"nope": 1})),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);

    let (status, session) = http_json(addr, "POST", "/v1/sessions", Some(body))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let token = session["token"].as_str().unwrap().to_string();
    let (status, _) = http_json(
        addr,
        "POST",
        "/v1/sessions",
        Some(serde_json::json!({"username": "alice", "password": "wrong password"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 401);

    // The token works on the WebSocket; a bad or tampered one gets 401 and no upgrade.
    let ok = Connection::connect(addr, &token, "laptop").await;
    assert!(ok.is_ok());
    for bad in [
        "garbage",
        &token.replacen(".", ".9", 2),
        &format!("{token}x"),
    ] {
        match Connection::connect(addr, bad, "laptop").await {
            Err(ConnectError::Refused(401)) => {}
            other => panic!("expected 401 for {bad}, got {:?}", other.map(|_| ())),
        }
    }
    match Connection::connect(addr, &token, &"x".repeat(65)).await {
        Err(ConnectError::Refused(400)) => {}
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn expired_token_is_refused() {
    let options = tests::ClusterOptions::default().arg("token-ttl-secs", 1);
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let user = cluster.user("exp").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    match Connection::connect(cluster.addr(0), &user.token, "d").await {
        Err(ConnectError::Refused(401)) => {}
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let cluster = Cluster::start(1).await.unwrap();
    let admin = cluster.admin_addr(0);
    let (status, _) = http_json(admin, "GET", "/healthz", None).await.unwrap();
    assert_eq!(status, 200);
    let (status, ready) = http_json(admin, "GET", "/readyz", None).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(ready["redis"], true);
    assert_eq!(ready["postgres"], true);

    // One message so that the message metrics have samples.
    let a = cluster.user("ma").await.unwrap();
    let b = cluster.user("mb").await.unwrap();
    let mut ca = cluster.connect(0, &a, "d").await.unwrap();
    let mut cb = cluster.connect(0, &b, "d").await.unwrap();
    ca.send_and_ack(b.id, "m1", "hi").await.unwrap();
    let conv = ca.acks["m1"].conv;
    cb.wait_messages(conv, 1, tests::client::WAIT)
        .await
        .unwrap();

    let text = metrics_text(admin).await;
    for name in [
        "im_connections_open",
        "im_frames_in_total",
        "im_frames_out_total",
        "im_messages_accepted_total",
        "im_messages_delivered_total{path=\"local\"}",
        "im_ack_latency_seconds_bucket",
        "im_writer_batch_rows_bucket",
        "im_writer_flush_seconds_bucket",
        "im_build_info",
    ] {
        assert!(
            text.contains(name),
            "metric {name} missing from /metrics:\n{text}"
        );
    }
}

/// Reads `/metrics` of an admin listener as text.
pub async fn metrics_text(addr: std::net::SocketAddr) -> String {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get("/metrics")
        .header("host", "x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}
