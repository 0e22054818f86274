// Drives the workload's `dm` and `group` scenarios against the Socket.IO peer, following the same scenario files and
// rules as imbench (open loop on 2 ms ticks, warm-up, measured window, drain, sustainability), and writes results in
// the same JSON shape so `imbench report` puts the two side by side.
//
// group: user i is in group floor(i / members) and joins its room `g:<group>` at connect; message k goes to group
// k mod groups from a uniform-random member, as `gm {group, id, ts, body}`; deliveries are counted once per
// receiving member (members - 1 per message).
//
//   node load.js --scenario benchmarks/scenarios/quick/dm.json \
//     --server 127.0.0.1:3101=<pid> --server 127.0.0.1:3102=<pid> --watch redis=<pid> --out peer-dm.json
"use strict";

const fs = require("node:fs");
const os = require("node:os");
const { io } = require("socket.io-client");

function parseArgs(argv) {
  const args = { server: [], watch: [] };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    const value = argv[i + 1];
    if (Array.isArray(args[key])) args[key].push(value);
    else args[key] = value;
  }
  return args;
}

// CLOCK_MONOTONIC in microseconds (hrtime is CLOCK_MONOTONIC on Linux): the workload's `ts`.
const monoUs = () => Number(process.hrtime.bigint() / 1000n);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// xorshift32 seeded from the scenario: reproducible choices.
function rng(seed) {
  let s = (seed >>> 0) || 0x9e3779b9;
  return (n) => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s % n;
  };
}

function procTicks(pid) {
  // utime + stime of pid and its descendants.
  const all = new Map();
  for (const name of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const text = fs.readFileSync(`/proc/${name}/stat`, "utf8");
      const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
      all.set(Number(name), { ppid: Number(rest[1]), ticks: Number(rest[11]) + Number(rest[12]) });
    } catch (_) { /* gone */ }
  }
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) for (const [p, v] of all) if (v.ppid === tree[i] && p !== tree[i]) tree.push(p);
  return tree.reduce((sum, p) => sum + (all.get(p) ? all.get(p).ticks : 0), 0);
}

function rssMiB(pid) {
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/);
    return m ? Math.round(Number(m[1]) / 102.4) / 10 : 0;
  } catch (_) { return 0; }
}

function machineTicks() {
  const v = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].split(/\s+/).slice(1, 9).map(Number);
  const total = v.reduce((a, b) => a + b, 0);
  return [total - v[3] - v[4], total];
}

function cpuStart(watched) {
  return { at: process.hrtime.bigint(), ticks: watched.map((w) => procTicks(w.pid)), own: procTicks(process.pid), machine: machineTicks() };
}

function cpuStop(meter, watched) {
  const seconds = Number(process.hrtime.bigint() - meter.at) / 1e9;
  const hz = 100;
  const pct = (t) => Math.round((t / hz / seconds) * 1000) / 10;
  let test = 0;
  const processes = watched.map((w, i) => {
    const d = procTicks(w.pid) - meter.ticks[i];
    test += d;
    return { name: w.name, cpu_pct: pct(d), rss_mib: rssMiB(w.pid) };
  });
  const own = procTicks(process.pid) - meter.own;
  test += own;
  processes.push({ name: "load.js", cpu_pct: pct(own), rss_mib: rssMiB(process.pid) });
  const [b, t] = machineTicks();
  const busy = b - meter.machine[0];
  const total = Math.max(1, t - meter.machine[1]);
  return {
    seconds: Math.round(seconds * 100) / 100,
    processes,
    machine_busy_pct: Math.round((busy / total) * 1000) / 10,
    foreign_cpu_pct: pct(Math.max(0, busy - test)),
  };
}

function percentiles(values) {
  if (values.length === 0) return { count: 0, p50: 0, p90: 0, p99: 0, p999: 0, max: 0 };
  const sorted = Float64Array.from(values).sort();
  const at = (q) => Math.round(sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] * 100) / 100;
  return { count: sorted.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), p999: at(0.999), max: at(1) };
}

function cdf(values) {
  if (values.length === 0) return [];
  const sorted = Float64Array.from(values).sort();
  const points = [];
  for (let q = 0; q < 0.99999; q += Math.max((1 - q) / 10, 0.00001)) {
    points.push([sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))], q]);
  }
  points.push([sorted[sorted.length - 1], 1]);
  return points;
}

