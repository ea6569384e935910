//! Which device the controller is on: `serial.port` is a device path, or the board's USB
//! identity `usb:VID:PID[:SERIAL]` (the mbed LPC1768 interface is `usb:0d28:0204`), looked up
//! again at every (re)open so that the bridge follows the board when a replug or a reboot
//! gives it a new name (`/dev/ttyACM0` → `/dev/ttyACM1`).
//!
//! The lookup reads `/sys/class/tty/*/device` and the USB device's `idVendor`, `idProduct` and
//! `serial` files ([`scan`]), then picks a port ([`resolve`], pure). It does not use
//! `serialport::available_ports`: built without libudev (which would need the C library and its
//! headers for every cross-build), that function reads the same files but only under the fixed
//! `/sys` and `/dev` — so it cannot be tested against a prepared tree — and it panics when
//! `/sys/class/tty` is missing (some containers). [`scan`] takes the root directory instead
//! (`/` in production; `COFFEEBOT_SYSFS_ROOT` for tests) and never panics.

use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable that moves the root of `sys/class/tty` and `dev` (tests only).
pub const SYSFS_ROOT_ENV: &str = "COFFEEBOT_SYSFS_ROOT";

/// What `serial.port` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// A device path, opened as it is (a symlink is followed at every open).
    Path(PathBuf),
    /// A USB device by its identity.
    Usb(UsbId),
}

/// A USB serial device's identity: vendor, product and optionally its serial number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsbId {
    /// Vendor id (`idVendor`).
    pub vid: u16,
    /// Product id (`idProduct`).
    pub pid: u16,
    /// Serial number (`serial`); `None` matches any.
    pub serial: Option<String>,
}

/// One USB serial port the system has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsbPort {
    /// The device file, e.g. `/dev/ttyACM0`.
    pub device: PathBuf,
    /// Vendor id.
    pub vid: u16,
    /// Product id.
    pub pid: u16,
    /// Serial number, when the device has one.
    pub serial: Option<String>,
}

impl fmt::Display for UsbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "usb:{:04x}:{:04x}", self.vid, self.pid)?;
        if let Some(serial) = &self.serial {
            write!(f, ":{serial}")?;
        }
        Ok(())
    }
}

impl PortSpec {
    /// Parses `serial.port`: `usb:VID:PID[:SERIAL]` (ids in hex, 1 to 4 digits) or a path.
    pub fn parse(text: &str) -> Result<PortSpec, String> {
        let Some(rest) = text.strip_prefix("usb:") else {
            if text.is_empty() {
                return Err("an empty port".to_owned());
            }
            return Ok(PortSpec::Path(PathBuf::from(text)));
        };
        let mut parts = rest.splitn(3, ':');
        let hex = |part: Option<&str>, what: &str| {
            part.filter(|p| (1..=4).contains(&p.len()))
                .and_then(|p| u16::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("{what} as 1 to 4 hex digits in usb:VID:PID[:SERIAL]"))
        };
        let vid = hex(parts.next(), "a vendor id")?;
        let pid = hex(parts.next(), "a product id")?;
        let serial = match parts.next() {
            None => None,
            Some("") => return Err("a non-empty serial number after usb:VID:PID:".to_owned()),
            Some(serial) => Some(serial.to_owned()),
        };
        Ok(PortSpec::Usb(UsbId { vid, pid, serial }))
    }
}

/// Why no port was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoSuchBoard {
    /// What was looked for.
    pub id: UsbId,
    /// How many USB serial ports there were.
    pub ports_seen: usize,
}

impl fmt::Display for NoSuchBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no USB serial port matches {} ({} USB serial port(s) present); is the board plugged in?",
            self.id, self.ports_seen
        )
    }
}

/// The device file of the first port (by device name) that matches `id`. Pure.
pub fn resolve(id: &UsbId, ports: &[UsbPort]) -> Result<PathBuf, NoSuchBoard> {
    ports
        .iter()
        .filter(|p| p.vid == id.vid && p.pid == id.pid)
        .filter(|p| id.serial.is_none() || p.serial == id.serial)
        .map(|p| &p.device)
        .min()
        .cloned()
        .ok_or(NoSuchBoard {
            id: id.clone(),
            ports_seen: ports.len(),
        })
}

