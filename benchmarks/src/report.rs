//! Turns a run folder (one JSON file per scenario of ours, the peer's files, the box limits) into the printed
//! summary table, `summary.md` (the tables pasted into RESULTS.md) and the SVG plots. It reads JSON written by
//! `imbench run`, the peer's load script and `run.sh`; a missing field shows as `-`, never as a panic.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::plot;

/// `git rev-parse --short HEAD` plus `-dirty` when the tree has changes; `unknown` outside a checkout.
pub fn git_revision() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(revision) = run(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    match run(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{revision}-dirty"),
        _ => revision,
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm, written out).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// A number for a table cell.
fn cell(value: &Value) -> String {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
            Some(f) if f.abs() >= 100.0 => format!("{f:.0}"),
            Some(f) => format!("{f:.2}"),
            None => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The results of the bare echo connect storm, if the run measured it.
fn bare_connect(folder: &RunFolder) -> Option<&Value> {
    folder.echo_connect.as_ref().map(|e| &e["results"])
}

/// The files of a run folder, parsed.
struct RunFolder {
    ours: Vec<Value>,
    peer: Vec<Value>,
    echo: Option<Value>,
    /// The bare echo server's connect storm (`imbench echo-connect`).
    echo_connect: Option<Value>,
    limits: Option<Value>,
}

fn read_folder(dir: &Path) -> anyhow::Result<RunFolder> {
    let mut folder = RunFolder {
        ours: Vec::new(),
        peer: Vec::new(),
        echo: None,
        echo_connect: None,
        limits: None,
    };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path)?;
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            eprintln!("  ignoring {} (not JSON)", path.display());
            continue;
        };
        match value["kind"].as_str() {
            Some("ours") => folder.ours.push(value),
            Some("peer") => folder.peer.push(value),
            Some("echo") => folder.echo = Some(value),
            Some("echo-connect") => folder.echo_connect = Some(value),
            Some("limits") => folder.limits = Some(value),
            _ => eprintln!("  ignoring {} (no known kind)", path.display()),
        }
    }
    Ok(folder)
}

/// The `dm` run that follows the workload (recipients drawn uniformly, no fixed contacts): the one compared with
/// the peer and with the box limits.
pub fn workload_dm(runs: &[Value]) -> Option<&Value> {
    let dm = of_kind(runs, "dm");
    dm.iter()
        .find(|r| r["run"]["results"]["contacts"].is_null())
        .or(dm.first())
        .copied()
}

/// The runs of one scenario kind.
pub fn of_kind<'a>(runs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    runs.iter()
        .filter(|r| r["run"]["scenario"]["kind"].as_str() == Some(kind))
        .collect()
}

/// The CPU column of a step: every watched process as `name pct`.
fn cpu_cell(cpu: &Value) -> String {
    cpu["processes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    format!(
                        "{} {}",
                        p["name"].as_str().unwrap_or("?"),
                        cell(&p["cpu_pct"])
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "-".into())
}

fn verdict_cell(step: &Value) -> String {
    if step["sustainable"].as_bool() == Some(true) {
        "ok".to_owned()
    } else {
        step["verdict"]
            .as_array()
            .map(|v| v.iter().map(cell).collect::<Vec<_>>().join("; "))
            .unwrap_or_else(|| "-".into())
    }
}

/// The columns every open-loop step shares, after the rate columns.
fn step_cells(step: &Value) -> String {
    format!(
        "{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}",
        cell(&step["delivered_per_s"]),
        cell(&step["lost"]),
        cell(&step["duplicates"]),
        cell(&step["latency_ms"]["p50"]),
        cell(&step["latency_ms"]["p90"]),
        cell(&step["latency_ms"]["p99"]),
        cell(&step["latency_ms"]["p999"]),
        cell(&step["latency_ms"]["max"]),
        cell(&step["ack_ms"]["p50"]),
        cell(&step["ack_ms"]["p99"]),
        cell(&step["disconnects"]),
        cpu_cell(&step["cpu"]),
        cell(&step["cpu"]["machine_busy_pct"]),
        cell(&step["cpu"]["foreign_cpu_pct"]),
        cell(&step["writer"]["mean_batch_rows"]),
        cell(&step["writer"]["db_cpu_us_per_message"]),
        verdict_cell(step),
    )
}

