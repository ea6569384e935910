//! The public side: the page (rendered with the current values, so it reads right without
//! JavaScript), its two asset files, `status.json` (with an `ETag` and a short public cache
//! life so a proxy can absorb viewers) and `/events` (Server-Sent Events of each published
//! state). Nothing else: operator paths are 404 here.
//!
//! Every response carries the security headers (a CSP that allows only the page's own files
//! and connections, `nosniff`, `no-referrer`, no framing) and nothing that names a version,
//! a path or a setting. Requests whose `Host` is not this server's (its address,
//! `localhost`, or a name in `http.allowed_hosts`) get 421, so a DNS-rebinding page cannot
//! read it from a visitor's browser.

use super::feed::{Feed, Snapshot};
use super::history::History;
use super::{bounded, not_found, page, plain, HttpDeps, Options};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The page may load its own script and style, connect to its own origin, nothing else.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";
/// How long a proxy or browser may reuse `status.json` (the state changes about every second
/// while brewing; the `ETag` makes revalidation cheap).
pub const STATUS_MAX_AGE_S: u32 = 1;
/// How long the assets may be cached: their URLs carry a hash of their contents.
const ASSET_CACHE: &str = "public, max-age=86400";
/// When `/events` is full, when to try again.
pub const RETRY_AFTER_S: u32 = 10;
/// How long a browser waits before reconnecting a closed stream.
const RECONNECT: Duration = Duration::from_secs(2);

/// The public side's shared state.
#[derive(Debug)]
pub struct Public {
    deps: HttpDeps,
    history: History,
    feed: Feed,
    streams: Arc<Semaphore>,
    hosts: Hosts,
    keep_alive: Duration,
    stream_lifetime: Duration,
}

impl Public {
    /// The public side of a server listening on `addr`.
    pub fn new(
        deps: HttpDeps,
        history: History,
        feed: Feed,
        options: &Options,
        addr: SocketAddr,
    ) -> Self {
        Self {
            deps,
            history,
            feed,
            streams: Arc::new(Semaphore::new(options.max_streams)),
            hosts: Hosts {
                ip: addr.ip(),
                names: options.allowed_hosts.clone(),
            },
            keep_alive: options.keep_alive,
            stream_lifetime: options.stream_lifetime,
        }
    }
}

/// Whom the public side answers.
#[derive(Clone, Debug)]
struct Hosts {
    /// The listen address: when unspecified (`0.0.0.0`), any address is this server's.
    ip: IpAddr,
    /// Configured names, lower case.
    names: Vec<String>,
}

impl Hosts {
    fn allows(&self, host: &str) -> bool {
        if host == "localhost" || self.names.iter().any(|name| name == host) {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => ip == self.ip || ip.is_loopback() || self.ip.is_unspecified(),
            Err(_) => false,
        }
    }
}

type Shared = State<Arc<Public>>;

/// The public routes with their bounds, host check and headers.
pub fn router(public: Public) -> Router {
    let app = Arc::new(public);
    bounded(
        Router::new()
            .route("/", get(status_page))
            .route("/status.json", get(status_json))
            .route("/events", get(events))
            .route(page::STYLE_PATH, get(style))
            .route(page::SCRIPT_PATH, get(script))
            .fallback(not_found)
            .with_state(Arc::clone(&app)),
    )
    .layer(axum::middleware::from_fn_with_state(app, check_host))
    .layer(axum::middleware::map_response(security_headers))
}

/// The host a request names (`Host`, or the authority of an absolute URI), lower case,
/// without its port; IPv6 addresses without brackets.
pub(crate) fn host_of(request: &Request) -> Option<String> {
    let raw = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok()?.to_owned(),
        None => request.uri().authority()?.as_str().to_owned(),
    };
    let raw = raw.trim().to_ascii_lowercase();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next()?.to_owned()
    } else {
        match raw.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_owned(),
            _ => raw,
        }
    };
    (!host.is_empty()).then_some(host)
}

async fn check_host(State(app): Shared, request: Request, next: Next) -> Response {
    match host_of(&request) {
        Some(host) if app.hosts.allows(&host) => next.run(request).await,
        Some(_) => plain(StatusCode::MISDIRECTED_REQUEST, "unknown host\n".into()),
        None => plain(StatusCode::BAD_REQUEST, "no host\n".into()),
    }
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn status_page(State(app): Shared) -> Response {
    let state = app.deps.state.borrow().clone();
    let html = page::render(
        &app.deps.title,
        state.as_ref(),
        &app.history.to_json(),
        SystemTime::now(),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", page::STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", page::SCRIPT)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, ASSET_CACHE),
        ],
        body,
    )
        .into_response()
}

/// Whether `If-None-Match` names `etag` (weak comparison, as RFC 9110 asks for it).
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

