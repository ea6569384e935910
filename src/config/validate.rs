//! [`Settings::validate`]: every row of [`KEYS`] checked against the value of its key, then
//! [`RELATIONS`]. Values are found by name in the serialised settings, so no second list of
//! keys exists.

use std::collections::BTreeSet;

use config::{Config, ValueKind};

use super::keys::{Check, Key, Relation, Rule, KEYS, RELATIONS};
use super::{ConfigError, Settings};

/// A value as [`Settings::validate`] sees it.
enum Value {
    /// A number, and the way it is written.
    Number(f64, String),
    /// A text.
    Text(String),
    /// A list of texts (`None` for an item that is no text).
    List(Vec<Option<String>>),
    /// Anything else (a flag, a table).
    Other(String),
}

impl Value {
    /// The value as an error shows it: numbers as written, texts quoted.
    fn shown(&self) -> String {
        match self {
            Value::Number(_, text) | Value::Other(text) => text.clone(),
            Value::Text(text) => format!("{text:?}"),
            Value::List(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|item| item.as_ref().map_or("?".to_owned(), |t| format!("{t:?}")))
                    .collect();
                format!("[{}]", items.join(", "))
            }
        }
    }
}

/// The settings as a tree that can be read by dotted key.
struct Tree(Config);

impl Tree {
    /// The value of a dotted key, if the settings have it. Read from the tree itself rather
    /// than deserialised, which would refuse a `u64` above `i64::MAX`.
    fn get(&self, name: &str) -> Option<Value> {
        let mut node = &self.0.cache;
        for part in name.split('.') {
            let ValueKind::Table(table) = &node.kind else {
                return None;
            };
            node = table.get(part)?;
        }
        Some(value_of(node))
    }

