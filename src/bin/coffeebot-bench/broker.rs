//! The bench's own mosquitto: anonymous, one loopback listener on a free port, no
//! persistence, optionally with Nagle's algorithm on its sockets (`--broker-nagle`).
//!
//! Overlaps `tests/support/mosquitto.rs` (free port, config file, start with a readiness
//! deadline, kill on drop); kept apart until the test kit is shared with the benchmark.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

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
            let mut child = Command::new(&program)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| {
                    format!(
                        "cannot run {} (install it: scripts/install-test-deps.sh)",
                        program.display()
                    )
                })?;
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(status) = child.try_wait()? {
                    last = format!(
                        "exited with {status}: {}",
                        fs::read_to_string(work.join("mosquitto.log")).unwrap_or_default()
                    );
                    break;
                }
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                if StdTcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Ok(Broker { child, port });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("port {port} did not open within {WAIT:?}");
                    break;
                }
                // Readiness poll with a deadline.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        bail!("mosquitto did not start: {last}")
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
    let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
