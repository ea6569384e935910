//! Read-only HTTP (SPEC §6) on two listeners. The public one ([`public`]) serves the live
//! status page, its assets, `status.json` and the `/events` stream, to anyone a proxy lets in;
//! the operator one serves Prometheus metrics and the liveness and readiness probes Kubernetes
//! watches, on a loopback (or cluster-internal) address. Neither serves the other's paths, and
//! each has its own connection slots, so public viewers can never starve the probes.
//!
//! It holds only `watch` receivers ([`HttpDeps`]): nothing here can send a command, and every
//! route answers `GET` (and `HEAD`) alone — other methods get 405 with `Allow`, other paths
//! 404. Requests are bounded so a slow or hostile client cannot exhaust the bridge: a tiny
//! body limit, a per-request timeout, and at the socket ([`listener`]) a cap on connections
//! (in all and per client address), an idle timeout (which also bounds reading the headers)
//! and a connection lifetime.

pub mod feed;
pub mod history;
pub mod listener;
pub mod page;
pub mod public;

use crate::config::Settings;
use crate::daemon::Outlets;
use crate::state::StateDoc;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use history::History;
use listener::{GuardedListener, Limits};
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::info;

/// What public clients may hold at the socket: room for [`Options::max_streams`] viewers
/// and as many short requests, a few of them from any one address.
pub const PUBLIC_LIMITS: Limits = Limits {
    connections: 512,
    per_peer: 64,
    idle: Duration::from_secs(10),
    lifetime: Duration::from_secs(300),
};
/// What operator clients (the kubelet, Prometheus) may hold at the socket.
pub const OPS_LIMITS: Limits = Limits {
    connections: 16,
    per_peer: 16,
    idle: Duration::from_secs(10),
    lifetime: Duration::from_secs(300),
};
/// Longest time a request may take (an `/events` stream only needs to start within it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body accepted (no route reads one).
pub const BODY_LIMIT_BYTES: usize = 1024;
/// `/healthz` fails when the driver has not ticked for longer (it ticks every 250 ms).
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(1);
/// After shutdown, how long open requests may take before the server stops regardless.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// How often the metrics recorder drains histogram samples when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The read-only views of the bridge that the HTTP server shows.
#[derive(Clone, Debug)]
pub struct HttpDeps {
    /// The page's title (`device.name`).
    pub title: String,
    /// The state document the MQTT side publishes (the driver holds the sender).
    pub state: watch::Receiver<Option<StateDoc>>,
    /// When the driver last ran; its sender closes when the driver ends.
    pub heartbeat: watch::Receiver<Instant>,
    /// Whether the MQTT task is connected; its sender closes when the MQTT task ends.
    pub broker_connected: watch::Receiver<bool>,
}

impl HttpDeps {
    /// Views of the driver's outlets, titled with the device's name.
    pub fn new(outlets: &Outlets, device_name: &str) -> Self {
        Self {
            title: device_name.to_owned(),
            state: outlets.state.clone(),
            heartbeat: outlets.heartbeat.clone(),
            broker_connected: outlets.broker_connected.clone(),
        }
    }
}

/// How the two listeners are bounded and whom the public one answers.
#[derive(Clone, Debug)]
pub struct Options {
    /// Socket limits of the public listener.
    pub public_limits: Limits,
    /// Socket limits of the operator listener.
    pub ops_limits: Limits,
    /// Most `/events` streams at once; more get 503 with `Retry-After`.
    pub max_streams: usize,
    /// Host names the public side answers besides its own address and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// How often an idle `/events` stream sends a comment (below the idle timeout, so that
    /// a reading client is never cut off, and proxies keep the stream open).
    pub keep_alive: Duration,
    /// How long one `/events` stream lasts; the browser then reconnects with
    /// `Last-Event-ID`, so no connection lives for ever.
    pub stream_lifetime: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            public_limits: PUBLIC_LIMITS,
            ops_limits: OPS_LIMITS,
            max_streams: 256,
            allowed_hosts: Vec::new(),
            keep_alive: Duration::from_secs(5),
            stream_lifetime: Duration::from_secs(240),
        }
    }
}

impl Options {
    /// The options `[http]` sets, the rest as [`Options::default`].
    pub fn from_settings(settings: &Settings) -> Self {
        let http = &settings.http;
        let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        Self {
            public_limits: Limits {
                per_peer: count(http.max_connections_per_peer),
                ..PUBLIC_LIMITS
            },
            max_streams: count(http.max_streams),
            allowed_hosts: http.allowed_host_names(),
            ..Self::default()
        }
    }
}

/// The bound sockets; either may be absent (turned off in the configuration).
#[derive(Debug, Default)]
pub struct Listeners {
    /// `http.listen`: the page, `status.json`, `/events`.
    pub public: Option<TcpListener>,
    /// `http.ops_listen`: metrics and probes.
    pub ops: Option<TcpListener>,
}