    /// The tables of the list at a dotted key (`[[section.key]]`), empty if it has none.
    fn entries(&self, name: &str) -> Vec<config::Map<String, config::Value>> {
        let mut node = &self.0.cache;
        for part in name.split('.') {
            let ValueKind::Table(table) = &node.kind else {
                return Vec::new();
            };
            let Some(child) = table.get(part) else {
                return Vec::new();
            };
            node = child;
        }
        let ValueKind::Array(items) = &node.kind else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| match &item.kind {
                ValueKind::Table(table) => Some(table.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A value of the tree as validation sees it.
fn value_of(node: &config::Value) -> Value {
    match &node.kind {
        ValueKind::I64(n) => Value::Number(*n as f64, n.to_string()),
        ValueKind::I128(n) => Value::Number(*n as f64, n.to_string()),
        ValueKind::U64(n) => Value::Number(*n as f64, n.to_string()),
        ValueKind::U128(n) => Value::Number(*n as f64, n.to_string()),
        ValueKind::Float(n) => Value::Number(*n, n.to_string()),
        ValueKind::String(text) => Value::Text(text.clone()),
        ValueKind::Array(items) if items.iter().all(|i| !matches!(i.kind, ValueKind::Table(_))) => {
            Value::List(
                items
                    .iter()
                    .map(|item| match &item.kind {
                        ValueKind::String(text) => Some(text.clone()),
                        _ => None,
                    })
                    .collect(),
            )
        }
        other => Value::Other(other.to_string()),
    }
}

/// Whether `value` passes `check` on its own.
fn passes(check: Check, value: &Value) -> bool {
    match (check, value) {
        (_, Value::Number(n, _)) => check.contains(*n),
        (_, Value::Text(text)) => check.accepts(text),
        (Check::Words(words), Value::List(items)) => {
            !items.is_empty()
                && items.iter().enumerate().all(|(i, item)| {
                    item.as_deref().is_some_and(|w| {
                        words.contains(&w) && !items[..i].iter().any(|x| x.as_deref() == Some(w))
                    })
                })
        }
        _ => true,
    }
}

/// Every problem of the entries of a `[[…]]` key, named `key[i].field`; `cups` is also
/// checked against `brew.max_cups`.
fn entry_problems(tree: &Tree, key: &Key, rows: &[Key], settings: &Settings) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (index, table) in tree.entries(key.name).iter().enumerate() {
        for row in rows {
            // An empty list may not reach the tree at all.
            let value = match (table.get(row.name), row.check) {
                (Some(value), _) => value_of(value),
                (None, Check::Words(_)) => Value::List(Vec::new()),
                (None, _) => continue,
            };
            let named = Key { name: "", ..*row };
            let name = format!("{}[{index}].{}", key.name, row.name);
            let mut allowed = None;
            if !passes(row.check, &value) {
                allowed = Some(row.allowed());
            } else if row.name == "cups" {
                let max = settings.brew.max_cups;
                if let Value::Number(n, _) = value {
                    if n > f64::from(max) {
                        allowed = Some(format!(
                            "{} and at most brew.max_cups ({max})",
                            row.allowed()
                        ));
                    }
                }
            }
            if let Some(allowed) = allowed {
                let mut error = refused(&named, &value, allowed);
                match &mut error {
                    ConfigError::Invalid { key, .. } | ConfigError::OutOfRange { key, .. } => {
                        *key = name;
                    }
                    _ => {}
                }
                errors.push(error);
            }
        }
    }
    errors
}

/// The error for `value` of `key`, which is not `allowed`.
fn refused(key: &Key, value: &Value, allowed: String) -> ConfigError {
    match value {
        Value::Text(_) | Value::List(_) => ConfigError::Invalid {
            key: key.name.to_owned(),
            value: value.shown(),
            allowed,
            reason: key.doc.to_owned(),
        },
        Value::Number(..) | Value::Other(_) => ConfigError::OutOfRange {
            key: key.name.to_owned(),
            value: value.shown(),
            allowed,
            reason: key.doc.to_owned(),
        },
    }
}

/// What is allowed when `value` (of the relation's key) and `other` (of its other key) break
/// `relation`; `None` when they keep it.
fn broken(
    relation: &Relation,
    value: &Value,
    other: &Value,
    settings: &Settings,
) -> Option<String> {
    let name = relation.other;
    let (holds, allowed) = match (relation.rule, value, other) {
        (Rule::Other(check), _, _) => return check(settings),
        (Rule::Below, Value::Number(n, _), Value::Number(limit, shown)) => {
            (n < limit, format!("below {name} ({shown})"))
        }
        (Rule::AtMost, Value::Number(n, _), Value::Number(limit, shown)) => {
            (n <= limit, format!("at most {name} ({shown})"))
        }
        (Rule::MoreThan, Value::Number(n, _), Value::Number(limit, shown)) => {
            (n > limit, format!("more than {name} ({shown})"))
        }
        (Rule::SetWith(what), Value::Text(text), Value::Text(with)) => (
            with.is_empty() || !text.is_empty(),
            format!("{what} when {name} is set"),
        ),
        // A rule for values of another type: the unit tests below rule it out.
        _ => return None,
    };
    (!holds).then_some(allowed)
}

impl Settings {
    /// Checks every key and every relation between keys; returns every problem at once:
    /// numbers first, then texts, then relations, each in the order of [`KEYS`].
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let tree = match Config::try_from(self) {
            Ok(config) => Tree(config),
            Err(e) => {
                return Err(vec![ConfigError::Type {
                    key: "(top level)".to_owned(),
                    message: e.to_string(),
                }])
            }
        };
        let mut errors = Vec::new();
        let mut bad = BTreeSet::new();
        // Every row names a key of the settings, with a check that fits its type: the unit
        // tests below make sure.
        let values: Vec<(&Key, Value)> = KEYS
            .iter()
            .filter_map(|key| Some((key, tree.get(key.name)?)))
            .collect();
        for (key, value) in &values {
            if let Value::Number(n, _) = value {
                if !key.check.contains(*n) {
                    errors.push(refused(key, value, key.allowed()));
                    bad.insert(key.name);
                }
            }
        }
        for (key, value) in &values {
            if let Value::Text(text) = value {
                if !key.check.accepts(text) {
                    errors.push(refused(key, value, key.allowed()));
                    bad.insert(key.name);
                }
            }
        }
        for (key, value) in &values {
            if let Value::List(_) = value {
                if !passes(key.check, value) {
                    errors.push(refused(key, value, key.allowed()));
                    bad.insert(key.name);
                }
            }
            if let Check::Entries(rows) = key.check {
                errors.extend(entry_problems(&tree, key, rows, self));
            }
        }
        let value = |name: &str| values.iter().find(|(key, _)| key.name == name);
        for relation in RELATIONS {
            if bad.contains(relation.key) || bad.contains(relation.other) {
                continue;
            }
            let (Some((key, value)), Some((_, other))) =
                (value(relation.key), value(relation.other))
            else {
                continue;
            };
            let Some(allowed) = broken(relation, value, other, self) else {
                continue;
            };
            // A number's own bounds still hold; say both.
            let allowed = match value {
                Value::Number(..) => format!("{} and {allowed}", key.allowed()),
                Value::Text(_) | Value::List(_) | Value::Other(_) => allowed,
            };
            errors.push(refused(key, value, allowed));
            bad.insert(key.name);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dotted names of every leaf of a tree.
    fn leaves(value: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        match value.as_object() {
            Some(table) => {
                for (name, child) in table {
                    let child_path = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    leaves(child, &child_path, out);
                }
            }
            None => out.push(path.to_owned()),
        }
    }

    #[test]
    fn every_key_of_the_defaults_has_one_row_in_default_toml_order() {
        let defaults: toml::Table = toml::from_str(super::super::DEFAULTS).unwrap();
        let tree = serde_json::to_value(defaults).unwrap();
        let mut names = Vec::new();
        leaves(&tree, "", &mut names);
        let rows: Vec<&str> = KEYS.iter().map(|key| key.name).collect();
        let mut sorted_rows = rows.clone();
        sorted_rows.sort_unstable();
        names.sort_unstable();
        assert_eq!(sorted_rows, names, "KEYS and config/default.toml differ");
        // The printout and the rows follow default.toml; toml::Table sorts, so compare the
        // order of first appearance in the text.
        let position = |name: &str| {
            let leaf = name.rsplit('.').next().unwrap();
            let section = name.rsplit_once('.').map_or("", |(section, _)| section);
            let start = super::super::DEFAULTS
                .find(&format!("[{section}]\n"))
                .unwrap();
            start
                + super::super::DEFAULTS[start..]
                    .find(&format!("\n{leaf} = "))
                    .unwrap()
        };
        let positions: Vec<usize> = rows.iter().map(|name| position(name)).collect();
        assert!(
            positions.is_sorted(),
            "KEYS is not in the order of default.toml"
        );
    }

    #[test]
    fn every_check_fits_the_type_of_its_key() {
        let tree = Tree(Config::try_from(&Settings::default()).unwrap());
        for key in KEYS {
            let fits = match (key.check, tree.get(key.name)) {
                (Check::Range { .. } | Check::Above { .. }, Some(Value::Number(..))) => true,
                (Check::Text { .. } | Check::OneOf(_), Some(Value::Text(_))) => true,
                (Check::Flag, Some(Value::Other(text))) => text == "true" || text == "false",
                (Check::Entries(_), Some(Value::List(items))) => items.is_empty(),
                (Check::Entries(rows), None) => !rows.is_empty(),
                _ => false,
            };
            assert!(fits, "{}: {:?} does not fit its value", key.name, key.check);
            assert!(!key.doc.is_empty() && !key.allowed().is_empty());
        }
        for relation in RELATIONS {
            let [value, other] = [relation.key, relation.other].map(|name| tree.get(name));
            let fits = match (relation.rule, value, other) {
                (Rule::Below | Rule::AtMost | Rule::MoreThan, Some(value), Some(other)) => {
                    matches!((value, other), (Value::Number(..), Value::Number(..)))
                }
                (Rule::SetWith(_), Some(Value::Text(_)), Some(Value::Text(_))) => true,
                (Rule::Other(_), Some(_), Some(_)) => true,
                _ => false,
            };
            assert!(
                fits,
                "{}: {:?} does not fit its keys",
                relation.key, relation.rule
            );
            for name in [relation.key, relation.other] {
                assert!(super::super::key(name).is_some(), "{name} has no row");
            }
        }
    }

    #[test]
    fn relations_name_the_other_key_and_its_value() {
        let problems = |change: fn(&mut Settings)| {
            let mut settings = Settings::default();
            change(&mut settings);
            let errors = settings.validate().err().unwrap_or_default();
            errors.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        // A change to the defaults, and the problems it makes.
        type Case = (fn(&mut Settings), &'static [&'static str]);
        let cases: [Case; 5] = [
            (
                |s| s.mqtt.tls.client_cert = "/c.pem".into(),
                &[
                    "mqtt.tls.client_key = \"\" is not allowed: allowed a key file when \
                     mqtt.tls.client_cert is set (a client certificate needs its private key)",
                    "mqtt.tls.ca_file = \"\" is not allowed: allowed a CA file when \
                     mqtt.tls.client_cert is set (TLS is off while ca_file is empty)",
                ],
            ),
            (
                |s| s.brew.max_cups = 3,
                &[
                    "brew.default_cups = 4 is out of range: allowed 1..=24 and at most \
                   brew.max_cups (3) (it must be a brew that can be started)",
                ],
            ),
            (
                |s| s.safety.max_plate_c = 54.5,
                &[
                    "keep_warm.target_c = 80 is out of range: allowed 40..=95 and below \
                   safety.max_plate_c (54.5) (below 40 °C is not warm, above 95 °C coffee boils \
                   down; at max_plate_c the overtemp interlock trips)",
                ],
            ),
            (
                |s| s.water.full_distance_in = 8.25,
                &[
                    "water.empty_distance_in = 8 is out of range: allowed more than 0, up to 160 \
                   and more than water.full_distance_in (8.25) (the empty surface is farther \
                   from the sensor than the full one; the HC-SR04 ranges up to 4 m)",
                ],
            ),
            (
                |s| s.http.ops_listen = "0.0.0.0:8080".into(),
                &[
                    "http.ops_listen = \"0.0.0.0:8080\" is not allowed: allowed an address apart \
                   from http.listen (127.0.0.1:8080) (metrics and the probes listen there, apart \
                   from the public page so that its clients cannot starve them)",
                ],
            ),
        ];
        for (change, expected) in cases {
            assert_eq!(problems(change), expected);
        }
    }
}
