//! Home Assistant MQTT discovery (SPEC §4): every entity of the coffee maker, as the retained
//! config messages that make a complete "Coffee Pot" device appear by itself.
//!
//! Pure: [`messages`] turns the settings, the firmware from the boot banner and the host name
//! into `(topic, payload)` pairs; the MQTT task publishes them retained, and `coffeebot
//! discovery` prints them. [`cleanup`] turns what the broker holds retained under this
//! bridge's topics of either mode into the removals and migrations to publish first, so that
//! switching between `components` and `device` keeps entity ids and a user's settings and
//! leaves nothing behind, and nothing is removed that is not there (Home Assistant warns
//! about both).
//!
//! Choices Home Assistant leaves open:
//! - the device's `sw_version` is the controller's firmware (Home Assistant's convention: the
//!   device's own software), known once a boot banner was seen; the bridge's version is the
//!   `origin`'s `sw_version`;
//! - `configuration_url` points at `http.listen`; when that is a wildcard address
//!   (`0.0.0.0`, `[::]`) it uses the machine's host name, and without one it is left out.

use crate::config::{Discovery, Settings};
use crate::core::Mode;
use crate::mqtt::command::CommandName;
use crate::mqtt::topics::Topics;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// Every `event_type` the bridge publishes on `B/D/event`.
pub const EVENT_TYPES: [&str; 10] = [
    "brew_started",
    "brew_finished",
    "brew_aborted",
    "keep_warm_started",
    "keep_warm_finished",
    "heater_auto_off",
    "fault",
    "controller_rebooted",
    "command_rejected",
    "brew_skipped",
];

/// The events a person automates on, offered as device triggers (`device_automation`), so
/// that Home Assistant's automation editor lists e.g. "brew_finished" for the device.
pub const TRIGGERS: [&str; 5] = [
    "brew_finished",
    "keep_warm_finished",
    "fault",
    "heater_auto_off",
    "controller_rebooted",
];

/// The discovery object id of the trigger for `event` (`on_<event>`: an entity has the key
/// `fault` already, and a device config's components share one map).
pub fn trigger_key(event: &str) -> String {
    format!("on_{event}")
}

