//! The soak's invariant checker: it watches the simulated controller itself (every command
//! line the firmware handled, the relay, the plate, boots, the plug) rather than what the
//! bridge says, so a bridge that reports well but heats wrongly is caught.
//!
//! Invariants (SPEC §3):
//! - no `B+1` reaches the controller while heating is not allowed: after an interlock
//!   condition (plate at or above `safety.max_plate_c`, a sensor error, a controller reboot, an
//!   unplug) or after the program ended, until the next start command;
//! - the relay is never on longer than `safety.max_heater_on_s` in one run;
//! - while heating, consecutive `B+1` arrive within the feed target (gaps are recorded; a gap
//!   spanning an injected controller fault is set aside, since the fault is what stops them).
//!
//! Each rule allows [`GRACE`] after the moment it starts to hold: the bridge learns of a
//! change from the controller's next reply, and the DS18B20 reports a conversion up to 0.8 s
//! late.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use coffeebot::sim::SimHandle;
use tokio::task::JoinHandle;

/// Time the bridge has to act on a condition (see the module doc).
pub(crate) const GRACE: Duration = Duration::from_millis(2000);
/// Slack on the relay's run-time limit: one feed, one reply, a loaded machine.
pub(crate) const LIMIT_SLACK: Duration = Duration::from_millis(1500);
/// Gaps longer than this are listed with their time: 1.2 × the feed interval.
const LATE: Duration = Duration::from_millis(300);
/// A gap set aside when a controller fault was injected this long before it started.
const DISTURBANCE_REACH: Duration = Duration::from_secs(1);

/// What the checker found so far.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Broken invariants, each with the soak time (s) it happened at.
    pub(crate) violations: Vec<String>,
    /// `B+1` lines handled while heating was not allowed (each episode is one violation).
    pub(crate) feeds_while_denied: u64,
    /// Gaps between consecutive `B+1` handled by the controller while heating.
    pub(crate) feed_gaps: Vec<Duration>,
    /// Gaps over [`LATE`]: soak time (s) of the feed that ended them, and the gap (ms).
    pub(crate) late_gaps: Vec<(f64, f64)>,
    /// Gaps set aside because a controller fault was injected during them.
    pub(crate) gaps_set_aside: u64,
    /// Lines the controller handled, by kind.
    pub(crate) feeds: u64,
    pub(crate) offs: u64,
    pub(crate) polls: u64,
    pub(crate) resets: u64,
    /// Relay-on time and the longest single run, from the simulated relay.
    pub(crate) relay_on_total: Duration,
    pub(crate) longest_on: Duration,
    /// Interlock conditions the checker saw start (overtemp, sensor error, reboots, unplugs).
    pub(crate) trips_seen: u64,
    /// Controller boots seen (reboots, power-ons after a replug).
    pub(crate) boots: u64,
}

/// Shared state of the checker and the driver.
#[derive(Debug)]
struct State {
    started: Instant,
    /// Heating is allowed (a start command was sent and its program has not ended).
    allowed: bool,
    /// When it stopped being allowed, and why.
    denied_since: Option<(Instant, String)>,
    /// A `B+1` while denied was reported in this episode already.
    reported: bool,
    /// The latest controller fault the driver injected.
    disturbed_at: Option<Instant>,
    /// The previous handled line was this `B+1`.
    last_feed: Option<Instant>,
    relay_on_since: Option<Instant>,
    findings: Findings,
}

