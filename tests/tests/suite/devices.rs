//! Devices across two nodes: the list shows where a user is logged in (platform, online, this login) whichever node
//! answers; "one session per platform" moves an older phone login out with `kick{replaced}` and revokes it, while
//! web stays; logging a device out from another device on another node closes it with `kick{revoked}` and refuses
//! its token; a user's own policy choice turns the rule off; `hello` carries the node's size limits.

use std::time::Duration;

use benchmarks::client::Connection;
use common::KickReason;
use tests::client::TestClient;
use tests::procs::TestUser;
use tests::{Cluster, ClusterOptions};

/// Connects `user` (with `token`) as `device` on `platform` to node `index`.
async fn connect(
    cluster: &Cluster,
    index: usize,
    user: &TestUser,
    device: &str,
    platform: &str,
) -> TestClient {
    // The harness puts `device` into the query string as given: the platform rides along.
    let conn = Connection::connect(
        cluster.addr(index),
        &user.token,
        &format!("{device}&platform={platform}"),
    )
    .await
    .unwrap();
    TestClient::over(conn, user, device).await.unwrap()
}

async fn login(cluster: &Cluster, index: usize, user: &TestUser) -> TestUser {
    let token = benchmarks::client::login(cluster.addr(index), &user.name, "correct horse battery")
        .await
        .unwrap();
    TestUser {
        token,
        ..user.clone()
    }
}

/// The listed devices as (device, platform, online, this_login), via node `index`.
async fn devices(
    cluster: &Cluster,
    index: usize,
    user: &TestUser,
) -> Vec<(String, String, bool, bool)> {
    let (status, body) = cluster
        .api(index, user, "GET", "/v1/devices", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let mut list: Vec<_> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert!(d["last_seen_ms"].as_i64().unwrap() > 0, "{d}");
            assert!(d.get("node").is_none(), "no node names for users: {d}");
            (
                d["device"].as_str().unwrap().to_string(),
                d["platform"].as_str().unwrap().to_string(),
                d["online"].as_bool().unwrap(),
                d["this_login"].as_bool().unwrap(),
            )
        })
        .collect();
    list.sort();
    list
}

fn row(device: &str, platform: &str, online: bool, this: bool) -> (String, String, bool, bool) {
    (device.into(), platform.into(), online, this)
}

/// Waits until the client's connection is closed; returns the kick reason and close code.
async fn closed(client: &mut TestClient) -> (Option<KickReason>, u16) {
    client.expect_close(Duration::from_secs(10)).await.unwrap()
}

#[tokio::test]
async fn devices_are_listed_logged_out_and_moved_out_by_platform_across_nodes() {
    let cluster = Cluster::start_with(2, ClusterOptions::default())
        .await
        .unwrap();
    let web = cluster.user("devices").await.unwrap();
    let old_phone = login(&cluster, 1, &web).await;
    let new_phone = login(&cluster, 0, &web).await;

    let mut web_tab = connect(&cluster, 0, &web, "web-tab1", "web").await;
    let limits = web_tab.hello.limits.clone().expect("hello carries limits");
    assert_eq!(limits.message_bytes, 64 * 1024);
    assert_eq!(limits.body_bytes, 16 * 1024);
    assert_eq!(limits.media_bytes, 10 * 1024 * 1024);
    let mut old = connect(&cluster, 1, &old_phone, "phone-old", "android").await;

    // Listed through the other node, with what the user needs and no node names.
    assert_eq!(
        devices(&cluster, 1, &web).await,
        vec![
            row("phone-old", "android", true, false),
            row("web-tab1", "web", true, true),
        ]
    );

    // A new Android login on node 0 moves the old phone (node 1) out; web stays.
    let mut new = connect(&cluster, 0, &new_phone, "phone-new", "android").await;
    assert_eq!(
        closed(&mut old).await,
        (Some(KickReason::Replaced), 4001),
        "the older phone is moved out as replaced"
    );
    for node in 0..2 {
        assert_eq!(
            cluster.me_status(node, &old_phone.token).await.unwrap(),
            401,
            "the old phone's login is revoked on node {node}"
        );
    }
    assert_eq!(
        devices(&cluster, 1, &new_phone).await,
        vec![
            row("phone-new", "android", true, true),
            row("web-tab1", "web", true, false),
        ]
    );
    // The old phone cannot come back with its login.
    assert!(Connection::connect(
        cluster.addr(1),
        &old_phone.token,
        "phone-old&platform=android"
    )
    .await
    .is_err());

    // The new phone logs the web tab out through node 1; the tab is on node 0.
    let (status, body) = cluster
        .api(1, &new_phone, "DELETE", "/v1/devices/web-tab1", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["logged_out"], serde_json::json!(["web-tab1"]));
    assert_eq!(body["this_login"], false);
    assert_eq!(
        closed(&mut web_tab).await,
        (Some(KickReason::Revoked), 1008)
    );
    assert_eq!(cluster.me_status(1, &web.token).await.unwrap(), 401);
    assert_eq!(
        devices(&cluster, 0, &new_phone).await,
        vec![row("phone-new", "android", true, true)]
    );
    let (status, body) = cluster
        .api(0, &new_phone, "DELETE", "/v1/devices/web-tab1", None)
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, body) = cluster
        .api(0, &new_phone, "DELETE", "/v1/devices/bad%20id", None)
        .await
        .unwrap();
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_device")));

    // The user turns the rule off (through node 1): a third Android login leaves the new phone alone.
    let (status, body) = cluster
        .api(
            1,
            &new_phone,
            "PUT",
            "/v1/devices/policy",
            Some(serde_json::json!({ "one_session_per_platform": false })),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policy"]["platforms"], serde_json::json!([]));
    let third = login(&cluster, 1, &web).await;
    let _tablet = connect(&cluster, 1, &third, "tablet", "android").await;
    new.drain(Duration::from_millis(500)).await.unwrap();
    assert_eq!(cluster.me_status(0, &new_phone.token).await.unwrap(), 200);
    assert_eq!(
        devices(&cluster, 0, &third).await,
        vec![
            row("phone-new", "android", true, false),
            row("tablet", "android", true, true),
        ]
    );

    // An unknown platform is refused before the upgrade.
    let refused = Connection::connect(cluster.addr(0), &third.token, "x&platform=toaster").await;
    assert!(
        matches!(refused, Err(benchmarks::client::ConnectError::Refused(s)) if s == 400),
        "{:?}",
        refused.err()
    );
}
