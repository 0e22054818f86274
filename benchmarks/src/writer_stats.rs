//! What the nodes' writers did during a step, read from their `/metrics` (admin listener): transactions, messages
//! per transaction (mean and histogram), and with the database's CPU over the window, its CPU per message — the
//! figures that say whether batching happened and what one message costs Postgres.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cpu::CpuReport;

/// The writer histogram summed over the nodes at one moment.
#[derive(Debug, Clone, Default)]
pub struct WriterSnapshot {
    transactions: f64,
    messages: f64,
    /// Upper bound (`le`) → cumulative transactions.
    buckets: BTreeMap<String, f64>,
    /// Nodes that answered.
    answered: usize,
}

/// One step's writer figures.
#[derive(Debug, Clone, Serialize)]
pub struct WriterStep {
    pub transactions: u64,
    pub messages: u64,
    pub mean_batch_rows: f64,
    /// `le` → transactions in the step with at most that many messages (cumulative, as Prometheus counts).
    pub batch_rows_cumulative: BTreeMap<String, u64>,
    /// Database CPU (the Postgres process tree) over the window divided by the messages sent in it, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_cpu_us_per_message: Option<f64>,
}

/// Reads every node's writer histogram; nodes that do not answer are left out (and counted).
pub async fn snapshot(admins: &[SocketAddr]) -> WriterSnapshot {
    let mut total = WriterSnapshot::default();
    for admin in admins {
        let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(2), scrape(*admin)).await
        else {
            continue;
        };
        total.answered += 1;
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if name.starts_with("im_writer_batch_rows_sum") {
                total.messages += value;
            } else if name.starts_with("im_writer_batch_rows_count") {
                total.transactions += value;
            } else if let Some(rest) = name.strip_prefix("im_writer_batch_rows_bucket") {
                if let Some(le) = rest.split("le=\"").nth(1).and_then(|r| r.split('"').next()) {
                    *total.buckets.entry(le.to_string()).or_default() += value;
                }
            }
        }
    }
    total
}

/// The step between two snapshots; `sent` and `cpu` give the database's CPU per message.
pub fn step(
    before: &WriterSnapshot,
    after: &WriterSnapshot,
    sent: u64,
    cpu: &CpuReport,
) -> Option<WriterStep> {
    if after.answered == 0 || after.answered != before.answered {
        return None;
    }
    let transactions = (after.transactions - before.transactions).max(0.0);
    let messages = (after.messages - before.messages).max(0.0);
    let batch_rows_cumulative = after
        .buckets
        .iter()
        .map(|(le, count)| {
            let earlier = before.buckets.get(le).copied().unwrap_or(0.0);
            (le.clone(), (count - earlier).max(0.0) as u64)
        })
        .collect();
    let db_cpu_us_per_message = cpu
        .processes
        .iter()
        .find(|p| p.name == "postgres")
        .filter(|_| sent > 0)
        .map(|p| (p.cpu_pct / 100.0 * cpu.seconds * 1e6 / sent as f64 * 10.0).round() / 10.0);
    Some(WriterStep {
        transactions: transactions as u64,
        messages: messages as u64,
        mean_batch_rows: if transactions > 0.0 {
            (messages / transactions * 100.0).round() / 100.0
        } else {
            0.0
        },
        batch_rows_cumulative,
        db_cpu_us_per_message,
    })
}

async fn scrape(admin: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}
