//! `coffeebot simulate`: a simulated controller on a pty, steered by fault-control lines on
//! stdin, so a person (or a script) can break the "hardware" while the bridge runs against it.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use super::device::{Fault, SimConfig};
use super::pty::{SimHandle, SimSnapshot, Simulator};

/// What one control line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum ControlLine {
    /// Inject a fault into the device.
    Inject(Fault),
    /// Close the pty and remove the link.
    Unplug,
    /// A new pty behind the same link.
    Replug,
    /// Print the state.
    Status,
    /// Print the control lines.
    Help,
}

/// The control lines, for `help` and for error messages.
pub const CONTROL_HELP: &str = "mute | unmute | hang [on|off] | reboot [mid] | crc on|off | \
probe absent|ok | temp <c> | water <in> | stuck on|off | delay <ms> | temp85 on|off | ttext <text>|off | \
wtext <text>|off | garbage <text> (\\n \\r \\\\ escapes) | unplug | replug | status | help";

/// Parses one control line; `Ok(None)` for a blank line. The error is one line for a person.
pub fn parse_control_line(line: &str) -> Result<Option<ControlLine>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let (word, arg) = match line.split_once(char::is_whitespace) {
        Some((word, arg)) => (word, arg.trim()),
        None => (line, ""),
    };
    let no_arg = |control: ControlLine| {
        if arg.is_empty() {
            Ok(Some(control))
        } else {
            Err(format!("`{word}` takes no argument"))
        }
    };
    let inject = |fault| Ok(Some(ControlLine::Inject(fault)));
    match word.to_ascii_lowercase().as_str() {
        "mute" => no_arg(ControlLine::Inject(Fault::Mute(true))),
        "unmute" => no_arg(ControlLine::Inject(Fault::Mute(false))),
        "hang" if arg.is_empty() => inject(Fault::Hang(true)),
        "hang" => inject(Fault::Hang(on_off(word, arg)?)),
        "unhang" => no_arg(ControlLine::Inject(Fault::Hang(false))),
        "reboot" => match arg {
            "" => inject(Fault::Reboot { mid_reply: false }),
            "mid" => inject(Fault::Reboot { mid_reply: true }),
            _ => Err("`reboot` takes nothing or `mid`".to_owned()),
        },
        "crc" => inject(Fault::CrcError(on_off(word, arg)?)),
        "probe" => match arg {
            "absent" => inject(Fault::ProbeMissing(true)),
            "ok" => inject(Fault::ProbeMissing(false)),
            _ => Err("`probe` takes `absent` or `ok`".to_owned()),
        },
        "stuck" => inject(Fault::StuckHeater(on_off(word, arg)?)),
        "temp85" => inject(Fault::PowerOnReading85(on_off(word, arg)?)),
        "temp" => inject(Fault::SetTemperature(number(word, arg, "°C")?)),
        "water" => {
            let inches = number(word, arg, "inches")?;
            if inches < 0.0 {
                return Err("`water` takes a distance ≥ 0 in inches".to_owned());
            }
            inject(Fault::SetWaterDistance(inches))
        }
        "delay" => {
            let ms = number(word, arg, "milliseconds")?;
            if !(0.0..=60_000.0).contains(&ms) {
                return Err("`delay` takes 0…60000 milliseconds".to_owned());
            }
            inject(Fault::ReplyDelay(Duration::from_secs_f64(ms / 1000.0)))
        }
        "ttext" => inject(Fault::TemperatureText(text_or_off(word, arg)?)),
        "wtext" => inject(Fault::WaterText(text_or_off(word, arg)?)),
        "garbage" if arg.is_empty() => Err("`garbage` needs some text".to_owned()),
        "garbage" => inject(Fault::Garbage(unescape(arg))),
        "unplug" => no_arg(ControlLine::Unplug),
        "replug" => no_arg(ControlLine::Replug),
        "status" => no_arg(ControlLine::Status),
        "help" => no_arg(ControlLine::Help),
        _ => Err(format!("unknown control `{word}`; try: {CONTROL_HELP}")),
    }
}

