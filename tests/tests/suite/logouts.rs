//! Logouts survive a Redis restart: Redis run with the persistence settings the shipped `ops/compose.yaml` gives it
//! (read from the file, not copied) keeps the revocations, so a logged-out token stays refused on every node after
//! Redis comes back — after a graceful stop and after a crash a few seconds later.

use std::time::Duration;

use tests::{Cluster, ClusterOptions};

/// The `redis-server` arguments of the compose file's `redis` service.
fn shipped_redis_settings() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/compose.yaml");
    let compose: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let command = compose["services"]["redis"]["command"]
        .as_sequence()
        .expect("the redis service has a command list");
    let args: Vec<String> = command
        .iter()
        .filter_map(|part| part.as_str().map(str::to_string))
        .skip_while(|part| part == "redis-server")
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--appendonly" && w[1] == "yes"),
        "the shipped Redis persists (appendonly): {args:?}"
    );
    args
}

async fn status_of(cluster: &Cluster, node: usize, token: &str) -> u16 {
    let (status, _) = benchmarks::client::http_json_auth(
        cluster.addr(node),
        "GET",
        "/v1/users/me",
        Some(token),
        None,
    )
    .await
    .unwrap();
    status.as_u16()
}

/// Waits until node `node` answers `token` with `expected` (the node reconnects to Redis after its restart).
async fn until_status(cluster: &Cluster, node: usize, token: &str, expected: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = status_of(cluster, node, token).await;
        if status == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {node} answers {status}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn logouts_survive_a_redis_restart() {
    let mut cluster = Cluster::start_with(
        2,
        ClusterOptions::default()
            .redis_persistence(shipped_redis_settings())
            // Nodes re-read revocations from Redis soon, instead of trusting what they cached before the restart.
            .arg("revocation-recheck-secs", 1),
    )
    .await
    .unwrap();
    let user = cluster.user("logout").await.unwrap();
    let other = benchmarks::client::login(cluster.addr(1), &user.name, "correct horse battery")
        .await
        .unwrap();
    let (status, _) = benchmarks::client::http_json_auth(
        cluster.addr(0),
        "POST",
        "/v1/auth/logout",
        Some(&user.token),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status.as_u16(), 200);

    cluster.redis.restart_gracefully().unwrap();
    for node in 0..2 {
        until_status(&cluster, node, &other, 200).await;
        assert_eq!(
            status_of(&cluster, node, &user.token).await,
            401,
            "node {node}, graceful stop"
        );
    }

    // A crash loses at most the last second (appendfsync everysec): a logout older than that survives it too.
    let (status, _) = benchmarks::client::http_json_auth(
        cluster.addr(1),
        "POST",
        "/v1/auth/logout-all",
        Some(&other),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status.as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.redis.restart().unwrap();
    let fresh = loop {
        match benchmarks::client::login(cluster.addr(0), &user.name, "correct horse battery").await
        {
            Ok(token) => break token,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    for node in 0..2 {
        until_status(&cluster, node, &fresh, 200).await;
        assert_eq!(
            status_of(&cluster, node, &other).await,
            401,
            "node {node}, after a crash"
        );
        assert_eq!(
            status_of(&cluster, node, &user.token).await,
            401,
            "node {node}, after a crash"
        );
    }
}
