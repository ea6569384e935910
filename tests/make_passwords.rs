//! `mosquitto/make-passwords.sh` never puts a password in a process's arguments: every local
//! user can read `/proc/*/cmdline`. The script runs with passwords from its environment and
//! from standard input while every process's command line is sampled; a `mosquitto_passwd`
//! stand-in first in `PATH` holds each call open for a moment (then runs the real one), so that
//! the sampler sees every call it makes — and the test proves it does by finding them.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support::mosquitto::find_program;

const SECRETS: [&str; 2] = ["env-secret-Zq7w", "stdin-secret:Kx9"];

/// Every distinct command line of every process, sampled until `stop` is set.
fn sample_cmdlines(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<BTreeSet<String>> {
    std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(dir) = std::fs::read_dir("/proc") else {
                break;
            };
            for entry in dir.flatten() {
                if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
                    if !raw.is_empty() {
                        seen.insert(String::from_utf8_lossy(&raw).replace('\0', " "));
                    }
                }
            }
        }
        seen
    })
}

/// A directory with a `mosquitto_passwd` that shows its arguments for 300 ms, then runs the
/// real one with them.
fn slow_mosquitto_passwd(dir: &Path) -> PathBuf {
    let real = find_program("mosquitto_passwd");
    let shim = dir.join("mosquitto_passwd");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/bash\n# stand-in: stays visible in /proc for a moment\nsleep 0.3\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_owned()
}

#[test]
fn no_password_ever_appears_in_a_command_line() {
    let dir = support::fresh_dir("make-passwords", "argv");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let bin = slow_mosquitto_passwd(&bin);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_cmdlines(stop.clone());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mosquitto/make-passwords.sh");
    let mut child = Command::new(&script)
        .arg("-f")
        .arg(dir.join("passwd"))
        .arg("--stdin")
        .env("PATH", &path)
        .env("MQTT_PASSWORD_HOMEASSISTANT", SECRETS[0])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "lan={}", SECRETS[1]).unwrap();
    let status = child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let seen = sampler.join().unwrap();
    assert!(status.success(), "make-passwords.sh failed");

    let calls: Vec<&String> = seen
        .iter()
        .filter(|c| c.contains("mosquitto_passwd") && c.contains("passwd."))
        .collect();
    for user in ["coffeebot", "homeassistant", "lan"] {
        assert!(
            calls.iter().any(|c| c.contains(&format!(" {user}"))),
            "the sampler never saw mosquitto_passwd for {user}: {calls:?}"
        );
    }
    for secret in SECRETS {
        let leaks: Vec<&String> = seen.iter().filter(|c| c.contains(secret)).collect();
        assert!(leaks.is_empty(), "{secret} in a command line: {leaks:?}");
    }
    let generated = std::fs::read_to_string(dir.join("passwd.generated")).unwrap();
    let generated = generated.trim().strip_prefix("coffeebot=").unwrap();
    assert!(generated.len() >= 20);
    assert!(
        !seen.iter().any(|c| c.contains(generated)),
        "the generated password leaked"
    );
    let hashed = std::fs::read_to_string(dir.join("passwd")).unwrap();
    assert_eq!(hashed.lines().count(), 3, "{hashed}");
    for secret in SECRETS {
        assert!(!hashed.contains(secret), "plain text in the password file");
    }
}

#[test]
fn a_password_on_the_command_line_is_refused() {
    let dir = support::fresh_dir("make-passwords", "refuse");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mosquitto/make-passwords.sh");
    let out = Command::new(&script)
        .arg("-f")
        .arg(dir.join("passwd"))
        .arg("lan=oops")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MQTT_PASSWORD_LAN"), "{err}");
    assert!(!dir.join("passwd").exists());
}
