//! On-call's view of a live node: logs that are JSON when written to a file, with a request id on every line
//! logged for a call (a WebSocket connection's lines included) and one access line per request; no colour codes in
//! a file in either format; `/metrics`, `/healthz` and `/readyz` on the admin listener only; a `# HELP` line for
//! every family, the process, Postgres pool and REST families present, and `promtool check metrics` clean.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tests::client::WAIT;
use tests::probe::{request, Reply};
use tests::{Cluster, ClusterOptions};
use tokio::io::AsyncWriteExt;

/// Every line of a node's log, parsed; panics on a line that is not a JSON object or carries an escape code.
pub fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            assert!(
                !line.contains('\u{1b}'),
                "a colour code in the log: {line:?}"
            );
            let value: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(value.is_object(), "not a JSON object: {line}");
            value
        })
        .collect()
}

/// Whether `line` was logged inside the `request` span with this id.
pub fn in_request(line: &Value, id: &str) -> bool {
    line["spans"].as_array().is_some_and(|spans| {
        spans
            .iter()
            .any(|span| span["name"] == "request" && span["request_id"] == id)
    })
}

/// The access lines (target `access`) of a log.
pub fn access_lines(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|line| line["target"] == "access")
        .collect()
}

/// The one access line of request `id`.
pub fn access_line<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    let found: Vec<&Value> = access_lines(lines)
        .into_iter()
        .filter(|line| line["request_id"] == id)
        .collect();
    assert_eq!(found.len(), 1, "access lines of request {id}: {found:?}");
    found[0]
}

/// A request id the node made itself: 32 hex digits.
fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One REST call of the log test and what its access line must say.
struct Call<'a> {
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    body: Option<&'a Value>,
    status: u16,
    route: &'a str,
}

impl<'a> Call<'a> {
    fn new(method: &'a str, path: &'a str, status: u16, route: &'a str) -> Self {
        Call {
            method,
            path,
            headers: Vec::new(),
            body: None,
            status,
            route,
        }
    }

    fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }

    fn body(mut self, body: &'a Value) -> Self {
        self.body = Some(body);
        self
    }
}