/// The device trigger of `event`: fires when `B/D/event` carries that `event_type`.
fn trigger(settings: &Settings, t: &Topics, event: &str) -> Map<String, Value> {
    let config = json!({
        "automation_type": "trigger",
        "topic": t.event(),
        "type": event,
        "subtype": settings.device.name,
        "value_template": "{{ value_json.event_type }}",
        "payload": event,
        "qos": 1,
    });
    match config {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

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

    /// The entity with `extra` added to its options (a key given again takes the new value).
    pub fn with(mut self, extra: Value) -> Entity {
        merge(&mut self.options, extra);
        self
    }

    /// The entity following the bridge's availability alone ([`Entity::bridge_only`]).
    pub fn bridge_only(self) -> Entity {
        Entity {
            bridge_only: true,
            ..self
        }
    }

    /// The entity existing only with water sensing ([`Entity::water`]).
    pub fn water(self) -> Entity {
        Entity {
            water: true,
            ..self
        }
    }
}

/// Entities of earlier versions (key, platform), gone from [`entities`]: the device config
/// removes them (a component with only its platform), so that an upgrade in `device` mode
/// leaves no dead entity behind. In `components` mode their retained configs are stale topics
/// that [`cleanup`] clears. `brew_remaining` was a per-second countdown, now `brew_ends_at`.
pub const RETIRED: &[(&str, &str)] = &[("brew_remaining", "sensor")];

/// The entities of SPEC §4, water entities included (see [`Entity::water`]).
pub fn entities(settings: &Settings) -> Vec<Entity> {
    let t = Topics::new(settings);
    let state = t.state();
    let expire = (3.0 * settings.mqtt.state_interval_s).ceil() as u64;
    // A reading of the state document: expires when the state stops coming.
    let on_state = |key, platform, name, template: &str| {
        Entity::new(
            key,
            platform,
            name,
            json!({"state_topic": state, "value_template": template, "expire_after": expire}),
        )
    };
    // The sensor of the state's `field` (a dotted path).
    let sensor = |key, name, field: &str| {
        let template = format!("{{{{ value_json.{field} }}}}");
        on_state(key, "sensor", name, &template)
    };
    // A binary sensor, on while the Jinja `condition` on the state holds.
    let binary = |key, name, condition: &str| {
        on_state(
            key,
            "binary_sensor",
            name,
            &format!("{{{{ 'ON' if {condition} else 'OFF' }}}}"),
        )
        .with(json!({"payload_on": "ON", "payload_off": "OFF"}))
    };
    // A household counter (kept across restarts): what HA's energy dashboard and long-term
    // statistics take.
    let counter = |key, name, field: &str| {
        sensor(key, name, &format!("counters.{field}"))
            .with(json!({"state_class": "total_increasing"}))
    };
    let modes: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
    let mut all = vec![
        sensor("temperature", "Temperature", "temperature_c")
            .with(json!({"device_class": "temperature", "unit_of_measurement": "°C",
                         "state_class": "measurement", "suggested_display_precision": 1})),
        sensor("water_level", "Water level", "water_level_pct")
            .with(json!({"unit_of_measurement": "%", "state_class": "measurement",
                         "icon": "mdi:cup-water"}))
            .water(),
        sensor("water_distance", "Water distance", "water_distance_in")
            .with(json!({"device_class": "distance", "unit_of_measurement": "in",
                         "state_class": "measurement", "entity_category": "diagnostic",
                         "suggested_display_precision": 2}))
            .water()
            .bridge_only(),
        sensor("mode", "Mode", "mode")
            .with(json!({"device_class": "enum", "options": modes, "icon": "mdi:coffee-maker"})),
        // When the brew ends, not a countdown: Home Assistant counts down itself, and the
        // state does not go out (nor the recorder write) every second of a brew.
        sensor("brew_ends_at", "Brew ready at", "brew_ends_at")
            .with(json!({"device_class": "timestamp", "icon": "mdi:coffee-to-go"})),
        sensor("updated_at", "Last reading", "updated_at")
            .with(json!({"device_class": "timestamp", "entity_category": "diagnostic"}))
            .bridge_only(),
        sensor("controller_reboots", "Controller reboots", "controller_reboots")
            .with(json!({"state_class": "total_increasing", "entity_category": "diagnostic",
                         "icon": "mdi:restart-alert"}))
            .bridge_only(),
        // Which firmware build answers (SPEC §2): known only while the controller answers.
        sensor("reply_format", "Controller reply format", "reply_format")
            .with(json!({"device_class": "enum", "options": ["one_line", "three_lines"],
                         "entity_category": "diagnostic", "icon": "mdi:chip"})),
        binary("link", "Controller link", "value_json.link == 'up'")
            .with(json!({"device_class": "connectivity", "entity_category": "diagnostic"}))
            .bridge_only(),
        // When the bridge process started (from the retained `B/bridge/info`): a restart is
        // visible in Home Assistant. No `expire_after`: the info is retained and sent once per
        // connection, not with every state.
        Entity::new(
            "bridge_started",
            "sensor",
            "Bridge started",
            json!({"state_topic": t.bridge_info(),
                   "value_template": "{{ value_json.started_at }}",
                   "device_class": "timestamp", "entity_category": "diagnostic",
                   "icon": "mdi:restart"}),
        )
        .bridge_only(),
        binary("fault", "Fault", "value_json.faults | length > 0")
            .with(json!({"device_class": "problem", "json_attributes_topic": state,
                         "json_attributes_template":
                             "{{ {'faults': value_json.faults, 'last_fault': value_json.last_fault} | tojson }}"})),
        // The schedule: when the next planned brew will be ready (its start and cups as
        // attributes); unknown while none is planned or the schedule is off.
        on_state(
            "next_brew",
            "sensor",
            "Next brew ready",
            "{{ value_json.next_brew.ready_at if value_json.next_brew else None }}",
        )
        .with(json!({"device_class": "timestamp", "icon": "mdi:coffee-to-go",
                     "json_attributes_topic": state,
                     "json_attributes_template": "{{ (value_json.next_brew or {}) | tojson }}"})),
        counter("energy", "Energy", "energy_kwh_total")
            .with(json!({"device_class": "energy", "unit_of_measurement": "kWh",
                         "suggested_display_precision": 3})),
        counter("cups_brewed", "Cups brewed", "cups_brewed_total")
            .with(json!({"unit_of_measurement": "cups", "icon": "mdi:coffee"})),
        counter("brews", "Brews", "brews_total")
            .with(json!({"unit_of_measurement": "brews", "icon": "mdi:counter"})),
        counter("heater_on_time", "Heater on time", "heater_on_seconds_total")
            .with(json!({"device_class": "duration", "unit_of_measurement": "s",
                         "suggested_display_precision": 0})),
        binary("descale_due", "Descale due", "value_json.counters.descale_due")
            .with(json!({"device_class": "problem", "icon": "mdi:water-alert"})),
    ];
    // The controls, after what the device shows and before what happened.
    all.extend(
        CommandName::ALL
            .into_iter()
            .flat_map(|c| c.entities(&t, settings.brew.max_cups)),
    );
    all.push(Entity::new(
        "event",
        "event",
        "Event",
        json!({"state_topic": t.event(), "event_types": EVENT_TYPES,
               "icon": "mdi:coffee-outline"}),
    ));
    all
}

/// The discovery configs to publish (retained), in order: every entity the settings want,
/// under the configured mode's topics. Nothing is removed here: what is left over under other
/// topics is [`cleanup`]'s, which needs to know what the broker holds.
///
/// `firmware` is the boot banner's (e.g. `MrCoffeeBot v2.0`) when known; `host` is this
/// machine's name, used for `configuration_url` when `http.listen` is a wildcard address.
/// `discovery = "off"` gives no messages at all.
pub fn messages(
    settings: &Settings,
    firmware: Option<&str>,
    host: Option<&str>,
) -> Vec<(String, String)> {
    let t = Topics::new(settings);
    let device = device_block(settings, firmware, host);
    let origin = origin_block();
    let all = entities(settings);
    let wanted = |e: &Entity| settings.water.enabled || !e.water;
    match settings.homeassistant.discovery {
        Discovery::Off => Vec::new(),
        Discovery::Components => {
            let with_device = |mut config: Map<String, Value>| {
                config.insert("device".into(), device.clone());
                config.insert("origin".into(), origin.clone());
                Value::Object(config).to_string()
            };
            let mut out: Vec<(String, String)> = all
                .iter()
                .filter(|e| wanted(e))
                .map(|e| {
                    let config = with_device(component(settings, &t, e));
                    (component_topic(settings, e), config)
                })
                .collect();
            out.extend(TRIGGERS.iter().map(|event| {
                let config = with_device(trigger(settings, &t, event));
                (trigger_topic(settings, event), config)
            }));
            out
        }
        Discovery::Device => {
            let mut cmps: Map<String, Value> = all
                .iter()
                .map(|e| {
                    let mut config = if wanted(e) {
                        component(settings, &t, e)
                    } else {
                        // A component with only its platform is removed (HA 2024.11+); HA
                        // ignores it when there is nothing to remove.
                        Map::new()
                    };
                    config.insert("p".into(), e.platform.into());
                    (e.key.to_owned(), Value::Object(config))
                })
                .collect();
            for (key, platform) in RETIRED {
                cmps.insert((*key).to_owned(), json!({"p": platform}));
            }
            for event in TRIGGERS {
                let mut config = trigger(settings, &t, event);
                config.insert("p".into(), "device_automation".into());
                cmps.insert(trigger_key(event), Value::Object(config));
            }
            let payload = json!({
                "device": device,
                "origin": origin,
                "cmps": cmps,
                "qos": 1,
            });
            vec![(device_topic(settings), payload.to_string())]
        }
    }
}

/// The topic filters under which this bridge's configs of either mode can be retained: the
/// bridge reads them once after connecting (see [`cleanup`]).
pub fn probe_filters(settings: &Settings) -> [String; 2] {
    let prefix = &settings.homeassistant.discovery_prefix;
    let node = node_id(settings);
    [
        format!("{prefix}/+/{node}/+/config"),
        format!("{prefix}/device/{node}/config"),
    ]
}

/// The payload that asks Home Assistant to unload an entity but keep its registry entry
/// (entity id, name, area a user set), so that the same `unique_id` can come back under the
/// other discovery mode's topic: HA's documented migration between single-component and
/// device-based discovery (and the rollback).
pub const MIGRATE: &str = r#"{"migrate_discovery":true}"#;

/// What to publish around [`messages`] so that nothing is left over under other topics,
/// given the topics where the broker holds a (non-empty) retained config of this bridge.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cleanup {
    /// Before the configs, for each retained config that the configs do not publish:
    /// [`MIGRATE`] when the configs bring its entities back under another topic, then what
    /// clears it (an empty payload; for the device config, one that removes every component).
    pub before: Vec<(String, String)>,
}

