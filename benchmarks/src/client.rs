//! A minimal client: REST calls for accounts and a WebSocket connection that sends `ClientFrame`s and receives
//! `ServerFrame`s. It answers pings (fastwebsockets does so inside `read_frame`) and surfaces close frames.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use common::{ClientFrame, Limits, ServerFrame};
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use http_body_util::{BodyExt, Empty, Full};
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Spawns hyper's connection futures on tokio.
struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future);
    }
}

/// One HTTP/1.1 request with an optional JSON body; returns the status and the parsed JSON answer (or Null).
pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    http_json_auth(addr, method, path, None, body).await
}

/// Like `http_json`, with `Authorization: Bearer <token>` when a token is given.
pub async fn http_json_auth(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let payload = match &body {
        Some(value) => Bytes::from(serde_json::to_vec(value)?),
        None => Bytes::new(),
    };
    let (status, bytes) = http_raw(addr, method, path, token, "application/json", payload).await?;
    let value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    };
    Ok((status, value))
}

/// One HTTP/1.1 request with raw bytes; returns the status and the raw answer.
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    payload: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", content_type);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Full::new(payload))?)
        .await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// Registers a user (201) and returns its id.
pub async fn register(addr: SocketAddr, username: &str, password: &str) -> anyhow::Result<i64> {
    let (status, body) = http_json(
        addr,
        "POST",
        "/v1/users",
        Some(serde_json::json!({"username": username, "password": password})),
    )
    .await?;
    if status != StatusCode::CREATED {
        bail!("register {username}: {status} {body}");
    }
    body["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("register: no id in {body}"))
}

/// Logs in and returns the token.
pub async fn login(addr: SocketAddr, username: &str, password: &str) -> anyhow::Result<String> {
    let (status, body) = http_json(
        addr,
        "POST",
        "/v1/sessions",
        Some(serde_json::json!({"username": username, "password": password})),
    )
    .await?;
    if status != StatusCode::OK {
        bail!("login {username}: {status} {body}");
    }
    body["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("login: no token in {body}"))
}

/// What a read returned.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Incoming {
    Frame(ServerFrame),
    /// The server closed the connection with this code and reason.
    Closed(u16, String),
}

/// A WebSocket connection speaking the protocol.
pub struct Connection {
    ws: WebSocket<TokioIo<Upgraded>>,
    limits: Limits,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade with this HTTP status (401 for a bad token, ...).
    Refused(u16),
    Other(anyhow::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(status) => write!(f, "upgrade refused with HTTP {status}"),
            ConnectError::Other(error) => write!(f, "{error:#}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// A WebSocket upgrade request (version 13, a fresh key) for `path` on `addr`, with a bearer token if given.
pub fn upgrade_request(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<Request<Empty<Bytes>>, hyper::http::Error> {
    let mut builder = Request::builder()
        .method("GET")
        .uri(path)
        .header("host", addr.to_string())
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header(
            "sec-websocket-key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("sec-websocket-version", "13");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Empty::<Bytes>::new())
}

impl Connection {
    /// Connects to `GET /v1/ws?device=…` with the token in the Authorization header.
    pub async fn connect(
        addr: SocketAddr,
        token: &str,
        device: &str,
    ) -> Result<Self, ConnectError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::Other(e.into()))?;
        Self::connect_over(stream, addr, token, device).await
    }

    /// Like `connect`, over an already connected stream (the load generator binds its own source addresses).
    pub async fn connect_over(
        stream: TcpStream,
        addr: SocketAddr,
        token: &str,
        device: &str,
    ) -> Result<Self, ConnectError> {
        let _ = stream.set_nodelay(true);
        Self::connect_stream(stream, addr, token, device).await
    }

    /// Like `connect`, over any connected byte stream (a TLS stream for `wss://`).
    pub async fn connect_stream<S>(
        stream: S,
        addr: SocketAddr,
        token: &str,
        device: &str,
    ) -> Result<Self, ConnectError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let request = upgrade_request(addr, &format!("/v1/ws?device={device}"), Some(token))
            .map_err(|e| ConnectError::Other(e.into()))?;
        match fastwebsockets::handshake::client(&SpawnExecutor, request, stream).await {
            Ok((ws, _)) => Ok(Connection {
                ws,
                limits: Limits {
                    max_message_bytes: 16 << 20,
                    max_decompressed_bytes: 16 << 20,
                    ..Limits::default()
                },
            }),
            Err(fastwebsockets::WebSocketError::InvalidStatusCode(status)) => {
                Err(ConnectError::Refused(status))
            }
            Err(error) => Err(ConnectError::Other(error.into())),
        }
    }

    /// Encodes and sends a frame (uncompressed below `compress_threshold` bytes).
    pub async fn send(&mut self, frame: &ClientFrame) -> anyhow::Result<()> {
        let bytes = common::encode(frame, 512)?;
        self.send_raw(&bytes).await
    }

    /// Sends arbitrary bytes as one binary message (for malformed-input tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.ws
            .write_frame(Frame::binary(Payload::Borrowed(bytes)))
            .await?;
        Ok(())
    }

    /// Sends one frame as the caller built it (fragments, text frames, ...).
    pub async fn send_frame(&mut self, frame: Frame<'_>) -> anyhow::Result<()> {
        self.ws.write_frame(frame).await?;
        Ok(())
    }

    /// The next protocol frame or the close, waiting at most `limit`.
    pub async fn recv_timeout(&mut self, limit: Duration) -> anyhow::Result<Incoming> {
        tokio::time::timeout(limit, self.recv())
            .await
            .map_err(|_| anyhow!("no frame within {limit:?}"))?
    }

    /// The next protocol frame or the close.
    pub async fn recv(&mut self) -> anyhow::Result<Incoming> {
        loop {
            let frame = self.ws.read_frame().await?;
            match frame.opcode {
                OpCode::Binary => {
                    return Ok(Incoming::Frame(common::decode(
                        &frame.payload,
                        &self.limits,
                    )?))
                }
                OpCode::Close => {
                    let code = frame
                        .payload
                        .get(..2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .unwrap_or(1005);
                    let reason =
                        String::from_utf8_lossy(frame.payload.get(2..).unwrap_or_default())
                            .into_owned();
                    return Ok(Incoming::Closed(code, reason));
                }
                _ => continue,
            }
        }
    }

    /// The next protocol frame; a close is an error.
    pub async fn next_frame(&mut self, limit: Duration) -> anyhow::Result<ServerFrame> {
        match self.recv_timeout(limit).await? {
            Incoming::Frame(frame) => Ok(frame),
            Incoming::Closed(code, reason) => bail!("closed by the server: {code} {reason}"),
        }
    }

    /// The WebSocket itself, for callers that split it into a read and a write half (the load generator writes
    /// from one task while another reads).
    pub fn into_websocket(self) -> WebSocket<TokioIo<Upgraded>> {
        self.ws
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.write_frame(Frame::close(1000, b"bye")).await;
    }
}

/// Boxed future alias for callers that store connection attempts.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
