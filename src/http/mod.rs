//! Read-only HTTP (SPEC §6): the live status page, `status.json`, Prometheus metrics, and the
//! liveness and readiness probes Kubernetes watches.
//!
//! It holds only `watch` receivers ([`HttpDeps`]): nothing here can send a command, and every
//! route answers `GET` (and `HEAD`) alone — other methods get 405 with `Allow`, other paths
//! 404. Requests are bounded so a slow or hostile client cannot exhaust the bridge: a tiny
//! body limit, a per-request timeout, and at the socket ([`listener`]) a cap on connections,
//! an idle timeout (which also bounds reading the headers) and a connection lifetime.

pub mod history;
pub mod listener;
pub mod page;

use crate::state::StateDoc;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
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
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::info;

/// What one client may hold at the socket.
pub const LIMITS: Limits = Limits {
    connections: 64,
    idle: Duration::from_secs(10),
    lifetime: Duration::from_secs(300),
};
/// Longest time a request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body accepted (no route reads one).
pub const BODY_LIMIT_BYTES: usize = 1024;
/// `/healthz` fails when the driver has not ticked for longer (it ticks every 250 ms).
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(1);
/// After shutdown, how long open requests may take before the server stops regardless.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// How often the metrics recorder drains histogram samples when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The HTTP server's ends of its channels, all read-only views (built with the others by
/// [`crate::bridge::channels`]). Dropping them costs the other tasks nothing.
#[derive(Clone, Debug)]
pub struct HttpDeps {
    /// The page's title (`device.name`).
    pub title: String,
    /// The state document the MQTT side publishes; the driver holds the sender, and its
    /// closing (the driver has finished) fails `/healthz`.
    pub state: watch::Receiver<Option<StateDoc>>,
    /// When the driver last ran; the driver holds the sender, and its closing fails `/healthz`.
    pub heartbeat: watch::Receiver<Instant>,
    /// Whether the MQTT task is connected; that task holds the sender, and its closing fails
    /// `/healthz`.
    pub broker_connected: watch::Receiver<bool>,
}

/// Binds the listening socket (port 0 picks a free one; see `local_addr`). Binding apart
/// from [`serve`] lets start-up fail early and tests learn the port.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` is cancelled; open requests then get [`SHUTDOWN_GRACE`]. Installs
/// the metrics recorder if nobody has (see [`crate::metrics::install`]).
pub async fn serve(
    listener: TcpListener,
    deps: HttpDeps,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(listener, deps, shutdown, LIMITS).await
}

/// [`serve`] with other socket [`Limits`] (tests use short ones).
pub async fn serve_with(
    listener: TcpListener,
    deps: HttpDeps,
    shutdown: CancellationToken,
    limits: Limits,
) -> io::Result<()> {
    let metrics = crate::metrics::install();
    let addr = listener.local_addr()?;
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
    let upkeep = metrics.clone();
    tokio::spawn(tasks.run_until_cancelled_owned(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    }));

    info!(%addr, "HTTP status page, metrics and health listening");
    let server = axum::serve(
        GuardedListener::new(listener, limits),
        router(deps, metrics, history),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        result = server.into_future() => result,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    }
}

/// The routes, with their bounds. Public so that tests can serve it on their own listener.
pub fn router(deps: HttpDeps, metrics: PrometheusHandle, history: History) -> Router {
    let app = Arc::new(App {
        deps,
        metrics,
        history,
    });
    Router::new()
        .route("/", get(status_page))
        .route("/status.json", get(status_json))
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(app)
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::map_response(common_headers))
}

struct App {
    deps: HttpDeps,
    metrics: PrometheusHandle,
    history: History,
}

type Shared = State<Arc<App>>;

async fn common_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The page may run its own inline script and style and fetch from its own origin, nothing else.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

async fn status_page(State(app): Shared) -> Response {
    let state = app.deps.state.borrow().clone();
    let html = page::render(
        &app.deps.title,
        state.as_ref(),
        &app.history.to_json(),
        SystemTime::now(),
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
        ],
        html,
    )
        .into_response()
}

async fn status_json(State(app): Shared) -> Response {
    let json = app.deps.state.borrow().as_ref().map(StateDoc::to_json);
    match json {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"no state yet: the bridge has not heard from the controller"}"#,
        )
            .into_response(),
    }
}

async fn prometheus(State(app): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(app): Shared) -> Response {
    probe(liveness(&app.deps, Instant::now()))
}

async fn readyz(State(app): Shared) -> Response {
    probe(readiness(&app.deps))
}

async fn not_found() -> Response {
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

fn plain(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}
