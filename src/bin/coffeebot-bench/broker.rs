//! The bench's own mosquitto: anonymous, one loopback listener on a free port, no
//! persistence, optionally with Nagle's algorithm on its sockets (`--broker-nagle`).
//!
//! It starts mosquitto as the tests' kit does (`listen.rs`, shared with `tests/support`); its
//! configuration is its own (the tests run the shipped one, with users and ACLs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::listen::{free_ports, spawn_listening};
use crate::WAIT;

/// A mosquitto child process: anonymous, one loopback listener on a free port, no persistence.
/// Killed on drop.
pub(crate) struct Broker {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Broker {
    pub(crate) fn start(work: &Path, nodelay: bool) -> Result<Broker> {
        let program = program();
        let mut last = String::new();
        // Another process may take the port between the probe and mosquitto's bind.
        for _ in 0..5 {
            let port = free_port()?;
            let conf = work.join("mosquitto.conf");
            fs::write(
                &conf,
                format!(
                    "persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n\
                     listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n\
                     set_tcp_nodelay {nodelay}\n"
                ),
            )?;
            let log = fs::File::create(work.join("mosquitto.log"))?;
            let mut command = Command::new(&program);
            command
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            let log = || fs::read_to_string(work.join("mosquitto.log")).unwrap_or_default();
            match spawn_listening(&mut command, &[port], WAIT, log) {
                Ok(child) => return Ok(Broker { child, port }),
                Err(why) => last = why,
            }
        }
        bail!("mosquitto did not start (is it installed? scripts/install-test-deps.sh): {last}")
    }
}

/// The mosquitto executable: Debian's, a local install's, or the one on `PATH`.
pub(crate) fn program() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mosquitto"))
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free at the moment of asking.
pub(crate) fn free_port() -> Result<u16> {
    free_ports(1)?.pop().context("no free port")
}
