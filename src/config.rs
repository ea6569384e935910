//! Typed settings (SPEC §7): compiled-in defaults from `config/default.toml`, then the file,
//! then `COFFEEBOT__SECTION__KEY` environment variables; unknown keys and out-of-range values
//! are refused with one line naming the key.
//!
//! [`load`] reads and validates everything at once; [`LIMITS`] says what each checked key
//! allows and why. The MQTT password never appears in `Debug`, `Serialize`,
//! [`Settings::to_toml_string`] or an error message.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize, Serializer};

/// The compiled-in defaults: every key, with its default value.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// The sysexits code for a bad configuration (`EX_CONFIG`).
pub const EX_CONFIG: i32 = 78;

/// What [`Settings::redacted`] and every printout put in place of a password.
pub const REDACTED: &str = "<redacted>";

/// Prefix of the environment variables that override settings, before `__SECTION__KEY`.
const ENV_PREFIX: &str = "COFFEEBOT";

/// Separator between the prefix, sections and key in environment variable names.
const ENV_SEPARATOR: &str = "__";

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
    /// MQTT client id.
    pub client_id: String,
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
    /// Listen address, e.g. `127.0.0.1:8080`; empty: no HTTP server.
    pub listen: String,
}

/// Why the configuration cannot be used. Each variant displays as one line naming the key
/// (or the file) and what is allowed, except [`ConfigError::Several`], one such line each.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file given with `--config` or `COFFEEBOT_CONFIG`.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("{origin} is not valid TOML: {message}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// The parser's complaint, on one line.
        message: String,
    },
    /// An environment variable could not be used as a setting.
    #[error("environment variable {name}: {message}")]
    Env {
        /// The variable's name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// A key that no setting has (often a typo).
    #[error("unknown key {key} ({origin}): {allowed}")]
    UnknownKey {
        /// The dotted key, e.g. `mqtt.pasword`.
        key: String,
        /// The file or environment variable that set it.
        origin: String,
        /// The keys that exist where it was found.
        allowed: String,
    },
    /// A value of the wrong type, e.g. text where a number belongs.
    #[error("{key}: {message}")]
    Type {
        /// The dotted key.
        key: String,
        /// What was expected and found.
        message: String,
    },
    /// A number outside its allowed range.
    #[error("{key} = {value} is out of range: allowed {allowed} ({reason})")]
    OutOfRange {
        /// The dotted key.
        key: String,
        /// The value as configured.
        value: String,
        /// The allowed range, e.g. `50..=999`.
        allowed: String,
        /// Why the limit exists.
        reason: String,
    },
    /// A text value that is not allowed (bad characters, empty, missing companion setting).
    #[error("{key} = {value} is not allowed: allowed {allowed} ({reason})")]
    Invalid {
        /// The dotted key.
        key: String,
        /// The value as configured, quoted.
        value: String,
        /// What is allowed.
        allowed: String,
        /// Why.
        reason: String,
    },
    /// `mqtt.password_file` could not be read or is empty.
    #[error("mqtt.password_file {}: {message}", path.display())]
    PasswordFile {
        /// The file named by `mqtt.password_file`.
        path: PathBuf,
        /// Why it cannot be used.
        message: String,
    },
    /// More than one problem; each displays on its own line.
    #[error("{}", join_lines(.0))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// The dotted key this error is about, if it is about one key (for `check-config`).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::Type { key, .. }
            | ConfigError::OutOfRange { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::PasswordFile { .. } => Some("mqtt.password_file"),
            ConfigError::Several(errors) => errors.first().and_then(ConfigError::key),
            ConfigError::Read { .. } | ConfigError::Parse { .. } | ConfigError::Env { .. } => None,
        }
    }

    /// Every single problem in this error, in order ([`ConfigError::Several`] flattened).
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(errors) => errors.iter().flat_map(ConfigError::problems).collect(),
            single => vec![single],
        }
    }

    /// One error for a list of problems: the problem itself when there is only one.
    fn from_list(mut errors: Vec<ConfigError>) -> ConfigError {
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            ConfigError::Several(errors)
        }
    }

    /// A numeric value outside the limit documented in [`LIMITS`] for `key`.
    fn out_of_range(key: &str, value: impl fmt::Display, allowed: impl Into<String>) -> Self {
        ConfigError::OutOfRange {
            key: key.to_owned(),
            value: value.to_string(),
            allowed: allowed.into(),
            reason: reason_for(key).to_owned(),
        }
    }

    /// A text value not allowed by the limit documented in [`LIMITS`] for `key`.
    fn invalid(key: &str, value: &str) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            value: format!("{value:?}"),
            allowed: limit(key)
                .map_or("see the documentation", |l| l.allowed)
                .to_owned(),
            reason: reason_for(key).to_owned(),
        }
    }
}

