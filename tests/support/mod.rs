//! Helpers shared by the integration tests; each test binary includes them with `mod support;`
//! and uses a part of them, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod acl;
pub mod bridge;
pub mod cdp;
pub mod child;
pub mod http;
#[path = "../../src/bin/coffeebot-bench/listen.rs"]
pub mod listen;
pub mod mosquitto;
pub mod realfw;
pub mod rig;
pub mod sim;

/// libfaketime, from Debian's `faketime` (scripts/install-test-deps.sh installs it), as the
/// `LD_PRELOAD` value of a bridge whose wall clock a test moves.
pub fn libfaketime() -> String {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib/arm-linux-gnueabihf",
        "/usr/lib",
    ]
    .iter()
    .map(|dir| std::path::Path::new(dir).join("faketime/libfaketime.so.1"))
    .find(|p| p.is_file())
    .expect("libfaketime is not installed: run scripts/install-test-deps.sh")
    .display()
    .to_string()
}

/// A fresh, empty directory `coffeebot-TEST-PID-NAME` under the system's temporary directory,
/// so that neither concurrent runs nor an earlier run's leftovers meet in it.
pub fn fresh_dir(test: &str, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("coffeebot-{test}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a fresh test directory");
    dir
}