/// The checker: a task over the simulator's streams, and the driver's handle to it.
pub(crate) struct Monitor {
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Monitor {
    /// Starts watching `sim`; `max_plate_c` and `max_on` are the bridge's limits.
    pub(crate) fn start(
        sim: &SimHandle,
        started: Instant,
        max_plate_c: f64,
        max_on: Duration,
    ) -> Monitor {
        let state = Arc::new(Mutex::new(State {
            started,
            allowed: false,
            denied_since: Some((started, "start-up".to_owned())),
            reported: false,
            disturbed_at: None,
            last_feed: None,
            relay_on_since: None,
            findings: Findings::default(),
        }));
        let task = tokio::spawn(watch(sim.clone(), state.clone(), max_plate_c, max_on));
        Monitor { state, task }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A start command is about to be sent: heating is allowed until it ends.
    pub(crate) fn allow(&self) {
        let mut s = self.lock();
        s.allowed = true;
        s.denied_since = None;
        s.reported = false;
    }

    /// The program is over (the bridge said so at `at`): no `B+1` from `at + GRACE` on.
    pub(crate) fn deny(&self, at: Instant, why: &str) {
        deny(&mut self.lock(), at, why);
    }

    /// A controller fault is being injected now: feed gaps around it are set aside.
    pub(crate) fn disturbed(&self) {
        self.lock().disturbed_at = Some(Instant::now());
    }

    /// Records a broken invariant the driver found (a missing event, a counter going back).
    pub(crate) fn violation(&self, what: String) {
        violation(&mut self.lock(), Instant::now(), what);
    }

    /// The violations so far.
    pub(crate) fn violations(&self) -> usize {
        self.lock().findings.violations.len()
    }

    /// Stops watching and hands over the findings, a relay still on counted up to now.
    pub(crate) fn finish(self) -> Findings {
        self.task.abort();
        let mut s = self.lock();
        if let Some(since) = s.relay_on_since.take() {
            let run = since.elapsed();
            s.findings.relay_on_total += run;
            s.findings.longest_on = s.findings.longest_on.max(run);
        }
        std::mem::take(&mut s.findings)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic elsewhere cannot leave the counts half-updated in a way that matters here.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn deny(s: &mut State, at: Instant, why: &str) {
    if s.allowed || s.denied_since.is_none() {
        s.denied_since = Some((at, why.to_owned()));
        s.reported = false;
    }
    s.allowed = false;
}

fn violation(s: &mut State, at: Instant, what: String) {
    let t = at.saturating_duration_since(s.started).as_secs_f64();
    let line = format!("{t:8.1} s: {what}");
    crate::say(&format!("VIOLATION at {line}"));
    s.findings.violations.push(line);
}

/// The checker's task: every handled line, and the device after every simulator step.
async fn watch(sim: SimHandle, state: Arc<Mutex<State>>, max_plate_c: f64, max_on: Duration) {
    let mut commands = sim.commands();
    let mut device = sim.watch();
    let mut prev = device.borrow_and_update().clone();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            event = commands.next(Duration::from_secs(3600)) => {
                let Some(event) = event else { continue };
                let mut s = lock(&state);
                match event.line.as_str() {
                    "B+1" => on_feed(&mut s, event.at),
                    other => {
                        match other {
                            "B+0" => s.findings.offs += 1,
                            "S+?" => s.findings.polls += 1,
                            _ => s.findings.resets += 1,
                        }
                        s.last_feed = None;
                    }
                }
            }
            changed = device.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = device.borrow_and_update().clone();
                let at = Instant::now();
                let mut s = lock(&state);
                let (a, b) = (&prev.device, &now.device);
                if b.boots > a.boots {
                    s.findings.boots += b.boots - a.boots;
                    trip(&mut s, at, "controller booted");
                }
                if prev.plugged && !now.plugged {
                    trip(&mut s, at, "unplugged");
                }
                if b.crc_error && !a.crc_error {
                    trip(&mut s, at, "sensor error");
                }
                if b.plate_c >= max_plate_c && a.plate_c < max_plate_c {
                    trip(&mut s, at, "overtemp");
                }
                if b.heater_on && !a.heater_on {
                    s.relay_on_since = Some(at);
                } else if !b.heater_on && a.heater_on {
                    if let Some(since) = s.relay_on_since.take() {
                        let run = at - since;
                        s.findings.relay_on_total += run;
                        s.findings.longest_on = s.findings.longest_on.max(run);
                    }
                }
                prev = now;
            }
            _ = tick.tick() => {
                let mut s = lock(&state);
                if let Some(since) = s.relay_on_since {
                    let run = since.elapsed();
                    if run > max_on + LIMIT_SLACK {
                        let at = Instant::now();
                        violation(&mut s, at, format!(
                            "relay on for {:.1} s in one run (limit {} s)",
                            run.as_secs_f64(), max_on.as_secs()
                        ));
                        // Once per run: count it from here on as a new run.
                        s.relay_on_since = Some(at);
                    }
                }
            }
        }
    }
}

/// An interlock condition began at `at`: heating ends.
fn trip(s: &mut State, at: Instant, why: &str) {
    s.findings.trips_seen += 1;
    deny(s, at, why);
    s.last_feed = None;
}

/// A `B+1` the controller handled at `at`.
fn on_feed(s: &mut State, at: Instant) {
    s.findings.feeds += 1;
    if !s.allowed {
        if let Some((since, why)) = &s.denied_since {
            if at > *since + GRACE {
                s.findings.feeds_while_denied += 1;
                if !s.reported {
                    let what = format!(
                        "B+1 handled {:.2} s after heating ended ({why})",
                        (at - *since).as_secs_f64()
                    );
                    s.reported = true;
                    violation(s, at, what);
                }
            }
        }
    }
    if let Some(prev) = s.last_feed {
        let disturbed = s
            .disturbed_at
            .is_some_and(|d| d + DISTURBANCE_REACH >= prev && d <= at);
        if disturbed {
            s.findings.gaps_set_aside += 1;
        } else {
            let gap = at.saturating_duration_since(prev);
            s.findings.feed_gaps.push(gap);
            if gap > LATE && s.findings.late_gaps.len() < 1000 {
                let t = at.saturating_duration_since(s.started).as_secs_f64();
                s.findings.late_gaps.push((t, gap.as_secs_f64() * 1000.0));
            }
        }
    }
    s.last_feed = Some(at);
}
