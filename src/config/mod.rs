//! Typed settings (SPEC §7): compiled-in defaults from `config/default.toml`, then the file,
//! then `COFFEEBOT__SECTION__KEY` environment variables; unknown keys and out-of-range values
//! are refused with one line naming the key.
//!
//! The parts, one job each: the settings structs (here), what each key allows and why
//! ([`keys`]: one row per key, the only place bounds are written), [`load`] (layers, unknown
//! keys, types), `validate` (the rows and relations applied), [`ConfigError`] (one line per
//! problem). Defaults live only in `config/default.toml`, compiled in as [`DEFAULTS`]. The MQTT
//! password never appears in `Debug`, `Serialize`, [`Settings::to_toml_string`] or an error.

mod error;
pub mod keys;
mod load;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::core::Limits;

pub use error::ConfigError;
pub use keys::{key, Key, KEYS};
pub use load::{load, load_with};

/// The compiled-in defaults: every key, with its default value.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

/// The sysexits code for a bad configuration (`EX_CONFIG`).
pub const EX_CONFIG: i32 = 78;

/// What [`Settings::redacted`] and every printout put in place of a password.
pub const REDACTED: &str = "<redacted>";

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
    /// The heater itself.
    pub heater: Heater,
    /// Maintenance reminders.
    pub maintenance: Maintenance,
    /// The household counters' file.
    pub counters: CountersFile,
    /// Brewing on schedule.
    pub schedule: Schedule,
}

/// `[heater]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Heater {
    /// Rated power of the hot plate: relay-on time × watts estimates the energy used.
    pub watts: f64,
}

/// `[maintenance]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// Descaling is due after this many brews; 0: never.
    pub descale_every_brews: u64,
}

/// `[counters]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CountersFile {
    /// Directory of `counters.json` and the schedule's `schedule.json`; empty: neither is kept
    /// across restarts.
    pub state_dir: String,
    /// Longest time between writes of the file while counters change.
    pub save_interval_s: f64,
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
    /// Allow heating with a controller build that has no 1 s heater timeout (MrCoffeeBot
    /// 05a9a00, three-line replies): a dead bridge would leave its heater on up to 5 s.
    pub allow_firmware_without_heater_timeout: bool,
}

/// `[mqtt]`. Its `Debug` and `Serialize` never show the password.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id, or its prefix while `client_id_suffix` is on.
    pub client_id: String,
    /// Append a random suffix to `client_id` at every connect, so that no other client can
    /// guess the id and take the bridge's session over.
    pub client_id_suffix: bool,
    /// User name; empty for none.
    pub username: String,
    /// Password; prefer `password_file` or `COFFEEBOT__MQTT__PASSWORD`. Never logged.
    #[serde(serialize_with = "serialize_redacted")]
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
    /// Public listen address (page, `status.json`, `/events`), e.g. `127.0.0.1:8080`; empty:
    /// no public server.
    pub listen: String,
    /// Operator listen address (`/metrics`, `/healthz`, `/readyz`); empty: none.
    pub ops_listen: String,
    /// Host names the public side answers besides its own address and `localhost`,
    /// separated by commas.
    pub allowed_hosts: String,
    /// Most `/events` streams open at once.
    pub max_streams: u32,
    /// Most connections at once from one address on the public side.
    pub max_connections_per_peer: u32,
}

/// `[schedule]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Whether scheduled brews start (the `schedule/set` command switches it, kept until this
    /// value is changed).
    pub enabled: bool,
    /// IANA zone of the weekly entries and floating calendar times; empty: the machine's.
    pub timezone: String,
    /// iCalendar source: a file path or an http(s) URL; empty for none.
    pub calendar: String,
    /// How often the calendar is read again.
    pub calendar_refresh_s: f64,
    /// A start missed by more than this is skipped.
    pub max_late_s: f64,
    /// Expected preheat before the pot has a history.
    pub default_preheat_s: f64,
    /// `[[schedule.brew]]`: weekly entries.
    pub brew: Vec<WeeklyBrew>,
}

/// One `[[schedule.brew]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeeklyBrew {
    /// Weekdays: `mon` … `sun`.
    pub days: Vec<String>,
    /// Local wall-clock time the coffee is ready, `HH:MM`.
    pub ready_at: String,
    /// Cups; `brew.default_cups` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cups: Option<u32>,
}

/// Serialises a password as [`REDACTED`] (or empty when there is none).
fn serialize_redacted<S: Serializer>(password: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(redact(password))
}

