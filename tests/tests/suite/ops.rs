//! Deployment files against the real node: every metric the Grafana dashboards, the Prometheus rules and the
//! autoscaler name is exported by a running cluster and described in `docs/operations.md`; the dashboards are
//! well-formed; compose, HAProxy, Prometheus and Kubernetes files agree with each other and with the node's
//! drain timing; and a rolling restart under traffic loses no acknowledged message.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::ids::ConvId;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use tests::client::{ConvLog, TestClient, WAIT};
use tests::{Cluster, ClusterOptions, TestUser};

use crate::http::metrics_text;

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// A YAML file with its merge keys (`<<: *anchor`, used by compose.yaml) applied, also those inside merged
/// mappings (compose's `x-node` merges `x-image`), which one `apply_merge` pass leaves in place.
pub(crate) fn yaml(path: &str) -> Yaml {
    fn has_merge_key(value: &Yaml) -> bool {
        match value {
            Yaml::Mapping(map) => map
                .iter()
                .any(|(key, inner)| key.as_str() == Some("<<") || has_merge_key(inner)),
            Yaml::Sequence(items) => items.iter().any(has_merge_key),
            _ => false,
        }
    }
    let mut value: Yaml =
        serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"));
    for _ in 0..8 {
        value
            .apply_merge()
            .unwrap_or_else(|e| panic!("{path}: bad merge key: {e}"));
        if !has_merge_key(&value) {
            return value;
        }
    }
    panic!("{path}: merge keys nested too deep");
}

/// Every YAML document of a multi-document file.
pub(crate) fn yaml_documents(path: &str) -> Vec<Yaml> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
        })
        .collect()
}

fn dashboard_paths() -> Vec<String> {
    let mut paths: Vec<String> = std::fs::read_dir(repo().join("ops/grafana/dashboards"))
        .expect("ops/grafana/dashboards exists")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .map(|name| format!("ops/grafana/dashboards/{name}"))
        .collect();
    paths.sort();
    paths
}

const RULE_FILES: &[&str] = &[
    "ops/prometheus/rules/recording.yml",
    "ops/prometheus/rules/alerts.yml",
];

/// Series that Prometheus makes itself rather than scraping from a node.
const PROMETHEUS_SERIES: &[&str] = &["up", "ALERTS"];