/// The lines of several errors, one each.
fn join_lines(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// What one checked key allows, and why. [`LIMITS`] lists them all.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// The dotted key, e.g. `serial.feed_interval_ms`.
    pub key: &'static str,
    /// What is allowed, as shown to people, e.g. `50..=999`.
    pub allowed: &'static str,
    /// Why.
    pub reason: &'static str,
    /// The numeric bounds behind `allowed`, when they are constants.
    range: Option<Range>,
}

/// Numeric bounds; the maximum is always inclusive.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Range {
    /// Smallest value.
    min: f64,
    /// Whether `min` itself is excluded (`> min` rather than `>= min`).
    min_excluded: bool,
    /// Largest value allowed.
    max: f64,
}

impl Range {
    /// Whether `value` lies inside; `NaN` never does.
    fn contains(self, value: f64) -> bool {
        let above = if self.min_excluded {
            value > self.min
        } else {
            value >= self.min
        };
        above && value <= self.max
    }
}

/// A row of [`LIMITS`] with constant bounds `min..=max`.
const fn range(
    key: &'static str,
    min: f64,
    max: f64,
    allowed: &'static str,
    reason: &'static str,
) -> Limit {
    Limit {
        key,
        allowed,
        reason,
        range: Some(Range {
            min,
            min_excluded: false,
            max,
        }),
    }
}

/// A row of [`LIMITS`] with constant bounds `> 0` and `<= max`.
const fn positive(
    key: &'static str,
    max: f64,
    allowed: &'static str,
    reason: &'static str,
) -> Limit {
    Limit {
        key,
        allowed,
        reason,
        range: Some(Range {
            min: 0.0,
            min_excluded: true,
            max,
        }),
    }
}

/// A row of [`LIMITS`] checked by hand in [`Settings::validate`] (text, or bounds that depend on
/// other keys).
const fn rule(key: &'static str, allowed: &'static str, reason: &'static str) -> Limit {
    Limit {
        key,
        allowed,
        reason,
        range: None,
    }
}

/// Limit on a text that becomes an MQTT topic prefix.
const TOPIC_ALLOWED: &str = "a non-empty MQTT topic without +, #, NUL or a / at either end";