const STEP_HEADER: &str = "delivered/s | lost | dup | p50 ms | p90 | p99 | p99.9 | max | ack p50 | ack p99 | disc | CPU % (per process, 100 = 1 core) | busy % | foreign % | msgs/tx | db µs/msg | verdict |";
const STEP_RULE: &str =
    "---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|";

fn dm_table(out: &mut String, title: &str, run: &Value) {
    let _ = writeln!(out, "\n{title}\n");
    let _ = writeln!(out, "| target msg/s | sent/s | {STEP_HEADER}");
    let _ = writeln!(out, "|---:|---:|{STEP_RULE}");
    let empty = Vec::new();
    for step in run["run"]["results"]["steps"].as_array().unwrap_or(&empty) {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            cell(&step["target_rate"]),
            cell(&step["sent_per_s"]),
            step_cells(step)
        );
    }
    let max = run["run"]["results"]["max_sustainable_rate"]
        .as_f64()
        .unwrap_or(0.0);
    let lowest = run["run"]["results"]["steps"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(|s| s["target_rate"].as_f64())
        .fold(f64::INFINITY, f64::min);
    let max_text = if max > 0.0 || !lowest.is_finite() {
        format!("**{max} msg/s**")
    } else {
        format!("**none of the steps** (below {lowest} msg/s, the lowest tried)")
    };
    let _ = writeln!(
        out,
        "\nMax sustainable: {max_text} (first unsustainable step: {}).",
        cell(&run["run"]["results"]["first_unsustainable_rate"])
    );
}

/// A `group` run: one row per step; delivered/s and lost count deliveries (one per receiving member).
fn group_table(out: &mut String, title: &str, run: &Value) {
    let results = &run["run"]["results"];
    let _ = writeln!(out, "\n{title}\n");
    let _ = writeln!(
        out,
        "{} groups × {} members ({} users); every message is {} deliveries. Rates are msgs/s; delivered/s and lost \
         count deliveries.\n",
        cell(&results["groups"]),
        cell(&results["members"]),
        cell(&results["users"]),
        results["members"]
            .as_f64()
            .map_or_else(|| "-".into(), |m| cell(&Value::from(m - 1.0)))
    );
    let _ = writeln!(
        out,
        "| msgs/s per group | msgs/s total | sent/s | deliveries/s target | {STEP_HEADER}"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|{STEP_RULE}");
    let empty = Vec::new();
    for step in results["steps"].as_array().unwrap_or(&empty) {
        let target_deliveries = match (
            step["target_rate"].as_f64(),
            step["deliveries_per_message"].as_f64(),
        ) {
            (Some(rate), Some(fanout)) => Value::from(rate * fanout),
            _ => Value::Null,
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&step["rate_per_group"]),
            cell(&step["target_rate"]),
            cell(&step["sent_per_s"]),
            cell(&target_deliveries),
            step_cells(step)
        );
    }
    let max = results["max_sustainable_deliveries_per_s"]
        .as_f64()
        .unwrap_or(0.0);
    let text = if max > 0.0 {
        format!(
            "**{} deliveries/s** ({} msgs/s per group)",
            cell(&Value::from(max)),
            cell(&results["max_sustainable_rate"])
        )
    } else {
        "**none of the steps**".to_owned()
    };
    let _ = writeln!(out, "\nMax sustainable: {text}.");
}

