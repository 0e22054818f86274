//! CPU and memory of the processes under test over a measured window, and what the rest of the machine did
//! meanwhile ("foreign" CPU: other engineers' builds on a shared box show up here, not as our cost).

use std::time::Instant;

use serde::Serialize;

use crate::sys;

/// A named process tree to watch (a node, Redis, the Postgres postmaster with its backends, ...).
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

impl std::str::FromStr for Watched {
    type Err = String;
    /// `name=pid`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (name, pid) = text
            .split_once('=')
            .ok_or_else(|| format!("expected name=pid, got {text:?}"))?;
        let pid = pid.parse().map_err(|_| format!("bad pid in {text:?}"))?;
        Ok(Watched {
            name: name.to_owned(),
            pid,
        })
    }
}

/// CPU use of one process tree over a window: percent of one core (200 = two cores busy).
#[derive(Debug, Clone, Serialize)]
pub struct ProcessUsage {
    pub name: String,
    pub cpu_pct: f64,
    pub rss_mib: f64,
}

/// The window's CPU picture.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    pub seconds: f64,
    pub processes: Vec<ProcessUsage>,
    /// Busy share of all cores, percent (100 = every core busy).
    pub machine_busy_pct: f64,
    /// CPU used by processes outside the test (neither watched nor the load generator), percent of one core.
    pub foreign_cpu_pct: f64,
}

/// Snapshot at the start of a window.
pub struct CpuMeter {
    watched: Vec<Watched>,
    started: Instant,
    ticks: Vec<u64>,
    own_ticks: u64,
    machine: (u64, u64),
}

impl CpuMeter {
    /// Starts a window over these process trees; the load generator itself is always included as `imbench`.
    pub fn start(watched: &[Watched]) -> Self {
        let processes = sys::all_processes();
        CpuMeter {
            watched: watched.to_vec(),
            started: Instant::now(),
            ticks: watched
                .iter()
                .map(|w| sys::tree_ticks(w.pid, &processes))
                .collect(),
            own_ticks: sys::tree_ticks(std::process::id(), &processes),
            machine: sys::machine_ticks(),
        }
    }

    /// Ends the window.
    pub fn stop(&self) -> CpuReport {
        let processes = sys::all_processes();
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        let hz = sys::ticks_per_second() as f64;
        let pct = |ticks: u64| (ticks as f64 / hz / seconds * 1000.0).round() / 10.0;
        let mut usage = Vec::new();
        let mut test_ticks = 0;
        for (watched, before) in self.watched.iter().zip(&self.ticks) {
            let delta = sys::tree_ticks(watched.pid, &processes).saturating_sub(*before);
            test_ticks += delta;
            usage.push(ProcessUsage {
                name: watched.name.clone(),
                cpu_pct: pct(delta),
                rss_mib: mib(sys::tree_rss_kib(watched.pid, &processes)),
            });
        }
        let own = sys::tree_ticks(std::process::id(), &processes).saturating_sub(self.own_ticks);
        test_ticks += own;
        usage.push(ProcessUsage {
            name: "imbench".into(),
            cpu_pct: pct(own),
            rss_mib: mib(sys::rss_kib(std::process::id())),
        });
        let (busy, total) = sys::machine_ticks();
        let busy = busy.saturating_sub(self.machine.0);
        let total = total.saturating_sub(self.machine.1).max(1);
        CpuReport {
            seconds: (seconds * 100.0).round() / 100.0,
            processes: usage,
            machine_busy_pct: (busy as f64 / total as f64 * 1000.0).round() / 10.0,
            foreign_cpu_pct: pct(busy.saturating_sub(test_ticks)),
        }
    }
}

/// KiB → MiB rounded to 0.1.
pub fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}