/// Every checked key: what it allows and why. `check-config` prints the row of a rejected key.
#[rustfmt::skip] // One row a key reads best as a table.
pub const LIMITS: &[Limit] = &[
    rule("device.id", "1 to 64 letters, digits, _ or -", "it is an MQTT topic level and a Home Assistant node id"),
    rule("device.name", "a non-empty name", "Home Assistant shows it"),
    rule("serial.port", "a non-empty device path", "the controller's serial port"),
    range("serial.baud", 1.0, u32::MAX as f64, "1 or more", "a line speed of 0 carries nothing; the controller runs at 115200"),
    range("serial.feed_interval_ms", 50.0, 999.0, "50..=999", "the controller cuts the heater after 1000 ms without B+1; faster crowds its 16-byte input"),
    rule("serial.poll_interval_ms", "100..=4999, and below safety.stale_after_s", "the controller's watchdog reboots it after 5000 ms without a command, and slower polling would look stale"),
    rule("mqtt.host", "a non-empty host name or address", "the broker to connect to"),
    range("mqtt.port", 1.0, 65535.0, "1..=65535", "port 0 is no broker's port"),
    rule("mqtt.client_id", "a non-empty id", "the broker tells clients apart by it"),
    rule("mqtt.base_topic", TOPIC_ALLOWED, "it starts every topic of the bridge"),
    range("mqtt.state_interval_s", 1.0, 3600.0, "1..=3600", "Home Assistant expires sensors after three intervals"),
    range("mqtt.temperature_deadband_c", 0.0, 10.0, "0..=10", "a wider band would hide real temperature changes"),
    range("mqtt.water_deadband_in", 0.0, 10.0, "0..=10", "a wider band would hide real water level changes"),
    range("mqtt.keep_alive_s", 5.0, 3600.0, "5..=3600", "the MQTT client needs at least 5 s; the broker only notices a dead bridge after 1.5 keep-alives"),
    rule("mqtt.tls.ca_file", "a CA file when mqtt.tls.client_cert is set", "TLS is off while ca_file is empty"),
    rule("mqtt.tls.client_cert", "a certificate file when mqtt.tls.client_key is set", "a client key is useless without its certificate"),
    rule("mqtt.tls.client_key", "a key file when mqtt.tls.client_cert is set", "a client certificate needs its private key"),
    rule("homeassistant.discovery", "components, device or off", "device needs Home Assistant 2024.11 or later; off publishes nothing"),
    rule("homeassistant.discovery_prefix", TOPIC_ALLOWED, "Home Assistant listens for discovery under it"),
    range("brew.max_cups", 1.0, 24.0, "1..=24", "no drip coffee maker holds more than two dozen cups"),
    rule("brew.default_cups", "1..=brew.max_cups", "it must be a brew that can be started"),
    rule("brew.preheat_c", "20..=100, and below safety.max_plate_c", "above 100 °C the water boils; at max_plate_c the overtemp interlock trips"),
    range("brew.preheat_timeout_s", 1.0, 3600.0, "1..=3600", "a plate that does not heat within an hour is broken"),
    positive("brew.seconds_per_cup", 600.0, "more than 0, up to 600", "ten minutes a cup is beyond any drip coffee maker"),
    rule("keep_warm.target_c", "40..=95, and below safety.max_plate_c", "below 40 °C is not warm, above 95 °C coffee boils down; at max_plate_c the overtemp interlock trips"),
    rule("keep_warm.hysteresis_c", "0.5..=20, and at most keep_warm.target_c - 20", "a narrower band chatters the relay; the heater must come on above room temperature"),
    range("keep_warm.max_minutes", 1.0 / 60.0, 240.0, "0.0167..=240 (1 s to 4 h)", "EU Regulation 801/2013 asks for 40 minutes; four hours is the outer limit"),
    range("safety.max_heater_on_s", 1.0, 3600.0, "1..=3600", "an hour of continuous heating is beyond any brew"),
    range("safety.stale_after_s", 1.0, 4.5, "1..=4.5", "it must trip before the controller's 5 s watchdog reboots it"),
    range("safety.max_plate_c", 30.0, 125.0, "30..=125", "the DS18B20 sensor is rated to 125 °C"),
    positive("safety.max_rise_c_per_s", 20.0, "more than 0, up to 20", "a dry boil rises a few °C a second; above 20 the check never trips"),
    positive("water.full_distance_in", 160.0, "more than 0, up to 160", "the HC-SR04 ranges up to 4 m (157 in)"),
    rule("water.empty_distance_in", "more than water.full_distance_in, up to 160", "the empty surface is farther from the sensor than the full one; the HC-SR04 ranges up to 4 m"),
    rule("http.listen", "empty (no HTTP server) or an address like 127.0.0.1:8080", "the status page listens there"),
];

/// The row of [`LIMITS`] for a dotted key, if that key is checked.
pub fn limit(key: &str) -> Option<&'static Limit> {
    LIMITS.iter().find(|limit| limit.key == key)
}

