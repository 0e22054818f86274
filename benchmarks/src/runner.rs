//! Runs one scenario against a running cluster and returns its results as JSON. Each scenario kind has one
//! function here; `dm` and `group` share the open-loop step (`open_loop_step`), which differs only in who sends
//! each message and to what (`Traffic`) and in how many deliveries a message makes.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use common::frame::{Send, SyncRequest};
use common::{ClientFrame, ServerFrame};
use serde::Serialize;
use serde_json::json;

use crate::client::{self, Connection};
use crate::cpu::{mib, CpuMeter, CpuReport, Watched};
use crate::hold;
use crate::load::{self, ConnHandle, Percentiles, Rng, Stats, User};
use crate::scenario::{Kind, Scenario, Sustainable, Timing};
use crate::sys::{self, SourceAddresses};
use crate::writer_stats;

/// Where the cluster is and what to watch.
pub struct Target {
    /// Node addresses; user `i` connects to node `i mod len`.
    pub nodes: Vec<SocketAddr>,
    /// Node process ids, in the same order (for RSS and CPU).
    pub node_pids: Vec<u32>,
    /// Other processes to report CPU for (Redis, Postgres).
    pub watched: Vec<Watched>,
    /// The nodes' admin listeners, for the writer's figures per step (may be empty).
    pub admins: Vec<SocketAddr>,
    pub sources: SourceAddresses,
    /// Prefix of every username of this run, so runs against one database never collide.
    pub tag: String,
}

impl Target {
    fn all_watched(&self) -> Vec<Watched> {
        let mut watched: Vec<Watched> = self
            .node_pids
            .iter()
            .enumerate()
            .map(|(index, pid)| Watched {
                name: format!("node{}", index + 1),
                pid: *pid,
            })
            .collect();
        watched.extend(self.watched.iter().cloned());
        watched
    }
}

/// Runs `scenario`; the JSON is the scenario's section of the results file.
pub async fn run(scenario: &Scenario, target: &Target) -> anyhow::Result<serde_json::Value> {
    eprintln!("== scenario {} ({})", scenario.name, scenario.description);
    let results = match &scenario.kind {
        Kind::Dm {
            users,
            contacts,
            rates,
            bisect_steps,
            timing,
            sustainable,
        } => {
            let ladder = Ladder {
                rates,
                bisect_steps: *bisect_steps,
                timing,
                rule: sustainable,
            };
            run_dm(scenario, target, *users, *contacts, &ladder).await?
        }
        Kind::Idle {
            users,
            settle_s,
            hold_s,
        } => run_idle(scenario, target, users, *settle_s, *hold_s).await?,
        Kind::Connect { users, concurrency } => {
            run_connect(scenario, target, *users, *concurrency).await?
        }
        Kind::Sync {
            messages,
            send_window,
            page,
        } => run_sync(scenario, target, *messages, *send_window, *page).await?,
        Kind::Group {
            groups,
            members,
            rates_per_group,
            timing,
            sustainable,
        } => {
            let ladder = Ladder {
                rates: rates_per_group,
                bisect_steps: 0,
                timing,
                rule: sustainable,
            };
            run_group(scenario, target, *groups, *members, &ladder).await?
        }
        Kind::GroupLarge {
            members,
            messages,
            warmup_messages,
            pause_s,
            timeout_s,
        } => {
            let plan = LargeGroupPlan {
                members: *members,
                messages: *messages,
                warmup_messages: *warmup_messages,
                pause_s: *pause_s,
                timeout_s: *timeout_s,
            };
            run_group_large(scenario, target, &plan).await?
        }
    };
    Ok(json!({
        "scenario": scenario,
        "results": results,
    }))
}

/// One rate step of an open-loop scenario.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub target_rate: f64,
    pub sent: u64,
    pub sent_per_s: f64,
    /// 1 for `dm`; members − 1 for a group.
    pub deliveries_per_message: u64,
    /// Deliveries expected from the messages sent in the window (sent × deliveries per message).
    pub expected: u64,
    /// Deliveries (one per receiving device and message) of messages sent in the window.
    pub delivered: u64,
    pub delivered_per_s: f64,
    /// Expected deliveries that had not arrived when the drain ended.
    pub lost: u64,
    pub duplicates: u64,
    pub acked: u64,
    pub unacked: u64,
    pub disconnects: u64,
    pub unparsed: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub latency_ms: Percentiles,
    pub ack_ms: Percentiles,
    pub drain_s: f64,
    pub cpu: CpuReport,
    pub sustainable: bool,
    pub verdict: Vec<String>,
    /// (latency ms, cumulative fraction) points of the delivery latency, for the CDF plot.
    pub latency_cdf: Vec<(f64, f64)>,
    /// Group steps: the rate each group got (the step's `target_rate` is the total over all groups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_group: Option<f64>,
    /// The writers' transactions and batch sizes over the step (warm-up to drain), and the database's CPU per
    /// message over the window; absent without `--admin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer: Option<writer_stats::WriterStep>,
}

