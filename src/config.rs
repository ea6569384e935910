//! Typed settings (SPEC §7): compiled-in defaults from `config/default.toml`, then the file,
//! then `COFFEEBOT__SECTION__KEY` environment variables; unknown keys and out-of-range values
//! are refused with one line naming the key.

use serde::{Deserialize, Serialize};

/// Every setting of the bridge. Field names are part of the product contract.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Identity of the coffee maker.
    pub device: Device,
    /// The controller's serial port and its cadence.
    pub serial: Serial,
    /// The MQTT broker connection and publication.
    pub mqtt: Mqtt,
    /// Home Assistant discovery.
    pub homeassistant: HomeAssistant,
    /// Brewing.
    pub brew: Brew,
    /// Keep warm after (or without) a brew.
    pub keep_warm: KeepWarm,
    /// Safety limits.
    pub safety: Safety,
    /// The reservoir's ultrasonic sensor.
    pub water: Water,
    /// The read-only HTTP server.
    pub http: Http,
}

/// `[device]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// `D` in topics and ids.
    pub id: String,
    /// Device name shown in Home Assistant.
    pub name: String,
}

/// `[serial]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Serial {
    /// Device path of the controller.
    pub port: String,
    /// Line speed.
    pub baud: u32,
    /// Largest gap between `B+1` while heating; < 1000.
    pub feed_interval_ms: u64,
    /// Largest gap between `S+?` while idle; < 5000.
    pub poll_interval_ms: u64,
}

/// `[mqtt]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id.
    pub client_id: String,
    /// User name; empty for none.
    pub username: String,
    /// Password; prefer `password_file` or `COFFEEBOT__MQTT__PASSWORD`. Never logged.
    pub password: String,
    /// File holding the password (one trailing newline trimmed); empty for none.
    pub password_file: String,
    /// `B` in topics.
    pub base_topic: String,
    /// Largest gap between state publications.
    pub state_interval_s: f64,
    /// Temperature change that counts as a change of state.
    pub temperature_deadband_c: f64,
    /// Water distance change that counts as a change of state.
    pub water_deadband_in: f64,
    /// MQTT keep-alive.
    pub keep_alive_s: u64,
    /// TLS; off while `ca_file` is empty.
    pub tls: Tls,
}

/// `[mqtt.tls]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// CA certificate (PEM); empty: plain TCP.
    pub ca_file: String,
    /// Client certificate (PEM); optional.
    pub client_cert: String,
    /// Client key (PEM); required with `client_cert`.
    pub client_key: String,
}

/// `[homeassistant]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistant {
    /// How discovery is published.
    pub discovery: Discovery,
    /// Discovery topic prefix.
    pub discovery_prefix: String,
}

/// `homeassistant.discovery`
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// One config topic per entity.
    Components,
    /// One device-based message (Home Assistant 2024.11+).
    Device,
    /// No discovery.
    Off,
}

/// `[brew]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Brew {
    /// Most cups a brew may ask for.
    pub max_cups: u32,
    /// Cups selected at start-up.
    pub default_cups: u32,
    /// Plate temperature that ends preheating.
    pub preheat_c: f64,
    /// Longest preheat before the brew is aborted.
    pub preheat_timeout_s: f64,
    /// Heating time per cup after preheating.
    pub seconds_per_cup: f64,
}

/// `[keep_warm]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeepWarm {
    /// Keep warm when a brew finishes.
    pub after_brew: bool,
    /// Thermostat set point.
    pub target_c: f64,
    /// Heater on below `target_c - hysteresis_c`.
    pub hysteresis_c: f64,
    /// Keep warm ends after this long.
    pub max_minutes: f64,
}

/// `[safety]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Safety {
    /// Longest continuous heater run.
    pub max_heater_on_s: f64,
    /// No valid reply for this long trips `stale_telemetry`.
    pub stale_after_s: f64,
    /// Plate temperature that trips `overtemp` (latched).
    pub max_plate_c: f64,
    /// Rise rate above 90 °C that trips `dry_boil`.
    pub max_rise_c_per_s: f64,
}

/// `[water]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Water {
    /// Whether the reservoir sensor is fitted and checked.
    pub enabled: bool,
    /// Distance at (or beyond) which the reservoir is empty.
    pub empty_distance_in: f64,
    /// Distance at which the reservoir is full.
    pub full_distance_in: f64,
}

/// `[http]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Listen address, e.g. `127.0.0.1:8080`; empty: no HTTP server.
    pub listen: String,
}
