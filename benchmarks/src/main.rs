//! imbench: the load generator for the IM cluster. `run` drives one scenario file against a running cluster and
//! writes its results as JSON; `report` merges a run's JSON files into the summary table, the Markdown tables and
//! the SVG plots; `echo-server`/`echo-load` measure the box's bare WebSocket ceiling; `codec-sizes` chose the
//! compression threshold. `benchmarks/run.sh` wires them together with a throwaway cluster.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use benchmarks::cpu::Watched;
use benchmarks::runner::{self, Target};
use benchmarks::scenario::{Kind, Scenario};
use benchmarks::sys::{self, SourceAddresses};
use benchmarks::{echo, report};
use clap::Parser;
use common::frame::Msg;
use common::ServerFrame;

#[derive(Parser)]
#[command(name = "imbench", about = "Benchmarks for the IM cluster")]
enum Command {
    /// Prints the encoded size of a `msg` frame with and without zstd for a range of body sizes, to choose the
    /// node's --compress-threshold.
    CodecSizes,
    /// Runs one scenario file against a running cluster and writes its results as JSON.
    Run(RunArgs),
    /// Serves a bare WebSocket echo (no protocol, no storage) for the box-limits measurement.
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:7190")]
        listen: SocketAddr,
    },
    /// Closed-loop round trips against `echo-server`, one message in flight per connection.
    EchoLoad {
        #[arg(long, default_value = "127.0.0.1:7190")]
        target: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Connect storm against `echo-server`: TCP + upgrade, at most `in_flight` at once, all held until the last.
    EchoConnect {
        #[arg(long, default_value = "127.0.0.1:7190")]
        target: SocketAddr,
        #[arg(long, default_value_t = 10000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        in_flight: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Internal to `run` of an idle scenario: holds a slice of the users' connections in a child process.
    Hold {
        #[arg(long)]
        users_file: PathBuf,
        #[arg(long)]
        from: usize,
        #[arg(long)]
        to: usize,
        #[arg(long = "node", required = true)]
        nodes: Vec<SocketAddr>,
        #[arg(long, default_value_t = 2)]
        source_first: u8,
        #[arg(long, default_value_t = 16)]
        source_count: u8,
    },
    /// Merges a run folder's JSON files: prints the summary table, writes `summary.md` and the SVG plots.
    Report {
        /// The folder `run.sh` wrote (results of ours, the peer and the box limits).
        #[arg(long)]
        dir: PathBuf,
        /// Where the SVG plots go (default: the run folder).
        #[arg(long)]
        plots: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The scenario file (benchmarks/scenarios/<suite>/<name>.json).
    #[arg(long)]
    scenario: PathBuf,
    /// A node as `host:port=pid`, in node order (user i connects to node i mod count). Repeat per node.
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// Another process tree to report CPU and memory for, as `name=pid` (redis=..., postgres=<postmaster>).
    #[arg(long = "watch")]
    watched: Vec<Watched>,
    /// A node's admin listener (`/metrics`), for the writer's batch sizes per step. Repeat per node; optional.
    #[arg(long = "admin")]
    admins: Vec<std::net::SocketAddr>,
    /// First loopback source address (127.0.0.N) for client sockets.
    #[arg(long, default_value_t = 2)]
    source_first: u8,
    /// How many loopback source addresses to spread client sockets over.
    #[arg(long, default_value_t = 16)]
    source_count: u8,
    /// Username prefix for this run (lower-case letters and digits); defaults to one derived from the clock.
    #[arg(long)]
    tag: Option<String>,
    /// Only this step (0-based) of an `idle` scenario: run.sh restarts the nodes between steps so every step
    /// starts from fresh processes.
    #[arg(long)]
    step: Option<usize>,
    /// Where the JSON goes.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::CodecSizes => codec_sizes(),
        Command::Run(args) => runtime()?.block_on(run(args)),
        Command::EchoServer { listen } => runtime()?.block_on(echo::serve(listen)),
        Command::EchoLoad {
            target,
            connections,
            seconds,
            out,
        } => runtime()?.block_on(async {
            let result =
                echo::load(target, connections, seconds, &SourceAddresses::new(2, 16)).await?;
            write_json(
                &out,
                &serde_json::json!({"kind": "echo", "results": result}),
            )
        }),
        Command::EchoConnect {
            target,
            connections,
            in_flight,
            out,
        } => runtime()?.block_on(async {
            let result =
                echo::connect_storm(target, connections, in_flight, &SourceAddresses::new(2, 16))
                    .await?;
            write_json(
                &out,
                &serde_json::json!({"kind": "echo-connect", "results": result}),
            )
        }),
        Command::Hold {
            users_file,
            from,
            to,
            nodes,
            source_first,
            source_count,
        } => runtime()?.block_on(benchmarks::hold::hold_child(
            &users_file,
            from,
            to,
            &nodes,
            &SourceAddresses::new(source_first, source_count),
        )),
        Command::Report { dir, plots } => report::report(&dir, plots.as_deref().unwrap_or(&dir)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn write_json(path: &std::path::Path, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let fd_limit = sys::raise_fd_limit()?;
    let mut scenario = Scenario::load(&args.scenario)?;
    if let (Some(step), Kind::Idle { users, .. }) = (args.step, &mut scenario.kind) {
        let Some(count) = users.get(step).copied() else {
            bail!("--step {step}: the scenario has {} steps", users.len());
        };
        *users = vec![count];
    }
    let mut nodes = Vec::new();
    let mut node_pids = Vec::new();
    for node in &args.nodes {
        let (addr, pid) = node
            .split_once('=')
            .with_context(|| format!("--node {node}: expected host:port=pid"))?;
        nodes.push(
            addr.parse()
                .with_context(|| format!("--node {node}: bad address"))?,
        );
        node_pids.push(
            pid.parse()
                .with_context(|| format!("--node {node}: bad pid"))?,
        );
    }
    let tag = match args.tag {
        Some(tag) => tag,
        None => format!(
            "b{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                % 100_000_000
        ),
    };
    let target = Target {
        nodes,
        node_pids,
        watched: args.watched,
        admins: args.admins,
        sources: SourceAddresses::new(args.source_first, args.source_count),
        tag,
    };
    let started = chrono_like_now();
    let section = runner::run(&scenario, &target).await?;
    let value = serde_json::json!({
        "kind": "ours",
        "started_utc": started,
        "revision": report::git_revision(),
        "machine": sys::machine_facts(),
        "fd_limit": fd_limit,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "run": section,
    });
    write_json(&args.out, &value)?;
    eprintln!("  wrote {}", args.out.display());
    Ok(())
}

/// UTC time as `YYYY-MM-DDTHH:MM:SSZ` (from the Unix clock; no date crate needed for one stamp).
fn chrono_like_now() -> String {
    report::utc_now()
}

fn codec_sizes() -> anyhow::Result<()> {
    println!(
        "{:>10} {:>10} {:>12} {:>8}",
        "body_bytes", "plain", "zstd_l1", "ratio"
    );
    // Chat-like text: words drawn from a small vocabulary by a fixed-seed generator, so runs are reproducible and
    // the text does not repeat verbatim (a repeated sentence would flatter zstd).
    const WORDS: &[&str] = &[
        "hey", "are", "we", "still", "on", "for", "lunch", "tomorrow", "at", "noon", "I", "can",
        "book", "the", "usual", "place", "near", "office", "sounds", "good", "see", "you", "there",
        "running", "late", "sorry", "meeting", "moved", "to", "3pm", "did", "get", "my", "message",
        "about", "report", "thanks", "ok", "👍", "call", "me", "when", "free", "weekend", "plans",
        "coffee", "later", "?", "!", "haha",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next_word = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        WORDS[(state % WORDS.len() as u64) as usize]
    };
    for size in [16usize, 64, 100, 128, 192, 256, 384, 512, 1024, 2048, 4096] {
        let mut body = String::new();
        while body.len() < size {
            body.push_str(next_word());
            body.push(' ');
        }
        let frame = ServerFrame::Msg(Msg {
            id: 123_456_789,
            conv: 4242,
            seq: 1_001,
            from: 77,
            cid: "c-0001".into(),
            kind: "text".into(),
            body,
            ts: 1_790_000_000_000,
            attrs: None,
            recalled: false,
        });
        let plain = common::encode(&frame, usize::MAX)?.len();
        let compressed = common::encode(&frame, 0)?.len();
        println!(
            "{size:>10} {plain:>10} {compressed:>12} {:>8.2}",
            plain as f64 / compressed as f64
        );
    }
    Ok(())
}
