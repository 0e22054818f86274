//! The load generator's moving parts: bulk accounts over keep-alive HTTP, a fleet of WebSocket connections (one per
//! user, each a reader and a writer task), the message body that carries the workload's `ts` and `id`, and the
//! shared counters and histograms the readers feed.
//!
//! Nothing read from the network is trusted: a frame that does not decode, an ack whose `cid` we did not make or a
//! body without our stamp is counted as `unparsed`, never unwrapped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use common::{Limits, ServerFrame};
use fastwebsockets::{Frame, OpCode, Payload};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, Semaphore};

use crate::client::Connection;
use crate::sys::{self, SourceAddresses};

/// Every benchmark user has this password; registration is made cheap by the node's --argon2-* flags.
pub const PASSWORD: &str = "bench-password";

/// The device id every load connection uses.
pub const DEVICE: &str = "bench";

/// A registered, logged-in user. User `index` connects to node `index mod nodes`.
#[derive(Debug, Clone)]
pub struct User {
    pub index: usize,
    pub id: i64,
    pub token: String,
}

/// Small deterministic generator (SplitMix64): the scenario's seed fixes every choice.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// One keep-alive HTTP/1.1 connection for the account calls.
struct RestConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl RestConnection {
    async fn open(source: std::net::Ipv4Addr, addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = sys::connect_from(source, addr).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(RestConnection { sender, addr })
    }

    async fn post(
        &mut self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        self.sender.ready().await?;
        let request = Request::builder()
            .method("POST")
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status, value))
    }
}

/// Registers (or, when the name exists, just logs in) one user and returns its id and token.
async fn register_and_login(
    rest: &mut RestConnection,
    username: &str,
) -> anyhow::Result<(i64, String)> {
    let credentials = serde_json::json!({"username": username, "password": PASSWORD});
    let (status, body) = rest.post("/v1/users", credentials.clone()).await?;
    if status != StatusCode::CREATED && status != StatusCode::CONFLICT {
        bail!("register {username}: {status} {body}");
    }
    let (status, body) = rest.post("/v1/sessions", credentials).await?;
    if status != StatusCode::OK {
        bail!("login {username}: {status} {body}");
    }
    let id = body["user_id"]
        .as_i64()
        .ok_or_else(|| anyhow!("login {username}: no user_id in {body}"))?;
    let token = body["token"]
        .as_str()
        .ok_or_else(|| anyhow!("login {username}: no token in {body}"))?;
    Ok((id, token.to_owned()))
}

/// Registers and logs in users `0..count` named `<tag>u<index>`, `workers` requests at a time, spreading them over
/// the nodes. Runs before any measured window.
pub async fn provision(
    nodes: &[SocketAddr],
    tag: &str,
    count: usize,
    sources: &SourceAddresses,
    workers: usize,
) -> anyhow::Result<Vec<User>> {
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let workers = workers.clamp(1, count.max(1));
    for worker in 0..workers {
        let nodes = nodes.to_vec();
        let tag = tag.to_owned();
        let sources = sources.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let addr = nodes[worker % nodes.len()];
            let mut rest = RestConnection::open(sources.pick(worker), addr).await?;
            let mut users = Vec::new();
            for index in (worker..count).step_by(workers) {
                let username = format!("{tag}u{index}");
                // One retry on a fresh connection: a keep-alive connection may be closed by the server.
                let (id, token) = match register_and_login(&mut rest, &username).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        rest = RestConnection::open(sources.pick(worker), addr).await?;
                        register_and_login(&mut rest, &username).await?
                    }
                };
                users.push(User { index, id, token });
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(users)
        });
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprintln!("  accounts: {}/{count}", done.load(Ordering::Relaxed));
            }
        })
    };
    let mut users = Vec::with_capacity(count);
    while let Some(result) = tasks.join_next().await {
        users.extend(result.context("account worker panicked")??);
    }
    progress.abort();
    users.sort_by_key(|u| u.index);
    eprintln!(
        "  accounts: {count} ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(users)
}

