//! The bridge in-process for the HTTP tests: the simulated controller on a real
//! pseudo-terminal, the real serial link and driver (`daemon::run`), and the HTTP server on
//! 127.0.0.1 port 0. The MQTT task is not started: tests set `broker_connected` themselves
//! through the watch sender the MQTT task would hold (MQTT is tested on its own, against a real
//! mosquitto). The public and the operator listener are both on 127.0.0.1 port 0. Every wait
//! is bounded and waits for something observable.

use coffeebot::config;
use coffeebot::http::{self, Listeners, Options};
use coffeebot::mqtt::{self, CommandIn};
use coffeebot::sim::{SimConfig, SimHandle, Simulator};
use coffeebot::state::StateDoc;
use coffeebot::{bridge, daemon};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Longest wait for anything the bridge should do promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running bridge with its simulator and HTTP server.
pub struct Bridge {
    /// The simulated controller.
    pub sim: SimHandle,
    /// The MQTT task's ends of the channels: the tests stand in for it.
    pub mqtt: mqtt::Io,
    /// Where the public HTTP server listens.
    pub addr: SocketAddr,
    /// Where the operator HTTP server (metrics, probes) listens.
    pub ops: SocketAddr,
    shutdown: CancellationToken,
    daemon: JoinHandle<()>,
    http: JoinHandle<std::io::Result<()>>,
}

/// Settings for fast tests: short brews, a low preheat target, staleness after 1 s.
pub const FAST: &[(&str, &str)] = &[
    ("COFFEEBOT__SAFETY__STALE_AFTER_S", "1"),
    ("COFFEEBOT__SERIAL__POLL_INTERVAL_MS", "250"),
    ("COFFEEBOT__BREW__SECONDS_PER_CUP", "1"),
    ("COFFEEBOT__BREW__PREHEAT_C", "25"),
    ("COFFEEBOT__KEEP_WARM__AFTER_BREW", "false"),
];

impl Bridge {
    /// Starts everything with [`FAST`] settings, `env` on top, and the default HTTP options.
    pub async fn start(name: &str, env: &[(&str, &str)]) -> Bridge {
        Self::start_with(name, env, Options::default()).await
    }