/// The root under which [`scan`] looks: `COFFEEBOT_SYSFS_ROOT`, else `/`.
pub fn sysfs_root() -> PathBuf {
    std::env::var_os(SYSFS_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The USB serial ports under `root`: each `root/sys/class/tty/NAME` whose `device` lies under a
/// USB device (a directory with `idVendor` and `idProduct`, at most four levels up) and whose
/// `root/dev/NAME` exists. Unreadable entries are skipped; a missing directory gives none.
pub fn scan(root: &Path) -> Vec<UsbPort> {
    let Ok(entries) = std::fs::read_dir(root.join("sys/class/tty")) else {
        return Vec::new();
    };
    let mut ports: Vec<UsbPort> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let device = std::fs::canonicalize(entry.path().join("device")).ok()?;
            let usb = device
                .ancestors()
                .take(5)
                .find(|dir| dir.join("idVendor").is_file() && dir.join("idProduct").is_file())?;
            let file = root.join("dev").join(&name);
            if !file.exists() {
                return None;
            }
            Some(UsbPort {
                device: file,
                vid: read_hex(usb, "idVendor")?,
                pid: read_hex(usb, "idProduct")?,
                serial: read_trimmed(usb, "serial"),
            })
        })
        .collect();
    ports.sort_by(|a, b| a.device.cmp(&b.device));
    ports
}

/// The device path to open for `spec` now: the path itself, or the USB port found under `root`.
pub fn locate(spec: &PortSpec, root: &Path) -> Result<PathBuf, NoSuchBoard> {
    match spec {
        PortSpec::Path(path) => Ok(path.clone()),
        PortSpec::Usb(id) => resolve(id, &scan(root)),
    }
}

fn read_trimmed(dir: &Path, file: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    Some(text.trim().to_owned()).filter(|s| !s.is_empty())
}