/// Whether `value` lies in the constant range [`LIMITS`] gives for `key` (true if it gives none).
fn in_range(key: &str, value: f64) -> bool {
    limit(key)
        .and_then(|limit| limit.range)
        .is_none_or(|range| range.contains(value))
}

/// The reason given in [`LIMITS`] for `key`.
fn reason_for(key: &str) -> &'static str {
    limit(key).map_or("see the documentation", |l| l.reason)
}

/// Loads the settings: defaults, then `file` (if given), then `COFFEEBOT__SECTION__KEY`
/// variables of the process environment; then validates them and checks that the password
/// file (if any) can be read. Every problem found is returned at once.
pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
    let mut env = Vec::new();
    let mut errors = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        match value.into_string() {
            Ok(value) => env.push((name.to_owned(), value)),
            Err(_) if is_setting(name) => errors.push(ConfigError::Env {
                name: name.to_owned(),
                message: "the value is not valid UTF-8".to_owned(),
            }),
            Err(_) => {}
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError::from_list(errors));
    }
    load_with(file, &env)
}

/// [`load`] with the environment given as a list of `(name, value)` pairs instead of read from
/// the process (for tests). Names without the `COFFEEBOT__` prefix are ignored, including
/// `COFFEEBOT_CONFIG`.
pub fn load_with(file: Option<&Path>, env: &[(String, String)]) -> Result<Settings, ConfigError> {
    let known = Known::from_defaults()?;
    let mut errors = Vec::new();
    let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));

    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let origin = path.display().to_string();
        let tree =
            tree(File::from_str(&text, FileFormat::Toml)).map_err(|e| ConfigError::Parse {
                origin: origin.clone(),
                message: one_line(&e.to_string()),
            })?;
        known.unknown_keys(&tree, "", &|_| format!("in {origin}"), &mut errors);
        builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
    }

    let vars: config::Map<String, String> = env
        .iter()
        .filter(|(name, _)| is_setting(name))
        .cloned()
        .collect();
    // No `try_parsing`: it would turn a password like `007` into the number 7. Numbers and
    // booleans still parse, because `config` converts text when it deserialises a field.
    let environment = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .source(Some(vars));
    let tree = tree(environment.clone()).map_err(|e| ConfigError::Env {
        name: format!("{ENV_PREFIX}{ENV_SEPARATOR}*"),
        message: one_line(&e.to_string()),
    })?;
    known.unknown_keys(
        &tree,
        "",
        &|key| format!("from {}", env_name(key)),
        &mut errors,
    );
    builder = builder.add_source(environment);

    if !errors.is_empty() {
        return Err(ConfigError::from_list(errors));
    }
    let settings: Settings = builder
        .build()
        .and_then(Config::try_deserialize)
        .map_err(type_error)?;
    settings.validate().map_err(ConfigError::from_list)?;
    settings.mqtt_password()?;
    Ok(settings)
}

/// Whether an environment variable name is a setting (`COFFEEBOT__…`, any case).
fn is_setting(name: &str) -> bool {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    name.len() > prefix.len()
        && name
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(&prefix))
}

/// The environment variable that sets a dotted key.
fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{ENV_SEPARATOR}{}",
        key.to_uppercase().replace('.', ENV_SEPARATOR)
    )
}

/// The settings one source sets, as a tree of tables.
fn tree(
    source: impl config::Source + Send + Sync + 'static,
) -> Result<serde_json::Value, config::ConfigError> {
    Config::builder()
        .add_source(source)
        .build()?
        .try_deserialize()
}

/// A parser's (possibly multi-line, with a source excerpt) message on one line.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.contains('|'))
        .collect();
    lines.join("; ")
}

/// A deserialisation error from the merged settings, naming the key where `config` knows it,
/// and what [`LIMITS`] allows there.
fn type_error(error: config::ConfigError) -> ConfigError {
    let (key, message) = match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => (key, format!("expected {expected}, found {unexpected}")),
        config::ConfigError::At { error, key, .. } => (key, one_line(&error.to_string())),
        other => (None, one_line(&other.to_string())),
    };
    let key = key.unwrap_or_else(|| "(top level)".to_owned());
    let message = match limit(&key) {
        Some(limit) => format!("{message}: allowed {}", limit.allowed),
        None => message,
    };
    ConfigError::Type { key, message }
}

