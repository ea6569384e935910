//! [`load`]: the layers (compiled-in defaults, file, environment) merged by the `config` crate,
//! with keys that exist nowhere and values of the wrong type refused before validation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use config::{Config, Environment, File, FileFormat};

use super::{key, ConfigError, Settings, DEFAULTS};

/// Prefix of the environment variables that override settings, before `__SECTION__KEY`.
const ENV_PREFIX: &str = "COFFEEBOT";

/// Separator between the prefix, sections and key in environment variable names.
const ENV_SEPARATOR: &str = "__";

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
        if password_in(&tree) {
            errors.push(ConfigError::SecretInFile {
                key: "mqtt.password".to_owned(),
                origin: origin.clone(),
            });
        }
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

/// Whether a file's settings hold a password (`mqtt.password`, not empty): refused, because
/// a configuration file is no place for a secret. An empty one (as in config/default.toml)
/// says "no password" and is accepted.
fn password_in(tree: &serde_json::Value) -> bool {
    match tree.pointer("/mqtt/password") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::String(text)) => !text.is_empty(),
        Some(_) => true,
    }
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
/// and what its row in [`KEYS`](super::KEYS) allows there.
fn type_error(error: config::ConfigError) -> ConfigError {
    let (name, message) = match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => (key, format!("expected {expected}, found {unexpected}")),
        config::ConfigError::At { error, key, .. } => (key, one_line(&error.to_string())),
        other => (None, one_line(&other.to_string())),
    };
    let name = name.unwrap_or_else(|| "(top level)".to_owned());
    let message = match key(&name) {
        Some(row) => format!("{message}: allowed {}", row.allowed()),
        None => message,
    };
    ConfigError::Type { key: name, message }
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
