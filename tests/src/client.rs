//! A test client that follows the protocol's client rules: it tracks the last seq per conversation, drops
//! duplicates by id, syncs when a pushed seq skips ahead, and counts violations of the delivery promise (a message
//! that shows up at a seq it had already settled as missing, or below its settled point).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use benchmarks::client::{Connection, Incoming};
use common::frame::{Ack, ErrorFrame, Hello, Msg, Send, SyncRequest};
use common::ids::{ConvId, Seq};
use common::{ClientFrame, ServerFrame};

use crate::procs::TestUser;

pub const WAIT: Duration = Duration::from_secs(10);

/// What one device knows of one conversation.
#[derive(Debug, Default, Clone)]
pub struct ConvLog {
    /// Every seq up to here is either in `msgs` or settled as missing.
    pub last_seq: Seq,
    pub msgs: BTreeMap<Seq, Msg>,
    pub settled_missing: BTreeSet<Seq>,
    pub duplicates: usize,
    /// Seqs in the order this device showed them (after dedup); a fault checker looks for any step down.
    pub shown: Vec<Seq>,
    /// Messages that arrived below the settled point without having been seen: the "settled gap stays settled"
    /// promise broken.
    pub violations: usize,
}

pub struct TestClient {
    conn: Connection,
    pub user: i64,
    pub device: String,
    pub hello: Hello,
    pending: VecDeque<ServerFrame>,
    pub acks: HashMap<String, Ack>,
    pub errors: HashMap<String, ErrorFrame>,
    pub convs: HashMap<ConvId, ConvLog>,
    pub reads: Vec<common::frame::ReadState>,
    pub typing: Vec<common::frame::TypingState>,
    pub notices: Vec<common::frame::Notice>,
    next_rid: u32,
}

impl TestClient {
    pub async fn connect(
        addr: SocketAddr,
        user: &TestUser,
        device: &str,
    ) -> anyhow::Result<TestClient> {
        let conn = Connection::connect(addr, &user.token, device).await?;
        Self::over(conn, user, device).await
    }

    /// Wraps an already upgraded connection (e.g. over TLS) and reads its `hello`.
    pub async fn over(
        mut conn: Connection,
        user: &TestUser,
        device: &str,
    ) -> anyhow::Result<TestClient> {
        let hello = match conn.next_frame(WAIT).await? {
            ServerFrame::Hello(hello) => hello,
            other => bail!("expected hello, got {other:?}"),
        };
        Ok(TestClient {
            conn,
            user: user.id,
            device: device.to_string(),
            hello,
            pending: VecDeque::new(),
            acks: HashMap::new(),
            errors: HashMap::new(),
            convs: HashMap::new(),
            reads: Vec::new(),
            typing: Vec::new(),
            notices: Vec::new(),
            next_rid: 1,
        })
    }

    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Sends a text message (does not wait for the ack).
    pub async fn send_text(&mut self, to: i64, cid: &str, body: &str) -> anyhow::Result<()> {
        let frame = ClientFrame::Send(Send {
            cid: cid.into(),
            to: Some(to),
            conv: None,
            kind: "text".into(),
            body: body.into(),
            attrs: None,
        });
        self.conn.send(&frame).await
    }

