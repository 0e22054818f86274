//! Holding more connections than one process may open: the `idle` scenario splits its users over child
//! `imbench hold` processes (one process holds at most ~19,900 sockets on the benchmark machines), each from its
//! own block of loopback source addresses.
//!
//! The parent registers the users and writes `index id token` lines to a file; a child connects its slice, prints
//! `connected <ok> <failed> <seconds>` on stdout, holds the connections until its stdin closes, then prints
//! `disconnects <n>` and exits. A child that dies is seen as an early end of its stdout.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::load::{self, Stats, User};
use crate::sys::{self, SourceAddresses};

/// Writes users as `index id token` lines.
pub fn write_users(path: &Path, users: &[User]) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for user in users {
        writeln!(file, "{} {} {}", user.index, user.id, user.token)?;
    }
    file.flush()?;
    Ok(())
}

fn read_users(path: &Path) -> anyhow::Result<Vec<User>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let (Some(index), Some(id), Some(token)) = (parts.next(), parts.next(), parts.next())
            else {
                bail!("bad users line {line:?}");
            };
            Ok(User {
                index: index.parse()?,
                id: id.parse()?,
                token: token.to_owned(),
            })
        })
        .collect()
}

/// The child side: connect users `from..to` of the file, report, hold until stdin closes.
pub async fn hold_child(
    users_file: &Path,
    from: usize,
    to: usize,
    nodes: &[SocketAddr],
    sources: &SourceAddresses,
) -> anyhow::Result<()> {
    sys::raise_fd_limit()?;
    let users: Vec<User> = read_users(users_file)?
        .into_iter()
        .filter(|u| u.index >= from && u.index < to)
        .collect();
    let stats = Stats::new();
    let opened = load::open_fleet(&users, nodes, sources, 100, stats.clone()).await;
    if let Some(error) = &opened.first_error {
        eprintln!("    hold {from}..{to}: first error: {error}");
    }
    println!(
        "connected {} {} {:.3}",
        users.len() as u64 - opened.failures,
        opened.failures,
        opened.seconds
    );
    // Hold until the parent closes our stdin (or dies).
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await;
    println!("disconnects {}", stats.disconnects.load(Ordering::Relaxed));
    load::close_fleet(&opened.handles, &stats).await;
    Ok(())
}

/// One child as the parent sees it.
pub struct Holder {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pub pid: u32,
}

/// What the children reported after connecting.
pub struct Connected {
    pub ok: u64,
    pub failed: u64,
    /// The slowest child's connect time.
    pub seconds: f64,
}

/// Starts one child per `per_process` users; `source_blocks` of 16 source addresses each are handed out in turn.
pub async fn spawn_holders(
    users_file: &Path,
    count: usize,
    per_process: usize,
    nodes: &[SocketAddr],
    first_source: u8,
) -> anyhow::Result<Vec<Holder>> {
    let exe: PathBuf = std::env::current_exe().context("finding imbench's own path")?;
    let mut holders = Vec::new();
    for (k, from) in (0..count).step_by(per_process.max(1)).enumerate() {
        let to = (from + per_process).min(count);
        let mut command = Command::new(&exe);
        command
            .arg("hold")
            .arg("--users-file")
            .arg(users_file)
            .arg("--from")
            .arg(from.to_string())
            .arg("--to")
            .arg(to.to_string())
            .arg("--source-first")
            .arg(
                first_source
                    .saturating_add((k * 16) as u8)
                    .max(2)
                    .to_string(),
            )
            .arg("--source-count")
            .arg("16");
        for node in nodes {
            command.arg("--node").arg(node.to_string());
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting imbench hold")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let pid = child.id().unwrap_or(0);
        holders.push(Holder {
            child,
            lines: BufReader::new(stdout).lines(),
            pid,
        });
    }
    Ok(holders)
}

/// The next line of a child that starts with `key`, split after it.
async fn expect_line(holder: &mut Holder, key: &str) -> anyhow::Result<Vec<String>> {
    while let Some(line) = holder.lines.next_line().await? {
        if let Some(rest) = line.strip_prefix(key) {
            return Ok(rest.split_whitespace().map(str::to_owned).collect());
        }
    }
    bail!(
        "imbench hold (pid {}) ended before reporting {key}",
        holder.pid
    )
}

/// Waits until every child has connected its slice.
pub async fn wait_connected(holders: &mut [Holder]) -> anyhow::Result<Connected> {
    let mut connected = Connected {
        ok: 0,
        failed: 0,
        seconds: 0.0,
    };
    for holder in holders.iter_mut() {
        let fields = expect_line(holder, "connected ").await?;
        let number = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        connected.ok += number(0) as u64;
        connected.failed += number(1) as u64;
        connected.seconds = connected.seconds.max(number(2));
    }
    Ok(connected)
}

/// Summed RSS of the children in KiB.
pub fn holders_rss_kib(holders: &[Holder]) -> u64 {
    holders.iter().map(|h| sys::rss_kib(h.pid)).sum()
}

/// Tells every child to close, collects their disconnect counts and waits for them to exit.
pub async fn release(holders: Vec<Holder>) -> u64 {
    let mut disconnects = 0;
    for mut holder in holders {
        drop(holder.child.stdin.take());
        if let Ok(fields) = expect_line(&mut holder, "disconnects ").await {
            disconnects += fields
                .first()
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
        let _ = holder.child.wait().await;
    }
    disconnects
}
