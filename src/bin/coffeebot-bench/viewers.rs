//! Experiment 4: the public page's load, while brewing (issue 16). Two sets, each run as a
//! stress of the feed-cadence experiment ([`crate::cadence::heating`]), so the watchdog feed is
//! measured on the wire and at the controller under the same load:
//!
//! - **viewers**: [`Plan::viewers`] open `/events` streams (each from one of several loopback
//!   addresses, as distinct clients behind no proxy) plus [`Plan::status_per_s`] requests a
//!   second for `/status.json` on a few keep-alive connections. Each event's delay is its
//!   receipt minus the `updated_at` it carries (the reading it reports, on the same host's
//!   wall clock, to the millisecond): controller reading → event at a viewer.
//! - **idle connections**: [`Plan::idle_connections`] sockets that send the start of a request
//!   and then nothing, as a slow-loris would; meanwhile a fresh `/status.json` client and the
//!   operator's `/healthz` are timed once a second.
//!
//! Both sample the bridge's RSS as they run. A response other than 200 is an error, except
//! the documented 503 of a full `/events` (counted apart).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::sample::{loadavg, proc_status_kb};
use crate::stats::{ms, Stats};
use crate::Plan;

/// How many loopback addresses the viewers come from (the bridge allows 64 connections per
/// address by default: `http.max_connections_per_peer`).
const VIEWER_ADDRESSES: usize = 10;
/// How many keep-alive connections carry the `/status.json` requests.
const STATUS_CONNECTIONS: usize = 8;
/// How many loopback addresses the idle connections come from.
const IDLE_ADDRESSES: usize = 20;
/// Longest a single request or stream start may take before it counts as an error.
const REQUEST_WAIT: Duration = Duration::from_secs(15);
/// How many error messages a run keeps as examples.
const ERROR_EXAMPLES: usize = 5;

/// Which load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Load {
    Viewers,
    IdleConnections,
}

/// What one load run saw.
#[derive(Debug, Default)]
pub(crate) struct LoadFigures {
    pub(crate) viewers: usize,
    pub(crate) streams_opened: usize,
    /// `/events` refused with the documented 503 (`http.max_streams` reached).
    pub(crate) streams_refused_503: usize,
    pub(crate) events: usize,
    /// Controller reading (`updated_at`) → event received, per event and viewer.
    pub(crate) event_delays: Vec<Duration>,
    /// Largest time between two events at one viewer.
    pub(crate) largest_event_gap: Duration,
    pub(crate) status_target_per_s: u64,
    pub(crate) status_ok: usize,
    pub(crate) status_latencies: Vec<Duration>,
    pub(crate) idle_connections: usize,
    /// Idle connections the bridge closed before the window ended.
    pub(crate) idle_closed_by_bridge: usize,
    /// A fresh client's `/status.json`, once a second (idle set).
    pub(crate) probe_latencies: Vec<Duration>,
    /// The operator's `/healthz`, once a second (idle set).
    pub(crate) healthz_latencies: Vec<Duration>,
    pub(crate) errors: usize,
    pub(crate) error_examples: Vec<String>,
    pub(crate) rss_max_kb: Option<u64>,
    pub(crate) rss_hwm_kb: Option<u64>,
    pub(crate) loadavg_end: Option<String>,
    pub(crate) window: Duration,
}

