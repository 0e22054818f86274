//! Tidy: the rules that keep the code's layout the one `ARCHITECTURE.md` describes, checked on the source tree.
//!
//! - every Rust module of the workspace starts with a `//!` doc (what it owns, what it must not do);
//! - the crate graph (`cargo metadata`) is the one written in ARCHITECTURE.md's "Crate graph" block;
//! - no SQL outside `node/src/storage/`;
//! - no file in `node/src` over 500 lines;
//! - no import circles between the rooms (folders) of `node/src`, and ARCHITECTURE.md's code map names every room.
//!
//! Each check is a function over a directory, so the `planted_*` tests can prove it fails on a violation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 500;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

fn rust_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | "node_modules" | ".git") {
                    pending.push(path);
                }
            } else if name.ends_with(".rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Files that do not start with a `//!` module doc.
fn missing_module_docs(root: &Path) -> Vec<PathBuf> {
    rust_files(root)
        .into_iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let first = text
                .lines()
                .find(|line| !line.trim().is_empty() && !line.starts_with("#!["));
            !first.is_some_and(|line| line.starts_with("//!"))
        })
        .collect()
}

/// SQL keywords that only ever appear in statements.
const SQL_MARKERS: [&str; 8] = [
    "SELECT ",
    "INSERT INTO",
    "UPDATE ",
    "DELETE FROM",
    "CREATE TABLE",
    "ON CONFLICT",
    ".prepare_cached(",
    ".batch_execute(",
];

/// `(file, line)` of SQL in string literals or statement calls outside `storage/` (tests of a file included: they
/// should not need SQL either).
fn sql_outside_storage(src: &Path) -> Vec<(PathBuf, usize)> {
    let storage = src.join("storage");
    let mut found = Vec::new();
    for path in rust_files(src) {
        if path.starts_with(&storage) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if SQL_MARKERS.iter().any(|marker| line.contains(marker)) {
                found.push((path.clone(), number + 1));
            }
        }
    }
    found
}

fn oversized_files(src: &Path) -> Vec<(PathBuf, usize)> {
    rust_files(src)
        .into_iter()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .count();
            (lines > MAX_LINES).then_some((path, lines))
        })
        .collect()
}

/// The rooms (folders) of a crate's `src` and which other rooms each one names (`crate::room` anywhere, or in a
/// `use crate::{…}` group).
fn room_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let rooms: BTreeSet<String> = std::fs::read_dir(src)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    let mut graph: BTreeMap<String, BTreeSet<String>> =
        rooms.iter().map(|r| (r.clone(), BTreeSet::new())).collect();
    for room in &rooms {
        for path in rust_files(&src.join(room)) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let mut named = BTreeSet::new();
            for (index, _) in text.match_indices("crate::") {
                let rest = &text[index + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    let group = group.split('}').next().unwrap_or_default();
                    for part in group.split(',') {
                        named.insert(
                            part.trim()
                                .split("::")
                                .next()
                                .unwrap_or_default()
                                .to_string(),
                        );
                    }
                } else {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    named.insert(name);
                }
            }
            for other in named {
                if other != *room && rooms.contains(&other) {
                    graph.entry(room.clone()).or_default().insert(other);
                }
            }
        }
    }
    graph
}

/// One circle in a graph, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

/// The workspace crates and the workspace crates each depends on (normal and dev), from `cargo metadata`.
fn crate_graph_from_metadata() -> BTreeMap<String, BTreeSet<String>> {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("metadata is JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    packages
        .iter()
        .map(|package| {
            let deps = package["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["name"].as_str())
                .filter(|d| names.contains(*d))
                .map(str::to_string)
                .collect();
            (
                package["name"].as_str().unwrap_or_default().to_string(),
                deps,
            )
        })
        .collect()
}

/// The graph written in ARCHITECTURE.md between the `crate-graph` markers, one `crate: dep, dep` line each.
fn crate_graph_documented(architecture: &str) -> BTreeMap<String, BTreeSet<String>> {
    let block = architecture
        .split("<!-- crate-graph:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- crate-graph:end -->").next())
        .expect("ARCHITECTURE.md has a crate-graph block");
    block
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| !name.trim().is_empty() && !name.contains('`'))
        .map(|(name, deps)| {
            let deps = deps
                .split(',')
                .map(|d| d.trim().to_string())
                .filter(|d| !d.is_empty() && d != "—")
                .collect();
            (name.trim().to_string(), deps)
        })
        .collect()
}

