//! The simulated controller (SPEC §2): the MrCoffeeBot firmware's protocol and timing with a
//! simple thermal and water model, on a real pseudo-terminal, with fault injection for tests.
//!
//! - [`device`]: the firmware and the coffee maker as a pure state machine (no I/O, no clock).
//! - [`pty`]: the thin tokio shell that puts a device on a pseudo-terminal behind a stable
//!   symlink, with a cloneable [`SimHandle`] to inject faults, unplug and replug.
//! - [`cli`]: `coffeebot simulate`, fault-control lines on stdin.

pub mod cli;
pub mod device;
pub mod pty;

pub use cli::{parse_control_line, run_cli, ControlLine};
pub use device::{Build, CommandEvent, Device, DeviceSnapshot, Fault, SimConfig};
pub use pty::{CommandStream, SimHandle, SimSnapshot, Simulator};
