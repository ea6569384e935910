//! Home Assistant MQTT discovery (SPEC §4): every entity of the coffee maker, as the retained
//! config messages that make a complete "Coffee Pot" device appear by itself.
//!
//! Pure: [`messages`] turns the settings, the firmware from the boot banner and the host name
//! into `(topic, payload)` pairs; the MQTT task publishes them retained, and `coffeebot
//! discovery` prints them. An empty payload removes an entity: the water entities when
//! `water.enabled` is off, and the other mode's topics, so that switching between
//! `components` and `device` leaves no duplicates behind.
//!
//! Choices Home Assistant leaves open:
//! - the firmware of the controller goes into the device's `hw_version`: `sw_version` is the
//!   bridge's own version (the software that speaks for the device), and the firmware names the
//!   controller board's build, which is the hardware side of this device;
//! - `configuration_url` points at `http.listen`; when that is a wildcard address
//!   (`0.0.0.0`, `[::]`) it uses the machine's host name, and without one it is left out.

use crate::config::{Discovery, Settings};
use crate::core::Mode;
use crate::mqtt::command::CommandName;
use crate::mqtt::topics::Topics;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;

/// Every `event_type` the bridge publishes on `B/D/event`.
pub const EVENT_TYPES: [&str; 9] = [
    "brew_started",
    "brew_finished",
    "brew_aborted",
    "keep_warm_started",
    "keep_warm_finished",
    "heater_auto_off",
    "fault",
    "controller_rebooted",
    "command_rejected",
];

/// One entity of the device.
#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    /// `<key>` in `unique_id` and the config topic.
    pub key: &'static str,
    /// Home Assistant platform: `sensor`, `switch`, …
    pub platform: &'static str,
    /// Name relative to the device.
    pub name: &'static str,
    /// Follows the bridge's availability alone (the diagnostics of SPEC §9).
    pub bridge_only: bool,
    /// Exists only with `water.enabled`.
    pub water: bool,
    /// The platform's own options.
    pub options: Value,
}

impl Entity {
    /// An entity that follows the device's availability and exists without water sensing.
    pub fn new(
        key: &'static str,
        platform: &'static str,
        name: &'static str,
        options: Value,
    ) -> Entity {
        Entity {
            key,
            platform,
            name,
            bridge_only: false,
            water: false,
            options,
        }
    }
}