#[tokio::test]
async fn logs_are_json_with_a_request_id_on_every_line_of_a_call_and_an_access_line_per_request() {
    // No --log-format: the default (auto) writes JSON because the node's standard output is a file.
    let options = ClusterOptions::default().arg("log", "info,node=debug");
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let addr = cluster.addr(0);
    let a = cluster.user("logs-a").await.unwrap();
    let b = cluster.user("logs-b").await.unwrap();

    let bearer = format!("Bearer {}", a.token);
    let wrong = json!({"username": a.name, "password": "wrong password"});
    let user_path = format!("/v1/users/{}", b.id);
    let calls = [
        Call::new("POST", "/v1/sessions", 401, "/v1/sessions").body(&wrong),
        Call::new("GET", &user_path, 200, "/v1/users/{id}").header("authorization", &bearer),
        Call::new("GET", "/v1/no-such-route", 404, "fallback"),
        // A request id from a client that is not a trusted proxy is not taken.
        Call::new("GET", "/v1/users/me", 401, "/v1/users/me")
            .header("x-request-id", "chosen-by-client"),
    ];
    let mut answered = Vec::new();
    for call in &calls {
        let (method, path) = (call.method, call.path);
        let reply: Reply = request(addr, None, b"", method, path, &call.headers, call.body)
            .await
            .unwrap();
        assert_eq!(reply.status, call.status, "{method} {path}: {reply:?}");
        let id = reply
            .header("x-request-id")
            .expect("an X-Request-Id answer");
        assert!(is_generated_id(id), "{method} {path}: request id {id:?}");
        answered.push((id.to_string(), method, call.status, call.route));
    }

    // A WebSocket connection: its lines carry the id of the upgrade request that opened it.
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let mut cb = cluster.connect(0, &b, "phone").await.unwrap();
    let ack = ca.send_and_ack(b.id, "log-1", "hello").await.unwrap();
    cb.wait_messages(ack.conv, 1, WAIT).await.unwrap();
    drop(ca);
    drop(cb);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let lines = json_lines(&cluster.nodes[0].logs());
    assert!(lines.len() > 10, "too few log lines: {lines:?}");
    for line in &lines {
        for field in ["timestamp", "level", "target"] {
            assert!(line.get(field).is_some(), "no {field}: {line}");
        }
    }
    for (id, method, status, route) in &answered {
        let access = access_line(&lines, id);
        assert_eq!(access["message"], "access");
        assert_eq!(access["method"], *method);
        assert_eq!(access["status"], *status);
        assert_eq!(access["route"], *route);
        assert_eq!(access["client"], "127.0.0.1");
        assert!(
            access["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{access}"
        );
        assert!(
            in_request(access, id),
            "the access line is outside its span: {access}"
        );
        assert!(!access.to_string().contains("token="), "{access}");
    }
    // Every request the test made has its access line: registrations, logins, upgrades included.
    let upgrades: Vec<&Value> = access_lines(&lines)
        .into_iter()
        .filter(|line| line["route"] == "/v1/ws")
        .collect();
    assert_eq!(upgrades.len(), 2, "{upgrades:?}");
    for upgrade in upgrades {
        assert_eq!(upgrade["status"], 101);
        let id = upgrade["request_id"].as_str().unwrap();
        // The connection's own lines (its close, at debug) carry the request id and the connection's id.
        let connection_lines: Vec<&Value> = lines
            .iter()
            .filter(|line| in_request(line, id) && line["target"] != "access")
            .collect();
        assert!(
            !connection_lines.is_empty(),
            "no line of the connection opened by {id}"
        );
        for line in connection_lines {
            let spans = line["spans"].as_array().unwrap();
            assert!(
                spans
                    .iter()
                    .any(|span| span["name"] == "conn" && span["conn_id"].is_u64()),
                "{line}"
            );
        }
    }
    assert!(
        access_lines(&lines).len() >= answered.len() + 2 + 4,
        "every call has an access line (4 calls, 2 upgrades, 2 registrations, 2 logins)"
    );
}

#[tokio::test]
async fn text_logs_in_a_file_carry_no_colour_codes() {
    let options = ClusterOptions::default().arg("log-format", "text");
    let cluster = Cluster::start_with(1, options).await.unwrap();
    cluster.user("text-logs").await.unwrap();
    let log = cluster.nodes[0].logs();
    assert!(log.contains("ready") && log.contains(" access"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "a colour code in the log file: {log:?}"
    );
    assert!(log.lines().all(|line| !line.starts_with('{')), "{log}");
}

/// Runs `promtool check metrics` on `text`; None when promtool is not installed.
async fn promtool_check(text: &str) -> Option<(bool, String)> {
    let mut child = match tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => panic!("running promtool: {error}"),
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((output.status.success(), said))
}

/// The value of the one sample whose series text is exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_are_served_on_the_admin_port_only_and_pass_promtool() {
    let cluster = Cluster::start(1).await.unwrap();
    let a = cluster.user("metrics-a").await.unwrap();
    let b = cluster.user("metrics-b").await.unwrap();
    let mut ca = cluster.connect(0, &a, "phone").await.unwrap();
    let mut cb = cluster.connect(0, &b, "phone").await.unwrap();
    let ack = ca.send_and_ack(b.id, "m-1", "hello").await.unwrap();
    cb.wait_messages(ack.conv, 1, WAIT).await.unwrap();

    for path in ["/metrics", "/healthz", "/readyz"] {
        let client_port = request(cluster.addr(0), None, b"", "GET", path, &[], None)
            .await
            .unwrap();
        assert_eq!(
            client_port.status, 404,
            "{path} on the client port: {client_port:?}"
        );
        // Not the web app's page either, which would fool a probe pointed at the wrong port.
        assert!(
            client_port.body.contains("admin listener"),
            "{client_port:?}"
        );
        let admin_port = request(cluster.admin_addr(0), None, b"", "GET", path, &[], None)
            .await
            .unwrap();
        assert_eq!(
            admin_port.status, 200,
            "{path} on the admin port: {admin_port:?}"
        );
    }

    let text = crate::http::metrics_text(cluster.admin_addr(0)).await;
    let declared = |prefix: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix(prefix)?.split_whitespace().next())
            .map(str::to_string)
            .collect()
    };
    let typed = declared("# TYPE ");
    let helped = declared("# HELP ");
    let without_help: Vec<&String> = typed.difference(&helped).collect();
    assert!(
        without_help.is_empty(),
        "families without # HELP: {without_help:?}"
    );

    // Process metrics, from /proc through metrics-process.
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series}:\n{text}"));
    assert!(value("process_resident_memory_bytes") > 1e6);
    let open = value("process_open_fds");
    assert!(open >= 5.0 && value("process_max_fds") >= open);
    let started = value("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "start time {started}, now {now}"
    );
    assert!(typed.contains("process_cpu_seconds_total"));
    // The Postgres pool (default --postgres-pool 16), read at scrape time.
    assert_eq!(value("im_postgres_pool_max_connections"), 16.0);
    assert!(value("im_postgres_pool_connections") >= 1.0);
    assert!(typed.contains("im_postgres_pool_available"));
    assert_eq!(value("im_postgres_pool_waiting"), 0.0);
    // REST requests by method, route template and status.
    let logins = value(
        "im_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/sessions\",status=\"200\"}",
    );
    assert!(logins >= 2.0, "{logins} logins counted");
    assert!(
        value("im_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/ws\",status=\"101\"}")
            >= 2.0
    );

    match promtool_check(&text).await {
        Some((clean, said)) => assert!(clean && said.trim().is_empty(), "promtool check metrics:\n{said}"),
        None if std::env::var_os("CI").is_some() => {
            panic!("promtool is not installed (ops/test.sh installs it with the prometheus package)")
        }
        None => eprintln!(
            "SKIPPED promtool check metrics: promtool not installed (apt-get install prometheus, or run ops/test.sh)"
        ),
    }
}