fn on_off(word: &str, arg: &str) -> Result<bool, String> {
    match arg.to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{word}` takes `on` or `off`")),
    }
}

fn number(word: &str, arg: &str, unit: &str) -> Result<f64, String> {
    match arg.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        _ => Err(format!("`{word}` takes a number in {unit}, not `{arg}`")),
    }
}

fn text_or_off(word: &str, arg: &str) -> Result<Option<String>, String> {
    match arg {
        "" => Err(format!(
            "`{word}` takes a text (e.g. inf, nan, ovf) or `off`"
        )),
        "off" => Ok(None),
        text => Ok(Some(text.to_owned())),
    }
}

/// `\n`, `\r` and `\\` as bytes, so garbage can contain line breaks.
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                out.push(b'\n');
                chars.next();
            }
            ('\\', Some('r')) => {
                out.push(b'\r');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push(b'\\');
                chars.next();
            }
            _ => {
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    out
}

/// One status line for a person.
pub fn status_line(snapshot: &SimSnapshot) -> String {
    let d = &snapshot.device;
    let link = match &snapshot.device_path {
        Some(path) => format!("plugged ({})", path.display()),
        None => "unplugged".to_owned(),
    };
    let mut faults = Vec::new();
    for (on, name) in [
        (d.muted, "mute"),
        (d.hung, "hang"),
        (d.crc_error, "crc"),
        (d.stuck_heater, "stuck"),
        (d.halted, "halted"),
    ] {
        if on {
            faults.push(name);
        }
    }
    format!(
        "status: firmware={} link={link} heater={} plate={:.1}°C water={:.2}in boots={} commands={} \
         dropped_bytes={} faults=[{}]",
        d.firmware,
        if d.heater_on { "ON" } else { "OFF" },
        d.plate_c,
        d.water_distance_in,
        d.boots,
        d.commands,
        d.dropped_bytes,
        faults.join(",")
    )
}

/// Runs `coffeebot simulate`: starts the simulator, prints `simulated controller on <path>`,
/// then answers control lines from stdin with one line each, until Ctrl-C or SIGTERM. At the
/// end of stdin (e.g. `</dev/null` under a supervisor) it keeps simulating.
pub async fn run_cli(link_path: PathBuf, cfg: SimConfig) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::signal::unix::{signal, SignalKind};

    if let Some(dir) = link_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let sim = Simulator::start(cfg, link_path.clone())
        .await
        .with_context(|| format!("cannot start the simulator on {}", link_path.display()))?;
    println!("simulated controller on {}", sim.path().display());

    // tokio's stdin is not compiled in; a plain thread reads lines and ends the channel at EOF.
    let (lines_tx, mut lines) = mpsc::channel::<std::io::Result<String>>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = lines.recv(), if stdin_open => match line {
                Some(Ok(line)) => println!("{}", control(&sim, &line).await),
                Some(Err(e)) => {
                    println!("error: cannot read stdin: {e}; controls are off");
                    stdin_open = false;
                }
                None => stdin_open = false,
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    sim.shutdown().await.context("stopping the simulator")?;
    Ok(())
}

/// Carries out one control line; the answer line to print.
async fn control(sim: &SimHandle, line: &str) -> String {
    let control = match parse_control_line(line) {
        Ok(Some(control)) => control,
        Ok(None) => return "ok".to_owned(),
        Err(e) => return format!("error: {e}"),
    };
    let result = match control {
        ControlLine::Inject(fault) => {
            let ack = match &fault {
                Fault::Garbage(bytes) => format!("ok: wrote {} bytes of garbage", bytes.len()),
                other => format!("ok: {other:?}"),
            };
            sim.inject(fault).await.map(|()| ack)
        }
        ControlLine::Unplug => sim.unplug().await.map(|()| "ok: unplugged".to_owned()),
        ControlLine::Replug => sim.replug().await.map(|pts| {
            format!(
                "ok: replugged, {} -> {}",
                sim.path().display(),
                pts.display()
            )
        }),
        ControlLine::Status => sim.snapshot().await.map(|s| status_line(&s)),
        ControlLine::Help => Ok(format!("controls: {CONTROL_HELP}")),
    };
    result.unwrap_or_else(|e| format!("error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> ControlLine {
        parse_control_line(line).unwrap().unwrap()
    }

    #[test]
    fn parses_every_control() {
        assert_eq!(parse("mute"), ControlLine::Inject(Fault::Mute(true)));
        assert_eq!(parse(" unmute "), ControlLine::Inject(Fault::Mute(false)));
        assert_eq!(parse("hang"), ControlLine::Inject(Fault::Hang(true)));
        assert_eq!(parse("hang off"), ControlLine::Inject(Fault::Hang(false)));
        assert_eq!(
            parse("reboot mid"),
            ControlLine::Inject(Fault::Reboot { mid_reply: true })
        );
        assert_eq!(parse("CRC on"), ControlLine::Inject(Fault::CrcError(true)));
        assert_eq!(
            parse("probe absent"),
            ControlLine::Inject(Fault::ProbeMissing(true))
        );
        assert_eq!(
            parse("temp 92.5"),
            ControlLine::Inject(Fault::SetTemperature(92.5))
        );
        assert_eq!(
            parse("water 7.5"),
            ControlLine::Inject(Fault::SetWaterDistance(7.5))
        );
        assert_eq!(
            parse("stuck on"),
            ControlLine::Inject(Fault::StuckHeater(true))
        );
        assert_eq!(
            parse("ttext inf"),
            ControlLine::Inject(Fault::TemperatureText(Some("inf".into())))
        );
        assert_eq!(
            parse("garbage T+5\\nxx"),
            ControlLine::Inject(Fault::Garbage(b"T+5\nxx".to_vec()))
        );
        assert_eq!(parse("unplug"), ControlLine::Unplug);
        assert_eq!(parse("replug"), ControlLine::Replug);
        assert_eq!(parse("status"), ControlLine::Status);
        assert_eq!(parse_control_line("   "), Ok(None));
    }

    #[test]
    fn bad_lines_are_explained() {
        for (line, needle) in [
            ("explode", "unknown control `explode`"),
            ("crc maybe", "`crc` takes `on` or `off`"),
            ("temp hot", "`temp` takes a number"),
            ("temp NaN", "`temp` takes a number"),
            ("water -1", "≥ 0"),
            ("mute now", "takes no argument"),
            ("garbage", "needs some text"),
            ("delay 1e9", "0…60000"),
        ] {
            let err = parse_control_line(line).unwrap_err();
            assert!(err.contains(needle), "{line}: {err}");
        }
    }
}