/// The metric names a PromQL expression selects. Skips strings, label matchers, range selectors, numbers,
/// functions and aggregations (an identifier followed by `(`), grouping label lists and keywords. Names with a
/// colon are recording rules.
fn promql_metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        (j, chars.get(j).copied())
    };
    // Skips from an opening delimiter to its closing one, stepping over quoted strings.
    let skip_group = |start: usize, close: char| {
        let mut j = start + 1;
        while j < chars.len() && chars[j] != close {
            if matches!(chars[j], '"' | '\'' | '`') {
                let quote = chars[j];
                j += 1;
                while j < chars.len() && chars[j] != quote {
                    if chars[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
            }
            j += 1;
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_group(i, c);
        } else if c == '{' {
            i = skip_group(i, '}');
        } else if c == '[' {
            i = skip_group(i, ']');
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let (after, next) = next_non_space(i);
            // `sum by (job) (...)`: an aggregation whose grouping comes before its argument.
            let following: String = chars[after..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            if following == "by" || following == "without" {
                continue;
            }
            match word.as_str() {
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right" => {
                    if next == Some('(') {
                        i = skip_group(after, ')');
                    }
                }
                "and" | "or" | "unless" | "bool" | "offset" | "inf" | "nan" | "Inf" | "NaN" => {}
                _ if next == Some('(') => {}
                _ => names.push(word),
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_metric_names_finds_selectors_only() {
    let names = promql_metric_names(
        r#"sum by (job, le) (rate(im_a_bucket{reason="x}y", job=~"im.*"}[5m])) / on (instance) group_left up
           * 60 > bool 1e3 or job:im_b:rate1m offset 5m unless absent(im_c) and ALERTS{alertstate="firing"}"#,
    );
    assert_eq!(
        names,
        ["im_a_bucket", "up", "job:im_b:rate1m", "im_c", "ALERTS"]
    );
}

/// Every metric name the deployment files make Prometheus, Grafana or the autoscaler look for, with where.
fn referenced_metric_names() -> BTreeMap<String, BTreeSet<String>> {
    let mut referenced: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |expr: &str, source: &str| {
        for name in promql_metric_names(expr) {
            referenced
                .entry(name)
                .or_default()
                .insert(source.to_string());
        }
    };
    for path in dashboard_paths() {
        let dashboard: Json = serde_json::from_str(&read(&path)).expect("dashboard is JSON");
        let mut exprs = Vec::new();
        collect_json_exprs(&dashboard, &mut exprs);
        for expr in exprs {
            add(&expr, &path);
        }
    }
    for path in RULE_FILES {
        for rule in rules(path) {
            add(rule["expr"].as_str().expect("every rule has an expr"), path);
        }
    }
    let hpa = yaml("ops/k8s/hpa.yaml");
    for metric in hpa["spec"]["metrics"].as_sequence().expect("hpa metrics") {
        if let Some(name) = metric["pods"]["metric"]["name"].as_str() {
            add(name, "ops/k8s/hpa.yaml");
        }
    }
    let adapter = yaml("ops/k8s/prometheus-adapter-rules.yaml");
    let adapter_config: Yaml = serde_norway::from_str(
        adapter["data"]["config.yaml"]
            .as_str()
            .expect("adapter config"),
    )
    .expect("adapter config is YAML");
    for rule in adapter_config["rules"]
        .as_sequence()
        .expect("adapter rules")
    {
        add(
            rule["seriesQuery"].as_str().expect("seriesQuery"),
            "ops/k8s/prometheus-adapter-rules.yaml",
        );
    }
    referenced
}

/// Every PromQL expression of a dashboard: panel targets and templating queries.
fn collect_json_exprs(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr" | "definition", Json::String(expr)) => {
                        out.push(grafana_query_to_promql(expr))
                    }
                    _ => collect_json_exprs(inner, out),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|item| collect_json_exprs(item, out)),
        _ => {}
    }
}

/// Grafana's `label_values(selector, label)` variable query is not PromQL: keep its selector.
fn grafana_query_to_promql(query: &str) -> String {
    match query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|rest| rest.rsplit_once(','))
    {
        Some((selector, _label)) => selector.to_string(),
        None => query.to_string(),
    }
}

/// The rules of a Prometheus rule file.
fn rules(path: &str) -> Vec<Yaml> {
    let file = yaml(path);
    let groups = file["groups"].as_sequence().expect("rule groups");
    assert!(!groups.is_empty(), "{path} has no groups");
    groups
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules").clone())
        .collect()
}

fn recorded_names() -> BTreeSet<String> {
    RULE_FILES
        .iter()
        .flat_map(|path| rules(path))
        .filter_map(|rule| rule["record"].as_str().map(str::to_string))
        .collect()
}

/// Sample names and `# TYPE` declarations of a Prometheus text exposition.
#[derive(Default)]
struct Exposition {
    samples: BTreeSet<String>,
    types: BTreeMap<String, String>,
    values: Vec<(String, f64)>,
}

impl Exposition {
    fn add(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(declaration) = line.strip_prefix("# TYPE ") {
                let mut parts = declaration.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    self.types.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                self.samples.insert(line[..end].to_string());
                let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
                self.values
                    .push((series.to_string(), value.parse().expect("a numeric value")));
            }
        }
    }

    /// Sum of the samples whose series text starts with `prefix` (name and optional labels).
    fn sum(&self, prefix: &str) -> f64 {
        self.values
            .iter()
            .filter(|(series, _)| series.starts_with(prefix))
            .map(|(_, value)| value)
            .sum()
    }
}