fn read_hex(dir: &Path, file: &str) -> Option<u16> {
    u16::from_str_radix(&read_trimmed(dir, file)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBED: UsbId = UsbId {
        vid: 0x0d28,
        pid: 0x0204,
        serial: None,
    };

    fn port(name: &str, vid: u16, pid: u16, serial: Option<&str>) -> UsbPort {
        UsbPort {
            device: PathBuf::from(format!("/dev/{name}")),
            vid,
            pid,
            serial: serial.map(str::to_owned),
        }
    }

    #[test]
    fn the_usb_form_and_paths_parse() {
        assert_eq!(PortSpec::parse("usb:0d28:0204"), Ok(PortSpec::Usb(MBED)));
        assert_eq!(
            PortSpec::parse("usb:D28:204:0240000034544e45"),
            Ok(PortSpec::Usb(UsbId {
                serial: Some("0240000034544e45".into()),
                ..MBED
            }))
        );
        assert_eq!(
            PortSpec::parse("/dev/ttyACM0"),
            Ok(PortSpec::Path("/dev/ttyACM0".into()))
        );
        for bad in [
            "usb:",
            "usb:0d28",
            "usb:0d28:",
            "usb:xyz:0204",
            "usb:10d28:0204",
            "usb:0d28:0204:",
            "",
        ] {
            assert!(PortSpec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(MBED.to_string(), "usb:0d28:0204");
    }

    #[test]
    fn the_board_is_found_by_its_ids_whatever_its_name() {
        let ports = [
            port("ttyUSB0", 0x0403, 0x6001, Some("A1")),
            port("ttyACM1", 0x0d28, 0x0204, Some("B2")),
        ];
        assert_eq!(resolve(&MBED, &ports), Ok("/dev/ttyACM1".into()));
    }

    #[test]
    fn a_serial_number_picks_one_of_two_boards() {
        let ports = [
            port("ttyACM0", 0x0d28, 0x0204, Some("AAA")),
            port("ttyACM1", 0x0d28, 0x0204, Some("BBB")),
        ];
        let bbb = UsbId {
            serial: Some("BBB".into()),
            ..MBED
        };
        assert_eq!(resolve(&bbb, &ports), Ok("/dev/ttyACM1".into()));
        // Without one, the lowest name: the same choice at every open.
        assert_eq!(resolve(&MBED, &ports), Ok("/dev/ttyACM0".into()));
    }

    #[test]
    fn no_board_says_what_was_looked_for() {
        let ports = [port("ttyUSB0", 0x0403, 0x6001, None)];
        let err = resolve(&MBED, &ports).unwrap_err();
        assert_eq!(err.ports_seen, 1);
        assert!(err.to_string().contains("usb:0d28:0204"), "{err}");
        let other = UsbId {
            serial: Some("X".into()),
            ..MBED
        };
        let mbed = [port("ttyACM0", 0x0d28, 0x0204, None)];
        assert!(
            resolve(&other, &mbed).is_err(),
            "a serial never matches none"
        );
    }

    /// A sysfs tree as Linux lays it out for a CDC ACM board and an FTDI adapter.
    fn tree(root: &Path) {
        use std::os::unix::fs::symlink;
        let usb = root.join("sys/devices/pci0000:00/usb1/1-1");
        let acm_if = usb.join("1-1:1.0");
        std::fs::create_dir_all(acm_if.join("tty/ttyACM3")).unwrap();
        std::fs::write(usb.join("idVendor"), "0d28\n").unwrap();
        std::fs::write(usb.join("idProduct"), "0204\n").unwrap();
        std::fs::write(usb.join("serial"), "0240000034544e45\n").unwrap();
        let ftdi = root.join("sys/devices/pci0000:00/usb1/1-2");
        let ftdi_tty = ftdi.join("1-2:1.0/ttyUSB0/tty/ttyUSB0");
        std::fs::create_dir_all(&ftdi_tty).unwrap();
        std::fs::write(ftdi.join("idVendor"), "0403\n").unwrap();
        std::fs::write(ftdi.join("idProduct"), "6001\n").unwrap();
        let platform = root.join("sys/devices/platform/serial8250/tty/ttyS0");
        std::fs::create_dir_all(&platform).unwrap();
        let class = root.join("sys/class/tty");
        std::fs::create_dir_all(&class).unwrap();
        symlink(&acm_if, acm_if.join("tty/ttyACM3/device")).unwrap();
        symlink(acm_if.join("tty/ttyACM3"), class.join("ttyACM3")).unwrap();
        symlink(ftdi.join("1-2:1.0/ttyUSB0"), ftdi_tty.join("device")).unwrap();
        symlink(&ftdi_tty, class.join("ttyUSB0")).unwrap();
        symlink(
            root.join("sys/devices/platform/serial8250"),
            platform.join("device"),
        )
        .unwrap();
        symlink(&platform, class.join("ttyS0")).unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        for name in ["ttyACM3", "ttyUSB0", "ttyS0"] {
            std::fs::write(root.join("dev").join(name), "").unwrap();
        }
    }

    #[test]
    fn scan_reads_usb_ids_from_a_sysfs_tree() {
        let root = std::env::temp_dir().join(format!("coffeebot-port-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        tree(&root);
        let ports = scan(&root);
        assert_eq!(
            ports,
            vec![
                UsbPort {
                    device: root.join("dev/ttyACM3"),
                    vid: 0x0d28,
                    pid: 0x0204,
                    serial: Some("0240000034544e45".into()),
                },
                UsbPort {
                    device: root.join("dev/ttyUSB0"),
                    vid: 0x0403,
                    pid: 0x6001,
                    serial: None,
                },
            ]
        );
        assert_eq!(
            locate(&PortSpec::Usb(MBED), &root),
            Ok(root.join("dev/ttyACM3"))
        );
        std::fs::remove_file(root.join("dev/ttyACM3")).unwrap();
        assert!(
            locate(&PortSpec::Usb(MBED), &root).is_err(),
            "no device file, no port"
        );
        assert!(scan(&root.join("nowhere")).is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }
}