/// The [`Cleanup`] for the topics `retained` (those found under [`probe_filters`]). Only
/// topics that are there get a message: an empty config where nothing is retained makes Home
/// Assistant log a warning, and one for an entity that lives under the other mode's topic a
/// conflict warning.
pub fn cleanup(settings: &Settings, retained: &BTreeSet<String>) -> Cleanup {
    let published: BTreeSet<String> = messages(settings, None, None)
        .into_iter()
        .map(|(topic, _)| topic)
        .collect();
    let all = entities(settings);
    let wanted = |e: &Entity| settings.water.enabled || !e.water;
    let device = device_topic(settings);
    let stale: Vec<&String> = retained
        .iter()
        .filter(|t| !published.contains(*t))
        .collect();
    // A stale topic migrates when the configs bring its entities back elsewhere.
    let migrates = |topic: &str| match settings.homeassistant.discovery {
        Discovery::Off => false,
        Discovery::Components => topic == device,
        Discovery::Device => {
            all.iter()
                .any(|e| wanted(e) && component_topic(settings, e) == topic)
                || TRIGGERS.iter().any(|e| trigger_topic(settings, e) == topic)
        }
    };
    let mut out = Cleanup::default();
    for topic in &stale {
        if migrates(topic) {
            out.before.push(((*topic).clone(), MIGRATE.to_owned()));
        }
        let clear = if *topic == &device && migrates(topic) {
            // An empty device config after a rollback makes HA warn ("no device components
            // to cleanup": the migration unloaded them); a device config whose components
            // are all removed replaces it silently, here and at every HA start.
            empty_device(settings)
        } else {
            String::new()
        };
        out.before.push(((*topic).clone(), clear));
    }
    out
}