/// The keys that exist: every table and leaf of the compiled-in defaults.
struct Known {
    /// For each table path (`""` for the top level), the names inside it.
    tables: BTreeMap<String, BTreeSet<String>>,
}

impl Known {
    /// Reads the key tree from [`DEFAULTS`].
    fn from_defaults() -> Result<Self, ConfigError> {
        let defaults =
            tree(File::from_str(DEFAULTS, FileFormat::Toml)).map_err(|e| ConfigError::Parse {
                origin: "the compiled-in defaults".to_owned(),
                message: one_line(&e.to_string()),
            })?;
        let mut known = Known {
            tables: BTreeMap::new(),
        };
        known.add(&defaults, "");
        Ok(known)
    }

    /// Records the table `value` at `path` and the tables inside it.
    fn add(&mut self, value: &serde_json::Value, path: &str) {
        let Some(table) = value.as_object() else {
            return;
        };
        let names = self.tables.entry(path.to_owned()).or_default();
        names.extend(table.keys().cloned());
        for (name, child) in table {
            self.add(child, &join(path, name));
        }
    }

    /// Pushes an error for every key in `value` (the table at `path`) that does not exist.
    fn unknown_keys(
        &self,
        value: &serde_json::Value,
        path: &str,
        origin: &dyn Fn(&str) -> String,
        errors: &mut Vec<ConfigError>,
    ) {
        let (Some(table), Some(names)) = (value.as_object(), self.tables.get(path)) else {
            return;
        };
        for (name, child) in table {
            let key = join(path, name);
            if names.contains(name) {
                self.unknown_keys(child, &key, origin, errors);
                continue;
            }
            let list: Vec<&str> = names.iter().map(String::as_str).collect();
            let allowed = if path.is_empty() {
                format!("the sections are {}", list.join(", "))
            } else {
                format!("the keys of {path} are {}", list.join(", "))
            };
            errors.push(ConfigError::UnknownKey {
                origin: origin(&key),
                key,
                allowed,
            });
        }
    }
}