/// The entities of SPEC §4, water entities included (see [`Entity::water`]).
pub fn entities(settings: &Settings) -> Vec<Entity> {
    let t = Topics::new(settings);
    let state = t.state();
    let expire = (3.0 * settings.mqtt.state_interval_s).ceil() as u64;
    let sensor = |template: &str, extra: Value| {
        let mut options = json!({
            "state_topic": state,
            "value_template": template,
            "expire_after": expire,
        });
        merge(&mut options, extra);
        options
    };
    let modes: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
    let entity = Entity::new;
    let mut all = vec![
        entity(
            "temperature",
            "sensor",
            "Temperature",
            sensor(
                "{{ value_json.temperature_c }}",
                json!({"device_class": "temperature", "unit_of_measurement": "°C",
                       "state_class": "measurement", "suggested_display_precision": 1}),
            ),
        ),
        Entity {
            water: true,
            ..entity(
                "water_level",
                "sensor",
                "Water level",
                sensor(
                    "{{ value_json.water_level_pct }}",
                    json!({"unit_of_measurement": "%", "state_class": "measurement",
                           "icon": "mdi:cup-water"}),
                ),
            )
        },
        Entity {
            water: true,
            bridge_only: true,
            ..entity(
                "water_distance",
                "sensor",
                "Water distance",
                sensor(
                    "{{ value_json.water_distance_in }}",
                    json!({"device_class": "distance", "unit_of_measurement": "in",
                           "state_class": "measurement", "entity_category": "diagnostic",
                           "suggested_display_precision": 2}),
                ),
            )
        },
        entity(
            "mode",
            "sensor",
            "Mode",
            sensor(
                "{{ value_json.mode }}",
                json!({"device_class": "enum", "options": modes, "icon": "mdi:coffee-maker"}),
            ),
        ),
        entity(
            "brew_remaining",
            "sensor",
            "Brew time left",
            sensor(
                "{{ value_json.brew_remaining_s }}",
                json!({"device_class": "duration", "unit_of_measurement": "s"}),
            ),
        ),
        Entity {
            bridge_only: true,
            ..entity(
                "updated_at",
                "sensor",
                "Last reading",
                sensor(
                    "{{ value_json.updated_at }}",
                    json!({"device_class": "timestamp", "entity_category": "diagnostic"}),
                ),
            )
        },
        Entity {
            bridge_only: true,
            ..entity(
                "controller_reboots",
                "sensor",
                "Controller reboots",
                sensor(
                    "{{ value_json.controller_reboots }}",
                    json!({"state_class": "total_increasing", "entity_category": "diagnostic",
                           "icon": "mdi:restart-alert"}),
                ),
            )
        },
        // Which firmware build answers (SPEC §2): known only while the controller answers.
        entity(
            "reply_format",
            "sensor",
            "Controller reply format",
            sensor(
                "{{ value_json.reply_format }}",
                json!({"device_class": "enum", "options": ["one_line", "three_lines"],
                       "entity_category": "diagnostic", "icon": "mdi:chip"}),
            ),
        ),
        Entity {
            bridge_only: true,
            ..entity(
                "link",
                "binary_sensor",
                "Controller link",
                sensor(
                    "{{ 'ON' if value_json.link == 'up' else 'OFF' }}",
                    json!({"device_class": "connectivity", "entity_category": "diagnostic",
                           "payload_on": "ON", "payload_off": "OFF"}),
                ),
            )
        },
        entity(
            "fault",
            "binary_sensor",
            "Fault",
            sensor(
                "{{ 'ON' if value_json.faults | length > 0 else 'OFF' }}",
                json!({"device_class": "problem", "payload_on": "ON", "payload_off": "OFF",
                       "json_attributes_topic": state,
                       "json_attributes_template":
                           "{{ {'faults': value_json.faults, 'last_fault': value_json.last_fault} | tojson }}"}),
            ),
        ),
    ];
    // The controls, after what the device shows and before what happened.
    all.extend(
        CommandName::ALL
            .into_iter()
            .flat_map(|c| c.entities(&t, settings.brew.max_cups)),
    );
    all.push(entity(
        "event",
        "event",
        "Event",
        json!({"state_topic": t.event(), "event_types": EVENT_TYPES,
               "icon": "mdi:coffee-outline"}),
    ));
    all
}

/// The discovery messages to publish (retained), in order; an empty payload removes an entity.
///
/// `firmware` is the boot banner's (e.g. `MrCoffeeBot v2.0`) when known; `host` is this
/// machine's name, used for `configuration_url` when `http.listen` is a wildcard address.
/// `discovery = "off"` gives no messages at all.
pub fn messages(
    settings: &Settings,
    firmware: Option<&str>,
    host: Option<&str>,
) -> Vec<(String, String)> {
    let mode = settings.homeassistant.discovery;
    if mode == Discovery::Off {
        return Vec::new();
    }
    let t = Topics::new(settings);
    let node = node_id(settings);
    let device = device_block(settings, firmware, host);
    let origin = origin_block();
    let device_topic = format!("{}/device/{node}/config", t.discovery_prefix);
    let component_topic = |e: &Entity| {
        format!(
            "{}/{}/{node}/{}/config",
            t.discovery_prefix, e.platform, e.key
        )
    };
    let all = entities(settings);
    let wanted = |e: &Entity| settings.water.enabled || !e.water;
    let mut out = Vec::new();
    match mode {
        Discovery::Components => {
            // Left over from `device` mode.
            out.push((device_topic, String::new()));
            for e in &all {
                let payload = if wanted(e) {
                    let mut config = component(settings, &t, e);
                    config.insert("device".into(), device.clone());
                    config.insert("origin".into(), origin.clone());
                    Value::Object(config).to_string()
                } else {
                    String::new()
                };
                out.push((component_topic(e), payload));
            }
        }
        Discovery::Device => {
            // Left over from `components` mode; removed before the device message re-adds them.
            for e in &all {
                out.push((component_topic(e), String::new()));
            }
            let cmps: Map<String, Value> = all
                .iter()
                .map(|e| {
                    let mut config = if wanted(e) {
                        component(settings, &t, e)
                    } else {
                        // A component with only its platform is removed (HA 2024.11+).
                        Map::new()
                    };
                    config.insert("p".into(), e.platform.into());
                    (e.key.to_owned(), Value::Object(config))
                })
                .collect();
            let payload = json!({
                "device": device,
                "origin": origin,
                "cmps": cmps,
                "qos": 1,
            });
            out.push((device_topic, payload.to_string()));
        }
        Discovery::Off => {}
    }
    out
}

