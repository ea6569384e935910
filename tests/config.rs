//! Loading, validation and redaction of the settings (SPEC §7).

use std::path::PathBuf;
use std::time::Duration;

use coffeebot::config::{
    key, load_with, ConfigError, Discovery, Settings, DEFAULTS, EX_CONFIG, KEYS, REDACTED,
};
use coffeebot::core::Limits;

/// A file with `contents` in a directory of its own for this test.
fn file(test: &str, name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coffeebot-config-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn load_env(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    load_with(None, &env(vars))
}

/// The error of a configuration that must be refused.
fn refused(vars: &[(&str, &str)]) -> ConfigError {
    match load_env(vars) {
        Ok(_) => panic!("accepted {vars:?}"),
        Err(error) => error,
    }
}

#[test]
fn defaults_load_and_validate() {
    let settings = load_with(None, &[]).unwrap();
    assert_eq!(settings.validate().map_err(|e| e.len()), Ok(()));
    assert_eq!(settings, Settings::default());
    assert_eq!(settings.device.id, "coffeepot");
    assert_eq!(settings.device.name, "Coffee Pot");
    assert_eq!(settings.serial.feed_interval_ms, 250);
    assert_eq!(settings.serial.poll_interval_ms, 1000);
    assert_eq!(settings.mqtt.base_topic, "coffeebot");
    assert_eq!(settings.mqtt.state_interval_s, 30.0);
    assert_eq!(settings.homeassistant.discovery, Discovery::Components);
    assert_eq!(settings.brew.max_cups, 12);
    assert_eq!(settings.brew.seconds_per_cup, 52.5);
    assert_eq!(settings.brew.preheat_c, 54.0);
    assert_eq!(settings.keep_warm.max_minutes, 40.0);
    assert_eq!(settings.safety.max_heater_on_s, 900.0);
    assert_eq!(settings.safety.stale_after_s, 3.0);
    assert_eq!(settings.safety.max_plate_c, 110.0);
    assert_eq!(settings.safety.max_rise_c_per_s, 1.5);
    assert_eq!(settings.mqtt.temperature_deadband_c, 0.3);
    assert_eq!(settings.mqtt.water_deadband_in, 0.05);
    assert_eq!(settings.http.listen, "127.0.0.1:8080");
    assert_eq!(settings.mqtt_password().unwrap(), None);
    assert_eq!(EX_CONFIG, 78);
}

#[test]
fn derived_durations() {
    let settings = Settings::default();
    let limits = Limits::from(&settings);
    assert_eq!(limits.feed_interval, Duration::from_millis(250));
    assert_eq!(limits.poll_interval, Duration::from_secs(1));
    assert_eq!(
        Duration::from_secs_f64(settings.mqtt.state_interval_s),
        Duration::from_secs(30)
    );
    assert_eq!(
        Duration::from_secs(settings.mqtt.keep_alive_s),
        Duration::from_secs(30)
    );
    assert_eq!(limits.preheat_timeout, Duration::from_secs(300));
    assert_eq!(limits.brew_duration(4), Duration::from_secs(210));
    assert_eq!(limits.keep_warm_max, Duration::from_secs(2400));
    assert_eq!(limits.max_heater_on, Duration::from_secs(900));
    assert_eq!(limits.stale_after, Duration::from_secs(3));
    assert_eq!(
        settings.http.listen_addr(),
        Some("127.0.0.1:8080".parse().unwrap())
    );
    assert!(!settings.mqtt.tls.enabled());
}

#[test]
fn every_key_of_the_defaults_is_set_in_default_toml() {
    // Without the defaults layer: a key missing from default.toml fails here.
    let settings: Settings = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .build()
        .unwrap()
        .try_deserialize()
        .unwrap();
    assert_eq!(settings, Settings::default());
}

#[test]
fn a_file_overrides_the_defaults() {
    let path = file(
        "file",
        "coffeebot.toml",
        "[device]\nid = \"kitchen\"\n\n[brew]\nmax_cups = 10\nseconds_per_cup = 2\n\n\
         [keep_warm]\nmax_minutes = 0.5\n\n[homeassistant]\ndiscovery = \"device\"\n\n\
         [mqtt.tls]\nca_file = \"/etc/ca.pem\"\n",
    );
    let settings = load_with(Some(&path), &[]).unwrap();
    assert_eq!(settings.device.id, "kitchen");
    assert_eq!(settings.device.name, "Coffee Pot");
    assert_eq!(settings.brew.max_cups, 10);
    assert_eq!(settings.brew.seconds_per_cup, 2.0);
    assert_eq!(
        Limits::from(&settings).keep_warm_max,
        Duration::from_secs(30)
    );
    assert_eq!(settings.homeassistant.discovery, Discovery::Device);
    assert!(settings.mqtt.tls.enabled());
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let path = std::env::temp_dir().join("coffeebot-config-no-such-dir/nope.toml");
    let error = load_with(Some(&path), &[]).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(error.to_string().contains("nope.toml"), "{error}");
}

#[test]
fn invalid_toml_is_one_line_naming_the_file() {
    let path = file("invalid", "broken.toml", "[mqtt\nport = 1\n");
    let error = load_with(Some(&path), &[]).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ConfigError::Parse { .. }));
    assert!(
        message.contains("broken.toml") && message.contains("line 1"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
}

#[test]
fn the_environment_overrides_file_and_defaults() {
    let path = file(
        "env",
        "coffeebot.toml",
        "[serial]\nfeed_interval_ms = 200\npoll_interval_ms = 500\n",
    );
    let vars = env(&[
        ("COFFEEBOT__SERIAL__FEED_INTERVAL_MS", "300"),
        ("COFFEEBOT__KEEP_WARM__AFTER_BREW", "false"),
        ("COFFEEBOT__SAFETY__STALE_AFTER_S", "2.5"),
        ("COFFEEBOT__MQTT__PORT", "8883"),
        ("COFFEEBOT__MQTT__TLS__CA_FILE", "/run/ca.pem"),
        ("COFFEEBOT__HOMEASSISTANT__DISCOVERY", "off"),
        // A password that looks like a number stays text, leading zeros and all.
        ("COFFEEBOT__MQTT__PASSWORD", "007"),
        // Not settings: the config file's variable, and other programs' variables.
        ("COFFEEBOT_CONFIG", "/etc/coffeebot/other.toml"),
        ("COFFEEBOTX__SERIAL__BAUD", "0"),
        ("PATH", "/usr/bin"),
    ]);
    let settings = load_with(Some(&path), &vars).unwrap();
    assert_eq!(settings.serial.feed_interval_ms, 300);
    assert_eq!(settings.serial.poll_interval_ms, 500);
    assert!(!settings.keep_warm.after_brew);
    assert_eq!(settings.safety.stale_after_s, 2.5);
    assert_eq!(settings.mqtt.port, 8883);
    assert_eq!(settings.mqtt.tls.ca_file, "/run/ca.pem");
    assert_eq!(settings.homeassistant.discovery, Discovery::Off);
    assert_eq!(settings.mqtt_password().unwrap().as_deref(), Some("007"));
    assert_eq!(settings.serial.baud, 115200);
}

#[test]
fn unknown_keys_are_named_with_where_they_came_from() {
    let path = file(
        "unknown",
        "coffeebot.toml",
        "[mqtt]\npasword = \"x\"\n\n[mqtt.tls]\ncafile = \"x\"\n\n[kitchen]\nsink = 1\n",
    );
    let error = load_with(
        Some(&path),
        &env(&[("COFFEEBOT__SERIAL__FEED_INTERVAL", "300")]),
    )
    .unwrap_err();
    let problems = error.problems();
    let keys: Vec<_> = problems.iter().map(|p| p.key().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "kitchen",
            "mqtt.pasword",
            "mqtt.tls.cafile",
            "serial.feed_interval"
        ]
    );
    assert!(problems
        .iter()
        .all(|p| matches!(p, ConfigError::UnknownKey { .. })));
    let message = error.to_string();
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 4, "{message}");
    assert!(
        lines[1].starts_with("unknown key mqtt.pasword (in "),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("coffeebot.toml"), "{}", lines[1]);
    assert!(
        lines[1].contains("password"),
        "lists the keys: {}",
        lines[1]
    );
    assert!(lines[0].contains("the sections are"), "{}", lines[0]);
    assert!(
        lines[3].starts_with(
            "unknown key serial.feed_interval (from COFFEEBOT__SERIAL__FEED_INTERVAL)"
        ),
        "{}",
        lines[3]
    );
}