/// `path.name`, or `name` at the top level.
fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
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
    /// Checks every range and relation between keys; returns every problem at once.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        for (key, value, shown) in self.numbers() {
            let Some(Limit {
                allowed,
                range: Some(range),
                ..
            }) = limit(key)
            else {
                continue;
            };
            if !range.contains(value) {
                errors.push(ConfigError::out_of_range(key, shown, *allowed));
            }
        }
        self.validate_text(&mut errors);
        self.validate_relations(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Every numeric setting with constant bounds: key, value, value as configured.
    fn numbers(&self) -> Vec<(&'static str, f64, String)> {
        let s = self;
        let int = |key, value: u64| (key, value as f64, value.to_string());
        let float = |key, value: f64| (key, value, value.to_string());
        vec![
            int("serial.baud", u64::from(s.serial.baud)),
            int("serial.feed_interval_ms", s.serial.feed_interval_ms),
            int("mqtt.port", u64::from(s.mqtt.port)),
            float("mqtt.state_interval_s", s.mqtt.state_interval_s),
            float("mqtt.temperature_deadband_c", s.mqtt.temperature_deadband_c),
            float("mqtt.water_deadband_in", s.mqtt.water_deadband_in),
            int("mqtt.keep_alive_s", s.mqtt.keep_alive_s),
            int("brew.max_cups", u64::from(s.brew.max_cups)),
            float("brew.preheat_timeout_s", s.brew.preheat_timeout_s),
            float("brew.seconds_per_cup", s.brew.seconds_per_cup),
            float("keep_warm.max_minutes", s.keep_warm.max_minutes),
            float("safety.max_heater_on_s", s.safety.max_heater_on_s),
            float("safety.stale_after_s", s.safety.stale_after_s),
            float("safety.max_plate_c", s.safety.max_plate_c),
            float("safety.max_rise_c_per_s", s.safety.max_rise_c_per_s),
            float("water.full_distance_in", s.water.full_distance_in),
        ]
    }

    /// Text settings: identifiers, topics, addresses, TLS files.
    fn validate_text(&self, errors: &mut Vec<ConfigError>) {
        let mut check = |key: &str, value: &str, ok: bool| {
            if !ok {
                errors.push(ConfigError::invalid(key, value));
            }
        };
        let id = &self.device.id;
        let id_ok = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        check("device.id", id, id_ok);
        check(
            "device.name",
            &self.device.name,
            !self.device.name.trim().is_empty(),
        );
        check(
            "serial.port",
            &self.serial.port,
            !self.serial.port.is_empty(),
        );
        check(
            "mqtt.host",
            &self.mqtt.host,
            !self.mqtt.host.trim().is_empty(),
        );
        check(
            "mqtt.client_id",
            &self.mqtt.client_id,
            !self.mqtt.client_id.is_empty(),
        );
        check(
            "mqtt.base_topic",
            &self.mqtt.base_topic,
            is_topic_prefix(&self.mqtt.base_topic),
        );
        let prefix = &self.homeassistant.discovery_prefix;
        check(
            "homeassistant.discovery_prefix",
            prefix,
            is_topic_prefix(prefix),
        );
        let listen = &self.http.listen;
        check(
            "http.listen",
            listen,
            listen.is_empty() || listen.parse::<SocketAddr>().is_ok(),
        );
        let tls = &self.mqtt.tls;
        if !tls.client_cert.is_empty() && tls.client_key.is_empty() {
            check("mqtt.tls.client_key", &tls.client_key, false);
        }
        if tls.client_cert.is_empty() && !tls.client_key.is_empty() {
            check("mqtt.tls.client_cert", &tls.client_cert, false);
        }
        if !tls.client_cert.is_empty() && tls.ca_file.is_empty() {
            check("mqtt.tls.ca_file", &tls.ca_file, false);
        }
    }

    /// Numeric settings whose bounds depend on other settings. A bound taken from a setting
    /// that is itself out of range is left out, so that one mistake gives one error.
    fn validate_relations(&self, errors: &mut Vec<ConfigError>) {
        let s = self;
        let mut check = |key: &str, ok: bool, value: &dyn fmt::Display, allowed: String| {
            if !ok {
                errors.push(ConfigError::out_of_range(key, value, allowed));
            }
        };
        // Each comparison is written so that NaN fails it.
        let (max_cups, cups) = (s.brew.max_cups, s.brew.default_cups);
        let max_cups_ok = in_range("brew.max_cups", f64::from(max_cups));
        let (top, allowed) = if max_cups_ok {
            (max_cups, format!("1..={max_cups} (brew.max_cups)"))
        } else {
            (24, "1..=brew.max_cups".to_owned())
        };
        check(
            "brew.default_cups",
            (1..=top).contains(&cups),
            &cups,
            allowed,
        );

        let max_plate = s.safety.max_plate_c;
        let (plate, below_plate) = if in_range("safety.max_plate_c", max_plate) {
            (
                max_plate,
                format!(" and below safety.max_plate_c ({max_plate})"),
            )
        } else {
            (f64::INFINITY, String::new())
        };
        let preheat = s.brew.preheat_c;
        let ok = (20.0..=100.0).contains(&preheat) && preheat < plate;
        check(
            "brew.preheat_c",
            ok,
            &preheat,
            format!("20..=100{below_plate}"),
        );
        let target = s.keep_warm.target_c;
        let target_ok = (40.0..=95.0).contains(&target) && target < plate;
        check(
            "keep_warm.target_c",
            target_ok,
            &target,
            format!("40..=95{below_plate}"),
        );

        let hysteresis = s.keep_warm.hysteresis_c;
        let (ok, allowed) = if target_ok {
            (
                target - hysteresis >= 20.0,
                format!(
                    "0.5..=20 and at most keep_warm.target_c - 20 ({})",
                    target - 20.0
                ),
            )
        } else {
            (true, "0.5..=20".to_owned())
        };
        let ok = ok && (0.5..=20.0).contains(&hysteresis);
        check("keep_warm.hysteresis_c", ok, &hysteresis, allowed);

        let poll_ms = s.serial.poll_interval_ms;
        let stale_ms = s.safety.stale_after_s * 1000.0;
        let (ok, allowed) = if in_range("safety.stale_after_s", s.safety.stale_after_s) {
            (
                (poll_ms as f64) < stale_ms,
                format!("100..=4999 and below safety.stale_after_s ({stale_ms} ms)"),
            )
        } else {
            (true, "100..=4999".to_owned())
        };
        let ok = ok && (100..=4999).contains(&poll_ms);
        check("serial.poll_interval_ms", ok, &poll_ms, allowed);

        let (empty, full) = (s.water.empty_distance_in, s.water.full_distance_in);
        let (ok, allowed) = if in_range("water.full_distance_in", full) {
            (
                empty > full,
                format!("more than water.full_distance_in ({full}), up to 160"),
            )
        } else {
            (
                empty > 0.0,
                "more than water.full_distance_in, up to 160".to_owned(),
            )
        };
        let ok = ok && empty <= 160.0;
        check("water.empty_distance_in", ok, &empty, allowed);
    }

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

    /// The settings as TOML, sections in the order of `config/default.toml`, the password
    /// always redacted (for `check-config`).
    pub fn to_toml_string(&self) -> String {
        let s = self.redacted();
        let mut out = Toml::default();
        out.section("device");
        out.string("id", &s.device.id);
        out.string("name", &s.device.name);
        out.section("serial");
        out.string("port", &s.serial.port);
        out.int("baud", s.serial.baud.into());
        out.int("feed_interval_ms", s.serial.feed_interval_ms);
        out.int("poll_interval_ms", s.serial.poll_interval_ms);
        out.bool(
            "allow_firmware_without_heater_timeout",
            s.serial.allow_firmware_without_heater_timeout,
        );
        out.section("mqtt");
        out.string("host", &s.mqtt.host);
        out.int("port", s.mqtt.port.into());
        out.string("client_id", &s.mqtt.client_id);
        out.string("username", &s.mqtt.username);
        out.string("password", &s.mqtt.password);
        out.string("password_file", &s.mqtt.password_file);
        out.string("base_topic", &s.mqtt.base_topic);
        out.float("state_interval_s", s.mqtt.state_interval_s);
        out.float("temperature_deadband_c", s.mqtt.temperature_deadband_c);
        out.float("water_deadband_in", s.mqtt.water_deadband_in);
        out.int("keep_alive_s", s.mqtt.keep_alive_s);
        out.section("mqtt.tls");
        out.string("ca_file", &s.mqtt.tls.ca_file);
        out.string("client_cert", &s.mqtt.tls.client_cert);
        out.string("client_key", &s.mqtt.tls.client_key);
        out.section("homeassistant");
        out.string("discovery", s.homeassistant.discovery.as_str());
        out.string("discovery_prefix", &s.homeassistant.discovery_prefix);
        out.section("brew");
        out.int("max_cups", s.brew.max_cups.into());
        out.int("default_cups", s.brew.default_cups.into());
        out.float("preheat_c", s.brew.preheat_c);
        out.float("preheat_timeout_s", s.brew.preheat_timeout_s);
        out.float("seconds_per_cup", s.brew.seconds_per_cup);
        out.section("keep_warm");
        out.bool("after_brew", s.keep_warm.after_brew);
        out.float("target_c", s.keep_warm.target_c);
        out.float("hysteresis_c", s.keep_warm.hysteresis_c);
        out.float("max_minutes", s.keep_warm.max_minutes);
        out.section("safety");
        out.float("max_heater_on_s", s.safety.max_heater_on_s);
        out.float("stale_after_s", s.safety.stale_after_s);
        out.float("max_plate_c", s.safety.max_plate_c);
        out.float("max_rise_c_per_s", s.safety.max_rise_c_per_s);
        out.section("water");
        out.bool("enabled", s.water.enabled);
        out.float("empty_distance_in", s.water.empty_distance_in);
        out.float("full_distance_in", s.water.full_distance_in);
        out.section("http");
        out.string("listen", &s.http.listen);
        out.0
    }
}

