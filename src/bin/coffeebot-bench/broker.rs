//! The bench's own mosquitto: anonymous, one loopback listener on a held port, no
//! persistence, optionally with Nagle's algorithm on its sockets (`--broker-nagle`).
//!
//! It starts mosquitto as the tests' kit does (`listen.rs`, shared with `tests/support`); its
//! configuration is its own (the tests run the shipped one, with users and ACLs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, Context, Result};

use crate::listen::{spawn_listening, HeldPort};
use crate::WAIT;

/// A mosquitto child process: anonymous, one loopback listener on a port it holds for its
/// whole life (so a restart finds it free), no persistence. Killed on drop.
pub(crate) struct Broker {
    pub(crate) child: Child,
    pub(crate) port: u16,
    _held: HeldPort,
    /// Its folder: configuration and log.
    work: PathBuf,
}

impl Broker {
    pub(crate) fn start(work: &Path, nodelay: bool) -> Result<Broker> {
        let held = HeldPort::new()?;
        let port = held.port();
        fs::write(work.join("mosquitto.log"), "")?;
        fs::write(
            work.join("mosquitto.conf"),
            format!(
                "persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n\
                 listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n\
                 set_tcp_nodelay {nodelay}\n"
            ),
        )?;
        let child = spawn(work, port)
            .context("mosquitto did not start (is it installed? scripts/install-test-deps.sh)")?;
        Ok(Broker {
            child,
            port,
            _held: held,
            work: work.to_owned(),
        })
    }

    /// Kills mosquitto (SIGKILL) and starts it again on the same port with the same
    /// configuration; returns when it accepts connections.
    pub(crate) fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.work, self.port).context("mosquitto did not restart")?;
        Ok(())
    }
}

/// Runs mosquitto on `work`'s configuration, its log appended to `work`'s `mosquitto.log`, and
/// waits until it listens on `port`.
fn spawn(work: &Path, port: u16) -> Result<Child> {
    let log = fs::File::options()
        .append(true)
        .create(true)
        .open(work.join("mosquitto.log"))?;
    let mut command = Command::new(program());
    command
        .arg("-c")
        .arg(work.join("mosquitto.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let log = || fs::read_to_string(work.join("mosquitto.log")).unwrap_or_default();
    spawn_listening(&mut command, &[port], WAIT, log).map_err(|why| anyhow!(why))
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
