//! coffeebot: a bridge between a coffee maker's heater controller (USB serial) and MQTT.
//!
//! Data flows one way through the parts and back:
//!
//! ```text
//!  controller ──serial──▶ serial (owns the port) ──LinkEvent──▶ daemon ──▶ core (pure decisions)
//!      ▲                                                          │  ▲
//!      └──── one command line at a time ◀── Outgoing ─────────────┘  │ CommandIn
//!                                   state (watch) / events ──▶ mqtt ─┘
//!                                   state, heartbeat (watch) ──▶ http (read-only)
//! ```
//!
//! - [`bridge`]: the one entry point ([`bridge::run`]); builds every channel in one place and
//!   starts the tasks, each with its own small struct of channel ends. The daemon and the
//!   serial link run on a thread and runtime of their own, apart from MQTT and HTTP.
//!
//! - [`protocol`]: the controller's line protocol, pure encode/decode.
//! - [`core`]: the heater state machine; time and inputs in, serial commands and events out.
//!   It never does I/O and never reads a clock.
//! - [`serial`]: the task that owns the serial port and frames its lines.
//! - [`port`]: which device the controller is on: a path, or a USB identity looked up at every
//!   open.
//! - [`sim`]: the simulated controller (pure device model, thin pseudo-terminal shell).
//! - [`config`]: typed settings, layered loading, and validation driven by one row per key
//!   ([`config::KEYS`]); turns the settings into the core's [`core::Limits`].
//! - [`state`]: the state and event documents of SPEC §4: typed values that serialise to their
//!   JSON, pure. Labels for people live on the types (`Mode::label`, `Fault::label`).
//! - [`daemon`]: drives the core, reading the clock once per wake; starts the serial link.
//! - [`mqtt`]: the task that owns the MQTT connection: state, events, commands (it makes each
//!   [`mqtt::CommandIn`] and publishes its own rejections), Home Assistant discovery;
//!   [`mqtt::command::CommandName`] is the one list of commands.
//! - [`counters`]: household counters (cups, brews, heater time, energy, descale due) kept in
//!   a file across restarts, counted outside the core from its events.
//! - [`notify`]: systemd's READY/WATCHDOG/STATUS/STOPPING notifications, sent from the driver.
//! - [`schedule`]: the brew schedule (weekly entries, a coffee calendar): pure planning of
//!   when brews start; a start enters the core as an ordinary request.
//! - [`http`]: the read-only status page, `status.json`, metrics and health probes.
//! - [`metrics`]: every metric's name and help, declared once; the recorder; the serial task's
//!   line timings.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod config;
pub mod core;
pub mod counters;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod port;
pub mod protocol;
pub mod schedule;
pub mod serial;
pub mod sim;
pub mod state;
