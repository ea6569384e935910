//! What each key allows and why: one row per key in [`KEYS`], plus the few checks that relate
//! two keys in [`RELATIONS`]. Validation and every "allowed …" text come from here; the default
//! values stay in `config/default.toml`.
//!
//! Adding a key: its field in the settings struct, its default in `config/default.toml`, its row
//! here. The tests fail when a key of the defaults has no row, or a row names no key.

use std::net::SocketAddr;

use super::Settings;

/// One key: what it allows, its unit and why.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// The dotted key, e.g. `serial.feed_interval_ms`.
    pub name: &'static str,
    /// What a value must be, on its own (checks against other keys are in [`RELATIONS`]).
    pub check: Check,
    /// The unit of a number (`ms`, `s`, `min`, `°C`, `in`, …), empty for none; the key's name
    /// ends with it where it has one.
    pub unit: &'static str,
    /// Why the key exists, or why its limit is where it is.
    pub doc: &'static str,
}

/// What a value must be, on its own.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// `true` or `false`.
    Flag,
    /// A number in `min..=max`.
    Range {
        /// Smallest value allowed.
        min: f64,
        /// Largest value allowed; infinite for no limit.
        max: f64,
    },
    /// A number above `min` (excluded) and at most `max`.
    Above {
        /// The value must be more than this.
        min: f64,
        /// Largest value allowed.
        max: f64,
    },
    /// A text that `ok` accepts.
    Text {
        /// What is allowed, as shown to people.
        allowed: &'static str,
        /// Whether a value is allowed.
        ok: fn(&str) -> bool,
    },
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A non-empty list of these words, none twice.
    Words(&'static [&'static str]),
    /// A list of tables (`[[section.key]]`), each checked by these rows (names inside it).
    Entries(&'static [Key]),
}

impl Check {
    /// Whether a number lies inside the bounds; `NaN` never does, and a check that is not a
    /// range accepts every number.
    pub fn contains(&self, value: f64) -> bool {
        match *self {
            Check::Range { min, max } => value >= min && value <= max,
            Check::Above { min, max } => value > min && value <= max,
            Check::Flag
            | Check::Text { .. }
            | Check::OneOf(_)
            | Check::Words(_)
            | Check::Entries(_) => true,
        }
    }

    /// Whether a text is allowed; a check that is not about text accepts every text.
    pub fn accepts(&self, value: &str) -> bool {
        match *self {
            Check::Text { ok, .. } => ok(value),
            Check::OneOf(words) => words.contains(&value),
            Check::Flag
            | Check::Range { .. }
            | Check::Above { .. }
            | Check::Words(_)
            | Check::Entries(_) => true,
        }
    }
}

impl Key {
    /// What is allowed, as shown to people, e.g. `50..=999`.
    pub fn allowed(&self) -> String {
        match self.check {
            Check::Flag => "true or false".to_owned(),
            Check::Range { min, max } if max.is_infinite() => format!("{} or more", number(min)),
            Check::Range { min, max } => format!("{}..={}", number(min), number(max)),
            Check::Above { min, max } => {
                format!("more than {}, up to {}", number(min), number(max))
            }
            Check::Text { allowed, .. } => allowed.to_owned(),
            Check::OneOf(words) => one_of(words),
            Check::Words(words) => format!("a non-empty list of {}, none twice", one_of(words)),
            Check::Entries(rows) => {
                let names: Vec<&str> = rows.iter().map(|row| row.name).collect();
                format!("tables with {}", names.join(", "))
            }
        }
    }
}

/// `a, b or c`.
fn one_of(words: &[&str]) -> String {
    match words.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "nothing".to_owned(),
    }
}

/// A bound as people write it: at most four decimals, no trailing zeros.
fn number(value: f64) -> String {
    let rounded = (value * 1e4).round() / 1e4;
    rounded.to_string()
}

/// The row of [`KEYS`] for a dotted key.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|key| key.name == name)
}

/// A row of [`KEYS`].
const fn row(name: &'static str, check: Check, unit: &'static str, doc: &'static str) -> Key {
    Key {
        name,
        check,
        unit,
        doc,
    }
}