/// Opens the fleet for a scenario's users and fails when any connection failed (a benchmark over a partial fleet
/// would measure something else).
async fn connect_all(
    users: &[User],
    target: &Target,
    stats: Arc<Stats>,
) -> anyhow::Result<Vec<Option<ConnHandle>>> {
    let opened = load::open_fleet(users, &target.nodes, &target.sources, 100, stats).await;
    eprintln!(
        "  connected {} of {} in {:.1} s ({} failed)",
        users.len() as u64 - opened.failures,
        users.len(),
        opened.seconds,
        opened.failures
    );
    if opened.failures > 0 {
        bail!(
            "{} connections failed; first error: {}",
            opened.failures,
            opened.first_error.unwrap_or_default()
        );
    }
    Ok(opened.handles)
}

/// The rate ladder of an open-loop scenario and its rule.
struct Ladder<'a> {
    rates: &'a [f64],
    bisect_steps: u32,
    timing: &'a Timing,
    rule: &'a Sustainable,
}

/// Fixed contacts per user, on other nodes, drawn with the scenario's seed.
fn contact_lists(
    seed: u64,
    user_count: usize,
    node_count: usize,
    per_user: usize,
) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed ^ 0xc047_ac75);
    (0..user_count)
        .map(|sender| {
            (0..per_user)
                .map(|_| {
                    let other = (sender % node_count + 1 + rng.below(node_count - 1)) % node_count;
                    let slots = (user_count - other).div_ceil(node_count);
                    other + node_count * rng.below(slots)
                })
                .collect()
        })
        .collect()
}