/// A device config that removes all its components: what the device topic holds after a
/// rollback to `components`.
fn empty_device(settings: &Settings) -> String {
    let mut cmps: Map<String, Value> = entities(settings)
        .iter()
        .map(|e| (e.key.to_owned(), json!({"p": e.platform})))
        .collect();
    for event in TRIGGERS {
        cmps.insert(trigger_key(event), json!({"p": "device_automation"}));
    }
    json!({"device": device_block(settings, None, None), "origin": origin_block(), "cmps": cmps})
        .to_string()
}

/// Whether a retained payload under this bridge's topics holds no entity: empty, a pending
/// [`MIGRATE`], or a device config whose components are all removed.
pub fn holds_nothing(payload: &[u8]) -> bool {
    if payload.is_empty() {
        return true;
    }
    let Ok(Value::Object(config)) = serde_json::from_slice::<Value>(payload) else {
        return false;
    };
    if config.get("migrate_discovery") == Some(&Value::Bool(true)) {
        return true;
    }
    match config.get("cmps").or_else(|| config.get("components")) {
        Some(Value::Object(cmps)) => cmps.values().all(|c| {
            c.as_object()
                .is_some_and(|c| c.keys().all(|k| k == "p" || k == "platform"))
        }),
        _ => false,
    }
}

fn device_topic(settings: &Settings) -> String {
    format!(
        "{}/device/{}/config",
        settings.homeassistant.discovery_prefix,
        node_id(settings)
    )
}

fn trigger_topic(settings: &Settings, event: &str) -> String {
    format!(
        "{}/device_automation/{}/{}/config",
        settings.homeassistant.discovery_prefix,
        node_id(settings),
        trigger_key(event)
    )
}

fn component_topic(settings: &Settings, e: &Entity) -> String {
    format!(
        "{}/{}/{}/{}/config",
        settings.homeassistant.discovery_prefix,
        e.platform,
        node_id(settings),
        e.key
    )
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
    });
    if let Some(firmware) = firmware {
        device["sw_version"] = firmware.into();
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
