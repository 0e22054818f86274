//! Draining in waves: a node that shuts down asks its clients to move over a configurable spread instead of all at
//! once, so the rest of the cluster takes the reconnect-and-sync wave a slice at a time.
//!
//! The devices connected when the drain starts are closed in equal slices, one slice per tick, the last at the end
//! of the spread; no new connection is admitted meanwhile (the node answers `draining`). A spread of zero kicks
//! everyone at once, as before.

use std::sync::Arc;
use std::time::Duration;

use common::KickReason;
use tracing::info;

use crate::fanout::local::Device;

/// How often a slice is kicked: short enough that a slice is small, long enough that the ticks cost nothing.
const TICK: Duration = Duration::from_millis(100);

/// Kicks `devices` with `reason` in equal slices over `spread`; returns how many were kicked (a device that had
/// already closed is not counted).
pub async fn kick_in_waves(
    devices: Vec<Arc<dyn Device>>,
    reason: KickReason,
    spread: Duration,
) -> usize {
    let total = devices.len();
    let waves = waves(spread, total);
    info!(
        connections = total,
        waves,
        spread_ms = spread.as_millis() as u64,
        "drain: closing connections in waves"
    );
    let mut kicked = 0;
    let mut tick = tokio::time::interval(TICK);
    // A late tick (a busy runtime) shifts the rest instead of firing the missed ones together.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for slice in slices(devices, waves) {
        // The first tick of an interval completes at once: the first slice goes when the drain starts.
        tick.tick().await;
        let decided = slice.iter().filter(|device| device.kick(reason)).count();
        metrics::counter!("im_drain_kicks_total").increment(decided as u64);
        kicked += decided;
    }
    kicked
}

/// How many slices a spread makes (one per tick, never more than there are devices, at least one).
fn waves(spread: Duration, devices: usize) -> usize {
    let ticks = (spread.as_millis() / TICK.as_millis()) as usize + 1;
    ticks.min(devices).max(1)
}

/// `devices` cut into `waves` slices whose sizes differ by at most one, the larger ones spread evenly.
fn slices<T>(devices: Vec<T>, waves: usize) -> Vec<Vec<T>> {
    let total = devices.len();
    let mut out: Vec<Vec<T>> = Vec::with_capacity(waves);
    let mut rest = devices.into_iter();
    for wave in 0..waves {
        // The remainder spread evenly over the waves, not piled on the first ones.
        let size = (wave + 1) * total / waves - wave * total / waves;
        out.push(rest.by_ref().take(size).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_of_zero_is_one_wave() {
        assert_eq!(waves(Duration::ZERO, 500), 1);
    }

    #[test]
    fn waves_never_outnumber_devices_and_slices_cover_everyone_once() {
        assert_eq!(waves(Duration::from_secs(5), 3), 3);
        assert_eq!(waves(Duration::from_secs(5), 10_000), 51);
        for (total, count) in [(0, 1), (1, 1), (7, 3), (10_000, 51), (50, 51)] {
            let count = count.min(total.max(1));
            let cut = slices((0..total).collect::<Vec<_>>(), count);
            assert_eq!(cut.len(), count);
            let sizes: Vec<usize> = cut.iter().map(Vec::len).collect();
            let (min, max) = (sizes.iter().min(), sizes.iter().max());
            assert!(
                max.zip(min).is_none_or(|(max, min)| max - min <= 1),
                "{sizes:?}"
            );
            assert_eq!(cut.concat(), (0..total).collect::<Vec<_>>());
        }
    }
}
