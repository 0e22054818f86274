//! The offline push hook: when a message's recipient has no online device anywhere, the node tells an
//! operator-supplied webhook (which may bridge to APNs or FCM). Off unless `--push-webhook-url` is set.
//!
//! Delivery never waits for it: recipients are queued on a bounded channel (overflow is counted and dropped), a
//! background task posts them in batches of JSON with a timeout, and retries a failed batch a few times with
//! backoff. The hook is at-most-once by design; it is a nudge, the message itself is safe in Postgres.
//!
//! One HTTP/1.1 connection is kept open between batches and opened again after it fails. `https://` URLs speak
//! TLS (rustls, the server's certificate checked against `--push-ca-file` or the system's trust store); previews
//! are in the body, so `http://` is only for a hook on the same host or network.

use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use common::ids::{ConvId, MsgId, Seq, UserId};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use tracing::warn;

/// One offline recipient of one message.
#[derive(Debug, Clone, Serialize)]
pub struct PushEvent {
    pub user: UserId,
    pub conv: ConvId,
    pub id: MsgId,
    pub seq: Seq,
    pub from: UserId,
    pub kind: String,
    /// The first characters of a text body (empty for other kinds).
    pub preview: String,
}

/// Hook settings.
#[derive(Debug, Clone)]
pub struct PushSettings {
    pub url: String,
    pub batch: usize,
    pub timeout: Duration,
    pub retries: u32,
    /// The client configuration for an `https://` URL; `None` for `http://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Where the hook is: parsed once at start.
struct Target {
    uri: Uri,
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header.
    authority: String,
    /// The name checked in the certificate, with TLS.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl Target {
    fn parse(settings: &PushSettings) -> Result<Target, String> {
        let uri: Uri = settings
            .url
            .parse()
            .map_err(|e| format!("--push-webhook-url: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or("--push-webhook-url has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tls = match (&settings.tls, https) {
            (Some(config), true) => {
                let name = ServerName::try_from(host)
                    .map_err(|e| format!("--push-webhook-url host: {e}"))?;
                Some((tokio_rustls::TlsConnector::from(config.clone()), name))
            }
            (None, true) => return Err("an https:// webhook needs a TLS configuration".into()),
            _ => None,
        };
        Ok(Target {
            uri,
            address,
            authority,
            tls,
        })
    }

    /// Opens a connection (TCP, then TLS for `https://`) and completes the HTTP/1.1 handshake.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.address))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {}: {e}", self.address))?;
                handshake(stream).await
            }
            None => handshake(tcp).await,
        }
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// The queue side of the hook.
#[derive(Clone)]
pub struct PushQueue {
    tx: mpsc::Sender<PushEvent>,
}

impl PushQueue {
    /// Queues without waiting; a full queue drops the event (counted).
    pub fn offer(&self, event: PushEvent) {
        if self.tx.try_send(event).is_err() {
            ::metrics::counter!("im_push_dropped_total").increment(1);
        }
    }
}

/// Starts the sender task; it ends when every `PushQueue` is dropped. An unusable URL is refused here, at start.
pub fn spawn(settings: PushSettings) -> Result<PushQueue, String> {
    let target = Target::parse(&settings)?;
    let (tx, mut rx) = mpsc::channel::<PushEvent>(10_000);
    tokio::spawn(async move {
        let mut connection = None;
        let mut batch = Vec::with_capacity(settings.batch);
        loop {
            let Some(first) = rx.recv().await else { break };
            batch.push(first);
            // Gather what else is queued within a short window, up to the batch size.
            let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
            while batch.len() < settings.batch {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(event)) => batch.push(event),
                    _ => break,
                }
            }
            post(&target, &mut connection, &settings, &batch).await;
            batch.clear();
        }
    });
    Ok(PushQueue { tx })
}

/// Sends one request on the kept connection, opening one first if there is none or it has closed.
async fn send(
    target: &Target,
    connection: &mut Option<SendRequest<Full<Bytes>>>,
    request: Request<Full<Bytes>>,
) -> Result<hyper::StatusCode, String> {
    if connection.as_ref().is_none_or(|c| c.is_closed()) {
        *connection = Some(target.connect().await?);
    }
    let Some(sender) = connection.as_mut() else {
        return Err("no connection".into());
    };
    let result = async {
        sender.ready().await?;
        sender.send_request(request).await
    }
    .await;
    match result {
        Ok(response) => Ok(response.status()),
        Err(error) => {
            *connection = None;
            Err(error.to_string())
        }
    }
}

async fn post(
    target: &Target,
    connection: &mut Option<SendRequest<Full<Bytes>>>,
    settings: &PushSettings,
    batch: &[PushEvent],
) {
    let Ok(body) = serde_json::to_vec(&serde_json::json!({ "events": batch })) else {
        return;
    };
    let body = Bytes::from(body);
    for attempt in 0..=settings.retries {
        let path = target
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let request = Request::post(path)
            .header("host", &target.authority)
            .header("content-type", "application/json")
            .body(Full::new(body.clone()));
        let Ok(request) = request else {
            warn!("invalid push webhook request");
            return;
        };
        match tokio::time::timeout(settings.timeout, send(target, connection, request)).await {
            Ok(Ok(status)) if status.is_success() => {
                ::metrics::counter!("im_push_events_total", "result" => "sent")
                    .increment(batch.len() as u64);
                return;
            }
            Ok(Ok(status)) => warn!(%status, attempt, "push webhook refused a batch"),
            Ok(Err(error)) => warn!(%error, attempt, "push webhook unreachable"),
            Err(_) => {
                // The connection may be stuck mid-request: open a new one next time.
                *connection = None;
                warn!(attempt, "push webhook timed out");
            }
        }
        tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
    }
    ::metrics::counter!("im_push_events_total", "result" => "failed").increment(batch.len() as u64);
}