    /// [`Bridge::start`] with other HTTP options (limits, streams).
    pub async fn start_with(name: &str, env: &[(&str, &str)], options: Options) -> Bridge {
        // Before the driver runs, so that no count is lost.
        coffeebot::metrics::install();
        let link = std::env::temp_dir()
            .join(format!("coffeebot-http-{}-{name}", std::process::id()))
            .join("tty");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let sim = Simulator::start(SimConfig::default(), link.clone())
            .await
            .expect("the simulator starts");
        let mut vars: Vec<(String, String)> = vec![(
            "COFFEEBOT__SERIAL__PORT".into(),
            link.to_string_lossy().into_owned(),
        )];
        vars.extend(
            FAST.iter()
                .chain(env)
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let settings = config::load_with(None, &vars).expect("valid test settings");
        let channels = bridge::channels("Coffee Pot");
        let shutdown = CancellationToken::new();
        let daemon = tokio::spawn({
            let shutdown = shutdown.clone();
            let driver = channels.driver;
            async move { daemon::run(&settings, driver, shutdown).await }
        });
        let (listeners, addr, ops) = loopback_listeners().await;
        let http = tokio::spawn(http::serve(
            listeners,
            channels.http,
            options,
            shutdown.clone(),
        ));
        Bridge {
            sim,
            mqtt: channels.mqtt,
            addr,
            ops,
            shutdown,
            daemon,
            http,
        }
    }

    /// Waits until the published state satisfies `pred`; returns it.
    pub async fn wait_state(&self, what: &str, pred: impl Fn(&StateDoc) -> bool) -> StateDoc {
        let mut rx = self.mqtt.state.clone();
        let waited = timeout(WAIT, async {
            rx.wait_for(|s| s.as_ref().is_some_and(&pred))
                .await
                .map(|s| s.clone())
        })
        .await;
        match waited {
            Ok(got) => got.expect("the driver is running").expect("checked above"),
            Err(_) => panic!(
                "no state where {what} within {WAIT:?}; last: {:?}",
                self.state()
            ),
        }
    }

    /// The current state document.
    pub fn state(&self) -> Option<StateDoc> {
        self.mqtt.state.borrow().clone()
    }

    /// Says what the MQTT task would say about the broker connection.
    pub fn set_broker_connected(&self, connected: bool) {
        self.mqtt.connected.send_replace(connected);
    }

    /// Sends a command to the core as the MQTT task would.
    pub async fn command(&self, command: CommandIn) {
        self.mqtt
            .commands
            .send(command)
            .await
            .expect("the driver takes commands");
    }

    /// Waits for the next event of `event_type`, skipping others.
    pub async fn wait_event(&mut self, event_type: &str) -> serde_json::Value {
        timeout(WAIT, async {
            loop {
                let event = self.mqtt.events.recv().await.expect("events flow");
                if event.event_type() == event_type {
                    return event.0;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {event_type} event within {WAIT:?}"))
    }

    /// `GET path` on the public listener.
    pub async fn get(&self, path: &str) -> Reply {
        request(self.addr, "GET", path, b"").await
    }

    /// `GET path` on the operator listener.
    pub async fn ops_get(&self, path: &str) -> Reply {
        request(self.ops, "GET", path, b"").await
    }

    /// Stops the bridge: the driver writes `B+0` and ends, the server stops.
    pub async fn stop(self) {
        self.shutdown.cancel();
        timeout(WAIT, self.daemon)
            .await
            .expect("the driver stops")
            .unwrap();
        timeout(WAIT, self.http)
            .await
            .expect("the HTTP server stops")
            .unwrap()
            .unwrap();
        let _ = self.sim.shutdown().await;
    }
}

/// Both listeners bound on 127.0.0.1 port 0, and their addresses (public, operator).
pub async fn loopback_listeners() -> (Listeners, SocketAddr, SocketAddr) {
    let public = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let ops = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (public_addr, ops_addr) = (public.local_addr().unwrap(), ops.local_addr().unwrap());
    let listeners = Listeners {
        public: Some(public),
        ops: Some(ops),
    };
    (listeners, public_addr, ops_addr)
}

/// An HTTP response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Reply {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A connection to `addr` from the loopback address `from` (any of 127.0.0.0/8), so that
/// tests can be several clients as the per-address limit sees them.
pub async fn connect_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().expect("an IPv4 address"), 0))?;
    socket.connect(addr).await
}

/// `GET path` from the loopback address `from`.
pub async fn request_from(from: &str, addr: SocketAddr, path: &str) -> Reply {
    let mut stream = connect_from(from, addr).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    read_reply(&mut stream, &format!("GET {path}")).await
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), read to the end.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    request_with(addr, method, path, &[("Host", &addr.to_string())], body).await
}

/// [`request`] with these header lines (`Host` among them, or not).
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\n{extra}Connection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write");
    read_reply(&mut stream, &format!("{method} {path}")).await
}

/// The whole response to `request` (e.g. `GET /`), read until the server closes (at most
/// [`WAIT`]).
async fn read_reply(stream: &mut TcpStream, request: &str) -> Reply {
    let mut raw = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("{request}: no complete response within {WAIT:?}"))
        .expect("read");
    parse(&raw).unwrap_or_else(|| panic!("{request}: not HTTP: {raw:?}"))
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// The sum of the samples of `series` in Prometheus text: `name` alone matches every label
/// set; `name{labels}` one series (labels in the order the exporter writes them).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| {
            *name == series || (!series.contains('{') && name.starts_with(&format!("{series}{{")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// A brew command as the MQTT task builds it from `brew/set <cups>`.
pub fn brew(cups: u32) -> CommandIn {
    CommandIn {
        request: coffeebot::core::Request::BrewStart { cups: Some(cups) }.into(),
        command: coffeebot::mqtt::command::CommandName::Brew,
        payload: cups.to_string().into_bytes(),
        reply: None,
        accepted_at: tokio::time::Instant::now(),
    }
}
