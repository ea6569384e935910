//! Helpers shared by the integration tests; each test binary includes them with `mod support;`
//! and uses a part of them, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod bridge;
pub mod cdp;
pub mod http;
#[path = "../../src/bin/coffeebot-bench/listen.rs"]
pub mod listen;
pub mod mosquitto;
pub mod realfw;
pub mod rig;
pub mod sim;
