//! Reads the calendar's text from where `schedule.calendar` says: a file, or an `http(s)://`
//! (or `webcal://`, read as `https://`) address. Blocking: the daemon calls it on a blocking
//! thread, the `schedule` command directly. The text is parsed as it arrives, one component
//! at a time ([`calendar::read`]), and never more than [`MAX_BYTES`](calendar::MAX_BYTES) + 1
//! bytes of it are read: a 50 MiB answer costs a few kilobytes of buffer.
//!
//! HTTPS uses rustls with the aws-lc-rs provider (the one the MQTT client already carries) and
//! the system's root certificates; no OpenSSL.

use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;

use super::calendar::{self, Calendar, CalendarError, ReadError};

/// Why the calendar could not be read. One line each.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    File {
        /// The path.
        path: String,
        /// Why.
        message: String,
    },
    /// The server could not be reached or did not answer in time.
    #[error("cannot fetch the calendar: {0}")]
    Fetch(String),
    /// The server answered with an error status.
    #[error("the calendar's server answered HTTP {0}")]
    Status(u16),
    /// The text is not UTF-8.
    #[error("the calendar is not UTF-8 text")]
    NotText,
    /// The text is no usable calendar.
    #[error("{0}")]
    Calendar(#[from] CalendarError),
}

impl SourceError {
    /// A short label for metrics: `file`, `fetch`, `status`, `text`, `too_large`,
    /// `too_many_events` or `invalid`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::File { .. } => "file",
            SourceError::Fetch(_) => "fetch",
            SourceError::Status(_) => "status",
            SourceError::NotText => "text",
            SourceError::Calendar(CalendarError::TooLarge(_)) => "too_large",
            SourceError::Calendar(CalendarError::TooManyEvents(_)) => "too_many_events",
            SourceError::Calendar(CalendarError::Invalid(_)) => "invalid",
        }
    }
}

/// Whether `source` is a web address rather than a path.
pub fn is_url(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    ["http://", "https://", "webcal://"]
        .iter()
        .any(|scheme| lower.starts_with(scheme))
}

/// Reads and parses the calendar at `source`, waiting at most `timeout` for a server.
pub fn load(source: &str, timeout: Duration) -> Result<Calendar, SourceError> {
    if is_url(source) {
        fetch(source, timeout)
    } else {
        read_file(source)
    }
}

/// The source's error for what reading the text found; `io` says what a failed read is.
fn read_error(error: ReadError, io: impl FnOnce(std::io::Error) -> SourceError) -> SourceError {
    match error {
        ReadError::Io(e) => io(e),
        ReadError::NotText => SourceError::NotText,
        ReadError::Calendar(e) => e.into(),
    }
}

fn read_file(path: &str) -> Result<Calendar, SourceError> {
    let error = |e: std::io::Error| SourceError::File {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(error)?;
    calendar::read(BufReader::new(file)).map_err(|e| read_error(e, error))
}

fn fetch(url: &str, timeout: Duration) -> Result<Calendar, SourceError> {
    let url = match url.get(..9) {
        Some(scheme) if scheme.eq_ignore_ascii_case("webcal://") => {
            format!("https://{}", &url[9..])
        }
        _ => url.to_owned(),
    };
    let mut roots = Vec::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        roots.push(ureq::tls::Certificate::from_der(cert.as_ref()).to_owned());
    }
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(5)
        .tls_config(tls)
        .build()
        .new_agent();
    let response = agent
        .get(&url)
        .header("Accept", "text/calendar")
        .call()
        .map_err(|e| SourceError::Fetch(e.to_string()))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(SourceError::Status(status));
    }
    calendar::read(BufReader::new(response.into_body().into_reader()))
        .map_err(|e| read_error(e, |e| SourceError::Fetch(e.to_string())))
}
