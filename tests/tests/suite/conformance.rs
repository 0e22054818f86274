//! WebSocket conformance: Autobahn|Testsuite cases (run by `kosoku`, a native runner of the Autobahn case files)
//! against a node's `/v1/echo` route, which reads through the same assembler and limits as protocol sessions.
//!
//! Groups 1–7, 9 and 10 in full take about ten seconds, so the suite runs them all; `IM_AUTOBAHN=quick` runs one
//! or two cases per group instead. `ops/conformance.sh` runs the full set and prints the summary table kept in
//! `docs/conformance.md`. The runner is the PyPI package `kosoku`, pinned in
//! `ops/lib.sh` (`ensure_kosoku`); point `IM_KOSOKU` at its executable or let the test find
//! `target/kosoku-venv/bin/kosoku`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use tests::{Cluster, ClusterOptions};

/// One or two cases of every group we claim, picked for breadth: framing, pings, reserved bits, opcodes,
/// fragmentation, UTF-8 (valid, invalid, fail-fast), close codes and reasons, a large message, auto-fragmentation.
const QUICK: &[&str] = &[
    "1.1.5", "1.2.8", "2.6", "2.10", "3.7", "4.1.3", "4.2.5", "5.6", "5.19", "5.20", "6.2.3",
    "6.4.2", "6.6.8", "7.1.6", "7.3.2", "7.5.1", "7.9.3", "9.1.2", "9.2.2", "10.1.1",
];
const FULL: &[&str] = &[
    "1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*",
];

fn kosoku() -> PathBuf {
    if let Ok(path) = std::env::var("IM_KOSOKU") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/kosoku-venv/bin/kosoku")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_cases_pass_against_the_echo_route() {
    let runner = kosoku();
    assert!(
        runner.exists(),
        "{} not found: run `source ops/lib.sh && ensure_kosoku` (or set IM_KOSOKU)",
        runner.display()
    );
    let full = std::env::var("IM_AUTOBAHN").map_or(true, |v| v != "quick");
    // Group 9 sends messages of up to 16 MiB: raise the cap for this node (the cap itself is exercised by the
    // protocol tests).
    let options = ClusterOptions::default()
        .arg("conformance-echo", "")
        .arg("max-message-bytes", 20 << 20)
        .arg("max-decompressed-bytes", 20 << 20);
    let cluster = Cluster::start_with(1, options).await.unwrap();
    let outdir = std::env::var("IM_AUTOBAHN_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cluster.dir.join("autobahn"));
    let mut command = Command::new(&runner);
    command
        .arg(format!("ws://{}/v1/echo", cluster.addr(0)))
        .arg("-o")
        .arg(&outdir)
        .args(["-p", "4"]);
    for case in if full { FULL } else { QUICK } {
        command.args(["-i", case]);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "autobahn cases failed (reports in {})",
        outdir.display()
    );

    // Check the verdicts ourselves too, and summarise them per group.
    let index = std::fs::read_to_string(outdir.join("index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let cases = index
        .as_object()
        .and_then(|agents| agents.values().next())
        .and_then(|cases| cases.as_object())
        .expect("a report for one server");
    let mut groups: BTreeMap<u32, BTreeMap<String, usize>> = BTreeMap::new();
    let mut bad = Vec::new();
    for (case, result) in cases {
        let behavior = result["behavior"].as_str().unwrap_or("?");
        let close = result["behaviorClose"].as_str().unwrap_or("?");
        if !matches!(behavior, "OK" | "NON-STRICT" | "INFORMATIONAL")
            || !matches!(close, "OK" | "INFORMATIONAL")
        {
            bad.push(format!("{case}: {behavior}/{close}"));
        }
        let group = case
            .split('.')
            .next()
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        *groups
            .entry(group)
            .or_default()
            .entry(format!("{behavior}/{close}"))
            .or_default() += 1;
    }
    assert!(bad.is_empty(), "non-conforming cases: {bad:?}");
    if !full {
        assert_eq!(cases.len(), QUICK.len(), "every quick case ran");
    }
    let mut table =
        String::from("| group | cases | verdicts (behaviour/close: count) |\n|---|---|---|\n");
    for (group, verdicts) in &groups {
        let count: usize = verdicts.values().sum();
        let list: Vec<String> = verdicts.iter().map(|(v, n)| format!("{v}: {n}")).collect();
        table.push_str(&format!("| {group} | {count} | {} |\n", list.join(", ")));
    }
    println!("{table}");
    if let Ok(path) = std::env::var("IM_AUTOBAHN_TABLE") {
        std::fs::write(path, table).unwrap();
    }
}