    /// Sends any client frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> anyhow::Result<()> {
        self.conn.send(frame).await
    }

    /// Sends a message of any kind to a user (1:1) and waits for the ack.
    pub async fn send_to_conv_or_user(
        &mut self,
        to: i64,
        cid: &str,
        kind: &str,
        body: &str,
        attrs: Option<common::frame::Attrs>,
    ) -> anyhow::Result<Ack> {
        let frame = ClientFrame::Send(Send {
            cid: cid.into(),
            to: Some(to),
            conv: None,
            kind: kind.into(),
            body: body.into(),
            attrs,
        });
        self.conn.send(&frame).await?;
        self.wait_ack(cid, WAIT).await
    }

    /// Sends a message of any kind into a conversation and waits for the ack.
    pub async fn send_to_conv(
        &mut self,
        conv: ConvId,
        cid: &str,
        kind: &str,
        body: &str,
        attrs: Option<common::frame::Attrs>,
    ) -> anyhow::Result<Ack> {
        let frame = ClientFrame::Send(Send {
            cid: cid.into(),
            to: None,
            conv: Some(conv),
            kind: kind.into(),
            body: body.into(),
            attrs,
        });
        self.conn.send(&frame).await?;
        self.wait_ack(cid, WAIT).await
    }

    /// Sends and waits for the ack.
    pub async fn send_and_ack(&mut self, to: i64, cid: &str, body: &str) -> anyhow::Result<Ack> {
        self.send_text(to, cid, body).await?;
        self.wait_ack(cid, WAIT).await
    }

    /// The next frame from the server (buffered ones first); a close is an error.
    pub async fn next(&mut self, limit: Duration) -> anyhow::Result<ServerFrame> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        self.conn.next_frame(limit).await
    }

    /// The next frame or the close.
    pub async fn next_incoming(&mut self, limit: Duration) -> anyhow::Result<Incoming> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Incoming::Frame(frame));
        }
        self.conn.recv_timeout(limit).await
    }

    /// Reads until the ack (or error) for `cid`, applying pushed messages on the way.
    pub async fn wait_ack(&mut self, cid: &str, limit: Duration) -> anyhow::Result<Ack> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(ack) = self.acks.get(cid) {
                return Ok(ack.clone());
            }
            if let Some(error) = self.errors.get(cid) {
                bail!("send {cid} failed: {error:?}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no ack for {cid} within {limit:?}");
            }
            let frame = self.next(left).await?;
            self.handle(frame).await?;
        }
    }

    /// Waits for an error frame (for a `cid`, or any when `cid` is None).
    pub async fn wait_error(
        &mut self,
        cid: Option<&str>,
        limit: Duration,
    ) -> anyhow::Result<ErrorFrame> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no error frame within {limit:?}");
            }
            match self.next(left).await? {
                ServerFrame::Error(error) if cid.is_none() || error.cid.as_deref() == cid => {
                    return Ok(error)
                }
                other => self.handle(other).await?,
            }
        }
    }

    /// Reads until `done` holds, applying frames on the way.
    pub async fn wait_until(
        &mut self,
        limit: Duration,
        done: impl Fn(&TestClient) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("condition not met within {limit:?}");
            }
            let frame = self.next(left).await?;
            self.handle(frame).await?;
        }
        Ok(())
    }

    /// Applies frames until nothing arrives for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> anyhow::Result<()> {
        loop {
            match self.next(quiet).await {
                Ok(frame) => self.handle(frame).await?,
                Err(error) if error.to_string().starts_with("no frame within") => return Ok(()),
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads until `count` messages of `conv` are known (pushed or synced).
    pub async fn wait_messages(
        &mut self,
        conv: ConvId,
        count: usize,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.convs.get(&conv).map_or(0, |c| c.msgs.len()) < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let have = self.convs.get(&conv).map_or(0, |c| c.msgs.len());
                bail!("only {have} of {count} messages of conversation {conv} within {limit:?}");
            }
            let frame = self.next(left).await?;
            self.handle(frame).await?;
        }
        Ok(())
    }

    /// Acts on one frame the way a client must.
    pub async fn handle(&mut self, frame: ServerFrame) -> anyhow::Result<()> {
        match frame {
            ServerFrame::Ack(ack) => {
                self.acks.insert(ack.cid.clone(), ack);
            }
            ServerFrame::Error(error) => {
                if let Some(cid) = &error.cid {
                    self.errors.insert(cid.clone(), error);
                }
            }
            ServerFrame::Msg(msg) => self.on_push(msg).await?,
            ServerFrame::Kick(kick) => bail!("kicked: {kick:?}"),
            ServerFrame::Read(read) => self.reads.push(read),
            ServerFrame::Typing(typing) => self.typing.push(typing),
            ServerFrame::Notice(notice) => self.notices.push(notice),
            other => bail!("unexpected frame {other:?}"),
        }
        Ok(())
    }

    async fn on_push(&mut self, msg: Msg) -> anyhow::Result<()> {
        let conv = msg.conv;
        let log = self.convs.entry(conv).or_default();
        if let Some(known) = log.msgs.get(&msg.seq) {
            if known.id != msg.id {
                log.violations += 1;
            }
            log.duplicates += 1;
        } else if msg.seq <= log.last_seq {
            log.violations += 1;
        } else if msg.seq == log.last_seq + 1 {
            log.last_seq = msg.seq;
            log.shown.push(msg.seq);
            log.msgs.insert(msg.seq, msg);
        } else {
            // A gap: fetch what is missing, then settle whatever the store does not have.
            let after = log.last_seq;
            let pushed_seq = msg.seq;
            self.sync_after(conv, after).await?;
            let log = self.convs.entry(conv).or_default();
            if !log.msgs.contains_key(&msg.seq) {
                log.shown.push(msg.seq);
                log.msgs.insert(msg.seq, msg);
            }
            for seq in (after + 1)..pushed_seq {
                if !log.msgs.contains_key(&seq) {
                    log.settled_missing.insert(seq);
                }
            }
            log.last_seq = log.last_seq.max(pushed_seq);
        }
        Ok(())
    }

    /// Syncs `conv` from `after` to the end, applying results; frames that arrive meanwhile are kept for later.
    pub async fn sync_after(&mut self, conv: ConvId, after: Seq) -> anyhow::Result<usize> {
        let mut cursor = after;
        let mut fetched = 0;
        loop {
            let rid = self.next_rid;
            self.next_rid += 1;
            self.conn
                .send(&ClientFrame::Sync(SyncRequest {
                    rid,
                    conv,
                    after_seq: cursor,
                    limit: 100,
                }))
                .await?;
            let synced = loop {
                match self.conn.next_frame(WAIT).await? {
                    ServerFrame::Synced(synced) if synced.rid == rid => break synced,
                    ServerFrame::Error(error) if error.rid == Some(rid) => {
                        bail!("sync failed: {error:?}")
                    }
                    other => self.pending.push_back(other),
                }
            };
            let log = self.convs.entry(conv).or_default();
            for msg in synced.msgs {
                cursor = cursor.max(msg.seq);
                fetched += 1;
                if let Some(known) = log.msgs.get(&msg.seq) {
                    if known.id != msg.id {
                        log.violations += 1;
                    }
                    continue;
                }
                if log.settled_missing.contains(&msg.seq) {
                    log.violations += 1;
                }
                log.shown.push(msg.seq);
                log.msgs.insert(msg.seq, msg);
            }
            log.last_seq = log.last_seq.max(cursor);
            if !synced.more {
                return Ok(fetched);
            }
        }
    }

    /// Syncs every conversation the `hello` listed past what this client knows.
    pub async fn catch_up(&mut self) -> anyhow::Result<()> {
        let states = self.hello.convs.clone();
        for state in states {
            let known = self.convs.get(&state.conv).map_or(0, |c| c.last_seq);
            if state.last_seq > known {
                self.sync_after(state.conv, known).await?;
            }
        }
        Ok(())
    }

    /// Total violations over every conversation.
    pub fn violations(&self) -> usize {
        self.convs.values().map(|c| c.violations).sum()
    }

    /// Ids of every known message of `conv`, in seq order.
    pub fn ids(&self, conv: ConvId) -> Vec<i64> {
        self.convs
            .get(&conv)
            .map(|c| c.msgs.values().map(|m| m.id).collect())
            .unwrap_or_default()
    }

    /// Waits for a kick followed by a close; returns the close code.
    pub async fn expect_close(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<(Option<common::KickReason>, u16)> {
        let deadline = Instant::now() + limit;
        let mut kick = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(anyhow!("no close within {limit:?}"));
            }
            match self.next_incoming(left).await? {
                Incoming::Frame(ServerFrame::Kick(k)) => kick = Some(k.reason),
                Incoming::Frame(_) => {}
                Incoming::Closed(code, _) => return Ok((kick, code)),
            }
        }
    }
}
