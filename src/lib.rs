//! coffeebot: a bridge between a coffee maker's heater controller (USB serial) and MQTT.
//!
//! Data flows one way through the parts and back:
//!
//! ```text
//!  controller ──serial──▶ serial (owns the port) ──LinkEvent──▶ daemon ──▶ core (pure decisions)
//!      ▲                                                          │  ▲
//!      └──── one command line at a time ◀── Command ──────────────┘  │ Request
//!                                   state (watch) / events ──▶ mqtt ─┘   http (read-only)
//! ```
//!
//! - [`protocol`]: the controller's line protocol, pure encode/decode.
//! - [`core`]: the heater state machine; time and inputs in, serial commands and events out.
//!   It never does I/O and never reads a clock.
//! - [`serial`]: the task that owns the serial port and frames its lines.
//! - [`sim`]: the simulated controller (pure device model, thin pseudo-terminal shell).
//! - [`config`]: typed settings, layered loading, and validation driven by one row per key
//!   ([`config::KEYS`]); turns the settings into the core's [`core::Limits`].
//! - [`state`]: the state and event documents of SPEC §4: typed values that serialise to their
//!   JSON, pure. Labels for people live on the types (`Mode::label`, `Fault::label`).
//! - [`daemon`]: wires the tasks together and drives the core.
//! - [`mqtt`]: the task that owns the MQTT connection: state, events, commands, Home Assistant
//!   discovery; [`mqtt::command::CommandName`] is the one list of commands.
//! - [`schedule`]: the brew schedule (weekly entries, a coffee calendar): pure planning of
//!   when brews start; a start enters the core as an ordinary request.
//! - [`http`]: the read-only status page, `status.json`, metrics and health probes.
//! - [`metrics`]: the Prometheus recorder, build info and the cross-task measurements.
#![forbid(unsafe_code)]

pub mod config;
pub mod core;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod protocol;
pub mod schedule;
pub mod serial;
pub mod sim;
pub mod state;
