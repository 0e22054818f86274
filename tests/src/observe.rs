//! Reading what a client receives without acting on it: the policy and trust tests ask "did this exact frame
//! arrive (or not) within a time", and must not let `TestClient::handle` sync on a gap into a conversation the user
//! has just been removed from. Frames that do not match are dropped.

use std::time::{Duration, Instant};

use anyhow::bail;
use benchmarks::client::Incoming;
use common::frame::{Ack, ErrorFrame};
use common::ServerFrame;

use crate::client::TestClient;

/// Reads frames until `pick` returns `Some` (its value is returned) or `limit` passes (an error). A close is an
/// error too.
pub async fn until<T>(
    client: &mut TestClient,
    limit: Duration,
    mut pick: impl FnMut(&ServerFrame) -> Option<T>,
) -> anyhow::Result<T> {
    match within(client, limit, &mut pick).await? {
        Some(value) => Ok(value),
        None => bail!("no matching frame within {limit:?}"),
    }
}

/// The first frame `pick` accepts within `window`, or `None` if none came (the connection must stay open). Use it
/// to assert that something did NOT arrive.
pub async fn within<T>(
    client: &mut TestClient,
    window: Duration,
    mut pick: impl FnMut(&ServerFrame) -> Option<T>,
) -> anyhow::Result<Option<T>> {
    let deadline = Instant::now() + window;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match client.next_incoming(left).await {
            Ok(Incoming::Frame(frame)) => {
                if let Some(value) = pick(&frame) {
                    return Ok(Some(value));
                }
            }
            Ok(Incoming::Closed(code, reason)) => bail!("closed by the server: {code} {reason}"),
            Err(error) if error.to_string().starts_with("no frame within") => return Ok(None),
            Err(error) => return Err(error),
        }
    }
}

/// The server's answer to a `send` or `recall` with `cid`: its ack, or its error frame.
pub async fn answer(
    client: &mut TestClient,
    cid: &str,
    limit: Duration,
) -> anyhow::Result<Result<Ack, ErrorFrame>> {
    until(client, limit, |frame| match frame {
        ServerFrame::Ack(ack) if ack.cid == cid => Some(Ok(ack.clone())),
        ServerFrame::Error(error) if error.cid.as_deref() == Some(cid) => Some(Err(error.clone())),
        _ => None,
    })
    .await
}

/// The next error frame without a `cid` or `rid` (the answer to `typing` or `read`).
pub async fn bare_error(client: &mut TestClient, limit: Duration) -> anyhow::Result<ErrorFrame> {
    until(client, limit, |frame| match frame {
        ServerFrame::Error(error) if error.cid.is_none() && error.rid.is_none() => {
            Some(error.clone())
        }
        _ => None,
    })
    .await
}
