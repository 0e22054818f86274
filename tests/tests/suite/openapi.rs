//! `docs/openapi.yaml` and the live routes agree: every documented route answers on a live node (not the
//! fallback's "no such route", not 405), and every route the node registers is documented.

use std::collections::BTreeSet;

use tests::Cluster;

fn workspace_file(path: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path),
    )
    .unwrap()
}

/// (method, path) pairs of the spec, read from its `paths:` section.
fn documented() -> BTreeSet<(String, String)> {
    let spec = workspace_file("docs/openapi.yaml");
    let mut in_paths = false;
    let mut current = None;
    let mut routes = BTreeSet::new();
    for line in spec.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(path) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            current = Some(format!("/{path}"));
        } else if let (Some(path), Some(method)) = (
            &current,
            line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')),
        ) {
            if ["get", "post", "put", "patch", "delete"].contains(&method) {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

/// (method, path) pairs registered in node/src/server/http.rs.
fn registered() -> BTreeSet<(String, String)> {
    // Registrations may span lines; split the source on `.route(` and read each up to the next one.
    let source = workspace_file("node/src/server/http.rs")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut routes = BTreeSet::new();
    for registration in source.split(".route(").skip(1) {
        let registration = registration
            .split(".fallback(")
            .next()
            .unwrap_or(registration);
        let path = registration.split('"').nth(1).unwrap().to_string();
        for method in ["get", "post", "put", "patch", "delete"] {
            if registration.contains(&format!(" {method}("))
                || registration.contains(&format!(".{method}("))
            {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[tokio::test]
async fn the_spec_matches_the_live_routes() {
    let documented = documented();
    let registered = registered();
    assert!(
        documented.len() > 30,
        "spec parsing found only {documented:?}"
    );
    assert_eq!(
        documented, registered,
        "docs/openapi.yaml and node/src/server/http.rs disagree"
    );

    let cluster = Cluster::start(1).await.unwrap();
    let user = cluster.user("spec").await.unwrap();
    for (method, path) in &documented {
        // The WebSocket routes answer only upgrades; /v1/echo exists only with --conformance-echo (and is
        // exercised by conformance.rs).
        if path == "/v1/ws" || path == "/v1/echo" {
            continue;
        }
        let concrete = path
            .replace("{id}", "1")
            .replace("{user}", "1")
            .replace("{action}", "accept")
            .replace("{hash}", &"a".repeat(64));
        let (status, body) = benchmarks::client::http_raw(
            cluster.addr(0),
            method,
            &concrete,
            Some(&user.token),
            "application/json",
            Default::default(),
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_ne!(status.as_u16(), 405, "{method} {path}");
        assert!(
            !text.contains("no such route"),
            "{method} {path} is not served"
        );
    }
}
