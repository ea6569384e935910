//! Starting a server process and waiting until it listens on its loopback ports: shared by the
//! benchmark and the integration tests' kit (`tests/support/mod.rs` includes this file by its
//! path), so that both start mosquitto the same way. Standard library only.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `n` distinct loopback ports that were free a moment ago. Another process may take one
/// before the server binds it: callers start again with new ports when the server fails.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
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