/// Sends one unmeasured message over every contact pair, so each pair's conversation exists before the ladder.
async fn introduce(
    scenario: &Scenario,
    users: &[User],
    handles: &[Option<ConnHandle>],
    stats: &Stats,
    contacts: &[Vec<usize>],
    next_id: &mut u64,
) {
    let started = Instant::now();
    let before = stats.frames.load(Ordering::Relaxed);
    let mut pairs = 0u64;
    for (sender, list) in contacts.iter().enumerate() {
        for &recipient in list {
            let id = *next_id;
            *next_id += 1;
            let ts = sys::monotonic_us();
            let frame = ClientFrame::Send(Send {
                cid: load::stamp_cid(ts, id),
                to: Some(users[recipient].id),
                conv: None,
                attrs: None,
                kind: "text".into(),
                body: load::stamp_body(ts, id, scenario.body_bytes),
            });
            if let (Ok(bytes), Some(handle)) =
                (common::encode(&frame, usize::MAX), &handles[sender])
            {
                handle.send(Bytes::from(bytes));
                pairs += 1;
            }
            // A gentle pace: opening a conversation is a transaction of its own; do not bury the nodes.
            if pairs.is_multiple_of(200) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Each introduction yields an ack and a delivery.
    while stats.frames.load(Ordering::Relaxed) - before < 2 * pairs
        && started.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "  opened {pairs} contact conversations in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn run_dm(
    scenario: &Scenario,
    target: &Target,
    user_count: usize,
    contacts: Option<usize>,
    ladder: &Ladder<'_>,
) -> anyhow::Result<serde_json::Value> {
    let (rates, bisect_steps, timing, sustainable) = (
        ladder.rates,
        ladder.bisect_steps,
        ladder.timing,
        ladder.rule,
    );
    let node_count = target.nodes.len();
    if node_count < 2 || user_count < 2 * node_count {
        bail!("dm needs at least 2 nodes and 2 users per node");
    }
    let users =
        load::provision(&target.nodes, &target.tag, user_count, &target.sources, 32).await?;
    let stats = Stats::new();
    let handles = connect_all(&users, target, stats.clone()).await?;
    let mut next_id = 1u64;
    let contact_lists =
        contacts.map(|k| contact_lists(scenario.seed, user_count, node_count, k.max(1)));
    if let Some(lists) = &contact_lists {
        introduce(scenario, &users, &handles, &stats, lists, &mut next_id).await;
    }
    let traffic = Traffic::Dm {
        contacts: contact_lists.as_deref(),
    };
    let mut steps: Vec<StepResult> = Vec::new();
    let mut last_good: Option<f64> = None;
    let mut first_bad: Option<f64> = None;
    for rate in rates {
        let step = open_loop_step(
            scenario,
            target,
            &users,
            &handles,
            &stats,
            &traffic,
            *rate,
            timing,
            sustainable,
            &mut next_id,
        )
        .await;
        let good = step.sustainable;
        steps.push(step);
        if good {
            last_good = Some(*rate);
        } else {
            first_bad = Some(*rate);
            break;
        }
    }
    if let (Some(bad), low) = (first_bad, last_good) {
        let mut low = low.unwrap_or(0.0);
        let mut high = bad;
        for _ in 0..bisect_steps {
            let rate = ((low + high) / 2.0).round();
            if rate <= low || rate >= high {
                break;
            }
            let step = open_loop_step(
                scenario,
                target,
                &users,
                &handles,
                &stats,
                &traffic,
                rate,
                timing,
                sustainable,
                &mut next_id,
            )
            .await;
            if step.sustainable {
                low = rate;
                last_good = Some(rate);
            } else {
                high = rate;
            }
            steps.push(step);
        }
    }
    load::close_fleet(&handles, &stats).await;
    let max = last_good.unwrap_or(0.0);
    eprintln!("  max sustainable rate: {max} msgs/s");
    Ok(json!({
        "users": user_count,
        "contacts": contacts,
        "steps": steps,
        "max_sustainable_rate": max,
        "first_unsustainable_rate": first_bad,
    }))
}

/// Who sends each message of an open-loop step, and to what.
enum Traffic<'a> {
    /// Cross-node 1:1: a uniform-random sender; the recipient uniform among users of another node, or one of the
    /// sender's fixed contacts.
    Dm { contacts: Option<&'a [Vec<usize>]> },
    /// Message `k` goes to group `k mod groups` (so every group gets the same rate) from a uniform-random member;
    /// `convs[g]` is group `g`'s conversation, its members are users `g * members .. (g + 1) * members`.
    Group { convs: &'a [i64], members: usize },
}

impl Traffic<'_> {
    /// Deliveries one message makes (every member but the sender for a group).
    fn deliveries_per_message(&self) -> u64 {
        match self {
            Traffic::Dm { .. } => 1,
            Traffic::Group { members, .. } => members.saturating_sub(1) as u64,
        }
    }
}

/// One open-loop step at `rate` messages/s in all: warm-up, window, drain.
#[allow(clippy::too_many_arguments)]
async fn open_loop_step(
    scenario: &Scenario,
    target: &Target,
    users: &[User],
    handles: &[Option<ConnHandle>],
    stats: &Arc<Stats>,
    traffic: &Traffic<'_>,
    rate: f64,
    timing: &Timing,
    rule: &Sustainable,
    next_id: &mut u64,
) -> StepResult {
    eprintln!(
        "  step {rate} msgs/s: warm-up {} s, window {} s",
        timing.warmup_s, timing.window_s
    );
    let node_count = target.nodes.len();
    // Recipients are drawn among users on another node than the sender's.
    let by_node: Vec<Vec<usize>> = (0..node_count)
        .map(|node| {
            (0..users.len())
                .filter(|i| i % node_count == node)
                .collect()
        })
        .collect();
    let fanout = traffic.deliveries_per_message();
    let mut rng = Rng::new(scenario.seed ^ rate.to_bits());
    let start_us = sys::monotonic_us();
    let window_start = start_us + (timing.warmup_s * 1e6) as u64;
    let window_end = window_start + (timing.window_s * 1e6) as u64;
    stats.reset(window_start, window_end, *next_id);
    let writer_before = writer_stats::snapshot(&target.admins).await;
    let started = Instant::now();
    let mut sent_total = 0u64;
    let mut sent_in_window = 0u64;
    let mut send_failures = 0u64;
    let mut meter: Option<CpuMeter> = None;
    let mut cpu: Option<CpuReport> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_report = Instant::now();
    loop {
        ticker.tick().await;
        let now_us = sys::monotonic_us();
        if now_us >= window_end {
            break;
        }
        if meter.is_none() && now_us >= window_start {
            meter = Some(CpuMeter::start(&target.all_watched()));
        }
        // Open loop: whatever the schedule says is due by now goes out, in a burst if we fell behind.
        let elapsed = started.elapsed().as_secs_f64();
        let due = (rate * elapsed).floor() as u64;
        while sent_total < due {
            let (sender, to, conv) = match traffic {
                Traffic::Dm { contacts } => {
                    let sender = rng.below(users.len());
                    let recipient = match contacts {
                        Some(lists) => lists[sender][rng.below(lists[sender].len())],
                        None => {
                            let other =
                                (sender % node_count + 1 + rng.below(node_count - 1)) % node_count;
                            let candidates = &by_node[other];
                            candidates[rng.below(candidates.len())]
                        }
                    };
                    (sender, Some(users[recipient].id), None)
                }
                Traffic::Group { convs, members } => {
                    let group = (sent_total % convs.len() as u64) as usize;
                    let sender = group * members + rng.below(*members);
                    (sender, None, Some(convs[group]))
                }
            };
            let id = *next_id;
            *next_id += 1;
            let ts = sys::monotonic_us();
            let frame = ClientFrame::Send(Send {
                cid: load::stamp_cid(ts, id),
                to,
                conv,
                attrs: None,
                kind: "text".into(),
                body: load::stamp_body(ts, id, scenario.body_bytes),
            });
            sent_total += 1;
            if ts >= window_start && ts < window_end {
                sent_in_window += 1;
            }
            let delivered = match (common::encode(&frame, usize::MAX), &handles[sender]) {
                (Ok(bytes), Some(handle)) => handle.send(Bytes::from(bytes)),
                _ => false,
            };
            if !delivered {
                send_failures += 1;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            let phase = if now_us < window_start {
                "warm-up"
            } else {
                "window"
            };
            eprintln!(
                "    {phase} t={elapsed:.0}s sent={sent_total} frames_in={} disconnects={}",
                stats.frames.load(Ordering::Relaxed),
                stats.disconnects.load(Ordering::Relaxed)
            );
        }
    }
    if let Some(meter) = &meter {
        cpu = Some(meter.stop());
    }
    // Drain: until every expected delivery and ack arrived, or no progress for drain_idle_s, or drain_cap_s.
    let expected = sent_in_window * fanout;
    let drain_started = Instant::now();
    loop {
        let (delivered, acked) = match stats.counters.lock() {
            Ok(c) => (c.delivered, c.acked),
            Err(_) => (0, 0),
        };
        if delivered >= expected && acked >= sent_in_window {
            break;
        }
        let idle_us =
            sys::monotonic_us().saturating_sub(stats.last_progress_us.load(Ordering::Relaxed));
        if idle_us as f64 >= timing.drain_idle_s * 1e6
            || drain_started.elapsed().as_secs_f64() >= timing.drain_cap_s
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    let writer_after = writer_stats::snapshot(&target.admins).await;
    let step = {
        let counters = match stats.counters.lock() {
            Ok(counters) => counters,
            Err(poisoned) => poisoned.into_inner(),
        };
        let window = timing.window_s;
        let lost = expected.saturating_sub(counters.delivered);
        let disconnects = stats.disconnects.load(Ordering::Relaxed);
        let latency = Percentiles::of(&counters.delivery);
        let mut verdict = Vec::new();
        if latency.p99 > rule.p99_ms {
            verdict.push(format!("p99 {} ms > {} ms", latency.p99, rule.p99_ms));
        }
        if lost > 0 {
            verdict.push(format!("{lost} lost"));
        }
        if disconnects > 0 {
            verdict.push(format!("{disconnects} disconnects"));
        }
        let sent_per_s = sent_in_window as f64 / window;
        if sent_per_s < rule.min_sent_fraction * rate {
            verdict.push(format!(
                "sent/s {sent_per_s:.0} < {:.0}% of target",
                rule.min_sent_fraction * 100.0
            ));
        }
        if send_failures > 0 {
            verdict.push(format!("{send_failures} sends on dead connections"));
        }
        let sustainable = verdict.is_empty();
        let cdf = cdf_points(&counters.delivery);
        StepResult {
            target_rate: rate,
            sent: sent_in_window,
            sent_per_s: sent_per_s.round(),
            deliveries_per_message: fanout,
            expected,
            delivered: counters.delivered,
            delivered_per_s: (counters.delivered as f64 / window).round(),
            lost,
            duplicates: counters.duplicates,
            acked: counters.acked,
            unacked: sent_in_window.saturating_sub(counters.acked),
            disconnects,
            unparsed: stats.unparsed.load(Ordering::Relaxed),
            errors: counters.errors.clone(),
            latency_ms: latency,
            ack_ms: Percentiles::of(&counters.ack),
            drain_s: (drain_s * 100.0).round() / 100.0,
            writer: cpu.as_ref().and_then(|cpu| {
                writer_stats::step(&writer_before, &writer_after, sent_in_window, cpu)
            }),
            cpu: cpu.unwrap_or_else(|| CpuMeter::start(&[]).stop()),
            sustainable,
            verdict,
            latency_cdf: cdf,
            rate_per_group: None,
        }
    };
    eprintln!(
        "    -> sent/s {} delivered/s {} lost {} p50 {} p99 {} max {} ms, ack p99 {} ms: {}",
        step.sent_per_s,
        step.delivered_per_s,
        step.lost,
        step.latency_ms.p50,
        step.latency_ms.p99,
        step.latency_ms.max,
        step.ack_ms.p99,
        if step.sustainable {
            "sustainable".to_owned()
        } else {
            step.verdict.join(", ")
        }
    );
    // An overloaded step can end its drain with a backlog still queued in the cluster; the next step must not start
    // on top of it. Wait until nothing has arrived for `drain_idle_s` (at most three minutes), outside any window.
    let settle_started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let quiet_us =
            sys::monotonic_us().saturating_sub(stats.last_progress_us.load(Ordering::Relaxed));
        if quiet_us as f64 >= timing.drain_idle_s * 1e6
            || settle_started.elapsed() >= Duration::from_secs(180)
        {
            break;
        }
    }
    if settle_started.elapsed() > Duration::from_secs(2) {
        eprintln!(
            "    (waited {:.0} s for the cluster to go quiet before the next step)",
            settle_started.elapsed().as_secs_f64()
        );
    }
    step
}

/// Creates `groups` groups of `members` users each from `users` (group `g` is users `g * members ..`; its first
/// user creates it with all the others in one `POST /v1/groups`, the server's bulk path) and returns their
/// conversation ids. Runs before any connection is open, so the `created` system messages push to nobody.
async fn create_groups(
    target: &Target,
    users: &[User],
    groups: usize,
    members: usize,
) -> anyhow::Result<Vec<i64>> {
    let started = Instant::now();
    let mut convs = Vec::with_capacity(groups);
    for group in 0..groups {
        let slice = &users[group * members..(group + 1) * members];
        let owner = &slice[0];
        let others: Vec<i64> = slice[1..].iter().map(|u| u.id).collect();
        let addr = target.nodes[owner.index % target.nodes.len()];
        let (status, body) = client::http_json_auth(
            addr,
            "POST",
            "/v1/groups",
            Some(&owner.token),
            Some(json!({"title": format!("bench {group}"), "members": others})),
        )
        .await?;
        if status != hyper::StatusCode::CREATED {
            bail!(
                "creating group {group} of {members} members: {status} {body} (bench nodes need --group-member-cap \
                 at least {members})"
            );
        }
        let conv = body["id"]
            .as_i64()
            .ok_or_else(|| anyhow!("creating group {group}: no id in {body}"))?;
        convs.push(conv);
    }
    eprintln!(
        "  created {groups} groups of {members} members in {:.1} s ({groups} REST calls)",
        started.elapsed().as_secs_f64()
    );
    Ok(convs)
}

/// The workload's `group`: every step runs (its rates go from the highest down); the best sustainable step gives
/// the maximum deliveries/s.
async fn run_group(
    scenario: &Scenario,
    target: &Target,
    groups: usize,
    members: usize,
    ladder: &Ladder<'_>,
) -> anyhow::Result<serde_json::Value> {
    if groups == 0 || members < 2 {
        bail!("group needs at least one group of two members");
    }
    let user_count = groups * members;
    let users =
        load::provision(&target.nodes, &target.tag, user_count, &target.sources, 32).await?;
    let convs = create_groups(target, &users, groups, members).await?;
    let stats = Stats::new();
    stats.set_slots(members);
    let handles = connect_all(&users, target, stats.clone()).await?;
    let traffic = Traffic::Group {
        convs: &convs,
        members,
    };
    let mut next_id = 1u64;
    let mut steps: Vec<StepResult> = Vec::new();
    for rate_per_group in ladder.rates {
        let mut step = open_loop_step(
            scenario,
            target,
            &users,
            &handles,
            &stats,
            &traffic,
            rate_per_group * groups as f64,
            ladder.timing,
            ladder.rule,
            &mut next_id,
        )
        .await;
        step.rate_per_group = Some(*rate_per_group);
        steps.push(step);
    }
    load::close_fleet(&handles, &stats).await;
    let best = steps
        .iter()
        .filter(|s| s.sustainable)
        .max_by(|a, b| a.target_rate.total_cmp(&b.target_rate));
    let max_rate = best.and_then(|s| s.rate_per_group).unwrap_or(0.0);
    let max_deliveries = best.map_or(0.0, |s| s.delivered_per_s);
    let unsustainable: Vec<f64> = steps
        .iter()
        .filter(|s| !s.sustainable)
        .filter_map(|s| s.rate_per_group)
        .collect();
    eprintln!("  max sustainable: {max_rate} msgs/s per group = {max_deliveries} deliveries/s");
    Ok(json!({
        "users": user_count,
        "groups": groups,
        "members": members,
        "steps": steps,
        "max_sustainable_rate": max_rate,
        "max_sustainable_deliveries_per_s": max_deliveries,
        "unsustainable_rates": unsustainable,
    }))
}

/// What `group_large` does (the scenario's fields).
struct LargeGroupPlan {
    members: usize,
    messages: usize,
    warmup_messages: usize,
    pause_s: f64,
    timeout_s: f64,
}

/// One message to the large group: when its deliveries arrived.
#[derive(Debug, Clone, Serialize)]
struct LargeGroupMessage {
    warmup: bool,
    sender: usize,
    expected: u64,
    delivered: u64,
    duplicates: u64,
    /// Send → the first, the median and the last delivery.
    first_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    last_ms: f64,
    ack_ms: Option<f64>,
    cpu: CpuReport,
}

/// One group of `members`, all online; messages one at a time, each timed to its last delivery.
async fn run_group_large(
    scenario: &Scenario,
    target: &Target,
    plan: &LargeGroupPlan,
) -> anyhow::Result<serde_json::Value> {
    let members = plan.members;
    if members < 2 {
        bail!("group_large needs at least two members");
    }
    // Every member's connection lives in this process, within its file-descriptor limit (like `idle`, run.sh puts
    // at most 19,000 connections on a node).
    let fd_limit = sys::raise_fd_limit().unwrap_or(1024) as usize;
    if members + 500 > fd_limit {
        bail!("{members} connections do not fit in one load process (fd limit {fd_limit})");
    }
    let tag = format!("{}l", target.tag);
    let users = load::provision(&target.nodes, &tag, members, &target.sources, 32).await?;
    let convs = create_groups(target, &users, 1, members).await?;
    let stats = Stats::new();
    stats.set_slots(members);
    let handles = connect_all(&users, target, stats.clone()).await?;
    // Let the connect storm settle (location writes, hello) before the first message.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rng = Rng::new(scenario.seed ^ 0x1a79e);
    let expected = members as u64 - 1;
    let mut results: Vec<LargeGroupMessage> = Vec::new();
    for k in 0..plan.warmup_messages + plan.messages {
        let warmup = k < plan.warmup_messages;
        let sender = rng.below(members);
        // Ids start at 1; each message's step begins at its own id, so the delivered-pair bitmap stays small.
        let id = k as u64 + 1;
        let window_start = sys::monotonic_us();
        stats.reset(
            window_start,
            window_start + (plan.timeout_s * 1e6) as u64 + 1,
            id,
        );
        let meter = CpuMeter::start(&target.all_watched());
        let ts = sys::monotonic_us();
        let frame = ClientFrame::Send(Send {
            cid: load::stamp_cid(ts, id),
            to: None,
            conv: Some(convs[0]),
            attrs: None,
            kind: "text".into(),
            body: load::stamp_body(ts, id, scenario.body_bytes),
        });
        let queued = match (common::encode(&frame, usize::MAX), &handles[sender]) {
            (Ok(bytes), Some(handle)) => handle.send(Bytes::from(bytes)),
            _ => false,
        };
        if !queued {
            bail!("member {sender}'s connection is gone");
        }
        let waited = Instant::now();
        loop {
            let done = match stats.counters.lock() {
                Ok(c) => c.delivered >= expected && c.acked >= 1,
                Err(_) => false,
            };
            if done || waited.elapsed().as_secs_f64() >= plan.timeout_s {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let cpu = meter.stop();
        let message = {
            let counters = match stats.counters.lock() {
                Ok(counters) => counters,
                Err(poisoned) => poisoned.into_inner(),
            };
            let delivery = Percentiles::of(&counters.delivery);
            let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
            LargeGroupMessage {
                warmup,
                sender,
                expected,
                delivered: counters.delivered,
                duplicates: counters.duplicates,
                first_ms: if counters.delivery.is_empty() {
                    0.0
                } else {
                    ms(counters.delivery.min())
                },
                p50_ms: delivery.p50,
                p99_ms: delivery.p99,
                last_ms: delivery.max,
                ack_ms: (counters.acked > 0).then(|| ms(counters.ack.max())),
                cpu,
            }
        };
        eprintln!(
            "  {} message {k}: {}/{} delivered, first {} ms, median {} ms, last {} ms, ack {:?} ms",
            if warmup { "warm-up" } else { "measured" },
            message.delivered,
            message.expected,
            message.first_ms,
            message.p50_ms,
            message.last_ms,
            message.ack_ms
        );
        results.push(message);
        tokio::time::sleep(Duration::from_secs_f64(plan.pause_s)).await;
    }
    let disconnects = stats.disconnects.load(Ordering::Relaxed);
    load::close_fleet(&handles, &stats).await;

    let measured: Vec<&LargeGroupMessage> = results.iter().filter(|m| !m.warmup).collect();
    let mut last = load::new_histogram();
    let mut median = load::new_histogram();
    for message in &measured {
        let _ = last.record(((message.last_ms * 1000.0) as u64).max(1));
        let _ = median.record(((message.p50_ms * 1000.0) as u64).max(1));
    }
    let lost: u64 = measured
        .iter()
        .map(|m| m.expected.saturating_sub(m.delivered))
        .sum();
    // CPU per measured message, summed over the messages' windows (send → last delivery), per process.
    let mut cpu_ms: Vec<(String, f64)> = Vec::new();
    let mut foreign_ms = 0.0;
    for message in &measured {
        let seconds = message.cpu.seconds;
        for process in &message.cpu.processes {
            let ms = process.cpu_pct / 100.0 * seconds * 1000.0;
            match cpu_ms.iter_mut().find(|(name, _)| *name == process.name) {
                Some((_, total)) => *total += ms,
                None => cpu_ms.push((process.name.clone(), ms)),
            }
        }
        foreign_ms += message.cpu.foreign_cpu_pct / 100.0 * seconds * 1000.0;
    }
    let count = measured.len().max(1) as f64;
    let per_message = |total: f64| (total / count * 10.0).round() / 10.0;
    let cpu_per_message: Vec<serde_json::Value> = cpu_ms
        .iter()
        .map(|(name, total)| json!({"name": name, "cpu_ms": per_message(*total)}))
        .collect();
    let last_ms = Percentiles::of(&last);
    eprintln!(
        "  -> last delivery over {} messages: p50 {} ms, max {} ms; {lost} deliveries missing, {disconnects} disconnects",
        measured.len(),
        last_ms.p50,
        last_ms.max
    );
    Ok(json!({
        "members": members,
        "online": members,
        "node_processes": target.nodes.len(),
        "load_processes": 1,
        "messages": measured.len(),
        "last_delivery_ms": last_ms,
        "median_delivery_ms": Percentiles::of(&median),
        "lost": lost,
        "disconnects": disconnects,
        "cpu_ms_per_message": cpu_per_message,
        "foreign_cpu_ms_per_message": per_message(foreign_ms),
        "per_message": results,
    }))
}

/// Points of the latency CDF on a log-spaced grid of quantiles.
fn cdf_points(histogram: &hdrhistogram::Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut quantile = 0.0;
    while quantile < 0.99999 {
        let ms = histogram.value_at_quantile(quantile) as f64 / 1000.0;
        points.push((ms, quantile));
        // Finer steps towards the tail: 10 % of the remaining distance each time.
        quantile += ((1.0 - quantile) / 10.0).max(0.00001);
    }
    points.push((histogram.max() as f64 / 1000.0, 1.0));
    points
}

async fn run_idle(
    _scenario: &Scenario,
    target: &Target,
    steps: &[usize],
    settle_s: f64,
    hold_s: f64,
) -> anyhow::Result<serde_json::Value> {
    let fd_limit = sys::raise_fd_limit().unwrap_or(1024) as usize;
    let mut results = Vec::new();
    // RSS of the fresh node processes, before any account or connection of this run.
    let fresh: Vec<u64> = target
        .node_pids
        .iter()
        .map(|pid| sys::rss_kib(*pid))
        .collect();
    let mut provisioned = 0usize;
    let mut users: Vec<User> = Vec::new();
    for (step_index, &count) in steps.iter().enumerate() {
        // A node process holds at most ~fd_limit sockets too: past that, run.sh must start more nodes.
        let per_node = count.div_ceil(target.nodes.len());
        if per_node + 200 > fd_limit {
            let reason = format!(
                "skipped: {count} connections over {} nodes is {per_node} per node, more than one process may \
                 hold (fd limit {fd_limit}); run more nodes",
                target.nodes.len()
            );
            eprintln!("  idle {count}: {reason}");
            results.push(json!({"connections": count, "skipped": reason}));
            continue;
        }
        eprintln!(
            "  idle step {count} connections over {} nodes",
            target.nodes.len()
        );
        if provisioned < count {
            let tag = format!("{}i{step_index}", target.tag);
            let mut more = load::provision(
                &target.nodes,
                &tag,
                count - provisioned,
                &target.sources,
                32,
            )
            .await?;
            for user in &mut more {
                user.index += provisioned;
            }
            users.extend(more);
            provisioned = count;
        }
        let before: Vec<u64> = target
            .node_pids
            .iter()
            .map(|pid| sys::rss_kib(*pid))
            .collect();
        // The connections live in child `imbench hold` processes, each within the fd limit.
        let per_process = fd_limit.saturating_sub(1_000).max(1_000);
        let users_file =
            std::env::temp_dir().join(format!("imbench-users-{}.txt", std::process::id()));
        hold::write_users(&users_file, &users[..count])?;
        let mut holders = hold::spawn_holders(
            &users_file,
            count,
            per_process,
            &target.nodes,
            target.sources.first(),
        )
        .await?;
        let connected = hold::wait_connected(&mut holders).await;
        let _ = std::fs::remove_file(&users_file);
        let connected = match connected {
            Ok(connected) => connected,
            Err(error) => {
                hold::release(holders).await;
                return Err(error);
            }
        };
        eprintln!(
            "    connected {} in {:.1} s ({} failed, {} load processes); settling {settle_s} s",
            connected.ok,
            connected.seconds,
            connected.failed,
            holders.len()
        );
        tokio::time::sleep(Duration::from_secs_f64(settle_s)).await;
        let after: Vec<u64> = target
            .node_pids
            .iter()
            .map(|pid| sys::rss_kib(*pid))
            .collect();
        let meter = CpuMeter::start(&target.all_watched());
        tokio::time::sleep(Duration::from_secs_f64(hold_s)).await;
        let cpu = meter.stop();
        let end: Vec<u64> = target
            .node_pids
            .iter()
            .map(|pid| sys::rss_kib(*pid))
            .collect();
        let loadgen_rss = hold::holders_rss_kib(&holders) + sys::rss_kib(std::process::id());
        let load_processes = holders.len();
        let disconnects = hold::release(holders).await;
        let node_count = target.nodes.len();
        let mut per_node = Vec::new();
        for node in 0..target.node_pids.len() {
            // Users are spread by index; failures are few and not attributed to a node.
            let on_node = users[..count]
                .iter()
                .filter(|u| u.index % node_count == node)
                .count();
            let delta = after[node].saturating_sub(before[node]);
            per_node.push(json!({
                "node": format!("node{}", node + 1),
                "connections": on_node,
                "rss_fresh_mib": mib(fresh[node]),
                "rss_before_mib": mib(before[node]),
                "rss_after_mib": mib(after[node]),
                "rss_end_mib": mib(end[node]),
                "rss_per_conn_kib": if on_node > 0 { (delta as f64 / on_node as f64 * 100.0).round() / 100.0 } else { 0.0 },
            }));
        }
        let total_delta: u64 = (0..after.len())
            .map(|n| after[n].saturating_sub(before[n]))
            .sum();
        let per_conn = if connected.ok > 0 {
            total_delta as f64 / connected.ok as f64
        } else {
            0.0
        };
        eprintln!(
            "    -> node RSS per connection {per_conn:.2} KiB, disconnects during hold {disconnects}, load generators' RSS {} MiB",
            mib(loadgen_rss)
        );
        results.push(json!({
            "connections": count,
            "connected": connected.ok,
            "failed": connected.failed,
            "connect_s": (connected.seconds * 100.0).round() / 100.0,
            "node_processes": node_count,
            "load_processes": load_processes,
            "nodes": per_node,
            "rss_per_conn_kib": (per_conn * 100.0).round() / 100.0,
            "disconnects": disconnects,
            "hold_cpu": cpu,
            "loadgen_rss_mib": mib(loadgen_rss),
        }));
        // Give the nodes a moment to drop the sessions before the next step's "before" reading.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(json!({"steps": results}))
}

async fn run_connect(
    _scenario: &Scenario,
    target: &Target,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<serde_json::Value> {
    let tag = format!("{}c", target.tag);
    let users = load::provision(&target.nodes, &tag, count, &target.sources, 32).await?;
    let stats = Stats::new();
    let meter = CpuMeter::start(&target.all_watched());
    let opened = load::open_fleet(
        &users,
        &target.nodes,
        &target.sources,
        concurrency,
        stats.clone(),
    )
    .await;
    let cpu = meter.stop();
    let connected = count as u64 - opened.failures;
    let rate = connected as f64 / opened.seconds.max(1e-6);
    let handshake = Percentiles::of(&opened.handshake);
    eprintln!(
        "  -> {connected} connections in {:.2} s = {rate:.0}/s, handshake (TCP+upgrade+hello) p50 {} p99 {} ms, {} failed",
        opened.seconds, handshake.p50, handshake.p99, opened.failures
    );
    load::close_fleet(&opened.handles, &stats).await;
    Ok(json!({
        "connections": count,
        "concurrency": concurrency,
        "connected": connected,
        "failed": opened.failures,
        "first_error": opened.first_error,
        "seconds": (opened.seconds * 1000.0).round() / 1000.0,
        "connections_per_s": rate.round(),
        "handshake_ms": handshake,
        "cpu": cpu,
    }))
}

async fn run_sync(
    scenario: &Scenario,
    target: &Target,
    messages: usize,
    send_window: usize,
    page: u32,
) -> anyhow::Result<serde_json::Value> {
    let tag = format!("{}s", target.tag);
    let users = load::provision(&target.nodes, &tag, 2, &target.sources, 2).await?;
    let (sender, reader) = (&users[0], &users[1]);
    // The sender sends `messages` to the offline reader, `send_window` unacknowledged at a time.
    let addr = target.nodes[0];
    let stream = sys::connect_from(target.sources.pick(0), addr).await?;
    let mut connection = Connection::connect_over(stream, addr, &sender.token, load::DEVICE)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    connection.next_frame(Duration::from_secs(10)).await?;
    let fill_started = Instant::now();
    let (mut sent, mut acked) = (0usize, 0usize);
    let mut progress = Instant::now();
    while acked < messages {
        while sent < messages && sent - acked < send_window {
            let ts = sys::monotonic_us();
            let frame = ClientFrame::Send(Send {
                cid: load::stamp_cid(ts, sent as u64),
                to: Some(reader.id),
                conv: None,
                attrs: None,
                kind: "text".into(),
                body: load::stamp_body(ts, sent as u64, scenario.body_bytes),
            });
            connection.send(&frame).await?;
            sent += 1;
        }
        match connection.next_frame(Duration::from_secs(30)).await? {
            ServerFrame::Ack(_) => acked += 1,
            ServerFrame::Error(error) => bail!("send failed while filling the backlog: {error:?}"),
            _ => {}
        }
        if progress.elapsed() >= Duration::from_secs(2) {
            progress = Instant::now();
            eprintln!("  backlog: {acked}/{messages} acked");
        }
    }
    let fill_s = fill_started.elapsed().as_secs_f64();
    connection.close().await;
    eprintln!("  backlog of {messages} stored in {fill_s:.1} s; the reader connects");

    // The reader comes online on the other node and syncs until it holds every message.
    let addr = target.nodes[1 % target.nodes.len()];
    let started = Instant::now();
    let stream = sys::connect_from(target.sources.pick(1), addr).await?;
    let mut connection = Connection::connect_over(stream, addr, &reader.token, load::DEVICE)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let hello = match connection.next_frame(Duration::from_secs(10)).await? {
        ServerFrame::Hello(hello) => hello,
        other => bail!("expected hello, got {other:?}"),
    };
    let hello_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut received = 0usize;
    let mut requests = 0u32;
    for conv in &hello.convs {
        let mut after_seq = 0;
        loop {
            requests += 1;
            connection
                .send(&ClientFrame::Sync(SyncRequest {
                    rid: requests,
                    conv: conv.conv,
                    after_seq,
                    limit: page,
                }))
                .await?;
            let synced = loop {
                match connection.next_frame(Duration::from_secs(30)).await? {
                    ServerFrame::Synced(synced) if synced.rid == requests => break synced,
                    ServerFrame::Error(error) => bail!("sync failed: {error:?}"),
                    _ => {}
                }
            };
            received += synced.msgs.len();
            match synced.msgs.last() {
                Some(last) if synced.more => after_seq = last.seq,
                _ => break,
            }
        }
    }
    let caught_up_s = started.elapsed().as_secs_f64();
    connection.close().await;
    if received < messages {
        bail!("the reader synced {received} of {messages} messages");
    }
    eprintln!(
        "  -> caught up with {received} messages in {:.0} ms ({requests} sync requests, hello after {hello_ms:.1} ms) = {:.0} msgs/s",
        caught_up_s * 1000.0,
        received as f64 / caught_up_s
    );
    Ok(json!({
        "messages": messages,
        "backlog_fill_s": (fill_s * 100.0).round() / 100.0,
        "hello_ms": (hello_ms * 10.0).round() / 10.0,
        "caught_up_ms": (caught_up_s * 10000.0).round() / 10.0,
        "sync_requests": requests,
        "received": received,
        "synced_msgs_per_s": (received as f64 / caught_up_s).round(),
    }))
}