/// The 100-byte body: `<ts> <id> ` then `x` up to the length. The protocol has no `ts` field of its own, so the
/// workload's send timestamp and id travel inside the text.
pub fn stamp_body(ts_us: u64, id: u64, length: usize) -> String {
    let mut body = format!("{ts_us} {id} ");
    while body.len() < length {
        body.push('x');
    }
    body
}

/// `(ts, id)` back from a body; None for anything we did not stamp.
pub fn parse_body(body: &str) -> Option<(u64, u64)> {
    let mut parts = body.splitn(3, ' ');
    let ts = parts.next()?.parse().ok()?;
    let id = parts.next()?.parse().ok()?;
    Some((ts, id))
}

/// The `cid` of a stamped send: `<id>-<ts>`, so an ack alone gives its round-trip time.
pub fn stamp_cid(ts_us: u64, id: u64) -> String {
    format!("{id}-{ts_us}")
}

/// `(ts, id)` back from a cid.
pub fn parse_cid(cid: &str) -> Option<(u64, u64)> {
    let (id, ts) = cid.split_once('-')?;
    Some((ts.parse().ok()?, id.parse().ok()?))
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// A latency histogram in microseconds, 1 µs to 10 min, 3 significant digits.
#[allow(clippy::expect_used)]
pub fn new_histogram() -> Histogram<u64> {
    // Cannot fail: hdrhistogram rejects only low < 1, high < 2 * low or more than 5 significant digits, and these
    // are constants within its rules.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

/// What one measured step counted. Only messages whose `ts` lies in `[window_start, window_end)` count.
pub struct Counters {
    pub delivery: Histogram<u64>,
    pub ack: Histogram<u64>,
    pub delivered: u64,
    pub duplicates: u64,
    pub acked: u64,
    /// Delivered (id, recipient slot) pairs, a bit each: `(id - first_id) * slots + slot`, for duplicates.
    seen: Vec<u64>,
    first_id: u64,
    /// Error frames by code, kicks by reason.
    pub errors: BTreeMap<String, u64>,
}

/// Shared by every connection of the fleet; the runner resets it for each step.
pub struct Stats {
    window_start: AtomicU64,
    window_end: AtomicU64,
    pub counters: Mutex<Counters>,
    pub disconnects: AtomicU64,
    pub unparsed: AtomicU64,
    /// Last time (monotonic µs) a frame arrived: the drain ends when this stops moving.
    pub last_progress_us: AtomicU64,
    /// Frames received of any kind (progress output).
    pub frames: AtomicU64,
    /// Set while the fleet closes on purpose, so those closes are not counted as disconnects.
    pub closing: AtomicBool,
    /// Recipients one message may reach (1 for `dm`; the group size for groups). A delivery is counted once per
    /// `(id, user index mod slots)`, so every member of a group counts its copy of a message.
    slots: AtomicU64,
}

/// The delivered-pair bitmap grows to at most this many bits (32 MiB): anything past it is not ours to count.
const MAX_SEEN_BITS: u64 = 1 << 28;

impl Stats {
    pub fn new() -> Arc<Self> {
        Arc::new(Stats {
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            counters: Mutex::new(Counters {
                delivery: new_histogram(),
                ack: new_histogram(),
                delivered: 0,
                duplicates: 0,
                acked: 0,
                seen: Vec::new(),
                first_id: 0,
                errors: BTreeMap::new(),
            }),
            disconnects: AtomicU64::new(0),
            unparsed: AtomicU64::new(0),
            last_progress_us: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            slots: AtomicU64::new(1),
        })
    }

    /// Counts deliveries per recipient: user `index` is slot `index mod slots` (group members hold distinct slots).
    pub fn set_slots(&self, slots: usize) {
        self.slots.store(slots.max(1) as u64, Ordering::Relaxed);
    }

    /// Starts a new step: clears the counters and sets the window; ids of this step start at `first_id`.
    pub fn reset(&self, window_start: u64, window_end: u64, first_id: u64) {
        if let Ok(mut counters) = self.counters.lock() {
            counters.delivery.reset();
            counters.ack.reset();
            counters.delivered = 0;
            counters.duplicates = 0;
            counters.acked = 0;
            counters.seen.clear();
            counters.first_id = first_id;
            counters.errors.clear();
        }
        self.window_start.store(window_start, Ordering::Relaxed);
        self.window_end.store(window_end, Ordering::Relaxed);
        self.disconnects.store(0, Ordering::Relaxed);
        self.unparsed.store(0, Ordering::Relaxed);
    }

    fn in_window(&self, ts: u64) -> bool {
        ts >= self.window_start.load(Ordering::Relaxed)
            && ts < self.window_end.load(Ordering::Relaxed)
    }

    fn count_error(&self, key: String) {
        if let Ok(mut counters) = self.counters.lock() {
            *counters.errors.entry(key).or_insert(0) += 1;
        }
    }

    /// One frame from the server, received at `now_us` by user `recipient`'s connection.
    fn on_frame(&self, frame: ServerFrame, now_us: u64, recipient: usize) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.last_progress_us.store(now_us, Ordering::Relaxed);
        match frame {
            ServerFrame::Msg(msg) => match parse_body(&msg.body) {
                Some((ts, id)) if self.in_window(ts) => {
                    if let Ok(mut counters) = self.counters.lock() {
                        let slots = self.slots.load(Ordering::Relaxed);
                        // Ids of a step are consecutive from first_id; anything else is not ours to count, and must
                        // not grow the bitmap.
                        let key = id
                            .wrapping_sub(counters.first_id)
                            .checked_mul(slots)
                            .and_then(|k| k.checked_add(recipient as u64 % slots))
                            .filter(|k| *k < MAX_SEEN_BITS);
                        let Some(key) = key else {
                            drop(counters);
                            self.unparsed.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        let offset = key as usize;
                        let (word, bit) = (offset / 64, offset % 64);
                        if counters.seen.len() <= word {
                            counters.seen.resize(word + 1, 0);
                        }
                        if counters.seen[word] & (1 << bit) != 0 {
                            counters.duplicates += 1;
                            return;
                        }
                        counters.seen[word] |= 1 << bit;
                        counters.delivered += 1;
                        let _ = counters.delivery.record(now_us.saturating_sub(ts).max(1));
                    }
                }
                Some(_) => {}
                None => {
                    self.unparsed.fetch_add(1, Ordering::Relaxed);
                }
            },
            ServerFrame::Ack(ack) => match parse_cid(&ack.cid) {
                Some((ts, _)) if self.in_window(ts) => {
                    if let Ok(mut counters) = self.counters.lock() {
                        counters.acked += 1;
                        let _ = counters.ack.record(now_us.saturating_sub(ts).max(1));
                    }
                }
                Some(_) => {}
                None => {
                    self.unparsed.fetch_add(1, Ordering::Relaxed);
                }
            },
            ServerFrame::Error(error) => self.count_error(format!("error:{}", error.code.as_str())),
            ServerFrame::Kick(kick) => self.count_error(format!("kick:{}", kick.reason.as_str())),
            ServerFrame::Hello(_)
            | ServerFrame::Synced(_)
            | ServerFrame::Read(_)
            | ServerFrame::Typing(_)
            | ServerFrame::Notice(_) => {}
        }
    }
}

/// What a connection's writer task sends.
enum Out {
    /// A pre-encoded protocol frame.
    Data(Bytes),
    /// An answer the reader owes the server (pong, close echo).
    Obligated(OpCode, Vec<u8>),
    /// Close politely and stop.
    Close,
}

/// The handle the pacer uses to make a connection send.
pub struct ConnHandle {
    outbound: mpsc::UnboundedSender<Out>,
    pub alive: Arc<AtomicBool>,
}

impl ConnHandle {
    /// Queues an encoded frame; false when the connection is gone.
    pub fn send(&self, frame: Bytes) -> bool {
        self.outbound.send(Out::Data(frame)).is_ok() && self.alive.load(Ordering::Relaxed)
    }

    pub fn close(&self) {
        let _ = self.outbound.send(Out::Close);
    }
}

/// Opens one connection for `user` and starts its reader and writer; returns once `hello` arrived.
pub async fn open_connection(
    user: &User,
    addr: SocketAddr,
    source: std::net::Ipv4Addr,
    stats: Arc<Stats>,
) -> anyhow::Result<ConnHandle> {
    let stream = sys::connect_from(source, addr).await?;
    let mut connection = Connection::connect_over(stream, addr, &user.token, DEVICE)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    match connection.next_frame(Duration::from_secs(15)).await? {
        ServerFrame::Hello(_) => {}
        other => bail!("expected hello, got {other:?}"),
    }
    let (mut reader, mut writer) = connection.into_websocket().split(tokio::io::split);
    let (outbound, mut outbound_rx) = mpsc::unbounded_channel::<Out>();
    let alive = Arc::new(AtomicBool::new(true));

    tokio::spawn(async move {
        while let Some(out) = outbound_rx.recv().await {
            let result = match out {
                Out::Data(bytes) => {
                    writer
                        .write_frame(Frame::binary(Payload::Borrowed(&bytes)))
                        .await
                }
                Out::Obligated(OpCode::Pong, payload) => {
                    writer
                        .write_frame(Frame::pong(Payload::Owned(payload)))
                        .await
                }
                Out::Obligated(_, payload) => {
                    let _ = writer
                        .write_frame(Frame::close_raw(Payload::Owned(payload)))
                        .await;
                    break;
                }
                Out::Close => {
                    let _ = writer.write_frame(Frame::close(1000, b"done")).await;
                    break;
                }
            };
            if result.is_err() {
                break;
            }
        }
    });

    let obligations = outbound.clone();
    let reader_alive = alive.clone();
    let recipient = user.index;
    tokio::spawn(async move {
        let limits = Limits {
            max_message_bytes: 16 << 20,
            max_decompressed_bytes: 16 << 20,
            ..Limits::default()
        };
        let mut obligated = |frame: Frame<'_>| {
            let sent = obligations
                .send(Out::Obligated(frame.opcode, frame.payload.to_vec()))
                .map_err(|_| anyhow!("writer gone"));
            std::future::ready(sent)
        };
        loop {
            match reader.read_frame(&mut obligated).await {
                Ok(frame) if frame.opcode == OpCode::Binary => {
                    let now = sys::monotonic_us();
                    match common::decode::<ServerFrame>(&frame.payload, &limits) {
                        Ok(decoded) => stats.on_frame(decoded, now, recipient),
                        Err(_) => {
                            stats.unparsed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(frame) if frame.opcode == OpCode::Close => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        reader_alive.store(false, Ordering::Relaxed);
        if !stats.closing.load(Ordering::Relaxed) {
            stats.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        let _ = obligations.send(Out::Close);
    });
    Ok(ConnHandle { outbound, alive })
}

/// Outcome of opening many connections.
pub struct Opened {
    /// Indexed like the users passed in; None where the connection failed.
    pub handles: Vec<Option<ConnHandle>>,
    pub failures: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    /// Time from TCP connect to `hello`, per successful connection.
    pub handshake: Histogram<u64>,
}

/// Connects every user to node `index mod nodes`, at most `concurrency` handshakes in flight (the workload says
/// 100), from source addresses picked round-robin.
pub async fn open_fleet(
    users: &[User],
    nodes: &[SocketAddr],
    sources: &SourceAddresses,
    concurrency: usize,
    stats: Arc<Stats>,
) -> Opened {
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let opened = Arc::new(AtomicU64::new(0));
    let progress = {
        let opened = opened.clone();
        let total = users.len();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprintln!("  connected: {}/{total}", opened.load(Ordering::Relaxed));
            }
        })
    };
    for (position, user) in users.iter().enumerate() {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let user = user.clone();
        let addr = nodes[user.index % nodes.len()];
        let source = sources.pick(user.index);
        let stats = stats.clone();
        let opened = opened.clone();
        tasks.spawn(async move {
            let begun = Instant::now();
            let result = open_connection(&user, addr, source, stats).await;
            drop(permit);
            opened.fetch_add(1, Ordering::Relaxed);
            (position, result, begun.elapsed())
        });
    }
    let mut handles: Vec<Option<ConnHandle>> = (0..users.len()).map(|_| None).collect();
    let mut failures = 0;
    let mut first_error = None;
    let mut handshake = new_histogram();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((position, Ok(handle), took)) => {
                handles[position] = Some(handle);
                let _ = handshake.record((took.as_micros() as u64).max(1));
            }
            Ok((_, Err(error), _)) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
            Err(error) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("task: {error}"));
            }
        }
    }
    progress.abort();
    Opened {
        handles,
        failures,
        first_error,
        seconds: started.elapsed().as_secs_f64(),
        handshake,
    }
}

