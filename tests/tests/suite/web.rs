//! The web app in a real browser: builds `web/`, serves it from a two-node cluster, and runs the end-to-end driver
//! `web/e2e/run.mjs` (playwright-core driving Debian's Chromium). The driver asks this test to kill or restart a
//! node by printing `@@kill N` / `@@start N` on stdout and waits for `ok` on its stdin.
//!
//! Needs Node.js, npm and Chromium; as root, missing ones are installed with apt. Without them (and not root) the
//! test fails, saying what is missing: it never skips silently.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tests::procs::ClusterOptions;
use tests::Cluster;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

async fn run(program: &str, args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .await
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {args:?} failed: {status}");
    }
    Ok(())
}

/// Installs Node.js/npm (and Chromium, for a browser) with apt when they are missing (root only).
pub(crate) async fn ensure_tools(browser: bool) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if !have("node") || !have("npm") {
        missing.extend(["nodejs", "npm"]);
    }
    if browser && !Path::new(CHROMIUM).exists() {
        // The emoji font only makes the screenshots show emoji instead of empty boxes.
        missing.extend(["chromium", "fonts-noto-color-emoji"]);
    }
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the web end-to-end test needs {missing:?}: install them (apt-get install {missing:?}) or run as root");
    }
    let root = Path::new("/");
    run("apt-get", &["update", "-qq"], root).await?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    run("apt-get", &args, root).await
}

/// Serialises npm in `web/` between the tests of this process: `npm ci` rewrites `node_modules`.
static NPM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `npm ci` when the dependencies are missing or stale, the library's unit tests (when asked), then a production
/// build into `out`: what the Dockerfile's `web` stage runs.
pub(crate) async fn build_web(out: &Path, unit_tests: bool) -> anyhow::Result<()> {
    let _npm = NPM.lock().await;
    let web = workspace().join("web");
    let installed = web.join("node_modules/.package-lock.json");
    let stale = match (
        std::fs::metadata(&installed).and_then(|m| m.modified()),
        std::fs::metadata(web.join("package-lock.json")).and_then(|m| m.modified()),
    ) {
        (Ok(installed), Ok(lock)) => installed < lock,
        _ => true,
    };
    if stale {
        run("npm", &["ci", "--no-audit", "--no-fund"], &web).await?;
    }
    // The client library's unit tests (Vitest) run here too, so `cargo test` covers them.
    if unit_tests {
        run("npm", &["test", "--silent"], &web).await?;
    }
    let out = out.display().to_string();
    run(
        "npm",
        &["run", "build", "--", "--outDir", &out, "--emptyOutDir"],
        &web,
    )
    .await
}

async fn get(cluster: &Cluster, index: usize, path: &str) -> (u16, String) {
    let (status, body) = benchmarks::client::http_raw(
        cluster.addr(index),
        "GET",
        path,
        None,
        "text/plain",
        Default::default(),
    )
    .await
    .unwrap();
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_web_app_works_in_a_real_browser_across_node_loss() {
    ensure_tools(true).await.unwrap();
    let dist = tests::procs::scratch_dir("web-dist");
    build_web(&dist, true).await.unwrap();
    let mut cluster = Cluster::start_with(
        2,
        ClusterOptions::default()
            .arg("web-dir", dist.display())
            .arg("require-friendship", "true")
            // As a default server: strangers are invited to groups, not added.
            .arg("group-consent", "true"),
    )
    .await
    .unwrap();

    // Every node serves the app; API paths keep their JSON 404s.
    for index in 0..2 {
        let (status, html) = get(&cluster, index, "/").await;
        assert_eq!(status, 200);
        assert!(html.contains("<div id=\"app\">"), "{html}");
        let (status, body) = get(&cluster, index, "/v1/no-such-thing").await;
        assert_eq!(status, 404);
        assert!(body.contains("\"not_found\""), "{body}");
        // A page served by one node may call another after a failover: the API answers CORS preflights.
        let (status, _) = benchmarks::client::http_raw(
            cluster.addr(index),
            "OPTIONS",
            "/v1/conversations",
            None,
            "text/plain",
            Default::default(),
        )
        .await
        .unwrap();
        assert_eq!(status.as_u16(), 204);
    }

    let urls: Vec<String> = (0..2)
        .map(|i| format!("http://{}", cluster.addr(i)))
        .collect();
    // Under target/ (ignored by git), desktop- and phone-sized, one per screen.
    let screenshots = workspace().join("target/web-e2e-screenshots");
    let mut driver = Command::new("node")
        .arg("e2e/run.mjs")
        .args(&urls)
        .current_dir(workspace().join("web"))
        .env("IM_E2E_CHROMIUM", CHROMIUM)
        .env("IM_E2E_SCREENSHOTS", &screenshots)
        // Playwright makes a fresh Chromium profile under the temporary folder: keep it in our scratch space.
        .env("TMPDIR", tests::procs::scratch_dir("chromium"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting node e2e/run.mjs");
    let mut stdin = driver.stdin.take().unwrap();
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    let run = async {
        while let Some(line) = lines.next_line().await? {
            println!("[e2e] {line}");
            let mut words = line.split_whitespace();
            let (command, index) = match (words.next(), words.next()) {
                (Some(c @ ("@@kill" | "@@start")), Some(i)) => (c, i.parse::<usize>()?),
                _ => continue,
            };
            if command == "@@kill" {
                cluster.nodes[index].signal(libc::SIGKILL);
                anyhow::ensure!(
                    cluster.nodes[index]
                        .wait_exit(Duration::from_secs(10))
                        .is_some(),
                    "node {index} did not die"
                );
            } else {
                cluster.start_node(index).await?;
            }
            stdin.write_all(b"ok\n").await?;
            stdin.flush().await?;
        }
        anyhow::Ok(driver.wait().await?)
    };
    let status = tokio::time::timeout(Duration::from_secs(480), run)
        .await
        .expect("the browser scenario took more than 480 s")
        .unwrap();
    assert!(
        status.success(),
        "the browser scenario failed ({status}); screenshots in {}",
        screenshots.display()
    );
}