impl LoadFigures {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.error_examples.len() < ERROR_EXAMPLES {
            self.error_examples.push(what);
        }
    }

    fn merge(&mut self, other: LoadFigures) {
        self.streams_opened += other.streams_opened;
        self.streams_refused_503 += other.streams_refused_503;
        self.events += other.events;
        self.event_delays.extend(other.event_delays);
        self.largest_event_gap = self.largest_event_gap.max(other.largest_event_gap);
        self.status_ok += other.status_ok;
        self.status_latencies.extend(other.status_latencies);
        self.idle_closed_by_bridge += other.idle_closed_by_bridge;
        self.probe_latencies.extend(other.probe_latencies);
        self.healthz_latencies.extend(other.healthz_latencies);
        self.errors += other.errors;
        for e in other.error_examples {
            if self.error_examples.len() < ERROR_EXAMPLES {
                self.error_examples.push(e);
            }
        }
    }

    /// Requests a second `/status.json` achieved.
    pub(crate) fn status_rate(&self) -> f64 {
        if self.window.is_zero() {
            return 0.0;
        }
        self.status_latencies.len() as f64 / self.window.as_secs_f64()
    }

    /// One line for the progress output.
    pub(crate) fn brief(&self) -> String {
        let kb =
            |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{:.1} MB", v as f64 / 1024.0));
        let mut s = String::new();
        if self.viewers > 0 {
            s.push_str(&format!(
                "{} streams ({} refused 503), {} events, reading → event {}; status.json {:.0}/s {}; ",
                self.streams_opened,
                self.streams_refused_503,
                self.events,
                Stats::of(&self.event_delays).brief(),
                self.status_rate(),
                Stats::of(&self.status_latencies).brief(),
            ));
        }
        if self.idle_connections > 0 {
            s.push_str(&format!(
                "{} idle connections ({} closed by the bridge); fresh status.json {}; ops /healthz {}; ",
                self.idle_connections,
                self.idle_closed_by_bridge,
                Stats::of(&self.probe_latencies).brief(),
                Stats::of(&self.healthz_latencies).brief(),
            ));
        }
        s.push_str(&format!(
            "errors {}; RSS max {} (VmHWM {}); load average {}",
            self.errors,
            kb(self.rss_max_kb),
            kb(self.rss_hwm_kb),
            self.loadavg_end.as_deref().unwrap_or("?")
        ));
        s
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "window_s": self.window.as_secs_f64(),
            "viewers": self.viewers,
            "streams_opened": self.streams_opened,
            "streams_refused_503": self.streams_refused_503,
            "events_received": self.events,
            "reading_to_event": Stats::of(&self.event_delays),
            "largest_gap_between_events_at_a_viewer_ms": ms(self.largest_event_gap),
            "status_json_target_per_s": self.status_target_per_s,
            "status_json_achieved_per_s": self.status_rate(),
            "status_json_ok": self.status_ok,
            "status_json_latency": Stats::of(&self.status_latencies),
            "idle_connections": self.idle_connections,
            "idle_closed_by_bridge": self.idle_closed_by_bridge,
            "fresh_status_json_latency": Stats::of(&self.probe_latencies),
            "ops_healthz_latency": Stats::of(&self.healthz_latencies),
            "errors": self.errors,
            "error_examples": self.error_examples,
            "bridge_rss_max_kb": self.rss_max_kb,
            "bridge_rss_hwm_kb": self.rss_hwm_kb,
            "loadavg_end": self.loadavg_end,
        })
    }
}

/// The bridge a load runs against: its process (for its memory in /proc) and its public and
/// operator ports on loopback.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    pub(crate) pid: u32,
    pub(crate) public_port: u16,
    pub(crate) ops_port: u16,
}

/// [`run`] on a runtime of its own (two threads), so that the load competes with the tap and
/// the simulated controller only for the CPU, not for their runtime's threads.
pub(crate) fn spawn(
    load: Load,
    plan: Plan,
    window: Duration,
    target: Target,
) -> tokio::task::JoinHandle<Result<LoadFigures>> {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("the load's runtime")?;
        let figures = runtime.block_on(run(load, plan, window, target));
        runtime.shutdown_timeout(Duration::from_secs(2));
        figures
    })
}

/// Runs `load` against the bridge `target` for `window`.
async fn run(load: Load, plan: Plan, window: Duration, target: Target) -> Result<LoadFigures> {
    let Target {
        pid,
        public_port,
        ops_port,
    } = target;
    let public = SocketAddr::from((Ipv4Addr::LOCALHOST, public_port));
    let ops = SocketAddr::from((Ipv4Addr::LOCALHOST, ops_port));
    let end = Instant::now() + window;
    let rss = Arc::new(Mutex::new(None::<u64>));
    let sampler = {
        let rss = Arc::clone(&rss);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while Instant::now() < end {
                tick.tick().await;
                if let Some(kb) = proc_status_kb(pid, "VmRSS") {
                    let mut max = rss.lock().unwrap_or_else(PoisonError::into_inner);
                    *max = Some(max.map_or(kb, |m| m.max(kb)));
                }
            }
        })
    };
    let mut figures = match load {
        Load::Viewers => viewers(plan, public, end).await?,
        Load::IdleConnections => idle(plan, public, ops, end).await?,
    };
    sampler.await.context("the RSS sampler")?;
    figures.window = window;
    figures.rss_max_kb = *rss.lock().unwrap_or_else(PoisonError::into_inner);
    figures.rss_hwm_kb = proc_status_kb(pid, "VmHWM");
    figures.loadavg_end = loadavg();
    Ok(figures)
}

/// A connection to `to` from the loopback address `127.0.<net>.<host>`.
async fn connect_from(net: u8, host: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, net, host)),
        0,
    ))?;
    socket.connect(to).await
}

