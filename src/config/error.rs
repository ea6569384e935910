//! [`ConfigError`]: why the configuration cannot be used, one line per problem naming the key.

use std::path::PathBuf;

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
    /// A password written into the configuration file, which is refused: the file is the
    /// least guarded place for it (copied, committed, mounted as a Kubernetes ConfigMap,
    /// readable by everyone by default). The message never contains the password.
    #[error(
        "{key} is set in {origin}: a password never belongs in the configuration file; put it \
         in mqtt.password_file (a file of its own, mode 0600) or in COFFEEBOT__MQTT__PASSWORD, \
         and remove it from {origin}"
    )]
    SecretInFile {
        /// The dotted key, `mqtt.password`.
        key: String,
        /// The configuration file.
        origin: String,
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
            | ConfigError::Invalid { key, .. }
            | ConfigError::SecretInFile { key, .. } => Some(key),
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
    pub(super) fn from_list(mut errors: Vec<ConfigError>) -> ConfigError {
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            ConfigError::Several(errors)
        }
    }
}

/// The lines of several errors, one each.
fn join_lines(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}
