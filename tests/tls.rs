//! MQTT over TLS, end to end: certificates made at test time with `openssl`, a real mosquitto
//! with a TLS listener, `coffeebot run` against the simulator. CA only; CA and a client
//! certificate with a broker that requires one; a wrong CA and an expired server certificate
//! give one clear log line each and retries, never a crash, never a connection.
//!
//! Every wait ends on an observable event (a message, a log line) or fails after a timeout.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use coffeebot::sim::{SimConfig, SimHandle};
use support::bridge::{Bridge, Process};
use support::listen::HeldPort;
use support::mosquitto::{Broker, Credentials, Listener, Login, Protocol, Setup};
use support::sim::simulator;

const WAIT: Duration = Duration::from_secs(15);
const AVAILABILITY: &str = "coffeebot/bridge/availability";

/// Runs `openssl` (through `faketime` when `at` is given), panicking with its output on failure.
fn openssl(dir: &Path, at: Option<&str>, args: &[&str]) {
    let mut cmd = match at {
        Some(at) => {
            let mut c = Command::new("faketime");
            c.arg(at).arg("openssl");
            c
        }
        None => Command::new("openssl"),
    };
    let out = cmd
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `name` (key and self-signed certificate).
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        None,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// A certificate `name` signed by `ca`, for `localhost` and 127.0.0.1; issued at `at` (a
/// `faketime` date) for one day when given, else now for two days.
fn signed(dir: &Path, ca: &str, name: &str, at: Option<&str>) {
    openssl(
        dir,
        None,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        at,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            if at.is_some() { "1" } else { "2" },
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// Certificates for every test: `ca`, `other-ca`, `server`, `expired` (a server certificate
/// that ran out in 2020) and `client`, all readable by the broker's user.
fn certificates(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coffeebot-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ca(&dir, "ca");
    ca(&dir, "other-ca");
    signed(&dir, "ca", "server", None);
    signed(&dir, "ca", "expired", Some("2020-01-01 00:00:00"));
    signed(&dir, "ca", "client", None);
    // mosquitto drops root before it reads its files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dir
}

/// A plain broker (its TCP listener for the test's own client) with a TLS listener, and the
/// [`certificates`] of the test.
struct TlsBroker {
    broker: Broker,
    /// The TLS listener's port.
    port: HeldPort,
    certs: PathBuf,
}

impl TlsBroker {
    /// Certificates for test `name`, and a broker whose TLS listener uses `server` (`server` or
    /// `expired`), requiring client certificates when `require` is set.
    fn start(name: &str, server: &str, require: bool) -> TlsBroker {
        let certs = certificates(name);
        let port = HeldPort::new().expect("a free loopback port");
        let c = |f: &str| certs.join(f).display().to_string();
        let lines = format!(
            "listener {} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require}\ntls_version tlsv1.2\n",
            port.port(),
            c("ca.crt"),
            c(&format!("{server}.crt")),
            c(&format!("{server}.key")),
        );
        let broker = Broker::start_with_extra(Setup::Anonymous, &lines);
        TlsBroker {
            broker,
            port,
            certs,
        }
    }

    /// The bridge, with a simulator of its own for test `name`, against the TLS listener on
    /// `localhost:port` with these `mqtt.tls` settings, each naming a file of the certificates.
    async fn bridge(&self, name: &str, tls: &[(&str, &str)]) -> (SimHandle, Bridge) {
        let sim = simulator("tls-sim", name, SimConfig::default()).await;
        let port = self.port.port().to_string();
        let mut extra: Vec<(&str, String)> = vec![
            ("MQTT__HOST", "localhost".to_owned()),
            ("MQTT__PORT", port),
            ("HOMEASSISTANT__DISCOVERY", "off".to_owned()),
        ];
        for (key, file) in tls {
            extra.push((key, self.certs.join(file).display().to_string()));
        }
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let anonymous = Credentials {
            username: String::new(),
            password: String::new(),
        };
        // Debug logs show every retry.
        let bridge = Bridge::start_with(
            Process {
                rust_log: "coffeebot=debug",
                ..Process::default()
            },
            sim.path(),
            &self.broker,
            &anonymous,
            &extra,
        );
        (sim, bridge)
    }
}

/// A client on the plain listener that has seen the bridge's `online`.
async fn wait_online(broker: &Broker) {
    let mut watcher = broker
        .connect(Protocol::V5, Listener::Lan, Login::Anonymous)
        .await
        .unwrap();
    watcher.subscribe(AVAILABILITY).await.unwrap();
    watcher
        .wait_for_payload(AVAILABILITY, "online")
        .await
        .expect("the bridge connected over TLS and said online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_only() {
    let tls = TlsBroker::start("ca-only", "server", false);
    let (_sim, mut bridge) = tls
        .bridge("ca-only", &[("MQTT__TLS__CA_FILE", "ca.crt")])
        .await;
    wait_online(&tls.broker).await;
    assert!(bridge.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_required_by_the_broker() {
    let tls = TlsBroker::start("client-cert", "server", true);
    let client_cert = [
        ("MQTT__TLS__CA_FILE", "ca.crt"),
        ("MQTT__TLS__CLIENT_CERT", "client.crt"),
        ("MQTT__TLS__CLIENT_KEY", "client.key"),
    ];
    let (_sim, _bridge) = tls.bridge("client-cert", &client_cert).await;
    wait_online(&tls.broker).await;
    // Without its certificate the same bridge is turned away, with a line that says so.
    let (_sim, mut without) = tls.bridge("client-cert-missing", &client_cert[..1]).await;
    let line = without
        .wait_for_log("MQTT broker at localhost", WAIT)
        .expect("a line about the broker connection");
    assert!(
        line.contains(&format!("localhost:{}", tls.port.port())),
        "{line}"
    );
    assert!(without.is_running());
}

/// A refused TLS connection: one clear line, retries (the broker sees several attempts), the
/// process keeps running and never says online.
async fn refused(name: &str, server: &str, ca: &str, expect: &str) {
    let tls = TlsBroker::start(name, server, false);
    let (_sim, mut bridge) = tls.bridge(name, &[("MQTT__TLS__CA_FILE", ca)]).await;
    let line = bridge
        .wait_for_log("TLS with the MQTT broker at localhost", WAIT)
        .expect("one line naming TLS and the broker");
    assert!(
        line.to_lowercase().contains(expect),
        "the line says why ({expect}): {line}"
    );
    // Retries with backoff: each further attempt logs at debug level only.
    assert!(
        bridge.wait_for_log_count("still retrying", 2, WAIT),
        "the bridge retries"
    );
    assert!(bridge.is_running(), "no crash");
    let warnings: Vec<String> = bridge
        .log()
        .into_iter()
        .filter(|l| l.contains("TLS with the MQTT broker") && !l.contains("still retrying"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one line per condition, not per attempt: {warnings:?}"
    );
    assert!(
        !bridge
            .log()
            .iter()
            .any(|l| l.contains("connected to the MQTT broker")),
        "the bridge never connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_is_refused_with_one_clear_line() {
    refused("wrong-ca", "server", "other-ca.crt", "unknownissuer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_server_certificate_is_refused_with_one_clear_line() {
    refused("expired", "expired", "ca.crt", "expired").await;
}