/// The viewers and the `/status.json` load until `end`.
async fn viewers(plan: Plan, public: SocketAddr, end: Instant) -> Result<LoadFigures> {
    let mut tasks = JoinSet::new();
    for i in 0..plan.viewers {
        let host = 10 + (i % VIEWER_ADDRESSES) as u8;
        tasks.spawn(async move { viewer(host, public, end).await });
    }
    for k in 0..STATUS_CONNECTIONS {
        let rate = plan.status_per_s;
        tasks.spawn(async move { status_client(k, rate, public, end).await });
    }
    let mut figures = LoadFigures {
        viewers: plan.viewers,
        status_target_per_s: plan.status_per_s,
        ..LoadFigures::default()
    };
    while let Some(done) = tasks.join_next().await {
        figures.merge(done.map_err(|e| anyhow!("a load task failed: {e}"))?);
    }
    Ok(figures)
}

/// The head of an HTTP response: status and headers (names in lower case).
async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    r.read_line(&mut line).await?;
    if line.is_empty() {
        bail!("connection closed before a response");
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP status line: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("connection closed in the headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, headers));
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
}

/// One `/events` viewer from `127.0.0.<host>` until `end`.
async fn viewer(host: u8, public: SocketAddr, end: Instant) -> LoadFigures {
    let mut f = LoadFigures::default();
    if let Err(e) = watch_events(host, public, end, &mut f).await {
        f.error(format!("/events: {e:#}"));
    }
    f
}

async fn watch_events(
    host: u8,
    public: SocketAddr,
    end: Instant,
    f: &mut LoadFigures,
) -> Result<()> {
    let stream = tokio::time::timeout(REQUEST_WAIT, connect_from(0, host, public))
        .await
        .context("connect timed out")??;
    let (read, mut write) = stream.into_split();
    let request =
        format!("GET /events HTTP/1.1\r\nHost: {public}\r\nAccept: text/event-stream\r\n\r\n");
    write.write_all(request.as_bytes()).await?;
    let mut r = BufReader::new(read);
    let (status, headers) = tokio::time::timeout(REQUEST_WAIT, read_head(&mut r))
        .await
        .context("no response head")??;
    match status {
        200 => f.streams_opened += 1,
        503 => {
            f.streams_refused_503 += 1;
            return Ok(());
        }
        other => bail!("status {other}"),
    }
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let mut text = Vec::new();
    let mut last_event: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        let piece = match tokio::time::timeout(end - now, next_piece(&mut r, chunked)).await {
            Err(_) => return Ok(()),
            Ok(piece) => piece?,
        };
        let Some(piece) = piece else {
            // The stream ended before the window did: only its lifetime may end it.
            bail!("the stream ended early");
        };
        let at = Instant::now();
        let wall = SystemTime::now();
        text.extend_from_slice(&piece);
        while let Some(nl) = text.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = text.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let doc: Value = serde_json::from_str(data.trim()).context("event data")?;
            f.events += 1;
            if let Some(prev) = last_event.replace(at) {
                f.largest_event_gap = f.largest_event_gap.max(at - prev);
            }
            if let Some(read_at) = doc["updated_at"]
                .as_str()
                .and_then(|s| humantime::parse_rfc3339(s).ok())
            {
                f.event_delays
                    .push(wall.duration_since(read_at).unwrap_or(Duration::ZERO));
            }
        }
    }
}

/// The next bytes of a response body: one chunk when `chunked`, else what arrives; `None`
/// at its end.
async fn next_piece<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    chunked: bool,
) -> Result<Option<Vec<u8>>> {
    if !chunked {
        let mut buf = vec![0u8; 8192];
        let n = r.read(&mut buf).await?;
        buf.truncate(n);
        return Ok((n > 0).then_some(buf));
    }
    let mut size = String::new();
    if r.read_line(&mut size).await? == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
        .with_context(|| format!("a chunk size: {size:?}"))?;
    if size == 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; size + 2];
    r.read_exact(&mut buf).await?;
    buf.truncate(size);
    Ok(Some(buf))
}