/// A minimal TOML writer for [`Settings::to_toml_string`].
#[derive(Default)]
struct Toml(String);

impl Toml {
    /// Starts `[name]`.
    fn section(&mut self, name: &str) {
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        self.0.push_str(&format!("[{name}]\n"));
    }

    /// `key = "value"`; a JSON string literal is a valid TOML basic string.
    fn string(&mut self, key: &str, value: &str) {
        let quoted = serde_json::Value::from(value).to_string();
        self.0.push_str(&format!("{key} = {quoted}\n"));
    }

    /// `key = 123`.
    fn int(&mut self, key: &str, value: u64) {
        self.0.push_str(&format!("{key} = {value}\n"));
    }

    /// `key = 1.5`, always with a decimal point or exponent; `inf`/`nan` as TOML spells them.
    fn float(&mut self, key: &str, value: f64) {
        let text = if value.is_nan() {
            "nan".to_owned()
        } else if value.is_infinite() {
            if value > 0.0 { "inf" } else { "-inf" }.to_owned()
        } else {
            format!("{value:?}")
        };
        self.0.push_str(&format!("{key} = {text}\n"));
    }

    /// `key = true`.
    fn bool(&mut self, key: &str, value: bool) {
        self.0.push_str(&format!("{key} = {value}\n"));
    }
}

