//! A minimal Redis protocol (RESP2) client for fault injection from tests, independent of the node's own client:
//! it can publish arbitrary bytes and pattern-subscribe to every node's channel.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use anyhow::{anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

pub struct Resp {
    stream: BufReader<TcpStream>,
}

impl Resp {
    pub async fn connect(port: u16) -> anyhow::Result<Resp> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        Ok(Resp {
            stream: BufReader::new(stream),
        })
    }

    /// Writes one command (does not read the reply).
    pub async fn send(&mut self, args: &[&[u8]]) -> anyhow::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&out).await?;
        Ok(())
    }

    /// Sends a command and reads its reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<Value> {
        self.send(args).await?;
        self.read().await
    }

    pub async fn read(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            bail!("redis closed the connection");
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(line.len().min(1));
        Ok(match kind {
            "+" => Value::Simple(rest.to_string()),
            "-" => Value::Error(rest.to_string()),
            ":" => Value::Int(rest.parse()?),
            "$" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    Value::Bulk(None)
                } else {
                    let mut buf = vec![0; len as usize + 2];
                    self.stream.read_exact(&mut buf).await?;
                    buf.truncate(len as usize);
                    Value::Bulk(Some(buf))
                }
            }
            "*" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    Value::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(Box::pin(self.read()).await?);
                    }
                    Value::Array(Some(items))
                }
            }
            other => return Err(anyhow!("unexpected RESP type {other:?}")),
        })
    }
}

fn bulk(value: &Value) -> Option<&[u8]> {
    match value {
        Value::Bulk(Some(bytes)) => Some(bytes),
        _ => None,
    }
}

/// Publishes every message sent to any node's channel a second time, until `stop` turns true: the "PUBLISH
/// delivered twice" fault (fred may re-send a publish after a reconnect). Returns how many were doubled.
pub async fn duplicate_publishes(
    port: u16,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<usize> {
    let mut subscriber = Resp::connect(port).await?;
    let mut publisher = Resp::connect(port).await?;
    subscriber.call(&[b"PSUBSCRIBE", b"im:node:*"]).await?;
    // Our own copies come back through the pattern subscription: remember them so they are not doubled again.
    let mut ours: HashSet<u64> = HashSet::new();
    let mut doubled = 0;
    loop {
        let value = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return Ok(doubled),
            value = subscriber.read() => value?,
        };
        let Value::Array(Some(items)) = value else {
            continue;
        };
        let (Some(channel), Some(payload)) =
            (items.get(2).and_then(bulk), items.get(3).and_then(bulk))
        else {
            continue;
        };
        let mut hasher = DefaultHasher::new();
        (channel, payload).hash(&mut hasher);
        let key = hasher.finish();
        if ours.remove(&key) {
            continue;
        }
        ours.insert(key);
        publisher.call(&[b"PUBLISH", channel, payload]).await?;
        doubled += 1;
    }
}