#[test]
fn wrong_types_name_the_key_and_what_is_allowed() {
    for (name, value, key) in [
        ("COFFEEBOT__SERIAL__BAUD", "fast", "serial.baud"),
        (
            "COFFEEBOT__SERIAL__FEED_INTERVAL_MS",
            "-5",
            "serial.feed_interval_ms",
        ),
        (
            "COFFEEBOT__KEEP_WARM__AFTER_BREW",
            "maybe",
            "keep_warm.after_brew",
        ),
        ("COFFEEBOT__MQTT__PORT", "70000", "mqtt.port"),
        (
            "COFFEEBOT__HOMEASSISTANT__DISCOVERY",
            "sometimes",
            "homeassistant.discovery",
        ),
    ] {
        let error = refused(&[(name, value)]);
        let message = error.to_string();
        assert_eq!(error.key(), Some(key), "{message}");
        assert!(message.starts_with(key), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");
    }
    let error = refused(&[("COFFEEBOT__HOMEASSISTANT__DISCOVERY", "sometimes")]);
    assert!(
        error
            .to_string()
            .contains("allowed components, device or off"),
        "{error}"
    );
}

#[test]
fn out_of_range_values_name_the_key_and_the_allowed_range() {
    // The variable, the value; the key named is the variable's (`SERIAL__BAUD`: `serial.baud`).
    let plain: &[(&str, &str)] = &[
        ("DEVICE__ID", ""),
        ("DEVICE__ID", "a/b"),
        ("DEVICE__ID", "coffee+pot"),
        ("DEVICE__NAME", " "),
        ("SERIAL__PORT", ""),
        ("SERIAL__BAUD", "0"),
        ("SERIAL__FEED_INTERVAL_MS", "1000"),
        ("SERIAL__FEED_INTERVAL_MS", "49"),
        ("SERIAL__POLL_INTERVAL_MS", "5000"),
        ("SERIAL__POLL_INTERVAL_MS", "99"),
        ("SERIAL__POLL_INTERVAL_MS", "3000"),
        ("MQTT__HOST", ""),
        ("MQTT__PORT", "0"),
        ("MQTT__CLIENT_ID", ""),
        ("MQTT__BASE_TOPIC", ""),
        ("MQTT__BASE_TOPIC", "coffee/#"),
        ("MQTT__BASE_TOPIC", "coffee/"),
        ("MQTT__STATE_INTERVAL_S", "0.5"),
        ("MQTT__TEMPERATURE_DEADBAND_C", "-0.1"),
        ("MQTT__WATER_DEADBAND_IN", "NaN"),
        ("MQTT__KEEP_ALIVE_S", "4"),
        ("HOMEASSISTANT__DISCOVERY_PREFIX", ""),
        ("HOMEASSISTANT__DISCOVERY_PREFIX", "home+assistant"),
        ("BREW__MAX_CUPS", "0"),
        ("BREW__MAX_CUPS", "25"),
        ("BREW__DEFAULT_CUPS", "0"),
        ("BREW__DEFAULT_CUPS", "13"),
        ("BREW__PREHEAT_C", "19.9"),
        ("BREW__PREHEAT_C", "101"),
        ("BREW__PREHEAT_TIMEOUT_S", "0.9"),
        ("BREW__SECONDS_PER_CUP", "0"),
        ("BREW__SECONDS_PER_CUP", "601"),
        ("KEEP_WARM__TARGET_C", "39"),
        ("KEEP_WARM__TARGET_C", "96"),
        ("KEEP_WARM__HYSTERESIS_C", "0.4"),
        ("KEEP_WARM__HYSTERESIS_C", "20.5"),
        ("KEEP_WARM__MAX_MINUTES", "0.01"),
        ("KEEP_WARM__MAX_MINUTES", "241"),
        ("SAFETY__MAX_HEATER_ON_S", "0.5"),
        ("SAFETY__MAX_HEATER_ON_S", "3601"),
        ("SAFETY__STALE_AFTER_S", "5"),
        ("SAFETY__STALE_AFTER_S", "0.5"),
        ("SAFETY__MAX_PLATE_C", "126"),
        ("SAFETY__MAX_PLATE_C", "inf"),
        ("SAFETY__MAX_RISE_C_PER_S", "0"),
        ("SAFETY__MAX_RISE_C_PER_S", "21"),
        ("WATER__FULL_DISTANCE_IN", "0"),
        ("WATER__EMPTY_DISTANCE_IN", "1"),
        ("WATER__EMPTY_DISTANCE_IN", "161"),
        ("HTTP__LISTEN", "localhost"),
        ("HTTP__OPS_LISTEN", "127.0.0.1:8080"),
        ("HTTP__OPS_LISTEN", "0.0.0.0:8080"),
        ("HTTP__OPS_LISTEN", "9090"),
        ("HTTP__ALLOWED_HOSTS", "a.example, <script>"),
        ("HTTP__MAX_STREAMS", "0"),
        ("HTTP__MAX_CONNECTIONS_PER_PEER", "0"),
    ];
    // Where the key named is another than the variable's.
    let other: &[(&str, &str, &str)] =
        &[("MQTT__TLS__CLIENT_KEY", "/k.pem", "mqtt.tls.client_cert")];
    let keys: Vec<String> = plain
        .iter()
        .map(|(name, _)| name.to_lowercase().replace("__", "."))
        .collect();
    let cases = plain
        .iter()
        .zip(&keys)
        .map(|((name, value), key)| (*name, *value, key.as_str()))
        .chain(other.iter().copied());
    for (name, value, key) in cases {
        let name = format!("COFFEEBOT__{name}");
        let error = refused(&[(&name, value)]);
        let message = error.to_string();
        assert_eq!(error.key(), Some(key), "{name}={value}: {message}");
        assert!(
            message.starts_with(&format!("{key} = ")),
            "{name}={value}: {message}"
        );
        assert!(message.contains("allowed "), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(
            coffeebot::config::key(key).is_some(),
            "{key} has no row in KEYS"
        );
    }
}

#[test]
fn the_feed_interval_message() {
    let error = refused(&[("COFFEEBOT__SERIAL__FEED_INTERVAL_MS", "1000")]);
    assert_eq!(
        error.to_string(),
        "serial.feed_interval_ms = 1000 is out of range: allowed 50..=999 (the controller cuts \
         the heater after 1000 ms without B+1; faster crowds its 16-byte input)"
    );
}

#[test]
fn relations_between_keys() {
    // The overtemp limit bounds the thermostat and preheat set points.
    let error = refused(&[("COFFEEBOT__SAFETY__MAX_PLATE_C", "50")]);
    let keys: Vec<_> = error.problems().iter().map(|p| p.key().unwrap()).collect();
    assert_eq!(keys, ["brew.preheat_c", "keep_warm.target_c"]);
    // A client certificate needs its key and a CA.
    let error = refused(&[("COFFEEBOT__MQTT__TLS__CLIENT_CERT", "/c.pem")]);
    let keys: Vec<_> = error.problems().iter().map(|p| p.key().unwrap()).collect();
    assert_eq!(keys, ["mqtt.tls.client_key", "mqtt.tls.ca_file"]);
    let ok = load_env(&[
        ("COFFEEBOT__MQTT__TLS__CA_FILE", "/ca.pem"),
        ("COFFEEBOT__MQTT__TLS__CLIENT_CERT", "/c.pem"),
        ("COFFEEBOT__MQTT__TLS__CLIENT_KEY", "/k.pem"),
    ]);
    assert!(ok.is_ok());
}

#[test]
fn every_problem_is_reported_at_once() {
    let error = refused(&[
        ("COFFEEBOT__SERIAL__FEED_INTERVAL_MS", "1000"),
        ("COFFEEBOT__BREW__MAX_CUPS", "99"),
        ("COFFEEBOT__DEVICE__ID", "a b"),
    ]);
    assert!(matches!(error, ConfigError::Several(_)));
    let message = error.to_string();
    assert_eq!(message.lines().count(), 3, "{message}");
    let keys: Vec<_> = error.problems().iter().map(|p| p.key().unwrap()).collect();
    assert_eq!(
        keys,
        ["serial.feed_interval_ms", "brew.max_cups", "device.id"]
    );
    assert_eq!(error.key(), Some("serial.feed_interval_ms"));
}

#[test]
fn short_durations_for_tests_are_accepted() {
    let settings = load_env(&[
        ("COFFEEBOT__SERIAL__FEED_INTERVAL_MS", "50"),
        ("COFFEEBOT__SERIAL__POLL_INTERVAL_MS", "100"),
        ("COFFEEBOT__MQTT__STATE_INTERVAL_S", "1"),
        ("COFFEEBOT__BREW__PREHEAT_TIMEOUT_S", "1"),
        ("COFFEEBOT__BREW__SECONDS_PER_CUP", "0.5"),
        ("COFFEEBOT__KEEP_WARM__MAX_MINUTES", "0.0167"),
        ("COFFEEBOT__SAFETY__MAX_HEATER_ON_S", "1"),
        ("COFFEEBOT__SAFETY__STALE_AFTER_S", "1"),
    ])
    .unwrap();
    let limits = Limits::from(&settings);
    assert_eq!(limits.brew_duration(2), Duration::from_secs(1));
    assert_eq!(limits.stale_after, Duration::from_secs(1));
    let settings = load_env(&[
        ("COFFEEBOT__SERIAL__FEED_INTERVAL_MS", "999"),
        ("COFFEEBOT__SERIAL__POLL_INTERVAL_MS", "4499"),
        ("COFFEEBOT__SAFETY__STALE_AFTER_S", "4.5"),
        ("COFFEEBOT__BREW__MAX_CUPS", "24"),
        ("COFFEEBOT__BREW__DEFAULT_CUPS", "24"),
        ("COFFEEBOT__SAFETY__MAX_PLATE_C", "125"),
    ]);
    assert!(settings.is_ok(), "{:?}", settings.err());
}

#[test]
fn every_limit_names_a_real_key() {
    let tree = serde_json::to_value(Settings::default()).unwrap();
    for row in KEYS {
        let found = row
            .name
            .split('.')
            .try_fold(&tree, |node, name| node.get(name));
        assert!(found.is_some(), "{} is not a key", row.name);
        assert!(!row.allowed().is_empty() && !row.doc.is_empty());
        assert_eq!(key(row.name).map(|found| found.name), Some(row.name));
    }
}

#[test]
fn the_password_comes_from_a_file_without_its_trailing_newline() {
    for (contents, expected) in [
        ("s3cret\n", "s3cret"),
        ("s3cret\r\n", "s3cret"),
        ("s3cret", "s3cret"),
        ("s3cret\n\n", "s3cret\n"),
        (" spaced \n", " spaced "),
    ] {
        let path = file("password", "password", contents);
        let vars = env(&[("COFFEEBOT__MQTT__PASSWORD_FILE", path.to_str().unwrap())]);
        let settings = load_with(None, &vars).unwrap();
        assert_eq!(settings.mqtt.password, "");
        assert_eq!(settings.mqtt_password().unwrap().as_deref(), Some(expected));
    }
}

#[test]
fn the_password_setting_wins_over_the_file() {
    let path = file("password-wins", "password", "from-file\n");
    let vars = env(&[
        ("COFFEEBOT__MQTT__PASSWORD_FILE", path.to_str().unwrap()),
        ("COFFEEBOT__MQTT__PASSWORD", "from-env"),
    ]);
    let settings = load_with(None, &vars).unwrap();
    assert_eq!(
        settings.mqtt_password().unwrap().as_deref(),
        Some("from-env")
    );
}

#[test]
fn a_missing_or_empty_password_file_stops_start_up() {
    let missing = std::env::temp_dir().join("coffeebot-config-no-such-dir/password");
    let error = refused(&[("COFFEEBOT__MQTT__PASSWORD_FILE", missing.to_str().unwrap())]);
    assert_eq!(error.key(), Some("mqtt.password_file"));
    assert!(error
        .to_string()
        .contains("coffeebot-config-no-such-dir/password"));
    let empty = file("password-empty", "password", "\n");
    let error = refused(&[("COFFEEBOT__MQTT__PASSWORD_FILE", empty.to_str().unwrap())]);
    assert!(error.to_string().contains("empty"), "{error}");
}

#[test]
fn the_password_is_never_printed() {
    let secret = "hunter2-very-secret";
    let path = file(
        "redaction",
        "coffeebot.toml",
        "[mqtt]\nusername = \"coffeebot\"\n",
    );
    let settings = load_with(Some(&path), &env(&[("COFFEEBOT__MQTT__PASSWORD", secret)])).unwrap();
    assert_eq!(settings.mqtt_password().unwrap().as_deref(), Some(secret));
    assert!(!format!("{settings:?}").contains(secret));
    assert!(!format!("{settings:#?}").contains(secret));
    assert!(format!("{settings:?}").contains(REDACTED));
    assert!(!format!("{:?}", settings.mqtt).contains(secret));
    assert!(!serde_json::to_string(&settings).unwrap().contains(secret));
    assert!(!settings.to_toml_string().contains(secret));
    let redacted = settings.redacted();
    assert_eq!(redacted.mqtt.password, REDACTED);
    assert!(!format!("{redacted:?}").contains(secret));
    // Anything else is kept.
    assert_eq!(
        Settings {
            mqtt: coffeebot::config::Mqtt {
                password: settings.mqtt.password.clone(),
                ..redacted.mqtt.clone()
            },
            ..redacted
        },
        settings
    );
    // No password: nothing to redact.
    assert_eq!(Settings::default().redacted().mqtt.password, "");
    // A bad value next to the password does not echo it.
    let error = load_with(
        Some(&path),
        &env(&[
            ("COFFEEBOT__SERIAL__BAUD", "0"),
            ("COFFEEBOT__MQTT__X", "1"),
            ("COFFEEBOT__MQTT__PASSWORD", secret),
        ]),
    )
    .unwrap_err();
    assert!(!error.to_string().contains(secret));
}

/// A password in the configuration file is refused (the README: "never in the config file"),
/// with a message that names the file and the two right places and never echoes the password;
/// an empty one (as in config/default.toml) and one from the environment are accepted.
#[test]
fn a_password_in_the_config_file_is_refused() {
    let secret = "correct-horse-battery";
    let path = file(
        "password-in-file",
        "coffeebot.toml",
        &format!("[mqtt]\nhost = \"broker\"\npassword = \"{secret}\"\n"),
    );
    let error = load_with(Some(&path), &[]).unwrap_err();
    assert_eq!(error.key(), Some("mqtt.password"));
    let message = error.to_string();
    assert!(!message.contains(secret), "{message}");
    for needed in [
        path.display().to_string(),
        "mqtt.password_file".to_owned(),
        "COFFEEBOT__MQTT__PASSWORD".to_owned(),
    ] {
        assert!(message.contains(&needed), "{needed}: {message}");
    }
    // Refused even when the environment sets the password too: it is still in the file.
    let both = load_with(Some(&path), &env(&[("COFFEEBOT__MQTT__PASSWORD", "other")]));
    assert_eq!(both.unwrap_err().key(), Some("mqtt.password"));
    // Reported beside the file's other problems, all at once.
    let several = file(
        "password-and-typo",
        "coffeebot.toml",
        &format!("[mqtt]\npasword = 1\npassword = \"{secret}\"\n"),
    );
    let error = load_with(Some(&several), &[]).unwrap_err();
    assert_eq!(error.problems().len(), 2, "{error}");
    assert!(!error.to_string().contains(secret));
    // An empty password in the file means none; the shipped defaults say so.
    let empty = file(
        "password-empty-in-file",
        "coffeebot.toml",
        "[mqtt]\npassword = \"\"\n",
    );
    assert!(load_with(Some(&empty), &[]).is_ok());
    assert!(load_with(Some(&empty), &env(&[("COFFEEBOT__MQTT__PASSWORD", secret)])).is_ok());
}

#[test]
fn the_toml_printout_reads_back_as_the_same_settings() {
    let path = file(
        "toml",
        "coffeebot.toml",
        "[device]\nname = \"Büro \\\"Kaffee\\\" \\\\ 2\"\n[brew]\nseconds_per_cup = 30\n\
         [keep_warm]\nmax_minutes = 0.5\n[http]\nlisten = \"\"\n",
    );
    let settings = load_with(Some(&path), &[]).unwrap();
    assert_eq!(settings.device.name, "Büro \"Kaffee\" \\ 2");
    let text = settings.to_toml_string();
    assert!(text.starts_with("[device]\n"), "{text}");
    assert!(text.contains("\n[mqtt.tls]\n"), "{text}");
    // Read back without the defaults layer, so a key missing from the printout fails.
    let back: Settings = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .unwrap()
        .try_deserialize()
        .unwrap();
    assert_eq!(back, settings);
    assert_eq!(
        Settings::default().to_toml_string(),
        load_with(None, &[]).unwrap().to_toml_string()
    );
}

#[test]
fn the_toml_printout_has_the_sections_and_keys_of_default_toml_in_its_order() {
    // `name = ` and `[section]` lines, in order; comments and blank lines left out.
    let shape = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| line.split(" = ").next().unwrap_or(line).to_owned())
            .collect()
    };
    assert_eq!(
        shape(&Settings::default().to_toml_string()),
        shape(DEFAULTS)
    );
}