fn architecture() -> String {
    std::fs::read_to_string(workspace().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md")
}

#[test]
fn every_module_has_a_doc() {
    let mut missing = Vec::new();
    for krate in ["common", "router", "node", "benchmarks", "tests"] {
        missing.extend(missing_module_docs(&workspace().join(krate)));
    }
    assert!(
        missing.is_empty(),
        "modules without a //! doc: {missing:#?}"
    );
}

#[test]
fn no_sql_outside_storage() {
    let found = sql_outside_storage(&workspace().join("node/src"));
    assert!(found.is_empty(), "SQL outside node/src/storage: {found:#?}");
}

#[test]
fn no_file_in_node_src_over_the_limit() {
    let found = oversized_files(&workspace().join("node/src"));
    assert!(found.is_empty(), "files over {MAX_LINES} lines: {found:#?}");
}

#[test]
fn rooms_of_node_have_no_circles_and_are_all_on_the_code_map() {
    let graph = room_graph(&workspace().join("node/src"));
    assert!(graph.len() >= 5, "node/src rooms: {graph:?}");
    assert_eq!(
        find_cycle(&graph),
        None,
        "rooms import each other: {graph:#?}"
    );
    let architecture = architecture();
    for room in graph.keys() {
        assert!(
            architecture.contains(&format!("`node/src/{room}/`")),
            "ARCHITECTURE.md's code map does not name `node/src/{room}/`"
        );
    }
}

#[test]
fn crate_graph_is_the_documented_one() {
    assert_eq!(
        crate_graph_from_metadata(),
        crate_graph_documented(&architecture())
    );
}

/// A scratch copy of nothing: a small tree with the violations each check must find.
fn planted(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("im-tidy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("storage")).expect("scratch dir");
    std::fs::create_dir_all(root.join("chat")).expect("scratch dir");
    std::fs::create_dir_all(root.join("fanout")).expect("scratch dir");
    root
}

#[test]
fn planted_violations_are_found() {
    let root = planted("violations");
    std::fs::write(
        root.join("storage/ok.rs"),
        "//! Owns SQL.\nconst Q: &str = \"SELECT 1\";\n",
    )
    .unwrap();
    std::fs::write(
        root.join("chat/bad.rs"),
        "const Q: &str = \"DELETE FROM users\";\n",
    )
    .unwrap();
    std::fs::write(
        root.join("fanout/long.rs"),
        format!("//! Long.\n{}", "const X: u8 = 0;\n".repeat(MAX_LINES + 1)),
    )
    .unwrap();
    std::fs::write(
        root.join("chat/uses.rs"),
        "//! Uses fanout.\nuse crate::fanout::long;\n",
    )
    .unwrap();
    std::fs::write(
        root.join("fanout/back.rs"),
        "//! And back.\nuse crate::{chat, storage};\n",
    )
    .unwrap();

    assert_eq!(missing_module_docs(&root), vec![root.join("chat/bad.rs")]);
    assert_eq!(
        sql_outside_storage(&root),
        vec![(root.join("chat/bad.rs"), 1)]
    );
    assert_eq!(
        oversized_files(&root),
        vec![(root.join("fanout/long.rs"), MAX_LINES + 2)]
    );
    let cycle = find_cycle(&room_graph(&root)).expect("the planted circle is found");
    assert!(cycle.contains(&"chat".to_string()) && cycle.contains(&"fanout".to_string()));
    let documented = crate_graph_documented(
        "<!-- crate-graph:start -->\n```text\na: b, c\nb: —\n```\n<!-- crate-graph:end -->",
    );
    assert_eq!(documented["a"].len(), 2);
    assert!(documented["b"].is_empty());
    let _ = std::fs::remove_dir_all(&root);
}