/// `min..=max`.
const fn range(min: f64, max: f64) -> Check {
    Check::Range { min, max }
}

/// More than `min`, up to `max`.
const fn above(min: f64, max: f64) -> Check {
    Check::Above { min, max }
}

/// Any text, the empty one included.
const ANY_TEXT: Check = Check::Text {
    allowed: "any text",
    ok: |_| true,
};

/// A text that is more than blanks.
const fn not_blank(allowed: &'static str) -> Check {
    Check::Text {
        allowed,
        ok: |value| !value.trim().is_empty(),
    }
}

/// A text that becomes an MQTT topic prefix.
const TOPIC: Check = Check::Text {
    allowed: "a non-empty MQTT topic without +, #, NUL or a / at either end",
    ok: is_topic_prefix,
};

/// Every key, in the order of `config/default.toml`.
#[rustfmt::skip] // One row a key reads best as a table.
pub const KEYS: &[Key] = &[
    row("device.id", Check::Text { allowed: "1 to 64 letters, digits, _ or -, not bridge or reply", ok: is_device_id }, "", "it is an MQTT topic level and a Home Assistant node id"),
    row("device.name", not_blank("a non-empty name"), "", "Home Assistant shows it"),
    row("serial.port", Check::Text { allowed: "a device path, or usb:VID:PID[:SERIAL] with hex ids (the mbed LPC1768: usb:0d28:0204)", ok: |port| crate::port::PortSpec::parse(port).is_ok() }, "", "the controller's serial port; the USB form follows the board to a new device name"),
    row("serial.baud", range(1.0, f64::INFINITY), "Bd", "a line speed of 0 carries nothing; the controller runs at 115200"),
    row("serial.feed_interval_ms", range(50.0, 999.0), "ms", "the controller cuts the heater after 1000 ms without B+1; faster crowds its 16-byte input"),
    row("serial.poll_interval_ms", range(100.0, 4999.0), "ms", "the controller's watchdog reboots it after 5000 ms without a command, and slower polling would look stale"),
    row("serial.allow_firmware_without_heater_timeout", Check::Flag, "", "a controller build without the 1 s heater timeout (MrCoffeeBot 05a9a00) leaves the heater on up to 5 s after the bridge dies"),
    row("mqtt.host", not_blank("a non-empty host name or address"), "", "the broker to connect to"),
    row("mqtt.port", range(1.0, 65535.0), "", "port 0 is no broker's port"),
    row("mqtt.client_id", Check::Text { allowed: "a non-empty id", ok: |id| !id.is_empty() }, "", "the broker tells clients apart by it"),
    row("mqtt.client_id_suffix", Check::Flag, "", "without a random suffix anyone who can connect to the broker can take the bridge's session over with the same id"),
    row("mqtt.username", ANY_TEXT, "", "the user name on the broker; empty for none"),
    row("mqtt.password", ANY_TEXT, "", "the password on the broker; never printed"),
    row("mqtt.password_file", ANY_TEXT, "", "a file holding the password, so that it stays out of the configuration"),
    row("mqtt.base_topic", TOPIC, "", "it starts every topic of the bridge"),
    row("mqtt.state_interval_s", range(1.0, 3600.0), "s", "Home Assistant expires sensors after three intervals"),
    row("mqtt.temperature_deadband_c", range(0.0, 10.0), "°C", "a wider band would hide real temperature changes"),
    row("mqtt.water_deadband_in", range(0.0, 10.0), "in", "a wider band would hide real water level changes"),
    row("mqtt.keep_alive_s", range(5.0, 3600.0), "s", "the MQTT client needs at least 5 s; the broker only notices a dead bridge after 1.5 keep-alives"),
    row("mqtt.tls.ca_file", ANY_TEXT, "", "TLS is off while ca_file is empty"),
    row("mqtt.tls.client_cert", ANY_TEXT, "", "a client key is useless without its certificate"),
    row("mqtt.tls.client_key", ANY_TEXT, "", "a client certificate needs its private key"),
    row("homeassistant.discovery", Check::OneOf(&["components", "device", "off"]), "", "device needs Home Assistant 2024.11 or later; off publishes nothing"),
    row("homeassistant.discovery_prefix", TOPIC, "", "Home Assistant listens for discovery under it"),
    row("brew.max_cups", range(1.0, 24.0), "cups", "no drip coffee maker holds more than two dozen cups"),
    row("brew.default_cups", range(1.0, 24.0), "cups", "it must be a brew that can be started"),
    row("brew.preheat_c", range(20.0, 100.0), "°C", "above 100 °C the water boils; at max_plate_c the overtemp interlock trips"),
    row("brew.preheat_timeout_s", range(1.0, 3600.0), "s", "a plate that does not heat within an hour is broken"),
    row("brew.seconds_per_cup", above(0.0, 600.0), "s", "ten minutes a cup is beyond any drip coffee maker"),
    row("keep_warm.after_brew", Check::Flag, "", "keep the pot warm when a brew finishes"),
    row("keep_warm.target_c", range(40.0, 95.0), "°C", "below 40 °C is not warm, above 95 °C coffee boils down; at max_plate_c the overtemp interlock trips"),
    row("keep_warm.hysteresis_c", range(0.5, 20.0), "°C", "a narrower band chatters the relay; the heater must come on above room temperature"),
    row("keep_warm.max_minutes", range(1.0 / 60.0, 240.0), "min", "1 s to 4 h: EU Regulation 801/2013 asks for 40 minutes; four hours is the outer limit"),
    row("safety.max_heater_on_s", range(1.0, 3600.0), "s", "an hour of continuous heating is beyond any brew"),
    row("safety.stale_after_s", range(1.0, 4.5), "s", "it must trip before the controller's 5 s watchdog reboots it"),
    row("safety.max_plate_c", range(30.0, 125.0), "°C", "the DS18B20 sensor is rated to 125 °C"),
    row("safety.max_rise_c_per_s", above(0.0, 20.0), "°C/s", "a dry boil rises a few °C a second; above 20 the check never trips"),
    row("water.enabled", Check::Flag, "", "whether the reservoir sensor is fitted and checked"),
    row("water.empty_distance_in", above(0.0, 160.0), "in", "the empty surface is farther from the sensor than the full one; the HC-SR04 ranges up to 4 m"),
    row("water.full_distance_in", above(0.0, 160.0), "in", "the HC-SR04 ranges up to 4 m (157 in)"),
    row("http.listen", Check::Text { allowed: "empty (no public HTTP server) or an address like 127.0.0.1:8080", ok: is_listen }, "", "the public status page listens there"),
    row("http.ops_listen", Check::Text { allowed: "empty (no operator HTTP server) or an address like 127.0.0.1:9090", ok: is_listen }, "", "metrics and the probes listen there, apart from the public page so that its clients cannot starve them"),
    row("http.allowed_hosts", Check::Text { allowed: "host names separated by commas, e.g. coffee.example.org", ok: is_host_list }, "", "the public side answers only these names, its own address and localhost (DNS rebinding)"),
    row("http.max_streams", range(1.0, 10000.0), "", "each open /events stream holds a connection and a little memory"),
    row("http.max_connections_per_peer", range(1.0, 10000.0), "", "one client cannot take every connection slot; behind a proxy every viewer comes from the proxy's address"),
    row("heater.watts", range(0.0, 5000.0), "W", "the plate's rated power, for the energy estimate; no coffee maker's plate draws 5 kW"),
    row("maintenance.descale_every_brews", range(0.0, 100000.0), "brews", "descale reminders; 0 turns them off"),
    row("counters.state_dir", ANY_TEXT, "", "counters.json and schedule.json live there; empty keeps counters and schedule state in memory only"),
    row("counters.save_interval_s", range(1.0, 3600.0), "s", "fewer writes spare an SD card; a crash loses at most this much counting"),
    row("schedule.enabled", Check::Flag, "", "scheduled brews start only while it is on"),
    row("schedule.timezone", Check::Text { allowed: "empty (the machine's zone) or an IANA zone like Europe/Berlin", ok: is_zone }, "", "ready times are wall-clock times in it"),
    row("schedule.calendar", Check::Text { allowed: "empty, a file path, or an http://, https:// or webcal:// URL", ok: is_calendar }, "", "an iCalendar file or address whose timed events are brews"),
    row("schedule.calendar_refresh_s", range(10.0, 86400.0), "s", "more often than every 10 s loads the calendar's server; less than daily misses changes"),
    row("schedule.max_late_s", range(0.0, 86400.0), "s", "coffee brewed much later than wanted is not wanted"),
    row("schedule.default_preheat_s", range(0.0, 3600.0), "s", "a plate that does not heat within an hour is broken"),
    row("schedule.brew", Check::Entries(WEEKLY_ROWS), "", "weekly brews ready at a local time"),
];