impl Discovery {
    /// The name used in the configuration: `components`, `device` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            Discovery::Components => "components",
            Discovery::Device => "device",
            Discovery::Off => "off",
        }
    }
}

/// Whether `topic` can prefix MQTT topics: non-empty, no wildcards or NUL, no `/` at either end.
fn is_topic_prefix(topic: &str) -> bool {
    !topic.is_empty()
        && !topic.contains(['+', '#', '\0'])
        && !topic.starts_with('/')
        && !topic.ends_with('/')
}

/// Seconds as a `Duration`; negative or NaN becomes zero, too large becomes `Duration::MAX`.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
}

impl Serial {
    /// Largest gap between `B+1` while heating.
    pub fn feed_interval(&self) -> Duration {
        Duration::from_millis(self.feed_interval_ms)
    }

    /// Largest gap between `S+?` while idle.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

impl Mqtt {
    /// Largest gap between state publications.
    pub fn state_interval(&self) -> Duration {
        seconds(self.state_interval_s)
    }

    /// MQTT keep-alive.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_s)
    }
}

impl Tls {
    /// Whether TLS is on (a CA file is set).
    pub fn enabled(&self) -> bool {
        !self.ca_file.is_empty()
    }
}

impl Brew {
    /// Longest preheat before the brew is aborted.
    pub fn preheat_timeout(&self) -> Duration {
        seconds(self.preheat_timeout_s)
    }

    /// Heating time after preheating for `cups` cups.
    pub fn brew_time(&self, cups: u32) -> Duration {
        seconds(self.seconds_per_cup * f64::from(cups))
    }
}

impl KeepWarm {
    /// How long keep warm lasts.
    pub fn max_duration(&self) -> Duration {
        seconds(self.max_minutes * 60.0)
    }
}

impl Safety {
    /// Longest continuous heater run.
    pub fn max_heater_on(&self) -> Duration {
        seconds(self.max_heater_on_s)
    }

    /// No valid reply for this long trips `stale_telemetry`.
    pub fn stale_after(&self) -> Duration {
        seconds(self.stale_after_s)
    }
}

impl Http {
    /// The address to listen on, or `None` when the HTTP server is off (or the address is
    /// invalid, which [`Settings::validate`] refuses).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}