/// Closes every connection of a fleet and gives the closes a moment to go out.
pub async fn close_fleet(handles: &[Option<ConnHandle>], stats: &Stats) {
    stats.closing.store(true, Ordering::Relaxed);
    for handle in handles.iter().flatten() {
        handle.close();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_and_cid_carry_ts_and_id() {
        let body = stamp_body(123_456_789, 42, 100);
        assert_eq!(body.len(), 100);
        assert_eq!(parse_body(&body), Some((123_456_789, 42)));
        assert_eq!(
            parse_cid(&stamp_cid(123_456_789, 42)),
            Some((123_456_789, 42))
        );
        // The largest possible stamp is still a valid cid (1-64 of [A-Za-z0-9_.-]).
        assert!(common::ids::is_valid_cid(&stamp_cid(u64::MAX, u64::MAX)));
    }

    #[test]
    fn foreign_bodies_and_cids_are_not_ours() {
        for text in ["", "hello", "12", "x 1", "1 x", "-1 2 x", "lunch?"] {
            assert_eq!(parse_body(text), None, "{text:?}");
            assert_eq!(parse_cid(text), None, "{text:?}");
        }
    }

    fn stamped_msg(ts: u64, id: u64) -> ServerFrame {
        ServerFrame::Msg(common::frame::Msg {
            id: 1,
            conv: 7,
            seq: 1,
            from: 1,
            cid: stamp_cid(ts, id),
            kind: "text".into(),
            body: stamp_body(ts, id, 100),
            ts: 0,
            attrs: None,
            recalled: false,
        })
    }

    /// A group message counts once per receiving member; a second copy to the same member is a duplicate.
    #[test]
    fn group_deliveries_count_per_member() {
        let stats = Stats::new();
        stats.set_slots(3);
        stats.reset(100, 200, 10);
        for recipient in [0, 1, 2] {
            stats.on_frame(stamped_msg(150, 10), 160, recipient);
        }
        stats.on_frame(stamped_msg(150, 11), 170, 4);
        stats.on_frame(stamped_msg(150, 10), 180, 1);
        // Outside the window, and an id from before the step: neither counts.
        stats.on_frame(stamped_msg(250, 12), 260, 0);
        stats.on_frame(stamped_msg(150, 3), 190, 0);
        let counters = stats.counters.lock().unwrap();
        assert_eq!(counters.delivered, 4);
        assert_eq!(counters.duplicates, 1);
        assert_eq!(counters.delivery.max(), 20);
        assert_eq!(stats.unparsed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn rng_is_reproducible_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let x = a.below(13);
            assert_eq!(x, b.below(13));
            assert!(x < 13);
        }
    }
}