/// Client `k` of [`STATUS_CONNECTIONS`]: its share of `rate` requests a second for
/// `/status.json` on one keep-alive connection (a new one if the bridge closes it).
async fn status_client(k: usize, rate: u64, public: SocketAddr, end: Instant) -> LoadFigures {
    let mut f = LoadFigures::default();
    let start = Instant::now();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let request = format!("GET /status.json HTTP/1.1\r\nHost: {public}\r\n\r\n");
    let mut j: u64 = 0;
    loop {
        // Request number `j * connections + k` of the whole load is this client's next.
        let n = j * STATUS_CONNECTIONS as u64 + k as u64;
        let due = start + Duration::from_secs_f64(n as f64 / rate.max(1) as f64);
        if due >= end {
            return f;
        }
        tokio::time::sleep_until(due.into()).await;
        j += 1;
        if conn.is_none() {
            match tokio::time::timeout(REQUEST_WAIT, connect_from(0, 20, public)).await {
                Ok(Ok(s)) => conn = Some(BufReader::new(s)),
                Ok(Err(e)) => {
                    f.error(format!("/status.json connect: {e}"));
                    continue;
                }
                Err(_) => {
                    f.error("/status.json connect timed out".to_owned());
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let sent = Instant::now();
        match tokio::time::timeout(REQUEST_WAIT, get_on(c, &request)).await {
            Ok(Ok((200, _))) => {
                f.status_ok += 1;
                f.status_latencies.push(sent.elapsed());
            }
            Ok(Ok((status, close))) => {
                f.status_latencies.push(sent.elapsed());
                f.error(format!("/status.json: status {status}"));
                if close {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                // A keep-alive connection the bridge closed (its lifetime) is not an error
                // of the request: open another.
                if !e.to_string().contains("closed before a response") {
                    f.error(format!("/status.json: {e:#}"));
                }
                conn = None;
            }
            Err(_) => {
                f.error("/status.json: no response in time".to_owned());
                conn = None;
            }
        }
    }
}

/// `request` on an open connection; the status and whether the bridge will close it.
async fn get_on(c: &mut BufReader<TcpStream>, request: &str) -> Result<(u16, bool)> {
    c.get_mut().write_all(request.as_bytes()).await?;
    let (status, headers) = read_head(c).await?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    c.read_exact(&mut body).await?;
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok((status, close))
}

/// The idle connections until `end`, with a fresh `/status.json` and the operator's
/// `/healthz` timed once a second meanwhile.
async fn idle(
    plan: Plan,
    public: SocketAddr,
    ops: SocketAddr,
    end: Instant,
) -> Result<LoadFigures> {
    let mut tasks = JoinSet::new();
    for i in 0..plan.idle_connections {
        let host = 1 + (i % IDLE_ADDRESSES) as u8;
        tasks.spawn(async move { idle_connection(host, public, end).await });
    }
    let mut figures = LoadFigures {
        idle_connections: plan.idle_connections,
        ..LoadFigures::default()
    };
    let probes = tokio::spawn(async move {
        let mut f = LoadFigures::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        while Instant::now() < end {
            tick.tick().await;
            let (a, b) = tokio::join!(
                fresh_get(public, "/status.json"),
                fresh_get(ops, "/healthz")
            );
            match a {
                Ok(d) => f.probe_latencies.push(d),
                Err(e) => f.error(format!("fresh /status.json: {e:#}")),
            }
            match b {
                Ok(d) => f.healthz_latencies.push(d),
                Err(e) => f.error(format!("ops /healthz: {e:#}")),
            }
        }
        f
    });
    while let Some(done) = tasks.join_next().await {
        figures.merge(done.map_err(|e| anyhow!("an idle connection task failed: {e}"))?);
    }
    figures.merge(
        probes
            .await
            .map_err(|e| anyhow!("the probes failed: {e}"))?,
    );
    Ok(figures)
}

/// One connection from `127.0.1.<host>` that sends the start of a request and then nothing
/// until `end`; counts whether the bridge closed it first.
async fn idle_connection(host: u8, public: SocketAddr, end: Instant) -> LoadFigures {
    let mut f = LoadFigures::default();
    let mut stream = match tokio::time::timeout(REQUEST_WAIT, connect_from(1, host, public)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            f.error(format!("idle connect: {e}"));
            return f;
        }
        Err(_) => {
            f.error("idle connect timed out".to_owned());
            return f;
        }
    };
    let start = format!("GET / HTTP/1.1\r\nHost: {public}\r\n");
    if stream.write_all(start.as_bytes()).await.is_err() {
        f.idle_closed_by_bridge += 1;
        return f;
    }
    let mut buf = [0u8; 1024];
    let now = Instant::now();
    if let Ok(read) =
        tokio::time::timeout(end.saturating_duration_since(now), stream.read(&mut buf)).await
    {
        // Anything but a timeout: the bridge answered (408 or similar) or closed.
        let _ = read;
        f.idle_closed_by_bridge += 1;
    }
    f
}

/// A `GET` on a new connection (`Connection: close`): how long until the whole response, if
/// it is 200.
async fn fresh_get(to: SocketAddr, path: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let work = async {
        let mut s = connect_from(0, 30, to).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await?;
        let mut r = BufReader::new(s);
        let (status, _) = read_head(&mut r).await?;
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await?;
        if status != 200 {
            bail!("{path}: status {status}");
        }
        Ok::<(), anyhow::Error>(())
    };
    tokio::time::timeout(REQUEST_WAIT, work)
        .await
        .map_err(|_| anyhow!("{path}: no response within {REQUEST_WAIT:?}"))??;
    Ok(t0.elapsed())
}