/// [`REDACTED`] for a non-empty password, else the empty string.
fn redact(password: &str) -> &'static str {
    if password.is_empty() {
        ""
    } else {
        REDACTED
    }
}

impl fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mqtt")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("client_id_suffix", &self.client_id_suffix)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("password_file", &self.password_file)
            .field("base_topic", &self.base_topic)
            .field("state_interval_s", &self.state_interval_s)
            .field("temperature_deadband_c", &self.temperature_deadband_c)
            .field("water_deadband_in", &self.water_deadband_in)
            .field("keep_alive_s", &self.keep_alive_s)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for Settings {
    /// The compiled-in defaults (valid: the tests check it).
    fn default() -> Self {
        // Not input: the compiled-in defaults, which the tests load and validate.
        load_with(None, &[]).expect("the compiled-in defaults load")
    }
}

impl Settings {
    /// The MQTT password: `mqtt.password` if set (the file or `COFFEEBOT__MQTT__PASSWORD`),
    /// else the contents of `mqtt.password_file` without one trailing newline, else `None`.
    pub fn mqtt_password(&self) -> Result<Option<String>, ConfigError> {
        if !self.mqtt.password.is_empty() {
            return Ok(Some(self.mqtt.password.clone()));
        }
        if self.mqtt.password_file.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(&self.mqtt.password_file);
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::PasswordFile {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let password = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        if password.is_empty() {
            return Err(ConfigError::PasswordFile {
                path,
                message: "the file is empty".to_owned(),
            });
        }
        Ok(Some(password.to_owned()))
    }

    /// A copy with a non-empty password replaced by [`REDACTED`], for printing.
    pub fn redacted(&self) -> Settings {
        let mut copy = self.clone();
        copy.mqtt.password = redact(&self.mqtt.password).to_owned();
        copy
    }

    /// The settings as TOML, sections in the order of `config/default.toml` (the order of the
    /// fields), the password always redacted (for `check-config`).
    pub fn to_toml_string(&self) -> String {
        // Plain strings, numbers, booleans and tables: nothing here that TOML cannot hold.
        toml::to_string(&self.redacted()).unwrap_or_else(|e| format!("# not printable: {e}\n"))
    }
}

impl Tls {
    /// Whether TLS is on (a CA file is set).
    pub fn enabled(&self) -> bool {
        !self.ca_file.is_empty()
    }
}

impl Http {
    /// The address to listen on, or `None` when the HTTP server is off (or the address is
    /// invalid, which [`Settings::validate`] refuses).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    /// The operator address, or `None` when it is off (or invalid, which validation refuses).
    pub fn ops_listen_addr(&self) -> Option<SocketAddr> {
        self.ops_listen.parse().ok()
    }

    /// The names of `allowed_hosts`, trimmed, lower case, empty ones left out.
    pub fn allowed_host_names(&self) -> Vec<String> {
        self.allowed_hosts
            .split(',')
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect()
    }
}

/// Seconds (validated: finite, positive, bounded) as a `Duration`.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::ZERO)
}

impl From<&Settings> for Limits {
    /// The core's limits from validated settings, in the units the core computes with.
    fn from(s: &Settings) -> Self {
        Limits {
            feed_interval: Duration::from_millis(s.serial.feed_interval_ms),
            poll_interval: Duration::from_millis(s.serial.poll_interval_ms),
            allow_firmware_without_heater_timeout: s.serial.allow_firmware_without_heater_timeout,
            max_cups: s.brew.max_cups,
            default_cups: s.brew.default_cups,
            preheat_c: s.brew.preheat_c,
            preheat_timeout: seconds(s.brew.preheat_timeout_s),
            seconds_per_cup: s.brew.seconds_per_cup,
            keep_warm_after_brew: s.keep_warm.after_brew,
            keep_warm_target_c: s.keep_warm.target_c,
            keep_warm_hysteresis_c: s.keep_warm.hysteresis_c,
            keep_warm_max: seconds(s.keep_warm.max_minutes * 60.0),
            max_heater_on: seconds(s.safety.max_heater_on_s),
            stale_after: seconds(s.safety.stale_after_s),
            max_plate_c: s.safety.max_plate_c,
            max_rise_c_per_s: s.safety.max_rise_c_per_s,
            water_enabled: s.water.enabled,
            empty_distance_in: s.water.empty_distance_in,
            full_distance_in: s.water.full_distance_in,
        }
    }
}
