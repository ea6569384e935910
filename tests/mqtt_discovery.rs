//! Home Assistant discovery, checked without a broker: every config parses, carries what Home
//! Assistant requires for its platform, points at topics the bridge serves, and reads fields
//! the state JSON has.

use std::collections::{BTreeSet, HashSet};

use coffeebot::config::{load_with, Settings};
use coffeebot::mqtt::discovery::{self, Cleanup, EVENT_TYPES};
use coffeebot::mqtt::topics::{filter_matches, Topics};
use coffeebot::state::StateDoc;
use serde_json::Value;

fn settings(env: &[(&str, &str)]) -> Settings {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (format!("COFFEEBOT__{k}"), (*v).to_owned()))
        .collect();
    load_with(None, &env).expect("settings load")
}

/// The state JSON with every key, as the bridge publishes it.
fn state_keys() -> HashSet<String> {
    let doc = StateDoc::example();
    let v: Value = serde_json::from_str(&doc.to_json()).unwrap();
    v.as_object().unwrap().keys().cloned().collect()
}

/// Every `value_json.<field>` a template reads.
fn template_fields(template: &str) -> Vec<String> {
    template
        .split("value_json.")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// `(topic, config)` of every components-mode entity config (device triggers left out).
fn configs(s: &Settings) -> Vec<(String, Value)> {
    discovery::messages(s, Some("MrCoffeeBot v2.0"), Some("kitchen"))
        .into_iter()
        .filter(|(t, p)| !p.is_empty() && !t.contains("/device_automation/"))
        .map(|(t, p)| (t, serde_json::from_str(&p).expect("config parses")))
        .collect()
}

const REQUIRED: &[(&str, &[&str])] = &[
    ("sensor", &["state_topic"]),
    ("binary_sensor", &["state_topic"]),
    ("switch", &["command_topic", "state_topic"]),
    ("button", &["command_topic", "payload_press"]),
    (
        "number",
        &["command_topic", "state_topic", "min", "max", "step"],
    ),
    ("event", &["state_topic", "event_types"]),
];

fn check_entity(s: &Settings, platform: &str, config: &Value) {
    let t = Topics::new(s);
    for key in [
        "name",
        "unique_id",
        "default_entity_id",
        "availability",
        "qos",
    ] {
        assert!(config.get(key).is_some(), "{key} missing: {config}");
    }
    let required = REQUIRED
        .iter()
        .find(|(p, _)| *p == platform)
        .unwrap_or_else(|| panic!("unexpected platform {platform}"))
        .1;
    for key in required {
        assert!(
            config.get(*key).is_some(),
            "{platform}: {key} missing: {config}"
        );
    }
    let id = config["default_entity_id"].as_str().unwrap();
    assert!(id.starts_with(&format!("{platform}.coffee_pot_")), "{id}");
    assert!(
        config.get("object_id").is_none(),
        "deprecated object_id: {config}"
    );
    let name = config["name"].as_str().unwrap();
    assert!(!name.to_lowercase().contains("coffee pot"), "{name}");
    if let Some(topic) = config.get("command_topic").and_then(Value::as_str) {
        assert!(
            t.subscriptions().iter().any(|f| filter_matches(f, topic)),
            "{topic} is not subscribed"
        );
        assert!(t.parse_command(topic).is_some(), "{topic}");
    }
    let keys = state_keys();
    // The bridge's own start time comes from `B/bridge/info`, every other value from the state.
    let info = config["state_topic"] == t.bridge_info();
    for template_key in ["value_template", "json_attributes_template"] {
        if let Some(template) = config.get(template_key).and_then(Value::as_str) {
            if info {
                assert_eq!(template_fields(template), ["started_at"], "{config}");
                continue;
            }
            assert_eq!(config["state_topic"], t.state(), "{config}");
            for field in template_fields(template) {
                assert!(keys.contains(&field), "{field} not in the state JSON");
            }
        }
    }
    let availability: Vec<&str> = config["availability"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["topic"].as_str().unwrap())
        .collect();
    let key = config["unique_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("coffeebot_coffeepot_");
    if [
        "updated_at",
        "controller_reboots",
        "link",
        "water_distance",
        "bridge_started",
    ]
    .contains(&key)
    {
        assert_eq!(availability, [t.bridge_availability()], "{key}");
    } else {
        assert_eq!(
            availability,
            [t.bridge_availability(), t.availability()],
            "{key}"
        );
        assert_eq!(config["availability_mode"], "all");
    }
    if platform == "sensor" && !info {
        assert_eq!(config["expire_after"], 3 * 30, "{key}");
    }
}

#[test]
fn components_mode_has_every_entity_of_the_spec() {
    let s = settings(&[]);
    let configs = configs(&s);
    let mut ids = HashSet::new();
    let mut keys = Vec::new();
    for (topic, config) in &configs {
        let parts: Vec<&str> = topic.split('/').collect();
        assert_eq!(parts.len(), 5, "{topic}");
        assert_eq!(parts[0], "homeassistant");
        assert_eq!(parts[2], "coffeebot_coffeepot");
        assert_eq!(parts[4], "config");
        let platform = parts[1];
        check_entity(&s, platform, config);
        assert!(ids.insert(config["unique_id"].as_str().unwrap().to_owned()));
        assert_eq!(
            config["unique_id"],
            format!("coffeebot_coffeepot_{}", parts[3])
        );
        keys.push(format!("{platform}:{}", parts[3]));
        let device = &config["device"];
        assert_eq!(device["identifiers"][0], "coffeebot_coffeepot");
        assert_eq!(device["name"], "Coffee Pot");
        // The device's software is the controller's firmware; the bridge is the origin.
        assert_eq!(device["sw_version"], "MrCoffeeBot v2.0");
        assert!(device.get("hw_version").is_none());
        assert_eq!(config["origin"]["sw_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(device["configuration_url"], "http://127.0.0.1:8080/");
        for key in ["name", "sw_version", "support_url"] {
            assert!(config["origin"][key].is_string(), "origin.{key}");
        }
    }
    keys.sort();
    let mut expected = vec![
        "sensor:temperature",
        "sensor:water_level",
        "sensor:water_distance",
        "sensor:mode",
        "sensor:brew_ends_at",
        "sensor:updated_at",
        "sensor:controller_reboots",
        "sensor:reply_format",
        "switch:heater",
        "switch:keep_warm",
        "button:brew",
        "button:stop",
        "number:cups",
        "binary_sensor:link",
        "sensor:bridge_started",
        "binary_sensor:fault",
        "button:restart_controller",
        "switch:schedule",
        "sensor:next_brew",
        "button:skip_next_brew",
        "button:descaled",
        "sensor:energy",
        "sensor:cups_brewed",
        "sensor:brews",
        "sensor:heater_on_time",
        "binary_sensor:descale_due",
        "event:event",
    ];
    expected.sort();
    assert_eq!(keys, expected);
    let by_key = |k: &str| {
        &configs
            .iter()
            .find(|(t, _)| t.contains(&format!("/{k}/")))
            .unwrap()
            .1
    };
    assert_eq!(by_key("temperature")["device_class"], "temperature");
    assert_eq!(by_key("temperature")["unit_of_measurement"], "°C");
    assert_eq!(
        by_key("temperature")["default_entity_id"],
        "sensor.coffee_pot_temperature"
    );
    assert_eq!(by_key("mode")["options"].as_array().unwrap().len(), 5);
    assert_eq!(by_key("cups")["max"], 12);
    assert_eq!(
        by_key("heater")["value_template"],
        "{{ value_json.heater }}"
    );
    assert!(by_key("heater").get("optimistic") == Some(&Value::Bool(false)));
    assert_eq!(by_key("restart_controller")["payload_press"], "RESET");
    assert_eq!(by_key("restart_controller")["entity_category"], "config");
    assert_eq!(by_key("brew")["payload_press"], "START");
    assert_eq!(by_key("stop")["payload_press"], "STOP");
    assert_eq!(by_key("fault")["device_class"], "problem");
    assert_eq!(by_key("link")["device_class"], "connectivity");
    assert_eq!(by_key("next_brew")["device_class"], "timestamp");
    assert_eq!(
        by_key("schedule")["value_template"],
        "{{ value_json.schedule }}"
    );
    assert_eq!(by_key("skip_next_brew")["payload_press"], "SKIP");
    assert_eq!(by_key("descaled")["payload_press"], "DESCALED");
    // What HA's energy dashboard accepts: energy, kWh, total_increasing.
    assert_eq!(by_key("energy")["device_class"], "energy");
    assert_eq!(by_key("energy")["unit_of_measurement"], "kWh");
    for key in ["energy", "cups_brewed", "brews", "heater_on_time"] {
        assert_eq!(by_key(key)["state_class"], "total_increasing", "{key}");
    }
    assert_eq!(by_key("descale_due")["device_class"], "problem");
    let types: Vec<&str> = by_key("event")["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(types, EVENT_TYPES);
}

#[test]
fn device_mode_is_one_message_with_every_component() {
    let s = settings(&[("HOMEASSISTANT__DISCOVERY", "device")]);
    let messages = discovery::messages(&s, None, None);
    assert_eq!(
        messages.len(),
        1,
        "removals are cleanup's, from what is retained"
    );
    let (topic, payload) = messages.last().unwrap();
    assert_eq!(topic, "homeassistant/device/coffeebot_coffeepot/config");
    let config: Value = serde_json::from_str(payload).unwrap();
    assert!(config["origin"]["name"].is_string());
    assert_eq!(config["device"]["identifiers"][0], "coffeebot_coffeepot");
    let cmps = config["cmps"].as_object().unwrap();
    assert_eq!(
        cmps.len(),
        27 + discovery::RETIRED.len() + discovery::TRIGGERS.len()
    );
    for (key, platform) in discovery::RETIRED {
        assert_eq!(cmps[*key], serde_json::json!({ "p": platform }), "{key}");
    }
    for (key, component) in cmps {
        let platform = component["p"].as_str().unwrap();
        let retired = discovery::RETIRED.iter().any(|(k, _)| k == key);
        if platform != "device_automation" && !retired {
            check_entity(&s, platform, component);
        }
    }
}

#[test]
fn device_triggers_fire_on_the_events_people_automate_on() {
    for mode in ["components", "device"] {
        let s = settings(&[("HOMEASSISTANT__DISCOVERY", mode)]);
        let messages = discovery::messages(&s, None, None);
        let mut triggers: Vec<Value> = Vec::new();
        for (topic, payload) in &messages {
            let config: Value = serde_json::from_str(payload).unwrap();
            if topic.contains("/device_automation/") {
                assert!(config["device"]["identifiers"].is_array());
                triggers.push(config);
            } else if let Some(cmps) = config["cmps"].as_object() {
                triggers.extend(
                    cmps.values()
                        .filter(|c| c["p"] == "device_automation")
                        .cloned(),
                );
            }
        }
        let mut types: Vec<&str> = triggers
            .iter()
            .map(|t| t["type"].as_str().unwrap())
            .collect();
        types.sort_unstable();
        let mut expected = discovery::TRIGGERS.to_vec();
        expected.sort_unstable();
        assert_eq!(types, expected, "{mode}");
        for t in &triggers {
            assert_eq!(t["automation_type"], "trigger");
            assert_eq!(t["topic"], "coffeebot/coffeepot/event");
            assert_eq!(t["payload"], t["type"]);
            assert_eq!(t["value_template"], "{{ value_json.event_type }}");
            assert!(EVENT_TYPES.contains(&t["type"].as_str().unwrap()));
        }
    }
}

#[test]
fn water_off_removes_the_water_entities_only_where_retained() {
    let s = settings(&[("WATER__ENABLED", "false")]);
    let messages = discovery::messages(&s, None, None);
    let water = |key: &str| format!("homeassistant/sensor/coffeebot_coffeepot/{key}/config");
    assert_eq!(messages.len(), 25 + discovery::TRIGGERS.len());
    assert!(messages
        .iter()
        .all(|(t, p)| !p.is_empty() && !t.contains("water")));
    // Nothing retained: nothing to remove (an empty config for nothing makes HA warn).
    assert_eq!(discovery::cleanup(&s, &BTreeSet::new()), Cleanup::default());
    let retained: BTreeSet<String> = [water("water_level"), water("temperature")].into();
    assert_eq!(
        discovery::cleanup(&s, &retained).before,
        vec![(water("water_level"), String::new())]
    );
    let s = settings(&[
        ("WATER__ENABLED", "false"),
        ("HOMEASSISTANT__DISCOVERY", "device"),
    ]);
    let (_, payload) = discovery::messages(&s, None, None).pop().unwrap();
    let config: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        config["cmps"]["water_level"],
        serde_json::json!({"p": "sensor"})
    );
}

#[test]
fn switching_modes_migrates_what_is_retained_the_way_home_assistant_documents() {
    let components = settings(&[]);
    let device = settings(&[("HOMEASSISTANT__DISCOVERY", "device")]);
    let off = settings(&[("HOMEASSISTANT__DISCOVERY", "off")]);
    let device_topic = "homeassistant/device/coffeebot_coffeepot/config".to_owned();
    let component_topics: BTreeSet<String> = discovery::messages(&components, None, None)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let migrate = discovery::MIGRATE.to_owned();

    // components -> device: every retained component config is migrated, then cleared.
    let plan = discovery::cleanup(&device, &component_topics).before;
    assert_eq!(plan.len(), 2 * component_topics.len());
    for topic in &component_topics {
        let own: Vec<&String> = plan
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p)
            .collect();
        assert_eq!(own, [&migrate, &String::new()], "{topic}");
    }
    // Its own mode's configs are left alone.
    assert!(discovery::cleanup(&components, &component_topics)
        .before
        .is_empty());

    // device -> components: the device config is migrated, then replaced by one that holds
    // no component (an empty one makes HA warn once the migration unloaded them).
    let retained: BTreeSet<String> = [device_topic.clone()].into();
    let plan = discovery::cleanup(&components, &retained).before;
    assert_eq!(plan.len(), 2);
    assert_eq!(plan[0], (device_topic.clone(), migrate.clone()));
    assert_eq!(plan[1].0, device_topic);
    assert!(discovery::holds_nothing(plan[1].1.as_bytes()));
    let cleared: Value = serde_json::from_str(&plan[1].1).unwrap();
    assert_eq!(
        cleared["cmps"].as_object().unwrap().len(),
        27 + discovery::TRIGGERS.len()
    );
    assert!(cleared["device"]["identifiers"].is_array());
    assert!(discovery::cleanup(&device, &retained).before.is_empty());

    // off: what is retained is removed, without a migration.
    let plan = discovery::cleanup(&off, &retained).before;
    assert_eq!(plan, vec![(device_topic, String::new())]);
}

#[test]
fn payloads_that_hold_no_entity_are_recognised() {
    assert!(discovery::holds_nothing(b""));
    assert!(discovery::holds_nothing(discovery::MIGRATE.as_bytes()));
    assert!(discovery::holds_nothing(
        br#"{"device":{},"cmps":{"a":{"p":"sensor"}}}"#
    ));
    assert!(!discovery::holds_nothing(
        br#"{"device":{},"cmps":{"a":{"p":"sensor","name":"A"}}}"#
    ));
    assert!(!discovery::holds_nothing(br#"{"name":"Temperature"}"#));
    assert!(!discovery::holds_nothing(b"not json"));
}

#[test]
fn discovery_off_publishes_nothing() {
    let s = settings(&[("HOMEASSISTANT__DISCOVERY", "off")]);
    assert!(discovery::messages(&s, None, None).is_empty());
}

#[test]
fn names_ids_and_urls_follow_the_settings() {
    let s = settings(&[
        ("DEVICE__NAME", "Büro Kaffee-Maschine"),
        ("DEVICE__ID", "office"),
        ("MQTT__BASE_TOPIC", "kitchen"),
        ("HOMEASSISTANT__DISCOVERY_PREFIX", "ha"),
        ("HTTP__LISTEN", "0.0.0.0:8080"),
    ]);
    let configs = configs(&s);
    let (topic, config) = &configs[0];
    assert!(topic.starts_with("ha/sensor/coffeebot_office/"), "{topic}");
    assert_eq!(
        config["device"]["configuration_url"],
        "http://kitchen:8080/"
    );
    assert!(config["default_entity_id"]
        .as_str()
        .unwrap()
        .starts_with("sensor.buro_kaffee_maschine_"));
    assert_eq!(config["state_topic"], "kitchen/office/state");
    assert_eq!(discovery::configuration_url("", None), None);
    assert_eq!(discovery::configuration_url("0.0.0.0:80", None), None);
    assert_eq!(
        discovery::configuration_url("[::1]:8080", None).as_deref(),
        Some("http://[::1]:8080/")
    );
}
