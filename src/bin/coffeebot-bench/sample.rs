//! What the bench reads about the bridge and the machine rather than through the product's
//! interfaces: the bridge's own feed-gap histogram from `/metrics`, memory and CPU time from
//! `/proc`, the load average, the machine and the commit for the report.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use crate::process::Bridge;

/// `coffeebot_mqtt_replies_total{outcome="…"}` from the bridge's `/metrics` (0 before the
/// first); `None` when `/metrics` cannot be read.
pub(crate) fn replies_total(http_port: u16, outcome: &str) -> Option<u64> {
    let text = metrics_text(http_port)?;
    let key = format!("coffeebot_mqtt_replies_total{{outcome=\"{outcome}\"}} ");
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .map_or(0, |n| n as u64),
    )
}

/// The bridge's feed-gap histogram (`coffeebot_feed_gap_seconds`): total count and the count
/// at or below each bucket bound, from its `/metrics`. `None` when unavailable.
pub(crate) fn feed_gap_histogram(http_port: u16) -> Option<Histogram> {
    let text = metrics_text(http_port)?;
    let mut h = Histogram::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("coffeebot_feed_gap_seconds_bucket{le=\"") {
            let (le, count) = rest.split_once("\"} ")?;
            h.buckets.push((le.to_owned(), count.trim().parse().ok()?));
        } else if let Some(count) = line.strip_prefix("coffeebot_feed_gap_seconds_count ") {
            h.count = count.trim().parse().ok()?;
        }
    }
    Some(h)
}

/// The bridge's `/metrics` page (the HTTP response, headers included). `None` when
/// unavailable.
pub(crate) fn metrics_text(http_port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, http_port));
    let mut stream = StdTcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.take(4 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

/// A Prometheus histogram's cumulative buckets.
#[derive(Clone, Debug, Default)]
pub(crate) struct Histogram {
    pub(crate) count: u64,
    pub(crate) buckets: Vec<(String, u64)>,
}

impl Histogram {
    /// Observations above `le` between `earlier` and `self`.
    pub(crate) fn above_since(&self, earlier: Option<&Histogram>, le: &str) -> Option<u64> {
        let at = |h: &Histogram| -> Option<u64> {
            let below = h.buckets.iter().find(|(b, _)| b == le)?.1;
            Some(h.count - below.min(h.count))
        };
        let now = at(self)?;
        let before = earlier.map_or(Some(0), at)?;
        Some(now.saturating_sub(before))
    }

    /// Observations between `earlier` and `self`.
    pub(crate) fn count_since(&self, earlier: Option<&Histogram>) -> u64 {
        self.count.saturating_sub(earlier.map_or(0, |h| h.count))
    }
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`).
pub(crate) fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU time of a process: the sum of its threads' run time (ns, `schedstat`) and
/// utime + stime in clock ticks (`stat`, which also counts threads that have exited).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuSample {
    pub(crate) at: Option<Instant>,
    pub(crate) thread_ns: u64,
    pub(crate) ticks: u64,
}

/// CPU time of `pid` now.
pub(crate) fn cpu_sample(pid: u32) -> CpuSample {
    let mut thread_ns = 0;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("schedstat")) {
                thread_ns += text
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    let ticks = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = text.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    CpuSample {
        at: Some(Instant::now()),
        thread_ns,
        ticks,
    }
}

/// CPU used over a window.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuUse {
    pub(crate) window: Duration,
    pub(crate) thread_ns: u64,
    pub(crate) ticks: u64,
}

impl CpuUse {
    pub(crate) fn between(a: CpuSample, b: CpuSample) -> CpuUse {
        let window = match (a.at, b.at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => Duration::ZERO,
        };
        CpuUse {
            window,
            thread_ns: b.thread_ns.saturating_sub(a.thread_ns),
            ticks: b.ticks.saturating_sub(a.ticks),
        }
    }

    /// CPU milliseconds per minute of wall time.
    pub(crate) fn ms_per_min(&self) -> f64 {
        if self.window.is_zero() {
            return 0.0;
        }
        self.thread_ns as f64 / 1e6 * 60.0 / self.window.as_secs_f64()
    }

    /// Percent of one core.
    pub(crate) fn pct(&self) -> f64 {
        self.ms_per_min() / 600.0
    }

    pub(crate) fn brief(&self) -> String {
        format!(
            "{:.1} ms CPU/min ({:.3}% of a core) over {:.0} s",
            self.ms_per_min(),
            self.pct(),
            self.window.as_secs_f64()
        )
    }

    pub(crate) fn to_json(self) -> Value {
        json!({
            "window_s": self.window.as_secs_f64(),
            "cpu_ms": self.thread_ns as f64 / 1e6,
            "cpu_ticks": self.ticks,
            "cpu_ms_per_min": self.ms_per_min(),
            "pct_of_one_core": self.pct(),
        })
    }
}

/// CPU the bridge uses over `window`.
pub(crate) async fn measure_cpu(bridge: &Bridge, window: Duration) -> Result<CpuUse> {
    let a = cpu_sample(bridge.pid);
    tokio::time::sleep(window).await;
    let b = cpu_sample(bridge.pid);
    Ok(CpuUse::between(a, b))
}

/// `uname -a`, CPU model and cores, for the report.
pub(crate) fn machine() -> Value {
    let uname = Command::new("uname")
        .arg("-a")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let cpu = fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines().find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_owned())
        })
    });
    json!({
        "uname": uname,
        "cpu_model": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
    })
}

/// `/proc/loadavg`, trimmed.
pub(crate) fn loadavg() -> Option<String> {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The checked-out commit and whether the tree is dirty.
pub(crate) fn commit() -> Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    json!({
        "head": git(&["rev-parse", "HEAD"]),
        "dirty": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
    })
}