#[tokio::test]
async fn every_metric_the_dashboards_rules_and_autoscaler_use_is_exported() {
    let referenced = referenced_metric_names();
    assert!(
        referenced.len() >= 30,
        "suspiciously few metric names found: {referenced:?}"
    );
    let recorded = recorded_names();

    // Revocation re-checks every second, so their counter and histogram appear within the test.
    let cluster = Cluster::start_with(
        2,
        ClusterOptions::default().arg("revocation-recheck-secs", 1),
    )
    .await
    .unwrap();
    // A little of every kind of traffic: registrations and logins, a message across nodes (publish and bus
    // receive), a large one (zstd both ways), a sync, a bad frame (error frame), media (an image upload with its
    // thumbnail, its download from the other node, a refused type, a malformed hash) and a closed connection.
    let a = cluster.user("opsa").await.unwrap();
    let b = cluster.user("opsb").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let mut cb = cluster.connect(1, &b, "phone").await.unwrap();
    let ack = ca.send_and_ack(b.id, "m1", "hello").await.unwrap();
    let long = "a long chat message that repeats itself. ".repeat(60);
    ca.send_and_ack(b.id, "m2", &long).await.unwrap();
    cb.wait_messages(ack.conv, 2, WAIT).await.unwrap();
    cb.sync_after(ack.conv, 0).await.unwrap();
    ca.connection().send_raw(&[0x00, 0xc1]).await.unwrap();
    ca.wait_error(None, WAIT).await.unwrap();
    let mut picture = std::io::Cursor::new(Vec::new());
    image::DynamicImage::new_rgb8(64, 48)
        .write_to(&mut picture, image::ImageFormat::Png)
        .unwrap();
    let media = |index: usize,
                 method: &'static str,
                 path: String,
                 mime: &'static str,
                 body: Vec<u8>| {
        let (addr, token) = (cluster.addr(index), a.token.clone());
        async move {
            let (status, body) =
                benchmarks::client::http_raw(addr, method, &path, Some(&token), mime, body.into())
                    .await
                    .unwrap();
            (status.as_u16(), body)
        }
    };
    let (status, uploaded) = media(
        0,
        "POST",
        "/v1/media".into(),
        "image/png",
        picture.into_inner(),
    )
    .await;
    assert_eq!(status, 201);
    let uploaded: Json = serde_json::from_slice(&uploaded).unwrap();
    let hash = uploaded["hash"].as_str().unwrap();
    let (status, _) = media(
        1,
        "GET",
        format!("/v1/media/{hash}"),
        "image/png",
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = media(
        0,
        "POST",
        "/v1/media".into(),
        "application/x-msdownload",
        b"MZ".to_vec(),
    )
    .await;
    assert_eq!(status, 415);
    let (status, _) = media(0, "GET", "/v1/media/ABC".into(), "image/png", Vec::new()).await;
    assert_eq!(status, 400);
    drop(ca);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let mut exposition = Exposition::default();
    for index in 0..2 {
        exposition.add(&metrics_text(cluster.admin_addr(index)).await);
    }

    let mut problems = Vec::new();
    for (name, sources) in &referenced {
        if name.contains(':') {
            if !recorded.contains(name) {
                problems.push(format!(
                    "{name} (used in {sources:?}) is not a recording rule"
                ));
            }
            continue;
        }
        if PROMETHEUS_SERIES.contains(&name.as_str()) {
            continue;
        }
        if !exposition.samples.contains(name) {
            problems.push(format!("{name} (used in {sources:?}) is not exported"));
            continue;
        }
        // A histogram's series must be used through its suffixed parts, and those parts only on histograms.
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix));
        let declared = exposition
            .types
            .get(base.unwrap_or(name))
            .or_else(|| exposition.types.get(name.as_str()));
        let is_histogram_part = base.is_some_and(|base| {
            exposition.types.get(base).map(String::as_str) == Some("histogram")
        });
        if declared.is_none() && !is_histogram_part {
            problems.push(format!("{name} has no # TYPE line"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");

    // The catalogue in docs/operations.md describes every metric the node exports.
    let catalogue = read("docs/operations.md");
    let undocumented: Vec<&String> = exposition
        .types
        .keys()
        .filter(|name| !catalogue.contains(&format!("`{name}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "metrics missing from the catalogue in docs/operations.md: {undocumented:?}"
    );

    // The zstd counters behind the compression-ratio panel count real compressed frames: the long message went
    // in compressed and came out compressed, and inflated is larger than on the wire.
    for direction in ["in", "out"] {
        let wire = exposition.sum(&format!(
            "im_zstd_wire_bytes_total{{direction=\"{direction}\"}}"
        ));
        let plain = exposition.sum(&format!(
            "im_zstd_plain_bytes_total{{direction=\"{direction}\"}}"
        ));
        assert!(
            wire > 0.0 && plain > wire,
            "zstd {direction}: wire {wire}, plain {plain}"
        );
    }
}

#[test]
fn dashboards_are_valid_and_use_the_provisioned_data_source() {
    let datasources = yaml("ops/grafana/provisioning/datasources/prometheus.yaml");
    let uid = datasources["datasources"][0]["uid"]
        .as_str()
        .expect("data source uid")
        .to_string();
    let paths = dashboard_paths();
    assert!(
        paths.len() >= 2,
        "expected an overview and a node dashboard"
    );
    let mut uids = BTreeSet::new();
    for path in &paths {
        let dashboard: Json = serde_json::from_str(&read(path))
            .unwrap_or_else(|e| panic!("{path} is not valid JSON: {e}"));
        let dashboard_uid = dashboard["uid"].as_str().expect("dashboard uid");
        assert!(
            uids.insert(dashboard_uid.to_string()),
            "{path}: duplicate uid"
        );
        assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(dashboard["schemaVersion"].as_u64().is_some());
        let variables: BTreeSet<&str> = dashboard["templating"]["list"]
            .as_array()
            .expect("templating list")
            .iter()
            .filter_map(|variable| variable["name"].as_str())
            .collect();
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(panels.len() >= 8, "{path}: too few panels");
        let mut ids = BTreeSet::new();
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{path}: a panel without a title");
            assert!(
                ids.insert(panel["id"].as_u64().expect("panel id")),
                "{path}: duplicate panel id"
            );
            let grid = &panel["gridPos"];
            let (x, w, h) = (
                grid["x"].as_u64().expect("x"),
                grid["w"].as_u64().expect("w"),
                grid["h"].as_u64().expect("h"),
            );
            assert!(
                w > 0 && h > 0 && x + w <= 24,
                "{path}: panel {title} is off the grid"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(
                panel["datasource"]["uid"], uid,
                "{path}: panel {title} does not use the provisioned data source"
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{path}: panel {title} has no query");
            let mut ref_ids = BTreeSet::new();
            for target in targets {
                let expr = target["expr"].as_str().expect("expr");
                assert!(!expr.trim().is_empty(), "{path}: empty query in {title}");
                assert!(
                    ref_ids.insert(target["refId"].as_str().expect("refId")),
                    "{path}: duplicate refId in {title}"
                );
                assert_eq!(
                    expr.matches('(').count(),
                    expr.matches(')').count(),
                    "{path}: unbalanced parentheses in {title}: {expr}"
                );
                for (position, _) in expr.match_indices('$') {
                    let variable: String = expr[position + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(
                        variable.starts_with("__") || variables.contains(variable.as_str()),
                        "{path}: {title} uses undefined variable ${variable}"
                    );
                }
            }
        }
    }
}

/// The anchor a Markdown renderer (GitHub, GitLab) gives a heading: lower case, spaces to hyphens, other
/// punctuation dropped.
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_an_absolute_runbook_link_and_tests_that_fire_and_stay_silent() {
    let anchors: BTreeSet<String> = read("docs/operations.md")
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .map(heading_anchor)
        .collect();
    // The base is configured once, as an external label of Prometheus.
    let prometheus = yaml("ops/prometheus/prometheus.yml");
    assert!(
        prometheus["global"]["external_labels"]["runbook_base_url"].is_string(),
        "prometheus.yml sets no runbook_base_url external label"
    );
    let tests = yaml("ops/prometheus/tests/alerts.test.yml");
    let mut fired = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in tests["tests"].as_sequence().expect("test cases") {
        for check in case["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = check["alertname"].as_str().expect("alertname").to_string();
            match check["exp_alerts"].as_sequence().map(Vec::len) {
                Some(0) | None => silent.insert(name),
                Some(_) => fired.insert(name),
            };
        }
    }
    let mut alerts = 0;
    for rule in rules("ops/prometheus/rules/alerts.yml") {
        let Some(name) = rule["alert"].as_str() else {
            continue;
        };
        alerts += 1;
        let anchor = heading_anchor(name);
        assert_eq!(
            rule["annotations"]["runbook_url"].as_str(),
            Some(format!("{{{{ $externalLabels.runbook_base_url }}}}#{anchor}").as_str()),
            "{name}: runbook_url must be the configured base plus the alert's anchor"
        );
        assert!(
            anchors.contains(&anchor),
            "{name}: docs/operations.md has no \"### {name}\" runbook section"
        );
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{name}: no summary"
        );
        assert!(
            fired.contains(name),
            "{name}: no promtool test makes it fire"
        );
        assert!(
            silent.contains(name),
            "{name}: no promtool test keeps it silent"
        );
    }
    assert!(alerts >= 18, "only {alerts} alerts");
}

/// A duration like `15s` or `1m30s` in seconds.
fn seconds(text: &str) -> u64 {
    let mut total = 0;
    let mut number = 0;
    for c in text.chars() {
        match c {
            '0'..='9' => number = number * 10 + u64::from(c as u8 - b'0'),
            's' => (total, number) = (total + number, 0),
            'm' => (total, number) = (total + number * 60, 0),
            'h' => (total, number) = (total + number * 3600, 0),
            other => panic!("unexpected {other} in duration {text}"),
        }
    }
    total + number
}

#[test]
fn compose_haproxy_prometheus_and_grafana_agree() {
    let compose = yaml("ops/compose.yaml");
    let services = compose["services"].as_mapping().expect("services");
    // Nodes run the image's entrypoint as is; the one-shot `migrate` service runs `node migrate`.
    let image = crate::deployment::Image::from_dockerfile();
    let image_services: Vec<(String, &Yaml)> = services
        .iter()
        .filter(|(_, service)| service["image"].as_str() == Some("im-node:local"))
        .map(|(name, service)| (name.as_str().expect("service name").to_string(), service))
        .collect();
    let nodes: BTreeSet<String> = image_services
        .iter()
        .filter(|(_, service)| service["command"].is_null())
        .map(|(name, _)| name.clone())
        .collect();
    assert_eq!(nodes.len(), 3, "compose runs three nodes: {nodes:?}");
    for service in [
        "redis",
        "postgres",
        "migrate",
        "haproxy",
        "prometheus",
        "alertmanager",
        "grafana",
    ] {
        assert!(
            services.contains_key(service),
            "compose has no {service} service"
        );
    }
    assert_eq!(compose["services"]["migrate"]["command"][0], "migrate");
    assert!(
        compose["services"]["migrate"]["environment"]["IM_TOKEN_SECRET"].is_null(),
        "the migration needs no token secret"
    );
    // Every container of the image runs as Kubernetes runs it: read-only, only the image's VOLUMEs writable.
    for (name, service) in &image_services {
        assert_eq!(
            service["read_only"].as_bool(),
            Some(true),
            "{name} is not read_only"
        );
        let tmpfs: Vec<&str> = service["tmpfs"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has no tmpfs"))
            .iter()
            .filter_map(|path| path.as_str())
            .collect();
        assert_eq!(
            tmpfs, image.volumes,
            "{name}: tmpfs paths are the image's VOLUMEs"
        );
    }
    let port_of = |address: &str| -> u16 {
        address
            .parse::<std::net::SocketAddr>()
            .unwrap_or_else(|e| panic!("{address}: {e}"))
            .port()
    };
    for node in &nodes {
        let service = &compose["services"][node.as_str()];
        let environment = &service["environment"];
        // No demo secret: compose refuses to start without one.
        let secret = environment["IM_TOKEN_SECRET"]
            .as_str()
            .expect("IM_TOKEN_SECRET");
        assert!(
            secret.starts_with("${IM_TOKEN_SECRET:?") && secret.ends_with('}'),
            "{node}: IM_TOKEN_SECRET must be required (${{IM_TOKEN_SECRET:?...}}), not {secret}"
        );
        assert_eq!(environment["IM_RUN_MIGRATIONS"], "false", "{node}");
        assert_eq!(
            service["depends_on"]["migrate"]["condition"], "service_completed_successfully",
            "{node} must wait for the migration"
        );
        // The admin port is for Prometheus and the health check only: never published to the host.
        let admin = environment["IM_ADMIN_LISTEN"]
            .as_str()
            .unwrap_or(&image.env["IM_ADMIN_LISTEN"]);
        let admin_port = port_of(admin).to_string();
        assert!(
            service["ports"].is_null(),
            "{node} publishes ports; clients go through HAProxy"
        );
        let check = service["healthcheck"]["test"][3]
            .as_str()
            .expect("healthcheck");
        assert!(
            check.contains(&format!("/dev/tcp/127.0.0.1/{admin_port}"))
                && check.contains("/readyz"),
            "{node}: the health check asks /readyz on the admin port: {check}"
        );
        let drain = service["environment"]["IM_DRAIN_GRACE_SECS"]
            .as_str()
            .expect("drain grace")
            .parse::<u64>()
            .expect("a number");
        let stop = seconds(service["stop_grace_period"].as_str().expect("stop grace"));
        assert!(
            stop > drain,
            "{node}: stop_grace_period {stop}s must exceed the drain grace {drain}s"
        );
        assert_eq!(
            service["environment"]["IM_NODE_NAME"].as_str(),
            Some(node.as_str())
        );
    }
    // Every bind mount points at a file or folder of the repository.
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().expect("short volume syntax");
            if let Some(path) = source.split(':').next().filter(|s| s.starts_with("./")) {
                assert!(
                    repo().join("ops").join(path).exists(),
                    "{name:?} mounts missing {path}"
                );
            }
        }
    }

    // Redis keeps the revocation list (logouts) across restarts: append-only file on a volume.
    let redis = &compose["services"]["redis"];
    let redis_command: Vec<&str> = redis["command"]
        .as_sequence()
        .expect("redis command")
        .iter()
        .filter_map(|part| part.as_str())
        .collect();
    assert!(
        redis_command
            .windows(2)
            .any(|pair| pair == ["--appendonly", "yes"]),
        "redis runs without persistence: {redis_command:?}"
    );
    assert!(redis["volumes"][0]
        .as_str()
        .is_some_and(|volume| volume.ends_with(":/data")));

    // Prometheus scrapes exactly the compose nodes' admin ports, under the job the rules select, and alerts
    // through Alertmanager.
    let prometheus = yaml("ops/prometheus/prometheus.yml");
    let job = prometheus["scrape_configs"]
        .as_sequence()
        .expect("scrape configs")
        .iter()
        .find(|job| job["job_name"] == "im-node")
        .expect("an im-node scrape job");
    let targets: BTreeSet<String> = job["static_configs"][0]["targets"]
        .as_sequence()
        .expect("targets")
        .iter()
        .map(|t| t.as_str().expect("target").to_string())
        .collect();
    let admin_port = port_of(&image.env["IM_ADMIN_LISTEN"]);
    let client_port = port_of(&image.env["IM_LISTEN"]);
    let expected: BTreeSet<String> = nodes.iter().map(|n| format!("{n}:{admin_port}")).collect();
    assert_eq!(targets, expected);
    let alertmanagers = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .expect("alertmanager targets");
    assert!(alertmanagers.iter().any(|t| t == "alertmanager:9093"));
    assert!(compose["services"]["alertmanager"]["volumes"]
        .as_sequence()
        .expect("alertmanager volumes")
        .iter()
        .any(|v| v
            .as_str()
            .is_some_and(|v| v.starts_with("./alertmanager/alertmanager.yml:"))));
    for path in RULE_FILES {
        let text = read(path);
        for (position, _) in text.match_indices("job=\"") {
            assert!(
                text[position..].starts_with("job=\"im-node\""),
                "{path} selects a job other than im-node"
            );
        }
    }

    // HAProxy balances over exactly the compose nodes and checks readiness.
    let haproxy = read("ops/haproxy/haproxy.cfg");
    let servers: BTreeSet<String> = haproxy
        .lines()
        .filter_map(|line| line.trim().strip_prefix("server "))
        .map(|rest| {
            rest.split_whitespace()
                .nth(1)
                .expect("server address")
                .to_string()
        })
        .collect();
    let expected: BTreeSet<String> = nodes.iter().map(|n| format!("{n}:{client_port}")).collect();
    assert_eq!(servers, expected);
    assert!(haproxy.contains("option httpchk GET /readyz"));
    assert!(haproxy.contains(&format!("check port {admin_port}")));
    // HAProxy sends PROXY v2 to the client port; the nodes expect it from HAProxy's fixed address only.
    assert!(haproxy.contains("send-proxy-v2"));
    let haproxy_address = compose["services"]["haproxy"]["networks"]["default"]["ipv4_address"]
        .as_str()
        .expect("haproxy has a fixed address");
    for node in &nodes {
        let environment = &compose["services"][node.as_str()]["environment"];
        assert_eq!(environment["IM_PROXY_PROTOCOL"], "true", "{node}");
        assert_eq!(
            environment["IM_TRUSTED_PROXIES"].as_str(),
            Some(haproxy_address),
            "{node}"
        );
    }
    assert!(haproxy.contains("timeout tunnel"));

    // Grafana loads the dashboards from where compose mounts them, and the home dashboard exists.
    let provider = yaml("ops/grafana/provisioning/dashboards/im.yaml");
    let dashboards_path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let grafana = &compose["services"]["grafana"];
    let mounted = grafana["volumes"]
        .as_sequence()
        .expect("grafana volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .any(|v| v.starts_with("./grafana/dashboards:") && v.contains(dashboards_path));
    assert!(
        mounted,
        "grafana does not mount the dashboards at {dashboards_path}"
    );
    let home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .expect("home dashboard");
    let file = home
        .strip_prefix(&format!("{dashboards_path}/"))
        .expect("home dashboard under the provisioned folder");
    assert!(repo().join("ops/grafana/dashboards").join(file).exists());
}

#[test]
fn kubernetes_manifests_fit_the_node() {
    let mut by_kind: HashMap<String, Yaml> = HashMap::new();
    for entry in std::fs::read_dir(repo().join("ops/k8s")).expect("ops/k8s") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name == "kustomization.yaml" || !name.ends_with(".yaml") {
            continue;
        }
        for document in yaml_documents(&format!("ops/k8s/{name}")) {
            let kind = document["kind"].as_str().expect("kind").to_string();
            let object = document["metadata"]["name"].as_str().expect("name");
            by_kind.insert(format!("{kind}/{object}"), document);
        }
    }
    let deployment = &by_kind["Deployment/im-node"];
    let pod = &deployment["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");

    // Probes and Prometheus use the admin port (the image's IM_ADMIN_LISTEN), which the Service does not expose.
    let image = crate::deployment::Image::from_dockerfile();
    let port_named = |name: &str| -> u64 {
        container["ports"]
            .as_sequence()
            .expect("container ports")
            .iter()
            .find(|port| port["name"] == name)
            .and_then(|port| port["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    let image_port = |key: &str| -> u64 {
        u64::from(
            image.env[key]
                .parse::<std::net::SocketAddr>()
                .expect("an address")
                .port(),
        )
    };
    assert_eq!(port_named("admin"), image_port("IM_ADMIN_LISTEN"));
    assert_eq!(port_named("http"), image_port("IM_LISTEN"));
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some(port_named("admin").to_string().as_str())
    );
    for port in by_kind["Service/im-node"]["spec"]["ports"]
        .as_sequence()
        .expect("service ports")
    {
        assert_ne!(
            port["targetPort"], "admin",
            "the Service must not expose the admin port"
        );
    }

    // The node and its migration Job run as the image runs: its user, a read-only root, only the image's VOLUMEs
    // writable (emptyDir), no capabilities; the Job runs `node migrate` from the same image, and the nodes leave
    // migrations to it.
    let job = &by_kind["Job/im-migrate"];
    for (what, spec) in [
        ("deployment", &pod["spec"]),
        ("job", &job["spec"]["template"]["spec"]),
    ] {
        assert_eq!(
            spec["securityContext"]["runAsUser"].as_u64(),
            Some(u64::from(image.uid)),
            "{what}"
        );
        assert_eq!(
            spec["securityContext"]["runAsGroup"].as_u64(),
            Some(u64::from(image.gid)),
            "{what}"
        );
        let main = &spec["containers"][0];
        assert_eq!(
            main["securityContext"]["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{what}"
        );
        assert_eq!(
            main["securityContext"]["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{what}"
        );
        assert_eq!(
            main["securityContext"]["capabilities"]["drop"][0], "ALL",
            "{what}"
        );
        let mounts: Vec<&str> = main["volumeMounts"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{what}: no volumeMounts"))
            .iter()
            .filter_map(|mount| mount["mountPath"].as_str())
            .collect();
        assert_eq!(
            mounts, image.volumes,
            "{what}: writable paths are the image's VOLUMEs"
        );
        for volume in spec["volumes"].as_sequence().expect("volumes") {
            assert!(
                volume["emptyDir"].is_mapping(),
                "{what}: {volume:?} is not an emptyDir"
            );
        }
    }
    let job_container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(job_container["args"][0], "migrate");
    assert_eq!(
        job_container["image"], container["image"],
        "the Job runs the nodes' image"
    );
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
    let config = &by_kind["ConfigMap/im-node"];
    assert_eq!(config["data"]["IM_RUN_MIGRATIONS"], "false");
    let kustomization = yaml("ops/k8s/kustomization.yaml");
    let image_name = container["image"]
        .as_str()
        .and_then(|image| image.rsplit_once(':'))
        .expect("image:tag")
        .0;
    assert_eq!(
        kustomization["images"][0]["name"].as_str(),
        Some(image_name)
    );

    // The grace period covers the preStop pause, the node's drain and a margin for the lease release.
    let drain: u64 = config["data"]["IM_DRAIN_GRACE_SECS"]
        .as_str()
        .expect("IM_DRAIN_GRACE_SECS in the ConfigMap")
        .parse()
        .expect("a number");
    let pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .expect("preStop command")
        .iter()
        .filter_map(|part| part.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let pause: u64 = pre_stop
        .split("sleep ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("preStop sleeps")
        .trim_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .expect("a number");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace >= pause + drain + 5,
        "terminationGracePeriodSeconds {grace} < preStop {pause} + drain {drain} + 5"
    );

    // Selectors of the Service, the PDB and the Deployment pick the pod template's labels.
    let selects_pods = |selector: &Yaml, what: &str| {
        let selector = selector.as_mapping().expect("selector");
        assert!(!selector.is_empty(), "{what}: empty selector");
        for (key, value) in selector {
            assert_eq!(&labels[key.as_str().expect("label")], value, "{what}");
        }
    };
    selects_pods(&deployment["spec"]["selector"]["matchLabels"], "deployment");
    selects_pods(&by_kind["Service/im-node"]["spec"]["selector"], "service");
    selects_pods(
        &by_kind["PodDisruptionBudget/im-node"]["spec"]["selector"]["matchLabels"],
        "pdb",
    );
    // The NetworkPolicy that makes the broad IM_TRUSTED_PROXIES safe picks the pods and names their ports: the
    // client port only from the ingress controller, the admin port only from Prometheus.
    let policy = &by_kind["NetworkPolicy/im-node"]["spec"];
    selects_pods(&policy["podSelector"]["matchLabels"], "networkpolicy");
    let container_ports: BTreeSet<&str> = pod["spec"]["containers"][0]["ports"]
        .as_sequence()
        .expect("container ports")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let admitted: Vec<(&str, &str)> = policy["ingress"]
        .as_sequence()
        .expect("networkpolicy ingress rules")
        .iter()
        .flat_map(|rule| {
            let from = rule["from"][0]["namespaceSelector"]["matchLabels"]
                ["kubernetes.io/metadata.name"]
                .as_str()
                .expect("every rule names the namespace it admits");
            rule["ports"]
                .as_sequence()
                .expect("every rule names its ports")
                .iter()
                .map(move |p| (p["port"].as_str().expect("named port"), from))
        })
        .collect();
    for (port, _) in &admitted {
        assert!(
            container_ports.contains(port),
            "networkpolicy names port {port}, not a container port"
        );
    }
    assert_eq!(
        admitted,
        vec![("http", "ingress-nginx"), ("admin", "monitoring")],
        "networkpolicy admits other peers than the ingress controller and Prometheus"
    );
    let hpa = &by_kind["HorizontalPodAutoscaler/im-node"];
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "im-node");
    assert!(by_kind.contains_key("Service/redis") && by_kind.contains_key("Service/postgres"));

    // kustomization.yaml applies every manifest except the example secret.
    let kustomization = yaml("ops/k8s/kustomization.yaml");
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    for entry in std::fs::read_dir(repo().join("ops/k8s")).expect("ops/k8s") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" && !name.contains("example") {
            assert!(
                listed.contains(name.as_str()),
                "{name} missing from kustomization.yaml"
            );
        }
    }
}

/// What a traffic task saw.
#[derive(Default)]
struct Traffic {
    acked: Vec<i64>,
    conv: Option<ConvId>,
    reconnects: usize,
}

/// Connects to the first node (starting at `start`) that takes the connection.
async fn connect_any(
    addrs: &[SocketAddr],
    start: usize,
    user: &TestUser,
    device: &str,
) -> TestClient {
    for attempt in 0..200 {
        let addr = addrs[(start + attempt) % addrs.len()];
        if let Ok(client) = TestClient::connect(addr, user, device).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no node took a connection for 10 s");
}

/// Sends numbered messages until `stop`, reconnecting to another node whenever the connection ends and
/// re-sending every unacknowledged message with its original cid (the server answers a retry with the stored
/// message, so nothing is stored twice).
async fn sender(
    addrs: Vec<SocketAddr>,
    from: TestUser,
    to: i64,
    stop: Arc<AtomicBool>,
    next_node: Arc<AtomicUsize>,
) -> Traffic {
    let mut traffic = Traffic::default();
    let mut unacked: Vec<String> = Vec::new();
    let mut sequence = 0;
    let mut client = connect_any(&addrs, 0, &from, "sender").await;
    loop {
        let cid = match unacked.first() {
            Some(cid) => cid.clone(),
            None if stop.load(Ordering::Acquire) => break,
            None => {
                sequence += 1;
                let cid = format!("roll{sequence}");
                unacked.push(cid.clone());
                cid
            }
        };
        let result = client
            .send_and_ack(to, &cid, "during a rolling restart")
            .await;
        match result {
            Ok(ack) => {
                traffic.acked.push(ack.id);
                traffic.conv = Some(ack.conv);
                unacked.retain(|c| c != &cid);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => {
                traffic.reconnects += 1;
                let start = next_node.fetch_add(1, Ordering::Relaxed);
                client = connect_any(&addrs, start, &from, "sender").await;
            }
        }
    }
    traffic
}

/// Reads pushes until `stop`, reconnecting (and catching up through sync) whenever the connection ends; keeps
/// its per-conversation log across connections, so gaps and reorderings are counted as one device would see them.
async fn receiver(
    addrs: Vec<SocketAddr>,
    user: TestUser,
    stop: Arc<AtomicBool>,
    next_node: Arc<AtomicUsize>,
) -> (HashMap<ConvId, ConvLog>, usize) {
    let mut reconnects = 0;
    let mut client = connect_any(&addrs, 1, &user, "receiver").await;
    while !stop.load(Ordering::Acquire) {
        let outcome = match client.next(Duration::from_millis(200)).await {
            Ok(frame) => client.handle(frame).await,
            Err(error) if error.to_string().starts_with("no frame within") => Ok(()),
            Err(error) => Err(error),
        };
        if outcome.is_err() {
            reconnects += 1;
            let start = next_node.fetch_add(1, Ordering::Relaxed);
            client = reconnect_and_catch_up(&addrs, start, &user, client).await;
        }
    }
    client.drain(Duration::from_millis(300)).await.ok();
    let client = reconnect_and_catch_up(&addrs, 0, &user, client).await;
    (client.convs, reconnects)
}

/// Replaces `old` by a new connection that carries its per-conversation log and has synced past it. The node it
/// reaches may start draining during the sync: then it tries the next one.
async fn reconnect_and_catch_up(
    addrs: &[SocketAddr],
    start: usize,
    user: &TestUser,
    mut old: TestClient,
) -> TestClient {
    let mut known = std::mem::take(&mut old.convs);
    drop(old);
    for attempt in 0..20 {
        let mut client = connect_any(addrs, start + attempt, user, "receiver").await;
        client.convs = known;
        if client.catch_up().await.is_ok() {
            return client;
        }
        known = std::mem::take(&mut client.convs);
    }
    panic!("could not catch up on any node");
}

#[tokio::test]
async fn rolling_restart_under_traffic_loses_no_acknowledged_message() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let a = cluster.user("rolla").await.unwrap();
    let b = cluster.user("rollb").await.unwrap();
    let addrs: Vec<SocketAddr> = (0..3).map(|i| cluster.addr(i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let next_node = Arc::new(AtomicUsize::new(1));
    let sending = tokio::spawn(sender(
        addrs.clone(),
        a.clone(),
        b.id,
        stop.clone(),
        next_node.clone(),
    ));
    let receiving = tokio::spawn(receiver(addrs, b, stop.clone(), next_node));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The procedure of ops/rolling-restart.sh: one node at a time, SIGTERM (drain), wait for the exit, start
    // it again, wait until it is ready, let clients settle, next.
    for index in 0..3 {
        cluster.nodes[index].signal(libc::SIGTERM);
        assert_eq!(
            cluster.nodes[index].wait_exit(Duration::from_secs(15)),
            Some(Some(0)),
            "node {index} did not drain cleanly:\n{}",
            cluster.nodes[index].logs()
        );
        cluster.start_node(index).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let traffic = sending.await.unwrap();
    let (convs, receiver_reconnects) = receiving.await.unwrap();

    eprintln!(
        "rolling restart: {} acks, sender reconnected {} times, receiver {} times",
        traffic.acked.len(),
        traffic.reconnects,
        receiver_reconnects
    );
    assert!(
        traffic.acked.len() >= 50,
        "too little traffic: {} acks",
        traffic.acked.len()
    );
    assert!(
        traffic.reconnects >= 1 && receiver_reconnects >= 1,
        "the restart never moved the clients (sender {}, receiver {receiver_reconnects})",
        traffic.reconnects
    );
    let conv = traffic.conv.expect("a conversation");
    let log = &convs[&conv];
    let received: BTreeSet<i64> = log.msgs.values().map(|m| m.id).collect();
    let acked: BTreeSet<i64> = traffic.acked.iter().copied().collect();
    let lost: Vec<&i64> = acked.difference(&received).collect();
    assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
    assert_eq!(log.violations, 0, "delivery order violations");
    assert!(
        log.settled_missing.is_empty(),
        "seq gaps: {:?}",
        log.settled_missing
    );
}
