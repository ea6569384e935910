//! Holding loopback ports for a server, starting it and waiting until it listens on them:
//! shared by the benchmark and the integration tests' kit (`tests/support/mod.rs` includes this
//! file by its path), so that both start mosquitto (and the bridge) the same way. The standard
//! library and tokio's `TcpSocket` (which needs no runtime) only.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A loopback port kept for a server: bound with `SO_REUSEADDR` but not listening. mosquitto
/// and the bridge bind their listeners with `SO_REUSEADDR` too, so they can listen on the port
/// (again after a restart), while no free-port pick on this machine (a `bind` to port 0, which
/// passes over ports bound this way) can get it, not even while the server is stopped. The
/// port is let go on drop.
pub struct HeldPort {
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl HeldPort {
    /// A free loopback port, held.
    pub fn new() -> std::io::Result<HeldPort> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind((Ipv4Addr::LOCALHOST, 0).into())?;
        let port = socket.local_addr()?.port();
        Ok(HeldPort {
            _socket: socket,
            port,
        })
    }

    /// The port number.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Spawns `command`, then waits (at most `within`) until each of `ports` accepts a TCP
/// connection on the loopback address. When the process exits first or the time runs out it
/// is gone (killed and reaped) and the error says why, with what `log` returns (its log).
pub fn spawn_listening(
    command: &mut Command,
    ports: &[u16],
    within: Duration,
    log: impl Fn() -> String,
) -> Result<Child, String> {
    let mut child = command.spawn().map_err(|e| {
        format!(
            "cannot run {}: {e}",
            command.get_program().to_string_lossy()
        )
    })?;
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => return Err(format!("exited with {status}; log:\n{}", log())),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("cannot watch the process: {e}"));
            }
        }
        let ready = ports.iter().all(|port| {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
            TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        });
        if ready {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "ports {ports:?} not open within {within:?}; log:\n{}",
                log()
            ));
        }
        // The polling interval of a readiness check with a deadline, not synchronisation.
        std::thread::sleep(Duration::from_millis(10));
    }
}
