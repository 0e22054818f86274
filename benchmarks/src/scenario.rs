//! Scenario files: checked-in JSON under `benchmarks/scenarios/<suite>/`, one scenario per file, so every number
//! in RESULTS.md names the exact file that produced it. The shapes follow `benchmarks/WORKLOAD.md`.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Timing of an open-loop scenario (workload "Pacing and measurement").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Warm-up at full rate, not measured (W).
    pub warmup_s: f64,
    /// The measured window (D).
    pub window_s: f64,
    /// Drain ends after this long without a new delivery...
    pub drain_idle_s: f64,
    /// ...or after this long in all.
    pub drain_cap_s: f64,
}

/// The sustainability rule (workload item 6).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sustainable {
    pub p99_ms: f64,
    /// sent/s must reach this share of the target rate.
    pub min_sent_fraction: f64,
}

/// What a scenario does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// Hold `users` connections (one step per entry) with no traffic; measure node RSS per connection.
    Idle {
        users: Vec<usize>,
        /// How long after the last connection the "after" RSS is read (the workload says 5 s).
        settle_s: f64,
        hold_s: f64,
    },
    /// Cross-node 1:1 messages at total rates `rates`, stopping at the first unsustainable step, then
    /// `bisect_steps` bisections between the last good and the first bad rate.
    Dm {
        users: usize,
        /// Not in the workload (which draws every recipient uniformly, so nearly every message opens a new
        /// conversation): when set, each user writes only to this many fixed contacts on other nodes, and every
        /// pair's conversation is opened before the first step. It isolates the steady-state message path from
        /// the cost of creating conversations.
        #[serde(default)]
        contacts: Option<usize>,
        rates: Vec<f64>,
        bisect_steps: u32,
        timing: Timing,
        sustainable: Sustainable,
    },
    /// `groups` groups of `members` users each (user `i` in group `i / members`, users alternating between the
    /// nodes); every group gets `r` messages/s from a uniform-random member, one step per entry of
    /// `rates_per_group` (all steps run: the workload lists them from the highest rate down). Every message is
    /// `members - 1` deliveries.
    Group {
        groups: usize,
        members: usize,
        rates_per_group: Vec<f64>,
        timing: Timing,
        sustainable: Sustainable,
    },
    /// Not in the workload: one group of `members` users, all online, messages sent one at a time (each waits for
    /// its last delivery or `timeout_s`); measures the time from a send to its **last** delivery. `warmup_messages`
    /// go first and are reported apart (they load the nodes' member caches).
    GroupLarge {
        members: usize,
        messages: usize,
        #[serde(default)]
        warmup_messages: usize,
        /// Pause between messages, so each one meets a quiet cluster.
        pause_s: f64,
        timeout_s: f64,
    },
    /// `users` connections opened as fast as `concurrency` in-flight handshakes allow.
    Connect { users: usize, concurrency: usize },
    /// A user offline while `messages` are sent to it reconnects; time until it has synced them all.
    Sync {
        messages: usize,
        /// Sends in flight while filling the backlog.
        send_window: usize,
        /// `sync.limit` per request (the server caps it at its own maximum).
        page: u32,
    },
}

/// One scenario file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed of every random choice (senders, recipients), so runs are reproducible.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Message body length in ASCII bytes (the workload says 100).
    #[serde(default = "default_body")]
    pub body_bytes: usize,
    #[serde(flatten)]
    pub kind: Kind,
}

fn default_seed() -> u64 {
    1
}

fn default_body() -> usize {
    100
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every checked-in scenario file parses, so a typo fails the test suite instead of a benchmark run.
    #[test]
    fn checked_in_scenarios_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut count = 0;
        for suite in ["full", "quick", "smoke"] {
            for entry in std::fs::read_dir(root.join(suite)).unwrap() {
                let path = entry.unwrap().path();
                let scenario = Scenario::load(&path).unwrap();
                assert_eq!(
                    path.file_stem()
                        .and_then(|s| s.to_str())
                        .map(|s| scenario.name.starts_with(s)),
                    Some(true),
                    "{}",
                    path.display()
                );
                count += 1;
            }
        }
        assert!(count >= 15);
    }
}
