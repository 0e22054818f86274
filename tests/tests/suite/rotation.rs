//! Token key rotation across a cluster: tokens signed with the old key keep working on every node while the new key
//! signs, and stop only when the old key is retired — nobody is logged out by the rotation itself.

use std::time::Duration;

use tests::{Cluster, ClusterOptions};

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

/// Restarts every node with `keys` (each drains first).
async fn restart_with(cluster: &mut Cluster, keys: &str) {
    for index in 0..cluster.nodes.len() {
        cluster.nodes[index].signal(libc::SIGTERM);
        cluster.nodes[index].wait_exit(Duration::from_secs(30));
        cluster.nodes[index].set_arg("token-keys", keys);
        cluster.start_node(index).await.unwrap();
    }
}

#[tokio::test]
async fn rotating_the_token_key_logs_nobody_out() {
    let (old, new) = ("o".repeat(40), "n".repeat(40));
    let mut cluster = Cluster::start_with(
        2,
        ClusterOptions::default().arg("token-keys", format!("k1:{old}")),
    )
    .await
    .unwrap();
    let user = cluster.user("rotate").await.unwrap();
    assert!(user.token.starts_with("v3.k1."), "{}", user.token);

    // The new key first: it signs, the old one still verifies, on both nodes.
    restart_with(&mut cluster, &format!("k2:{new},k1:{old}")).await;
    for node in 0..2 {
        assert_eq!(
            status_of(&cluster, node, &user.token).await,
            200,
            "node {node}"
        );
    }
    let mut client = cluster.connect(1, &user, "phone").await.unwrap();
    client.drain(Duration::from_millis(100)).await.unwrap();
    let fresh = benchmarks::client::login(cluster.addr(0), &user.name, "correct horse battery")
        .await
        .unwrap();
    assert!(fresh.starts_with("v3.k2."), "{fresh}");
    drop(client);

    // The old key retired: its tokens are refused, the new key's still work.
    restart_with(&mut cluster, &format!("k2:{new}")).await;
    for node in 0..2 {
        assert_eq!(
            status_of(&cluster, node, &user.token).await,
            401,
            "node {node}"
        );
        assert_eq!(status_of(&cluster, node, &fresh).await, 200, "node {node}");
    }
}