#[tokio::test]
async fn the_admin_port_keeps_answering_while_the_node_drains() {
    let options = ClusterOptions::default().arg("drain-grace-secs", 3);
    let mut cluster = Cluster::start_with(1, options).await.unwrap();
    let admin = cluster.admin_addr(0);
    let user = cluster.user("drain-admin").await.unwrap();
    // A connection that never reads keeps the drain waiting for its close until the grace period ends.
    let stream = tokio::net::TcpStream::connect(cluster.addr(0))
        .await
        .unwrap();
    let _stuck =
        benchmarks::client::Connection::connect_over(stream, cluster.addr(0), &user.token, "stuck")
            .await
            .unwrap();
    cluster.nodes[0].signal(libc::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut seen = None;
    while std::time::Instant::now() < deadline {
        if let Ok(reply) = request(admin, None, b"", "GET", "/readyz", &[], None).await {
            if reply.status == 503 {
                seen = Some(reply);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = seen.expect("/readyz never answered 503 during the drain");
    assert_eq!(reply.json()["draining"], true, "{reply:?}");
    // The client listener is closed by then; the admin one serves metrics.
    assert!(
        request(cluster.addr(0), None, b"", "GET", "/v1/users/me", &[], None)
            .await
            .is_err()
    );
    assert!(tests::probe::metric(admin, "im_build_info").await >= 1.0);
    assert_eq!(
        cluster.nodes[0].wait_exit(Duration::from_secs(15)),
        Some(Some(0))
    );
}