/// A `group_large` run: time from a send to its last delivery.
fn group_large_table(out: &mut String, run: &Value) {
    let r = &run["run"]["results"];
    let _ = writeln!(
        out,
        "\n### one large group — `{}` (ours)\n",
        cell(&run["run"]["scenario"]["name"])
    );
    let _ = writeln!(out, "| members online | nodes / load processes | messages | last delivery p50 ms | last delivery max ms | median delivery p50 ms | lost | disc | CPU ms per message (send → last delivery) | foreign CPU ms per message |");
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|");
    let cpu = r["cpu_ms_per_message"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| format!("{} {}", cell(&p["name"]), cell(&p["cpu_ms"])))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        cell(&r["online"]),
        cell(&r["node_processes"]),
        cell(&r["load_processes"]),
        cell(&r["messages"]),
        cell(&r["last_delivery_ms"]["p50"]),
        cell(&r["last_delivery_ms"]["max"]),
        cell(&r["median_delivery_ms"]["p50"]),
        cell(&r["lost"]),
        cell(&r["disconnects"]),
        cpu,
        cell(&r["foreign_cpu_ms_per_message"])
    );
    let empty = Vec::new();
    let per_message: Vec<String> = r["per_message"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|m| {
            format!(
                "{}{}",
                cell(&m["last_ms"]),
                if m["warmup"].as_bool() == Some(true) {
                    " (warm-up)"
                } else {
                    ""
                }
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "\nLast delivery per message, in order (ms): {}.",
        per_message.join(", ")
    );
}

/// Ours against the peer, step by step (matched on `key`), and the ratio of the maximum sustainable figures.
fn ratio_table(out: &mut String, ours: &Value, peer: &Value, key: &str, max_key: &str, unit: &str) {
    let _ = writeln!(
        out,
        "| {unit} | delivered/s ours/peer | p50 ours/peer | p99 ours/peer |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|");
    let empty = Vec::new();
    let peer_steps = peer["run"]["results"]["steps"].as_array().unwrap_or(&empty);
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    for step in ours["run"]["results"]["steps"].as_array().unwrap_or(&empty) {
        let Some(other) = peer_steps
            .iter()
            .find(|p| p[key].as_f64() == step[key].as_f64())
        else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            cell(&step[key]),
            ratio(&step["delivered_per_s"], &other["delivered_per_s"]),
            ratio(&step["latency_ms"]["p50"], &other["latency_ms"]["p50"]),
            ratio(&step["latency_ms"]["p99"], &other["latency_ms"]["p99"]),
        );
    }
    let (a, b) = (
        ours["run"]["results"][max_key].as_f64().unwrap_or(0.0),
        peer["run"]["results"][max_key].as_f64().unwrap_or(0.0),
    );
    let ratio = if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    };
    let _ = writeln!(
        out,
        "\nMax sustainable ({max_key}): ours {a}, peer {b}, ours/peer **{ratio}**."
    );
}