/// `coffeebot_<D>`: the device identifier and the discovery node id.
pub fn node_id(settings: &Settings) -> String {
    format!("coffeebot_{}", settings.device.id)
}

/// The entity id Home Assistant should give an entity: `<platform>.<slug of device name>_<key>`.
pub fn default_entity_id(settings: &Settings, entity: &Entity) -> String {
    format!(
        "{}.{}_{}",
        entity.platform,
        slug(&settings.device.name),
        entity.key
    )
}

/// One entity's config without `device` and `origin`.
fn component(settings: &Settings, t: &Topics, e: &Entity) -> Map<String, Value> {
    let mut availability = vec![json!({"topic": t.bridge_availability()})];
    if !e.bridge_only {
        availability.push(json!({"topic": t.availability()}));
    }
    let mut config = json!({
        "name": e.name,
        "unique_id": format!("{}_{}", node_id(settings), e.key),
        "default_entity_id": default_entity_id(settings, e),
        "availability": availability,
        "availability_mode": "all",
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
    });
    merge(&mut config, e.options.clone());
    match config {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn device_block(settings: &Settings, firmware: Option<&str>, host: Option<&str>) -> Value {
    let mut device = json!({
        "identifiers": [node_id(settings)],
        "name": settings.device.name,
        "manufacturer": "coffeebot",
        "model": "Drip coffee maker with MrCoffeeBot heater controller",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(firmware) = firmware {
        device["hw_version"] = firmware.into();
    }
    if let Some(url) = configuration_url(&settings.http.listen, host) {
        device["configuration_url"] = url.into();
    }
    device
}

fn origin_block() -> Value {
    json!({
        "name": "coffeebot",
        "sw_version": env!("CARGO_PKG_VERSION"),
        "support_url": env!("CARGO_PKG_REPOSITORY"),
    })
}

/// `http://<listen>/`, with the host name in place of a wildcard address; `None` when HTTP is
/// off or the wildcard's host name is unknown.
pub fn configuration_url(listen: &str, host: Option<&str>) -> Option<String> {
    if listen.is_empty() {
        return None;
    }
    let Ok(addr) = listen.parse::<SocketAddr>() else {
        // A host name and port: use it as it is.
        return Some(format!("http://{listen}/"));
    };
    if addr.ip().is_unspecified() {
        let host = host.filter(|h| !h.is_empty())?;
        return Some(format!("http://{host}:{}/", addr.port()));
    }
    Some(format!("http://{addr}/"))
}

/// Home Assistant's slug of a name: lowercase ASCII letters and digits, `_` between words;
/// Latin letters with diacritics lose them (`Büro` → `buro`), as Home Assistant's
/// transliteration does; other scripts are dropped.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if let Some(plain) = fold(c) {
            out.push_str(plain);
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    if out.is_empty() {
        "unnamed".to_owned()
    } else {
        out
    }
}

/// The plain Latin letters of a lowercase Latin-1 letter with a diacritic.
fn fold(c: char) -> Option<&'static str> {
    Some(match c {
        'à'..='å' => "a",
        'æ' => "ae",
        'ç' => "c",
        'è'..='ë' => "e",
        'ì'..='ï' => "i",
        'ñ' => "n",
        'ò'..='ö' | 'ø' => "o",
        'œ' => "oe",
        'ù'..='ü' => "u",
        'ý' | 'ÿ' => "y",
        'ß' => "ss",
        _ => return None,
    })
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}