#[test]
fn integers_beyond_the_signed_range_are_still_checked() {
    let error = refused(&[("COFFEEBOT__MQTT__KEEP_ALIVE_S", "18446744073709551615")]);
    assert_eq!(error.key(), Some("mqtt.keep_alive_s"), "{error}");
    assert!(error.to_string().contains("allowed 5..=3600"), "{error}");
}

#[test]
fn schedule_entries_are_checked_one_line_per_problem_naming_the_entry() {
    let path = file(
        "schedule",
        "c.toml",
        r#"
[schedule]
timezone = "Mars/Base"

[[schedule.brew]]
days = ["mon", "tue"]
ready_at = "06:45"

[[schedule.brew]]
days = ["mon", "funday", "mon"]
ready_at = "25:00"
cups = 13

[[schedule.brew]]
days = []
ready_at = "07:00"
"#,
    );
    let error = load_with(Some(&path), &[]).unwrap_err();
    let lines: Vec<String> = error.problems().iter().map(|p| p.to_string()).collect();
    let keys: Vec<Option<&str>> = error.problems().iter().map(|p| p.key()).collect();
    assert_eq!(
        keys,
        [
            Some("schedule.timezone"),
            Some("schedule.brew[1].days"),
            Some("schedule.brew[1].ready_at"),
            Some("schedule.brew[1].cups"),
            Some("schedule.brew[2].days"),
        ],
        "{lines:#?}"
    );
    assert!(
        lines[3].contains("at most brew.max_cups (12)"),
        "{}",
        lines[3]
    );
    let good = file(
        "schedule-good",
        "c.toml",
        "[schedule]\ntimezone = \"America/New_York\"\n[[schedule.brew]]\ndays = [\"sat\"]\nready_at = \"09:30\"\ncups = 2\n",
    );
    let settings = load_with(Some(&good), &[]).unwrap();
    assert_eq!(settings.schedule.brew.len(), 1);
    assert_eq!(settings.schedule.brew[0].cups, Some(2));
    assert!(settings.to_toml_string().contains("[[schedule.brew]]"));
}