/// The rows of one `[[schedule.brew]]` entry; `cups` must also be at most `brew.max_cups`.
#[rustfmt::skip]
pub const WEEKLY_ROWS: &[Key] = &[
    row("days", Check::Words(&["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), "", "the weekdays it brews on"),
    row("ready_at", Check::Text { allowed: "a 24-hour time HH:MM", ok: |t| crate::schedule::time_of_day(t).is_some() }, "", "the local time the coffee is ready"),
    row("cups", range(1.0, 24.0), "cups", "it must be a brew that can be started"),
];

/// A check between two keys. It runs only when both passed their own checks, so that one
/// mistake gives one error.
#[derive(Clone, Copy, Debug)]
pub struct Relation {
    /// The key reported when the check fails (its row's `doc` says why).
    pub key: &'static str,
    /// How its value must stand to the other key's.
    pub rule: Rule,
    /// The other key the check reads; what is allowed names it.
    pub other: &'static str,
}

/// How a key's value must stand to another key's; what is allowed when it does not says the
/// other key and its value. Comparisons are written so that NaN fails them.
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    /// A number less than the other: `below <other> (<its value>)`.
    Below,
    /// A number at most the other: `at most <other> (<its value>)`.
    AtMost,
    /// A number more than the other: `more than <other> (<its value>)`.
    MoreThan,
    /// A text set whenever the other is: `<this> when <other> is set`, e.g. `a key file`.
    SetWith(&'static str),
    /// Anything else: `None` when the settings pass, else what is allowed, naming the other
    /// key and its value.
    Other(fn(&Settings) -> Option<String>),
}

/// `Some(allowed)` when `ok` is false.
fn unless(ok: bool, allowed: impl FnOnce() -> String) -> Option<String> {
    if ok {
        None
    } else {
        Some(allowed())
    }
}

/// Every check between keys, in the order they are reported.
#[rustfmt::skip] // One row a check reads best as a table.
pub const RELATIONS: &[Relation] = &[
    Relation { key: "mqtt.tls.client_key", rule: Rule::SetWith("a key file"), other: "mqtt.tls.client_cert" },
    Relation { key: "mqtt.tls.client_cert", rule: Rule::SetWith("a certificate file"), other: "mqtt.tls.client_key" },
    Relation { key: "mqtt.tls.ca_file", rule: Rule::SetWith("a CA file"), other: "mqtt.tls.client_cert" },
    Relation { key: "brew.default_cups", rule: Rule::AtMost, other: "brew.max_cups" },
    Relation { key: "brew.preheat_c", rule: Rule::Below, other: "safety.max_plate_c" },
    Relation { key: "keep_warm.target_c", rule: Rule::Below, other: "safety.max_plate_c" },
    Relation { key: "keep_warm.hysteresis_c", rule: Rule::Other(comes_on_above_room), other: "keep_warm.target_c" },
    Relation { key: "serial.poll_interval_ms", rule: Rule::Other(polls_before_stale), other: "safety.stale_after_s" },
    Relation { key: "http.ops_listen", rule: Rule::Other(listens_apart), other: "http.listen" },
    Relation { key: "water.empty_distance_in", rule: Rule::MoreThan, other: "water.full_distance_in" },
];

/// `keep_warm.hysteresis_c`: the heater comes on at least 20 °C above room temperature.
fn comes_on_above_room(s: &Settings) -> Option<String> {
    let target = s.keep_warm.target_c;
    unless(target - s.keep_warm.hysteresis_c >= 20.0, || {
        format!("at most keep_warm.target_c - 20 ({})", target - 20.0)
    })
}

/// `serial.poll_interval_ms`: a poll comes before the readings count as stale.
fn polls_before_stale(s: &Settings) -> Option<String> {
    let stale_ms = s.safety.stale_after_s * 1000.0;
    unless((s.serial.poll_interval_ms as f64) < stale_ms, || {
        format!("below safety.stale_after_s ({stale_ms} ms)")
    })
}

/// `http.ops_listen`: not the public server's port on an address that overlaps it.
fn listens_apart(s: &Settings) -> Option<String> {
    let public = s.http.listen_addr();
    let clash = match (public, s.http.ops_listen_addr()) {
        (Some(public), Some(ops)) => {
            public.port() == ops.port()
                && (public.ip() == ops.ip()
                    || public.ip().is_unspecified()
                    || ops.ip().is_unspecified())
        }
        _ => false,
    };
    unless(!clash, || {
        format!("an address apart from http.listen ({})", s.http.listen)
    })
}

/// 1 to 64 letters, digits, `_` or `-`.
fn is_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `id` can be `D` in `B/D/…`: an id that is not one of the bridge's own levels
/// (`B/bridge/…`, `B/reply/…`).
fn is_device_id(id: &str) -> bool {
    is_id(id) && id != "bridge" && id != "reply"
}

/// Whether `topic` can prefix MQTT topics: non-empty, no wildcards or NUL, no `/` at either end.
fn is_topic_prefix(topic: &str) -> bool {
    !topic.is_empty()
        && !topic.contains(['+', '#', '\0'])
        && !topic.starts_with('/')
        && !topic.ends_with('/')
}

/// Empty, or an IANA time zone.
fn is_zone(name: &str) -> bool {
    name.is_empty() || name.parse::<chrono_tz::Tz>().is_ok()
}

/// Empty, a path, or an http(s)/webcal URL (no other scheme).
fn is_calendar(source: &str) -> bool {
    match source.split_once("://") {
        Some((scheme, rest)) => {
            ["http", "https", "webcal"].contains(&scheme.to_ascii_lowercase().as_str())
                && !rest.is_empty()
        }
        None => source.is_empty() || !source.trim().is_empty(),
    }
}

/// Host names separated by commas: letters, digits, `-`, `.` (and `:`, `[`, `]` for IPv6).
fn is_host_list(list: &str) -> bool {
    list.split(',').map(str::trim).all(|name| {
        name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    })
}

/// Empty, or a socket address.
fn is_listen(listen: &str) -> bool {
    listen.is_empty() || listen.parse::<SocketAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_in_the_name_is_the_unit_of_the_row() {
        let suffixes = [
            ("_c_per_s", "°C/s"),
            ("_ms", "ms"),
            ("_s", "s"),
            ("_c", "°C"),
            ("_in", "in"),
            ("_minutes", "min"),
        ];
        for key in KEYS {
            let named = suffixes
                .iter()
                .find(|(suffix, _)| key.name.ends_with(suffix));
            if let Some((_, unit)) = named {
                assert_eq!(key.unit, *unit, "{}", key.name);
            }
        }
    }

    #[test]
    fn allowed_texts_read_as_people_write_them() {
        let allowed = |name| key(name).unwrap().allowed();
        assert_eq!(allowed("serial.feed_interval_ms"), "50..=999");
        assert_eq!(allowed("serial.baud"), "1 or more");
        assert_eq!(allowed("keep_warm.max_minutes"), "0.0167..=240");
        assert_eq!(allowed("brew.seconds_per_cup"), "more than 0, up to 600");
        assert_eq!(
            allowed("homeassistant.discovery"),
            "components, device or off"
        );
        assert_eq!(allowed("water.enabled"), "true or false");
    }
}
