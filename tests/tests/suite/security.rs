//! Security checks at the edge: the `Origin` allow-list on WebSocket upgrades, and cluster-wide throttling of
//! password guessing.

use std::net::SocketAddr;

use serde_json::json;
use tests::{Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a WebSocket upgrade request by hand (so any header can be set) and returns the response status.
async fn upgrade_status(addr: SocketAddr, token: &str, origin: Option<&str>) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /v1/ws?device=web HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n{origin}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await.unwrap();
    String::from_utf8_lossy(&head[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn upgrades_from_unlisted_origins_are_refused() {
    let options = ClusterOptions::default().arg("allowed-origins", "https://chat.example");
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let user = cluster.user("origin").await.unwrap();
    let addr = cluster.addr(0);
    assert_eq!(
        upgrade_status(addr, &user.token, Some("https://evil.example")).await,
        403
    );
    assert_eq!(
        upgrade_status(addr, &user.token, Some("https://chat.example")).await,
        101
    );
    // Native clients send no Origin and are not affected.
    assert_eq!(upgrade_status(addr, &user.token, None).await, 101);
}

async fn login(addr: SocketAddr, name: &str, password: &str) -> u16 {
    let body = json!({"username": name, "password": password});
    let (status, _) = benchmarks::client::http_json(addr, "POST", "/v1/sessions", Some(body))
        .await
        .unwrap();
    status.as_u16()
}

#[tokio::test]
async fn password_guessing_is_throttled_across_the_cluster() {
    let options = ClusterOptions::default().arg("login-max-failures-per-user", 3);
    let cluster = Cluster::start_with(2, options).await.unwrap();
    let victim = cluster.user("victim").await.unwrap();
    let bystander = cluster.user("bystander").await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            login(cluster.addr(0), &victim.name, "wrong password").await,
            401
        );
    }
    // Even the right password is refused now, on every node, until the window ends.
    assert_eq!(
        login(cluster.addr(0), &victim.name, "correct horse battery").await,
        429
    );
    assert_eq!(
        login(cluster.addr(1), &victim.name, "correct horse battery").await,
        429
    );
    // Other users are not affected.
    assert_eq!(
        login(cluster.addr(1), &bystander.name, "correct horse battery").await,
        200
    );
    assert!(tests::probe::metric(cluster.admin_addr(1), "im_login_throttled_total").await >= 1.0);
}