/// Reads the folder, prints the summary, writes `summary.md` and the plots; returns the Markdown.
pub fn report(dir: &Path, plots: &Path) -> anyhow::Result<()> {
    let folder = read_folder(dir)?;
    let mut md = String::new();
    if let Some(first) = folder.ours.first() {
        let _ = writeln!(
            md,
            "Revision `{}`, started {}, machine: {} CPUs ({}), {} GiB, {}, kernel {}, fd hard limit {}.",
            cell(&first["revision"]),
            cell(&first["started_utc"]),
            cell(&first["machine"]["cpus"]),
            cell(&first["machine"]["cpu_model"]),
            cell(&first["machine"]["mem_gib"]),
            cell(&first["machine"]["os"]),
            cell(&first["machine"]["kernel"]),
            cell(&first["machine"]["fd_hard_limit"]),
        );
    }

    // dm: ours, then the peer.
    let mut ours_dm = of_kind(&folder.ours, "dm");
    // The workload's dm first, then variants.
    ours_dm.sort_by_key(|r| !r["run"]["results"]["contacts"].is_null());
    let peer_dm = of_kind(&folder.peer, "dm");
    for run in &ours_dm {
        dm_table(
            &mut md,
            &format!(
                "### dm (ours: every message committed to Postgres before its ack) — `{}`",
                cell(&run["run"]["scenario"]["name"])
            ),
            run,
        );
    }
    for run in &peer_dm {
        dm_table(
            &mut md,
            "### dm (peer: Socket.IO 4 + Redis adapter; it persists nothing)",
            run,
        );
    }
    if let (Some(ours), Some(peer)) = (workload_dm(&folder.ours), peer_dm.first()) {
        let _ = writeln!(md, "\n### Ours / peer (ours persists every message before acking; the peer persists nothing)\n");
        ratio_table(
            &mut md,
            ours,
            peer,
            "target_rate",
            "max_sustainable_rate",
            "target msg/s",
        );
    }

    // Idle steps come one file per step (fresh nodes for each): one table for all of them.
    let idle_runs = of_kind(&folder.ours, "idle");
    if !idle_runs.is_empty() {
        let _ = writeln!(
            md,
            "\n### idle — `{}`\n",
            cell(&idle_runs[0]["run"]["scenario"]["name"])
        );
        let _ = writeln!(md, "| connections | connected | nodes / load processes | node RSS/conn KiB | per node: fresh → before → after 5 s → end of hold (MiB) | hold CPU % | disconnects | load-gen RSS MiB |");
        let _ = writeln!(md, "|---:|---:|---|---:|---|---|---:|---:|");
    }
    for run in idle_runs {
        let empty = Vec::new();
        for step in run["run"]["results"]["steps"].as_array().unwrap_or(&empty) {
            if let Some(reason) = step["skipped"].as_str() {
                let _ = writeln!(
                    md,
                    "| {} | - | - | - | {reason} | - | - | - |",
                    cell(&step["connections"])
                );
                continue;
            }
            let nodes = step["nodes"]
                .as_array()
                .map(|ns| {
                    ns.iter()
                        .map(|n| {
                            format!(
                                "{} ({} conns, {} KiB/conn): {} → {} → {} → {}",
                                cell(&n["node"]),
                                cell(&n["connections"]),
                                cell(&n["rss_per_conn_kib"]),
                                cell(&n["rss_fresh_mib"]),
                                cell(&n["rss_before_mib"]),
                                cell(&n["rss_after_mib"]),
                                cell(&n["rss_end_mib"])
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("<br>")
                })
                .unwrap_or_default();
            let cpu = cpu_cell(&step["hold_cpu"]);
            let _ = writeln!(
                md,
                "| {} | {} | {} / {} | {} | {} | {} | {} | {} |",
                cell(&step["connections"]),
                cell(&step["connected"]),
                cell(&step["node_processes"]),
                cell(&step["load_processes"]),
                cell(&step["rss_per_conn_kib"]),
                nodes,
                cpu,
                cell(&step["disconnects"]),
                cell(&step["loadgen_rss_mib"])
            );
        }
    }

    for run in of_kind(&folder.ours, "connect") {
        let r = &run["run"]["results"];
        let _ = writeln!(
            md,
            "\n### connect storm — `{}`\n",
            cell(&run["run"]["scenario"]["name"])
        );
        let _ = writeln!(md, "| connections | in flight | connected | failed | seconds | connections/s | handshake p50 ms | p99 | max |");
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&r["connections"]),
            cell(&r["concurrency"]),
            cell(&r["connected"]),
            cell(&r["failed"]),
            cell(&r["seconds"]),
            cell(&r["connections_per_s"]),
            cell(&r["handshake_ms"]["p50"]),
            cell(&r["handshake_ms"]["p99"]),
            cell(&r["handshake_ms"]["max"])
        );
        if let Some(bare) = bare_connect(&folder) {
            if let (Some(ours), Some(rate)) = (
                r["connections_per_s"].as_f64(),
                bare["connections_per_s"].as_f64(),
            ) {
                if rate > 0.0 {
                    let _ = writeln!(
                        md,
                        "\nAgainst a bare fastwebsockets server in the same run (TCP + upgrade only, {} connections, \
                         {} in flight): ours {ours:.0}/s ÷ bare {rate:.0}/s = **{:.2}**.",
                        cell(&bare["connections"]),
                        cell(&bare["in_flight"]),
                        ours / rate
                    );
                }
            }
        }
    }

    for run in of_kind(&folder.ours, "sync") {
        let r = &run["run"]["results"];
        let _ = writeln!(
            md,
            "\n### sync after offline — `{}`\n",
            cell(&run["run"]["scenario"]["name"])
        );
        let _ = writeln!(md, "| messages missed | hello ms | caught up ms | sync requests | msgs/s | backlog fill s |");
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            cell(&r["messages"]),
            cell(&r["hello_ms"]),
            cell(&r["caught_up_ms"]),
            cell(&r["sync_requests"]),
            cell(&r["synced_msgs_per_s"]),
            cell(&r["backlog_fill_s"])
        );
    }

    let peer_group = of_kind(&folder.peer, "group");
    for run in of_kind(&folder.ours, "group") {
        if let Some(reason) = run["run"]["results"]["skipped"].as_str() {
            let _ = writeln!(md, "\n### group — {reason}\n");
            continue;
        }
        group_table(
            &mut md,
            &format!(
                "### group (ours: every message committed to Postgres before its ack) — `{}`",
                cell(&run["run"]["scenario"]["name"])
            ),
            run,
        );
    }
    for run in &peer_group {
        group_table(
            &mut md,
            "### group (peer: Socket.IO 4 + Redis adapter; it persists nothing)",
            run,
        );
    }
    if let (Some(ours), Some(peer)) = (of_kind(&folder.ours, "group").first(), peer_group.first()) {
        let _ = writeln!(md, "\n### group: ours / peer (ours persists every message before acking; the peer persists nothing)\n");
        ratio_table(
            &mut md,
            ours,
            peer,
            "rate_per_group",
            "max_sustainable_deliveries_per_s",
            "msgs/s per group",
        );
    }
    for run in of_kind(&folder.ours, "group_large") {
        group_large_table(&mut md, run);
    }

    // Limits of the box, and our durable rate as a share of the smaller of Redis PUBLISH and Postgres COPY.
    if folder.echo.is_some() || folder.limits.is_some() {
        let echo = folder
            .echo
            .as_ref()
            .map(|e| &e["results"])
            .cloned()
            .unwrap_or(Value::Null);
        let limits = folder.limits.clone().unwrap_or(Value::Null);
        let ours_max = workload_dm(&folder.ours)
            .and_then(|r| r["run"]["results"]["max_sustainable_rate"].as_f64());
        let _ = writeln!(md, "\n### Limits of the box (same run)\n");
        let _ = writeln!(md, "| measurement | value |");
        let _ = writeln!(md, "|---|---:|");
        let _ = writeln!(
            md,
            "| bare fastwebsockets echo, {} connections, round trips/s (p50 / p99 ms) | {} ({} / {}) |",
            cell(&echo["connections"]),
            cell(&echo["round_trips_per_s"]),
            cell(&echo["latency_ms"]["p50"]),
            cell(&echo["latency_ms"]["p99"])
        );
        if let Some(connect) = bare_connect(&folder) {
            let _ = writeln!(
                md,
                "| bare fastwebsockets connect storm, {} connections, {} in flight: connections/s (handshake p50 / p99 ms) | {} ({} / {}) |",
                cell(&connect["connections"]),
                cell(&connect["in_flight"]),
                cell(&connect["connections_per_s"]),
                cell(&connect["handshake_ms"]["p50"]),
                cell(&connect["handshake_ms"]["p99"])
            );
        }
        let _ = writeln!(
            md,
            "| `redis-benchmark` PUBLISH/s | {} |",
            cell(&limits["redis_publish_per_s"])
        );
        let _ = writeln!(
            md,
            "| Postgres COPY rows/s into a `messages`-shaped table | {} |",
            cell(&limits["pg_copy_rows_per_s"])
        );
        let _ = writeln!(
            md,
            "| disk: fdatasync/s of one 8 kB write (`pg_test_fsync`; every commit waits for one) | {} |",
            cell(&limits["fdatasync_per_s"])
        );
        let floor = match (
            limits["redis_publish_per_s"].as_f64(),
            limits["pg_copy_rows_per_s"].as_f64(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        };
        if let (Some(ours), Some(floor)) = (ours_max, floor) {
            let _ = writeln!(
                md,
                "| our max sustainable durable msg/s (`dm`) ÷ min(PUBLISH, COPY) | {ours} ÷ {floor:.0} = **{:.3}** |",
                ours / floor
            );
        }
        // The variants (fixed contacts) too: the message path without conversation creation.
        for run in ours_dm
            .iter()
            .filter(|r| !r["run"]["results"]["contacts"].is_null())
        {
            if let (Some(ours), Some(floor)) = (
                run["run"]["results"]["max_sustainable_rate"].as_f64(),
                floor,
            ) {
                let _ = writeln!(
                    md,
                    "| our max sustainable durable msg/s (`{}`) ÷ min(PUBLISH, COPY) | {ours} ÷ {floor:.0} = **{:.3}** |",
                    cell(&run["run"]["scenario"]["name"]),
                    ours / floor
                );
            }
        }
    }

    std::fs::create_dir_all(plots)?;
    let written = plot::write_plots(&folder.ours, &folder.peer, plots)?;
    if !written.is_empty() {
        let _ = writeln!(md, "\nPlots: {}", written.join(", "));
    }
    std::fs::write(dir.join("summary.md"), &md)?;
    println!("{md}");
    Ok(())
}
