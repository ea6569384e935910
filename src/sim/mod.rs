//! The simulated controller (SPEC §2): the MrCoffeeBot firmware's protocol and timing with a
//! simple thermal and water model, on a real pseudo-terminal, with fault injection for tests.
//!
//! - [`device`]: the firmware and the coffee maker as a pure state machine (no I/O, no clock).

pub mod device;

pub use device::{CommandEvent, Device, DeviceSnapshot, Fault, SimConfig};