/// Binds a listening socket (port 0 picks a free one; see `local_addr`). Binding apart
/// from [`serve`] lets start-up fail early and tests learn the port.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves both listeners until `shutdown` is cancelled; open requests then get
/// [`SHUTDOWN_GRACE`]. Installs the metrics recorder if nobody has (see
/// [`crate::metrics::install`]).
pub async fn serve(
    listeners: Listeners,
    deps: HttpDeps,
    options: Options,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let metrics = crate::metrics::install();
    let tasks = CancellationToken::new();
    let _stop_tasks = tasks.clone().drop_guard();
    tokio::spawn(
        tasks
            .clone()
            .run_until_cancelled_owned(crate::metrics::track_state(deps.state.clone())),
    );
    let history = History::default();
    tokio::spawn(
        tasks
            .clone()
            .run_until_cancelled_owned(history.clone().follow(deps.state.clone())),
    );
    let (feed, fill) = feed::follow(deps.state.clone());
    tokio::spawn(tasks.clone().run_until_cancelled_owned(fill));
    let upkeep = metrics.clone();
    tokio::spawn(tasks.run_until_cancelled_owned(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    }));

    // Dropped when this returns: both servers stop, and with the feed the open streams end.
    let mut servers = tokio::task::JoinSet::new();
    if let Some(listener) = listeners.public {
        let addr = listener.local_addr()?;
        info!(%addr, "HTTP status page listening");
        let app = public::router(public::Public::new(
            deps.clone(),
            history,
            feed,
            &options,
            addr,
        ));
        servers.spawn(run(listener, options.public_limits, app, &shutdown));
    }
    if let Some(listener) = listeners.ops {
        let addr = listener.local_addr()?;
        info!(%addr, "HTTP metrics and probes listening");
        let app = ops_router(deps, metrics, &options);
        servers.spawn(run(listener, options.ops_limits, app, &shutdown));
    }
    let all = async {
        while let Some(done) = servers.join_next().await {
            done.map_err(io::Error::other)??;
        }
        Ok(())
    };
    tokio::select! {
        result = all => result,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    }
}

/// One listener served, with graceful shutdown.
fn run(
    listener: TcpListener,
    limits: Limits,
    app: Router,
    shutdown: &CancellationToken,
) -> impl std::future::Future<Output = io::Result<()>> + Send + 'static {
    axum::serve(GuardedListener::new(listener, limits), app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future()
}

/// The bounds every route shares: body limit and request timeout.
fn bounded(router: Router) -> Router {
    router
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

/// The operator's routes: metrics and probes, nothing else. Public so that tests can serve it
/// on their own listener.
pub fn ops_router(deps: HttpDeps, metrics: PrometheusHandle, options: &Options) -> Router {
    let app = Arc::new(Ops { deps, metrics });
    let hosts = Arc::new(options.allowed_hosts.clone());
    bounded(
        Router::new()
            .route("/metrics", get(prometheus))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .fallback(not_found)
            .with_state(app),
    )
    .layer(axum::middleware::from_fn_with_state(hosts, ops_host))
    .layer(axum::middleware::map_response(ops_headers))
}

struct Ops {
    deps: HttpDeps,
    metrics: PrometheusHandle,
}

type OpsState = State<Arc<Ops>>;

async fn ops_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The operator side is reached by address (the kubelet, Prometheus) or as `localhost`: a
/// name that resolves to it is DNS rebinding unless configured.
async fn ops_host(State(hosts): State<Arc<Vec<String>>>, request: Request, next: Next) -> Response {
    match public::host_of(&request) {
        Some(host)
            if host.parse::<std::net::IpAddr>().is_ok()
                || host == "localhost"
                || hosts.contains(&host) =>
        {
            next.run(request).await
        }
        Some(_) => plain(StatusCode::MISDIRECTED_REQUEST, "unknown host\n".into()),
        None => plain(StatusCode::BAD_REQUEST, "no host\n".into()),
    }
}

async fn prometheus(State(app): OpsState) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(app): OpsState) -> Response {
    probe(liveness(&app.deps, Instant::now()))
}

async fn readyz(State(app): OpsState) -> Response {
    probe(readiness(&app.deps))
}

pub(crate) async fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "not found\n".into())
}

/// Why the bridge is not alive, or `None` while it is: the driver's and the MQTT task's
/// channels are open and the driver ran within [`HEARTBEAT_MAX_AGE`].
pub fn liveness(deps: &HttpDeps, now: Instant) -> Option<String> {
    if deps.heartbeat.has_changed().is_err() || deps.state.has_changed().is_err() {
        return Some("the heater driver has stopped".into());
    }
    if deps.broker_connected.has_changed().is_err() {
        return Some("the MQTT task has stopped".into());
    }
    let age = now.saturating_duration_since(*deps.heartbeat.borrow());
    (age > HEARTBEAT_MAX_AGE)
        .then(|| format!("the heater driver last ran {:.1} s ago", age.as_secs_f64()))
}

/// Why the bridge is not ready, or `None` when it is connected to the broker and the
/// controller answers (online, and it has replied at least once).
pub fn readiness(deps: &HttpDeps) -> Option<String> {
    if !*deps.broker_connected.borrow() {
        return Some("not connected to the broker".into());
    }
    // `link` is `up` from the moment the port opens; answering also needs a reply.
    let answering = |s: &StateDoc| s.online() && s.updated_at.is_some();
    if !deps.state.borrow().as_ref().is_some_and(answering) {
        return Some("controller not answering".into());
    }
    None
}

fn probe(problem: Option<String>) -> Response {
    match problem {
        None => plain(StatusCode::OK, "ok\n".into()),
        Some(reason) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

pub(crate) fn plain(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}
