//! Media on shared storage, the same test body for every shared store (`postgres`, the default, and `s3`, against a
//! real S3-compatible server): bytes uploaded through one node are served by another after the uploading node is
//! killed, with no folder shared between the nodes, in more than one chunk or part; thumbnails; dedup; a stranger
//! gets 404. Then `node media import`: an old `local` folder copied into each store, checked against the records.

use common::frame::{kinds, Attrs};
use tests::client::WAIT;
use tests::{Cluster, ClusterOptions, TestUser};

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

/// The shared media stores under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Store {
    Postgres,
    S3,
}

impl Store {
    fn options(self) -> ClusterOptions {
        match self {
            // Small chunks, so the files below span many of them.
            Store::Postgres => ClusterOptions::default()
                .arg("media-store", "postgres")
                .arg("media-chunk-bytes", 4096),
            // The smallest part S3 allows, so the large file below is a multipart upload.
            Store::S3 => ClusterOptions::default()
                .s3_media()
                .arg("s3-part-bytes", 5 * 1024 * 1024),
        }
    }
}

async fn upload(
    cluster: &Cluster,
    node: usize,
    user: &TestUser,
    mime: &str,
    bytes: Vec<u8>,
) -> String {
    let (status, body) = call(cluster, node, user, "POST", "/v1/media", mime, bytes).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice::<serde_json::Value>(&body).unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn download(
    cluster: &Cluster,
    node: usize,
    user: &TestUser,
    path: &str,
) -> (u16, bytes::Bytes) {
    call(cluster, node, user, "GET", path, "", Vec::new()).await
}

/// Sends each (kind, hash) from `from` to `to` in their 1:1 conversation.
async fn share(cluster: &Cluster, from: &TestUser, to: &TestUser, media: &[(&str, &str)]) {
    let mut client = cluster.connect(0, from, "phone").await.unwrap();
    for (index, (kind, hash)) in media.iter().enumerate() {
        let cid = format!("m{index}");
        client
            .send(&common::ClientFrame::Send(common::frame::Send {
                cid: cid.clone(),
                to: Some(to.id),
                conv: None,
                kind: (*kind).into(),
                body: String::new(),
                attrs: Some(Attrs {
                    media: Some(hash.to_string()),
                    name: (*kind == kinds::FILE).then(|| "notes.pdf".to_string()),
                    ..Attrs::default()
                }),
            }))
            .await
            .unwrap();
        client.wait_ack(&cid, WAIT).await.unwrap();
    }
}

/// A PDF-ish document of `len` bytes, unique to this run.
fn document(len: usize) -> Vec<u8> {
    let mut document = b"%PDF-1.4 a document ".repeat(len / 20 + 1);
    document.truncate(len - 16);
    document.extend_from_slice(&rand::random::<[u8; 16]>());
    document
}

async fn media_of_a_killed_node_are_served_by_another(store: Store) {
    let mut cluster = Cluster::start_with(2, store.options()).await.unwrap();
    let alice = cluster.user("mediaa").await.unwrap();
    let bob = cluster.user("mediab").await.unwrap();
    let eve = cluster.user("mediae").await.unwrap();

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
    assert_eq!(uploaded["thumbnail"], true);
    // Larger than one S3 part: a multipart upload of two parts (and 1400 Postgres chunks).
    let document = document(5 * 1024 * 1024 + 600 * 1024);
    let doc_hash = upload(&cluster, 0, &alice, "application/pdf", document.clone()).await;

    // Share both with bob in their 1:1 conversation, then take the uploading node away.
    share(
        &cluster,
        &alice,
        &bob,
        &[(kinds::IMAGE, &hash), (kinds::FILE, &doc_hash)],
    )
    .await;
    cluster.nodes[0].signal(libc::SIGKILL);
    cluster.nodes[0].wait_exit(std::time::Duration::from_secs(10));

    let (status, bytes) = download(&cluster, 1, &bob, &format!("/v1/media/{hash}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        bytes.as_ref(),
        picture.as_slice(),
        "the image, whole, from the other node"
    );
    let (status, thumb) = download(&cluster, 1, &bob, &format!("/v1/media/{hash}/thumb")).await;
    assert_eq!(status, 200);
    let thumb = image::load_from_memory(&thumb).expect("the thumbnail is a decodable image");
    assert_eq!((thumb.width(), thumb.height()), (256, 171));
    let (status, bytes) = download(&cluster, 1, &bob, &format!("/v1/media/{doc_hash}")).await;
    assert_eq!(status, 200);
    assert!(
        bytes.as_ref() == document.as_slice(),
        "the multipart document, whole"
    );

    // A stranger gets the same 404 as for a hash nobody uploaded, for the bytes, the thumbnail and the info.
    for path in [
        format!("/v1/media/{hash}"),
        format!("/v1/media/{hash}/thumb"),
        format!("/v1/media/{hash}/info"),
        format!("/v1/media/{doc_hash}"),
    ] {
        let (status, body) = download(&cluster, 1, &eve, &path).await;
        assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
    }

    // Uploading the same bytes through the surviving node answers exactly like the first upload, stores nothing
    // new, and makes the uploader someone who may fetch them.
    let (status, body) = call(
        &cluster,
        1,
        &eve,
        "POST",
        "/v1/media",
        "image/png",
        picture.clone(),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        uploaded
    );
    let (status, bytes) = download(&cluster, 1, &eve, &format!("/v1/media/{hash}")).await;
    assert_eq!((status, bytes.as_ref() == picture.as_slice()), (200, true));

    // Where the bytes are: in the chosen store, and never on a node's disk.
    assert_eq!(
        files_under(&cluster.dir.join("media")),
        0,
        "nothing on a node's disk"
    );
    let chunks: i64 = cluster
        .sql()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM media_chunks", &[])
        .await
        .unwrap()
        .get(0);
    match store {
        Store::Postgres => assert!(chunks > 1400, "chunks in Postgres: {chunks}"),
        Store::S3 => {
            assert_eq!(chunks, 0, "nothing in Postgres' chunk table");
            let s3 = cluster.s3.as_ref().unwrap();
            assert_eq!(
                s3.object(&format!("media/{hash}")).as_deref(),
                Some(picture.as_slice())
            );
            assert_eq!(
                s3.object(&format!("media/{doc_hash}")).map(|o| o.len()),
                Some(document.len())
            );
            assert!(s3.object(&format!("media/{hash}.thumb.png")).is_some());
        }
    }

    // The object store gone: uploads and downloads answer 503 (retryable), and the failures are counted.
    if let Some(mut s3) = cluster.s3.take() {
        s3.stop();
        let (status, body) = call(
            &cluster,
            1,
            &bob,
            "POST",
            "/v1/media",
            "application/pdf",
            document[..1000].to_vec(),
        )
        .await;
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        let (status, _) = download(&cluster, 1, &bob, &format!("/v1/media/{hash}")).await;
        assert_eq!(status, 503);
        let (_, metrics) = tests::probe::http_get(cluster.admin_addr(1), "/metrics")
            .await
            .unwrap();
        for op in ["put", "get"] {
            let counted = metrics.lines().any(|line| {
                line.starts_with("im_media_store_errors_total{")
                    && line.contains("store=\"s3\"")
                    && line.contains(&format!("op=\"{op}\""))
                    && line.ends_with(" 1")
            });
            assert!(counted, "{op} failure counted:\n{metrics}");
        }
        let logs = cluster.nodes[1].logs();
        assert!(logs.contains("media store failed"), "the failure is logged");
        assert!(!logs.contains(&s3.secret_key), "the secret is never logged");
    }
}

#[tokio::test]
async fn postgres_store_serves_media_of_a_killed_node() {
    media_of_a_killed_node_are_served_by_another(Store::Postgres).await;
}

#[tokio::test]
async fn s3_store_serves_media_of_a_killed_node() {
    media_of_a_killed_node_are_served_by_another(Store::S3).await;
}

/// `node media import` into `store` from the folder of a node that ran the `local` store; its output and exit code.
fn import(cluster: &Cluster, from: &std::path::Path) -> (String, Option<i32>) {
    let output = cluster.nodes[0]
        .run_command(&["media", "import", "--from", &from.display().to_string()])
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("media import:"))
        .unwrap_or_else(|| {
            panic!(
                "no summary: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_string();
    (line, output.status.code())
}

async fn local_media_are_imported_into(store: Store) {
    let mut cluster = Cluster::start_with(1, store.options().arg("media-store", "local"))
        .await
        .unwrap();
    let alice = cluster.user("importa").await.unwrap();
    let bob = cluster.user("importb").await.unwrap();
    let picture = png(120, 90);
    let hash = upload(&cluster, 0, &alice, "image/png", picture.clone()).await;
    let doc = document(40_000);
    let doc_hash = upload(&cluster, 0, &alice, "application/pdf", doc.clone()).await;
    let spoiled = document(3_000);
    let spoiled_hash = upload(&cluster, 0, &alice, "application/pdf", spoiled.clone()).await;
    share(
        &cluster,
        &alice,
        &bob,
        &[(kinds::IMAGE, &hash), (kinds::FILE, &doc_hash)],
    )
    .await;
    let folder = cluster.dir.join("media");
    assert_eq!(
        files_under(&folder),
        4,
        "three media and a thumbnail in the local folder"
    );
    // One file no longer matches its record (a disk error, a hand edit): it must not be imported.
    let spoiled_path = folder.join(&spoiled_hash[..2]).join(&spoiled_hash);
    let mut changed = spoiled.clone();
    changed[100] ^= 1;
    std::fs::write(&spoiled_path, changed).unwrap();

    cluster.nodes[0].signal(libc::SIGTERM);
    cluster.nodes[0].wait_exit(std::time::Duration::from_secs(20));
    let name = match store {
        Store::Postgres => "postgres",
        Store::S3 => "s3",
    };
    cluster.nodes[0].set_arg("media-store", name);
    let (summary, code) = import(&cluster, &folder);
    assert_eq!(
        summary,
        "media import: imported=2 present=0 missing=0 mismatched=1 thumbnails=1"
    );
    assert_eq!(code, Some(1), "a mismatch fails the run");
    // Idempotent: what is there is skipped; the bad file is still refused.
    let (summary, code) = import(&cluster, &folder);
    assert_eq!(
        summary,
        "media import: imported=0 present=2 missing=0 mismatched=1 thumbnails=0"
    );
    assert_eq!(code, Some(1));
    // With the bad file gone it is counted as missing, which is not a failure (another folder may hold it).
    std::fs::remove_file(&spoiled_path).unwrap();
    let (summary, code) = import(&cluster, &folder);
    assert_eq!(
        summary,
        "media import: imported=0 present=2 missing=1 mismatched=0 thumbnails=0"
    );
    assert_eq!(code, Some(0));

    // The old folder gone, a node on the new store serves what was imported, to those allowed only.
    std::fs::rename(&folder, cluster.dir.join("media-old")).unwrap();
    cluster.start_node(0).await.unwrap();
    let (status, bytes) = download(&cluster, 0, &bob, &format!("/v1/media/{hash}")).await;
    assert_eq!((status, bytes.as_ref() == picture.as_slice()), (200, true));
    let (status, thumb) = download(&cluster, 0, &bob, &format!("/v1/media/{hash}/thumb")).await;
    assert_eq!(status, 200);
    assert!(image::load_from_memory(&thumb).is_ok());
    let (status, bytes) = download(&cluster, 0, &bob, &format!("/v1/media/{doc_hash}")).await;
    assert_eq!((status, bytes.as_ref() == doc.as_slice()), (200, true));
    let (status, _) = download(&cluster, 0, &alice, &format!("/v1/media/{spoiled_hash}")).await;
    assert_eq!(status, 404, "the mismatching file was not stored");
    let eve = cluster.user("importe").await.unwrap();
    let (status, _) = download(&cluster, 0, &eve, &format!("/v1/media/{hash}")).await;
    assert_eq!(status, 404);
    assert_eq!(files_under(&cluster.dir.join("media")), 0);
}

#[tokio::test]
async fn local_media_are_imported_into_postgres() {
    local_media_are_imported_into(Store::Postgres).await;
}

#[tokio::test]
async fn local_media_are_imported_into_s3() {
    local_media_are_imported_into(Store::S3).await;
}

/// An upload goes to a temporary file as it arrives (never whole into memory): it is stored byte for byte, one past
/// `--max-media-bytes` is refused with 413 `too_large` and stores nothing, and no temporary file outlives its
/// request — whether it was stored, deduplicated, refused for size or refused as an undecodable image.
#[tokio::test]
async fn uploads_are_spooled_refused_past_the_limit_and_leave_no_temporary_file() {
    let spool = std::env::temp_dir().join(format!("im-spool-test-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&spool).unwrap();
    let limit = 1024 * 1024;
    let options = ClusterOptions::default()
        .env("TMPDIR", spool.display())
        .arg("max-media-bytes", limit);
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let alice = cluster.user("spoola").await.unwrap();

    let fits = document(limit);
    let hash = upload(&cluster, 0, &alice, "application/pdf", fits.clone()).await;
    let (status, body) = download(&cluster, 0, &alice, &format!("/v1/media/{hash}")).await;
    assert_eq!((status, body[..] == fits[..]), (200, true));
    // The same bytes again: deduplicated, the same answer.
    assert_eq!(
        upload(&cluster, 0, &alice, "application/pdf", fits).await,
        hash
    );

    let (status, body) = call(
        &cluster,
        0,
        &alice,
        "POST",
        "/v1/media",
        "application/pdf",
        document(limit + 1),
    )
    .await;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("too_large")),
        "{answer}"
    );
    let (status, _) = call(
        &cluster,
        0,
        &alice,
        "POST",
        "/v1/media",
        "image/png",
        b"not a png at all".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    upload(&cluster, 0, &alice, "image/png", png(40, 30)).await;

    assert_eq!(
        files_under(&spool),
        0,
        "temporary upload files left behind: {:?}",
        std::fs::read_dir(&spool).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    let _ = std::fs::remove_dir_all(&spool);
}