async fn status_json(State(app): Shared, headers: HeaderMap) -> Response {
    let snapshot = app.feed.borrow().clone();
    let Some(snapshot) = snapshot else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"no state yet: the bridge has not heard from the controller"}"#,
        )
            .into_response();
    };
    let etag = snapshot.etag();
    let cache = format!("public, max-age={STATUS_MAX_AGE_S}");
    let validators = [(header::ETAG, etag.clone()), (header::CACHE_CONTROL, cache)];
    if matches(&headers, &etag) {
        return (StatusCode::NOT_MODIFIED, validators).into_response();
    }
    (
        validators,
        [(header::CONTENT_TYPE, "application/json")],
        snapshot.json.clone(),
    )
        .into_response()
}

/// One `/events` stream: its slot, where it is in the feed, and when it ends.
struct Stream {
    _slot: OwnedSemaphorePermit,
    feed: Feed,
    /// The id the client already has (`Last-Event-ID`), until the first event is decided.
    seen: Option<Option<String>>,
    ends: Instant,
}

async fn events(State(app): Shared, headers: HeaderMap) -> Response {
    let Ok(slot) = Arc::clone(&app.streams).try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, RETRY_AFTER_S.to_string())],
            "too many viewers; try again later\n",
        )
            .into_response();
    };
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let stream = Stream {
        _slot: slot,
        feed: app.feed.clone(),
        seen: Some(last),
        ends: Instant::now() + app.stream_lifetime,
    };
    let body = futures_util::stream::unfold(stream, next_event);
    let keep_alive = KeepAlive::new().interval(app.keep_alive).text("keep-alive");
    let mut response = Sse::new(body).keep_alive(keep_alive).into_response();
    // nginx buffers responses unless told not to.
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

/// The next event of a stream: the current state at once (unless the client has it), then
/// each new one; only the latest is ever held, so a slow reader skips states instead of
/// queueing them. `None` ends the stream (its lifetime is over, or the bridge stops).
async fn next_event(mut stream: Stream) -> Option<(Result<Event, Infallible>, Stream)> {
    if let Some(seen) = stream.seen.take() {
        let current = stream.feed.borrow_and_update().clone();
        if let Some(snapshot) = current {
            if seen.as_deref() != Some(snapshot.id.as_str()) {
                return Some((Ok(event(&snapshot).retry(RECONNECT)), stream));
            }
        }
    }
    loop {
        tokio::select! {
            changed = stream.feed.changed() => changed.ok()?,
            () = tokio::time::sleep_until(stream.ends) => return None,
        }
        let current = stream.feed.borrow_and_update().clone();
        if let Some(snapshot) = current {
            return Some((Ok(event(&snapshot)), stream));
        }
    }
}

fn event(snapshot: &Snapshot) -> Event {
    // Ids are hex and digits, the JSON has no line breaks: nothing here can make `Event` panic.
    Event::default().id(&snapshot.id).data(&snapshot.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: Option<&str>, uri: &str) -> Request {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn host_is_read_without_port_and_in_lower_case() {
        assert_eq!(
            host_of(&request(Some("Coffee.Example.org:8080"), "/")).as_deref(),
            Some("coffee.example.org")
        );
        assert_eq!(
            host_of(&request(Some("[::1]:8080"), "/")).as_deref(),
            Some("::1")
        );
        assert_eq!(
            host_of(&request(None, "http://10.0.0.1:80/")).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(host_of(&request(None, "/")), None);
        assert_eq!(host_of(&request(Some(""), "/")), None);
    }

    #[test]
    fn only_this_server_and_configured_names_are_allowed() {
        let hosts = Hosts {
            ip: "192.168.1.5".parse().unwrap(),
            names: vec!["coffee.example.org".into()],
        };
        for ok in [
            "localhost",
            "127.0.0.1",
            "::1",
            "192.168.1.5",
            "coffee.example.org",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in ["evil.example", "192.168.1.6", "coffee.example.org.evil", ""] {
            assert!(!hosts.allows(bad), "{bad}");
        }
        let any = Hosts {
            ip: "0.0.0.0".parse().unwrap(),
            names: Vec::new(),
        };
        assert!(any.allows("10.1.2.3") && !any.allows("rebind.example"));
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
            headers
        };
        assert!(matches(&with("\"a-1\""), "\"a-1\""));
        assert!(matches(&with("W/\"a-1\""), "\"a-1\""));
        assert!(matches(&with("\"x\", \"a-1\""), "\"a-1\""));
        assert!(matches(&with("*"), "\"a-1\""));
        assert!(!matches(&with("\"a-2\""), "\"a-1\""));
        assert!(!matches(&HeaderMap::new(), "\"a-1\""));
    }
}