async function main() {
  const args = parseArgs(process.argv);
  const scenario = JSON.parse(fs.readFileSync(args.scenario, "utf8"));
  if (scenario.kind !== "dm" && scenario.kind !== "group") throw new Error("load.js runs dm and group scenarios only");
  const isGroup = scenario.kind === "group";
  const servers = args.server.map((s) => { const [addr, pid] = s.split("="); return { addr, pid: Number(pid) }; });
  const watched = servers.map((s, i) => ({ name: `peer${i + 1}`, pid: s.pid }))
    .concat(args.watch.map((w) => { const [name, pid] = w.split("="); return { name, pid: Number(pid) }; }));
  const { timing, sustainable: rule } = scenario;
  const groups = isGroup ? scenario.groups : 0;
  const members = isGroup ? scenario.members : 1;
  const n = isGroup ? groups * members : scenario.users;
  // A group step's rate is per group; the pacer works on the total.
  const rates = isGroup ? scenario.rates_per_group : scenario.rates;
  const bisectSteps = isGroup ? 0 : scenario.bisect_steps;
  // Deliveries per message, and the slot of a recipient: a delivery is counted once per (id, slot).
  const fanout = isGroup ? members - 1 : 1;
  const slots = isGroup ? members : 1;
  const bodyBytes = scenario.body_bytes || 100;
  const body = "x".repeat(bodyBytes);
  const nodeCount = servers.length;

  // Step state, replaced per step.
  let windowStart = Infinity, windowEnd = Infinity, firstId = 0;
  let latencies = [], ackLatencies = [], seen = new Uint8Array(0);
  let delivered = 0, acked = 0, duplicates = 0, disconnects = 0, lastProgress = 0;
  let closing = false;

  console.error(`== peer ${scenario.kind}: connecting ${n} users`);
  const sockets = new Array(n);
  let inFlight = 0, failures = 0;
  const t0 = Date.now();
  const opened = [];
  for (let i = 0; i < n; i++) {
    while (inFlight >= 100) await sleep(1);
    inFlight++;
    opened.push(new Promise((resolve) => {
      const auth = isGroup ? { user: i, groups: [Math.floor(i / members)] } : { user: i };
      const socket = io(`http://${servers[i % nodeCount].addr}`, {
        transports: ["websocket"], auth, reconnection: false, forceNew: true,
        localAddress: `127.0.0.${2 + (i % 16)}`,
      });
      const slot = i % slots;
      const onMessage = (m) => {
        const now = monoUs();
        lastProgress = now;
        if (!m || typeof m.ts !== "number" || typeof m.id !== "number") return;
        if (m.ts < windowStart || m.ts >= windowEnd) return;
        const k = (m.id - firstId) * slots + slot;
        if (m.id < firstId || k >= seen.length) return;
        if (seen[k]) { duplicates++; return; }
        seen[k] = 1;
        delivered++;
        latencies.push((now - m.ts) / 1000);
      };
      socket.on(isGroup ? "gm" : "dm", onMessage);
      socket.on("disconnect", () => { if (!closing) disconnects++; });
      socket.once("connect", () => { inFlight--; sockets[i] = socket; resolve(); });
      socket.once("connect_error", () => { inFlight--; failures++; resolve(); });
    }));
  }
  await Promise.all(opened);
  console.error(`  connected ${n - failures} of ${n} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  if (failures > 0) throw new Error(`${failures} connections failed`);

  let nextId = 1;
  async function step(stepRate) {
    const rate = isGroup ? stepRate * groups : stepRate;
    console.error(`  step ${rate} msgs/s: warm-up ${timing.warmup_s} s, window ${timing.window_s} s`);
    const random = rng((scenario.seed || 1) ^ rate);
    const start = monoUs();
    windowStart = start + timing.warmup_s * 1e6;
    windowEnd = windowStart + timing.window_s * 1e6;
    firstId = nextId;
    seen = new Uint8Array((Math.ceil(rate * (timing.warmup_s + timing.window_s + 1)) + 1024) * slots);
    latencies = []; ackLatencies = [];
    delivered = 0; acked = 0; duplicates = 0; disconnects = 0;
    let sent = 0, sentInWindow = 0, meter = null, cpu = null;
    const half = Math.floor(n / nodeCount);
    for (;;) {
      await sleep(2);
      const now = monoUs();
      if (now >= windowEnd) break;
      if (!meter && now >= windowStart) meter = cpuStart(watched);
      const due = Math.floor((rate * (now - start)) / 1e6);
      while (sent < due) {
        const id = nextId++;
        let s, event, message;
        if (isGroup) {
          const group = sent % groups;
          s = group * members + random(members);
          event = "gm";
          message = { group, id, ts: monoUs(), body };
        } else {
          s = random(n);
          const other = (s % nodeCount + 1 + random(nodeCount - 1)) % nodeCount;
          const to = other + nodeCount * random(half);
          event = "dm";
          message = { to, id, ts: monoUs(), body };
        }
        const ts = message.ts;
        sent++;
        const counted = ts >= windowStart && ts < windowEnd;
        if (counted) sentInWindow++;
        sockets[s].emit(event, message, () => {
          if (counted) { acked++; ackLatencies.push((monoUs() - ts) / 1000); }
        });
      }
    }
    if (meter) cpu = cpuStop(meter, watched);
    const drainStart = Date.now();
    const expected = sentInWindow * fanout;
    while ((delivered < expected || acked < sentInWindow)
      && monoUs() - lastProgress < timing.drain_idle_s * 1e6
      && Date.now() - drainStart < timing.drain_cap_s * 1000) await sleep(20);
    const drain = (Date.now() - drainStart) / 1000;
    const latency = percentiles(latencies);
    const lost = Math.max(0, expected - delivered);
    const sentPerS = sentInWindow / timing.window_s;
    const verdict = [];
    if (latency.p99 > rule.p99_ms) verdict.push(`p99 ${latency.p99} ms > ${rule.p99_ms} ms`);
    if (lost > 0) verdict.push(`${lost} lost`);
    if (disconnects > 0) verdict.push(`${disconnects} disconnects`);
    if (sentPerS < rule.min_sent_fraction * rate) verdict.push(`sent/s ${Math.round(sentPerS)} < ${rule.min_sent_fraction * 100}% of target`);
    const result = {
      target_rate: rate, sent: sentInWindow, sent_per_s: Math.round(sentPerS), deliveries_per_message: fanout, expected,
      delivered, delivered_per_s: Math.round(delivered / timing.window_s), lost, duplicates, acked,
      unacked: Math.max(0, sentInWindow - acked), disconnects, errors: {}, latency_ms: latency,
      ack_ms: percentiles(ackLatencies), drain_s: drain, cpu, sustainable: verdict.length === 0, verdict,
      latency_cdf: cdf(latencies),
    };
    if (isGroup) result.rate_per_group = stepRate;
    console.error(`    -> sent/s ${result.sent_per_s} delivered/s ${result.delivered_per_s} lost ${lost} p50 ${latency.p50} p99 ${latency.p99} max ${latency.max} ms: ${result.sustainable ? "sustainable" : verdict.join(", ")}`);
    // An overloaded step can leave a backlog in the servers: let it go quiet before the next step (as imbench does).
    const settleStart = Date.now();
    do await sleep(500);
    while (monoUs() - lastProgress < timing.drain_idle_s * 1e6 && Date.now() - settleStart < 180000);
    return result;
  }

  const steps = [];
  let lastGood = null, firstBad = null;
  if (isGroup) {
    // Every step runs (the rates go from the highest down), as in imbench.
    for (const rate of rates) steps.push(await step(rate));
  } else {
    for (const rate of rates) {
      const r = await step(rate);
      steps.push(r);
      if (r.sustainable) lastGood = rate; else { firstBad = rate; break; }
    }
  }
  if (!isGroup && firstBad !== null) {
    let low = lastGood || 0, high = firstBad;
    for (let i = 0; i < bisectSteps; i++) {
      const rate = Math.round((low + high) / 2);
      if (rate <= low || rate >= high) break;
      const r = await step(rate);
      steps.push(r);
      if (r.sustainable) { low = rate; lastGood = rate; } else high = rate;
    }
  }
  closing = true;
  for (const s of sockets) s.close();
  if (!isGroup) console.error(`  peer max sustainable rate: ${lastGood || 0} msgs/s`);
  const cpus = os.cpus();
  const out = {
    kind: "peer",
    started_utc: new Date().toISOString(),
    peer: "socket.io 4.8.1 + @socket.io/redis-adapter 8.3.0 (redis 4.7.0), 2 processes, one Redis; persists nothing",
    machine: { cpus: cpus.length, cpu_model: cpus[0] ? cpus[0].model : "", node: process.version },
    command: process.argv.join(" "),
    run: { scenario, results: { users: n, steps, max_sustainable_rate: lastGood || 0, first_unsustainable_rate: firstBad } },
  };
  if (isGroup) {
    const good = steps.filter((r) => r.sustainable).sort((a, b) => b.target_rate - a.target_rate)[0];
    Object.assign(out.run.results, {
      groups, members,
      max_sustainable_rate: good ? good.rate_per_group : 0,
      max_sustainable_deliveries_per_s: good ? good.delivered_per_s : 0,
      first_unsustainable_rate: null,
      unsustainable_rates: steps.filter((r) => !r.sustainable).map((r) => r.rate_per_group),
    });
  }
  fs.writeFileSync(args.out, JSON.stringify(out, null, 2));
  console.error(`  wrote ${args.out}`);
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
