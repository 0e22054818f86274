//! What the load generator needs from the operating system: the monotonic clock the workload's `ts` is defined on,
//! the file-descriptor limit, client sockets bound to many loopback source addresses, and per-process CPU and memory
//! read from `/proc`. Linux only, like the machines the benchmarks run on.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use anyhow::{bail, Context};
use tokio::net::{TcpSocket, TcpStream};

/// `CLOCK_MONOTONIC` in integer microseconds: the workload's `ts`. Every process on the host reads the same clock,
/// so a receiver's latency is its own reading minus the sender's.
pub fn monotonic_us() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec and CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (20,000 on the benchmark machines: not more can be had) and
/// returns the new soft limit.
pub fn raise_fd_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Hands out loopback source addresses round-robin, so no single address runs out of its ~28k ephemeral ports.
#[derive(Debug, Clone)]
pub struct SourceAddresses {
    first: u8,
    count: u8,
}

impl SourceAddresses {
    /// `count` addresses starting at 127.0.0.`first`.
    pub fn new(first: u8, count: u8) -> Self {
        SourceAddresses {
            first,
            count: count.max(1),
        }
    }

    /// The first address's last octet.
    pub fn first(&self) -> u8 {
        self.first
    }

    /// The address for the `n`-th connection.
    pub fn pick(&self, n: usize) -> Ipv4Addr {
        let offset = (n % self.count as usize) as u8;
        Ipv4Addr::new(127, 0, 0, self.first.saturating_add(offset))
    }
}

/// Connects to `target` from `source`, letting the kernel choose the port at connect time
/// (`IP_BIND_ADDRESS_NO_PORT`): binding first with port 0 would make the kernel search for a port unique for the
/// address alone, which burns system CPU once thousands are in use.
pub async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4().context("socket")?;
    let enable: libc::c_int = 1;
    // SAFETY: the fd is a valid socket owned by `socket`; the option value is a c_int as the kernel expects.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &enable as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "setsockopt(IP_BIND_ADDRESS_NO_PORT): {}",
            std::io::Error::last_os_error()
        );
    }
    socket
        .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .with_context(|| format!("bind {source}"))?;
    let stream = socket
        .connect(target)
        .await
        .with_context(|| format!("connect {source} -> {target}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Clock ticks per second for `/proc/*/stat` times.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// (ppid, utime + stime in ticks) of one process, from `/proc/PID/stat`; None when it is gone.
fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// Every live process: pid → (ppid, cpu ticks).
pub fn all_processes() -> HashMap<u32, (u32, u64)> {
    let mut processes = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                if let Some(stat) = stat_of(pid) {
                    processes.insert(pid, stat);
                }
            }
        }
    }
    processes
}

/// `root` and all its descendants, from a process snapshot.
pub fn tree_of(root: u32, processes: &HashMap<u32, (u32, u64)>) -> Vec<u32> {
    let mut tree = vec![root];
    let mut index = 0;
    while index < tree.len() {
        let parent = tree[index];
        tree.extend(
            processes
                .iter()
                .filter(|(pid, (ppid, _))| *ppid == parent && **pid != parent)
                .map(|(pid, _)| *pid),
        );
        index += 1;
    }
    tree
}

/// Summed CPU ticks of `root` and its descendants (Postgres is a postmaster plus one backend per connection).
pub fn tree_ticks(root: u32, processes: &HashMap<u32, (u32, u64)>) -> u64 {
    tree_of(root, processes)
        .iter()
        .filter_map(|pid| processes.get(pid).map(|(_, ticks)| *ticks))
        .sum()
}

/// VmRSS of a process in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse().ok())
        })
        .unwrap_or(0)
}

/// Summed VmRSS of a process tree in KiB.
pub fn tree_rss_kib(root: u32, processes: &HashMap<u32, (u32, u64)>) -> u64 {
    tree_of(root, processes)
        .iter()
        .map(|pid| rss_kib(*pid))
        .sum()
}

/// Machine-wide (busy, total) CPU ticks over all cores, from the first line of `/proc/stat`.
pub fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Number of online CPUs.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Facts about the machine to tag results with.
pub fn machine_facts() -> serde_json::Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("PRETTY_NAME="))
        .map(|l| {
            l.trim_start_matches("PRETTY_NAME=")
                .trim_matches('"')
                .to_owned()
        })
        .unwrap_or_default();
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall on a valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    serde_json::json!({
        "cpus": cpu_count(),
        "cpu_model": model,
        "mem_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": kernel,
        "os": os,
        "fd_hard_limit": limit.rlim_max,
    })
}
