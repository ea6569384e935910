//! `serial.port = "usb:VID:PID"` end to end: `coffeebot run` as a process, the simulated
//! controller on a real pseudo-terminal, and a prepared sysfs tree (`COFFEEBOT_SYSFS_ROOT`)
//! whose USB serial port changes its name between opens, as a replug can make it do.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use coffeebot::sim::{SimConfig, Simulator};
use support::bridge::{Bridge, Process};
use support::mosquitto::{Broker, Setup, User};

const WAIT: Duration = Duration::from_secs(10);
const MBED: &str = "usb:0d28:0204";

/// A root with `sys/class/tty` and `dev`, into which boards are plugged.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(name: &str) -> Tree {
        let root =
            std::env::temp_dir().join(format!("coffeebot-usb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sys/class/tty")).expect("tree");
        std::fs::create_dir_all(root.join("dev")).expect("tree");
        Tree { root }
    }

    /// A CDC ACM board with these ids as `tty` (e.g. `ttyACM0`), its device file pointing at
    /// `target`.
    fn plug(&self, tty: &str, ids: (&str, &str), target: &Path) {
        let usb = self.root.join(format!("sys/devices/usb1/1-1-{tty}"));
        let interface = usb.join("1-1:1.0");
        let class_dir = interface.join("tty").join(tty);
        std::fs::create_dir_all(&class_dir).expect("tree");
        std::fs::write(usb.join("idVendor"), format!("{}\n", ids.0)).expect("tree");
        std::fs::write(usb.join("idProduct"), format!("{}\n", ids.1)).expect("tree");
        symlink(&interface, class_dir.join("device")).expect("tree");
        symlink(&class_dir, self.root.join("sys/class/tty").join(tty)).expect("tree");
        symlink(target, self.device(tty)).expect("tree");
    }

    fn unplug(&self, tty: &str) {
        std::fs::remove_file(self.root.join("sys/class/tty").join(tty)).expect("tree");
        std::fs::remove_file(self.device(tty)).expect("tree");
    }

    fn device(&self, tty: &str) -> PathBuf {
        self.root.join("dev").join(tty)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_follows_the_board_to_a_new_device_name() {
    let tree = Tree::new("follow");
    let sim_dir = tree.root.join("sim");
    std::fs::create_dir_all(&sim_dir).expect("sim dir");
    let sim = Simulator::start(SimConfig::default(), sim_dir.join("tty"))
        .await
        .expect("simulator");
    // Another USB serial device is there; the board is not, yet.
    tree.plug("ttyUSB0", ("0403", "6001"), Path::new("/dev/null"));
    let broker = Broker::start_with(Setup::Shipped);
    let root = tree.root.to_string_lossy().into_owned();
    let process = Process {
        env: &[("COFFEEBOT_SYSFS_ROOT", root.as_str())],
        ..Process::default()
    };
    let login = broker.credentials(User::Coffeebot);
    let bridge = Bridge::start_with(process, Path::new(MBED), &broker, &login, &[]);
    let missing = bridge
        .wait_for_log("no USB serial port matches usb:0d28:0204", WAIT)
        .expect("a clear line when the board is missing");
    assert!(
        missing.contains("1 USB serial port(s) present"),
        "{missing}"
    );

    // Plugged in as ttyACM0: found at the next attempt.
    tree.plug("ttyACM0", ("0d28", "0204"), sim.path());
    let first = tree.device("ttyACM0").display().to_string();
    bridge
        .wait_for_log(&format!("is {first}"), WAIT)
        .expect("the log says which port usb:0d28:0204 resolved to");
    assert!(bridge.wait_for_log_where(
        |lines| lines
            .iter()
            .any(|l| l.contains("state") && l.contains("link=\"up\"")),
        WAIT
    ));

    // Unplugged, and back as ttyACM1 on a new pseudo-terminal.
    sim.unplug().await.expect("unplug");
    tree.unplug("ttyACM0");
    bridge
        .wait_for_log("lost ", WAIT)
        .expect("the link is lost");
    let pts = sim.replug().await.expect("replug");
    tree.plug("ttyACM1", ("0d28", "0204"), &pts);
    let second = tree.device("ttyACM1").display().to_string();
    bridge
        .wait_for_log(&format!("is {second}"), WAIT)
        .expect("resolved to the new name");
    assert!(
        bridge.wait_for_log_where(
            |lines| {
                let after = lines
                    .iter()
                    .position(|l| l.contains(&format!("is {second}")))
                    .unwrap_or(lines.len());
                lines[after..]
                    .iter()
                    .any(|l| l.contains("state") && l.contains("link=\"up\""))
            },
            WAIT
        ),
        "the controller answers on the new name"
    );
    sim.shutdown().await.ok();
}

#[test]
fn check_config_says_which_port_the_usb_form_names() {
    let tree = Tree::new("check");
    let run = |port: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_coffeebot"))
            .arg("check-config")
            .env_remove("COFFEEBOT_CONFIG")
            .env("COFFEEBOT_SYSFS_ROOT", &tree.root)
            .env("COFFEEBOT__SERIAL__PORT", port)
            .output()
            .expect("run check-config");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(MBED);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("# serial.port: no USB serial port matches usb:0d28:0204"),
        "{out}"
    );
    tree.plug("ttyACM2", ("0d28", "0204"), Path::new("/dev/null"));
    let (_, out, _) = run(MBED);
    let device = tree.device("ttyACM2");
    assert!(
        out.contains(&format!(
            "# serial.port usb:0d28:0204 is {} now",
            device.display()
        )),
        "{out}"
    );
    let (code, _, err) = run("usb:0d28");
    assert_eq!(code, Some(78));
    assert!(err.contains("serial.port"), "{err}");
}
