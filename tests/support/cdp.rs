//! Headless Chromium driven through the DevTools protocol, for the browser tests that must
//! watch a page live (a stream open, the DOM changing) rather than dump it once: Chromium's
//! `--dump-dom` and `--screenshot` run on virtual time, which never ends while an
//! `EventSource` is open, and `--timeout` cuts it before the stream has delivered anything.
//!
//! The protocol runs over `--remote-debugging-pipe`: Chromium reads commands from its file
//! descriptor 3 and writes replies and events to descriptor 4, each message JSON ended by a NUL
//! byte. A shell started with piped stdin and stdout moves those pipes to 3 and 4 before it
//! `exec`s Chromium, so no port, no websocket and no `unsafe` are needed. Every wait has a
//! deadline; the browser is killed when its owner is dropped.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use super::child::spawn_reading;

/// Longest wait for a reply to one protocol command (a page load included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags every headless Chromium of the tests runs with: no sandbox, GPU, QUIC, first-run
/// page, background traffic or updates, and one language, so that runs are quiet and alike.
pub const HEADLESS_FLAGS: [&str; 11] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--lang=en-GB",
];

/// A new, empty profile directory `NAME-PID-RANDOM` under `scratch`, so that concurrent runs
/// never share one.
pub fn fresh_profile(scratch: &Path, name: &str) -> PathBuf {
    let profile = scratch.join(format!(
        "{name}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&profile).expect("a profile directory");
    profile
}

/// A running Chromium and the protocol connection to it.
pub struct Browser {
    child: Child,
    to: ChildStdin,
    from: mpsc::UnboundedReceiver<Value>,
    next_id: u64,
    /// Every event received so far (messages with a `method`), in order.
    pub events: Vec<Value>,
    profile: PathBuf,
}

/// One tab, attached: commands for it carry its session id.
#[derive(Clone, Debug)]
pub struct Tab {
    /// The flat-mode session of the tab's target.
    pub session: String,
}

impl Browser {
    /// Starts headless Chromium at `path` with a fresh profile under `scratch`.
    pub fn launch(path: &Path, scratch: &Path) -> Browser {
        let profile = fresh_profile(scratch, "chromium-cdp");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            // stdin becomes fd 3 (commands), stdout fd 4 (replies); Chromium's own output goes
            // to stderr, which is discarded.
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg(path)
            .args(HEADLESS_FLAGS)
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stderr(Stdio::null());
        let (tx, from) = mpsc::unbounded_channel();
        // Each message ends with a NUL byte; one that is not JSON is skipped.
        let mut child =
            spawn_reading(
                &mut command,
                "chromium",
                0,
                move |message| match serde_json::from_slice::<Value>(&message) {
                    Ok(value) => tx.send(value).is_ok(),
                    Err(_) => true,
                },
            );
        let to = child.stdin.take().expect("piped stdin");
        Browser {
            child,
            to,
            from,
            next_id: 0,
            events: Vec::new(),
            profile,
        }
    }

    /// Sends `method` (to the tab `session`, or to the browser) and waits for its reply; the
    /// result, or the protocol's error as text.
    pub async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.call_within(session, method, params, CALL_TIMEOUT)
            .await
    }

    /// [`Browser::call`] with its own deadline for the reply.
    pub async fn call_within(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        within: Duration,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("JSON");
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .and_then(|()| self.to.flush())
            .map_err(|e| format!("{method}: chromium is gone: {e}"))?;
        let deadline = Instant::now() + within;
        loop {
            let next = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.from.recv(),
            )
            .await
            .map_err(|_| format!("{method}: no reply within {within:?}"))?
            .ok_or_else(|| format!("{method}: chromium closed the pipe"))?;
            if next.get("id").and_then(Value::as_u64) == Some(id) {
                return match next.get("error") {
                    Some(error) => Err(format!("{method}: {error}")),
                    None => Ok(next.get("result").cloned().unwrap_or(Value::Null)),
                };
            }
            if next.get("method").is_some() {
                self.events.push(next);
            }
        }
    }

    /// A new tab on `about:blank`, attached, with the domains the tests read enabled
    /// (`Network` for the requests it makes, `Log`, `Runtime` and `Audits` for what it reports,
    /// `Page` for its load).
    pub async fn open_tab(&mut self) -> Tab {
        let created = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await
            .expect("a tab");
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": created["targetId"], "flatten": true }),
            )
            .await
            .expect("attached to the tab");
        let tab = Tab {
            session: attached["sessionId"]
                .as_str()
                .expect("a session id")
                .to_owned(),
        };
        for domain in ["Network", "Log", "Runtime", "Audits", "Page"] {
            self.call(Some(&tab.session), &format!("{domain}.enable"), json!({}))
                .await
                .expect("the domain enables");
        }
        tab
    }

    /// Loads `url` in `tab` and waits for its `load` event.
    pub async fn navigate(&mut self, tab: &Tab, url: &str) {
        let seen = self.events.len();
        self.call(Some(&tab.session), "Page.navigate", json!({ "url": url }))
            .await
            .expect("navigates");
        self.wait_event(tab, "Page.loadEventFired", seen).await;
    }

    /// Waits for an event `method` of `tab` among those received after the first `after`.
    pub async fn wait_event(&mut self, tab: &Tab, method: &str, after: usize) -> Value {
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let found = self.events[after.min(self.events.len())..]
                .iter()
                .find(|e| e["method"] == method && e["sessionId"] == tab.session.as_str());
            if let Some(found) = found {
                return found.clone();
            }
            let next = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.from.recv(),
            )
            .await
            .unwrap_or_else(|_| panic!("no {method} within {CALL_TIMEOUT:?}"))
            .expect("chromium runs");
            if next.get("method").is_some() {
                self.events.push(next);
            }
        }
    }

    /// Evaluates `expression` in the page (a promise is awaited) and returns its value.
    pub async fn eval(&mut self, tab: &Tab, expression: &str) -> Result<Value, String> {
        self.eval_within(tab, expression, CALL_TIMEOUT).await
    }

    async fn eval_within(
        &mut self,
        tab: &Tab,
        expression: &str,
        within: Duration,
    ) -> Result<Value, String> {
        let reply = self
            .call_within(
                Some(&tab.session),
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
                within + Duration::from_secs(5),
            )
            .await?;
        if let Some(exception) = reply.get("exceptionDetails") {
            return Err(exception.to_string());
        }
        Ok(reply["result"]["value"].clone())
    }

    /// Waits until the JavaScript expression `condition` is truthy in the page, watching the
    /// DOM for changes (a `MutationObserver`, no polling), for at most `within`; returns how
    /// long it took as the test saw it, or what `describe` (an expression) says at the end.
    pub async fn wait_until(
        &mut self,
        tab: &Tab,
        condition: &str,
        describe: &str,
        within: Duration,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        let ms = within.as_millis();
        let script = format!(
            "new Promise((resolve, reject) => {{
               let observer = null;
               const timer = setTimeout(() => {{
                 if (observer) observer.disconnect();
                 let said; try {{ said = String({describe}); }} catch (e) {{ said = String(e); }}
                 reject(new Error('not within {ms} ms: ' + said));
               }}, {ms});
               const check = () => {{
                 if ({condition}) {{
                   clearTimeout(timer);
                   if (observer) observer.disconnect();
                   resolve(true);
                   return true;
                 }}
                 return false;
               }};
               if (check()) return;
               observer = new MutationObserver(check);
               observer.observe(document, {{ subtree: true, childList: true, characterData: true, attributes: true }});
             }})"
        );
        self.eval_within(tab, &script, within).await?;
        Ok(started.elapsed())
    }

    /// The document of `tab` as HTML, read through the DOM domain (works with scripts off).
    pub async fn outer_html(&mut self, tab: &Tab) -> String {
        let document = self
            .call(Some(&tab.session), "DOM.getDocument", json!({ "depth": 0 }))
            .await
            .expect("the document");
        let html = self
            .call(
                Some(&tab.session),
                "DOM.getOuterHTML",
                json!({ "nodeId": document["root"]["nodeId"] }),
            )
            .await
            .expect("its HTML");
        html["outerHTML"].as_str().unwrap_or_default().to_owned()
    }

    /// URLs `tab` requested so far, with the resource type Chromium gave each
    /// (`EventSource`, `Fetch`, `Document`, …).
    pub fn requests(&self, tab: &Tab) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter(|e| {
                e["method"] == "Network.requestWillBeSent" && e["sessionId"] == tab.session.as_str()
            })
            .map(|e| {
                (
                    e["params"]["request"]["url"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    e["params"]["type"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// What `tab` reported about Content-Security-Policy: DevTools issues of that kind, and
    /// log or console messages that name the policy.
    pub fn csp_reports(&self, tab: &Tab) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["sessionId"] == tab.session.as_str())
            .filter(|e| {
                let text = e.to_string();
                (e["method"] == "Audits.issueAdded"
                    && e["params"]["issue"]["code"] == "ContentSecurityPolicyIssue")
                    || ((e["method"] == "Log.entryAdded"
                        || e["method"] == "Runtime.consoleAPICalled"
                        || e["method"] == "Runtime.exceptionThrown")
                        && text.contains("Content Security Policy"))
            })
            .map(Value::to_string)
            .collect()
    }

    /// Closes the browser, waiting (boundedly) for it to end.
    pub async fn close(mut self) {
        let _ = self
            .call_within(None, "Browser.close", json!({}), Duration::from_secs(5))
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After `Browser.close` Chromium is ending; otherwise (a failed test) it is killed.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
