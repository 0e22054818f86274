//! Media on shared storage: bytes uploaded through one node are served by another after the uploading node is
//! killed, with no folder shared between the nodes (the default `postgres` media store), in more than one chunk.

use common::frame::{kinds, Attrs};
use tests::client::WAIT;
use tests::{Cluster, ClusterOptions};

async fn call(
    cluster: &Cluster,
    node: usize,
    user: &tests::TestUser,
    method: &str,
    path: &str,
    mime: &str,
    bytes: Vec<u8>,
) -> (u16, bytes::Bytes) {
    let (status, body) = benchmarks::client::http_raw(
        cluster.addr(node),
        method,
        path,
        Some(&user.token),
        mime,
        bytes.into(),
    )
    .await
    .unwrap();
    (status.as_u16(), body)
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 3 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                files_under(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test]
async fn media_uploaded_through_a_killed_node_is_served_by_another() {
    // Small chunks, so the file below spans many of them.
    let mut cluster = Cluster::start_with(
        2,
        ClusterOptions::default()
            .arg("media-store", "postgres")
            .arg("media-chunk-bytes", 4096),
    )
    .await
    .unwrap();
    let alice = cluster.user("mediaa").await.unwrap();
    let bob = cluster.user("mediab").await.unwrap();

    let picture = png(300, 200);
    assert!(picture.len() > 3 * 4096, "the picture spans several chunks");
    let (status, body) = call(
        &cluster,
        0,
        &alice,
        "POST",
        "/v1/media",
        "image/png",
        picture.clone(),
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let uploaded: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let hash = uploaded["hash"].as_str().unwrap().to_string();
    let mut document = b"%PDF-1.4 a document ".repeat(500);
    document.extend_from_slice(&rand::random::<[u8; 16]>());
    let (status, body) = call(
        &cluster,
        0,
        &alice,
        "POST",
        "/v1/media",
        "application/pdf",
        document.clone(),
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let doc_hash = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();

    // Share both with bob in their 1:1 conversation, then take the uploading node away.
    let mut ca = cluster.connect(0, &alice, "phone").await.unwrap();
    for (cid, kind, media) in [
        ("img", kinds::IMAGE, &hash),
        ("doc", kinds::FILE, &doc_hash),
    ] {
        ca.send(&common::ClientFrame::Send(common::frame::Send {
            cid: cid.into(),
            to: Some(bob.id),
            conv: None,
            kind: kind.into(),
            body: String::new(),
            attrs: Some(Attrs {
                media: Some(media.clone()),
                name: (kind == kinds::FILE).then(|| "notes.pdf".to_string()),
                ..Attrs::default()
            }),
        }))
        .await
        .unwrap();
        ca.wait_ack(cid, WAIT).await.unwrap();
    }
    drop(ca);
    cluster.nodes[0].signal(libc::SIGKILL);
    cluster.nodes[0].wait_exit(std::time::Duration::from_secs(10));

    let (status, bytes) = call(
        &cluster,
        1,
        &bob,
        "GET",
        &format!("/v1/media/{hash}"),
        "",
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        bytes.as_ref(),
        picture.as_slice(),
        "the image, whole, from the other node"
    );
    let (status, thumb) = call(
        &cluster,
        1,
        &bob,
        "GET",
        &format!("/v1/media/{hash}/thumb"),
        "",
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        image::load_from_memory(&thumb).is_ok(),
        "the thumbnail is a decodable image"
    );
    let (status, bytes) = call(
        &cluster,
        1,
        &bob,
        "GET",
        &format!("/v1/media/{doc_hash}"),
        "",
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(bytes.as_ref(), document.as_slice());

    // Uploading the same bytes through the surviving node answers exactly like the first upload.
    let (status, body) = call(&cluster, 1, &bob, "POST", "/v1/media", "image/png", picture).await;
    assert_eq!(status, 201);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        uploaded
    );

    // Nothing went to a node's disk.
    assert_eq!(
        files_under(&cluster.dir.join("media")),
        0,
        "media bytes live in Postgres"
    );
}
