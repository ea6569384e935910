//! The `coffeebot` command line: `run`, `simulate`, `check-config`, `schedule`, `discovery`.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use coffeebot::config::{self, ConfigError, Settings};
use coffeebot::port::{self, PortSpec};
use coffeebot::{bridge, mqtt, sim};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    version,
    about = "Bridges a coffee maker's heater controller to MQTT, safely."
)]
struct Cli {
    /// Configuration file (TOML); settings not in it keep their defaults.
    #[arg(long, global = true, env = "COFFEEBOT_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stdout.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the bridge.
    Run {
        /// Run against a built-in simulated controller instead of `serial.port`.
        #[arg(long)]
        simulate: bool,
        /// With --simulate: the simulated firmware build, 6105f59 (the real last build: one-line
        /// replies, 1 s heater time-out) or 05a9a00 (three-line replies, no time-out).
        #[arg(long, requires = "simulate", default_value = "6105f59", value_parser = parse_build)]
        firmware: sim::Build,
    },
    /// Run a simulated controller on a pseudo-terminal; fault controls on stdin.
    Simulate {
        /// Where to put the stable link to the pseudo-terminal.
        #[arg(long, default_value = "/tmp/coffeebot-sim/tty")]
        link: PathBuf,
        /// The firmware build: 6105f59 (the real last build: one-line replies, 1 s heater
        /// time-out) or 05a9a00 (three-line replies, no time-out).
        #[arg(long, default_value = "6105f59", value_parser = parse_build)]
        firmware: sim::Build,
        /// `RESET` reboots the board (a reset pin wired to nRESET); on the real board it only
        /// feeds the watchdog.
        #[arg(long)]
        reset_pin_wired: bool,
    },
    /// Print the effective configuration (secrets redacted), or the first problem.
    CheckConfig,
    /// Print the next planned brews as JSON lines, sorted by `ready_at`, as the daemon plans
    /// them (touching neither the controller nor the broker).
    Schedule {
        /// Plan from this instant (RFC 3339); default now.
        #[arg(long)]
        from: Option<String>,
        /// How many brews to print.
        #[arg(long, default_value_t = 10)]
        count: usize,
    },
    /// Print the Home Assistant discovery messages the bridge would publish, one per line:
    /// `topic payload` (an empty payload removes an entity). The firmware is unknown here.
    Discovery,
}

fn parse_build(s: &str) -> Result<sim::Build, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Cmd::CheckConfig => check_config(cli.config.as_deref()),
        Cmd::Discovery => match load(cli.config.as_deref()) {
            Ok(settings) => {
                use std::io::Write;
                let host = mqtt::host_name();
                let mut out = std::io::stdout().lock();
                for (topic, payload) in mqtt::discovery::messages(&settings, None, host.as_deref())
                {
                    // A closed pipe (`| head`) ends the listing, it is no failure.
                    if writeln!(out, "{topic} {payload}").is_err() {
                        break;
                    }
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Schedule { from, count } => match load(cli.config.as_deref()) {
            Ok(settings) => print_schedule(&settings, from.as_deref(), count),
            Err(code) => code,
        },
        Cmd::Run { simulate, firmware } => {
            let settings = match load(cli.config.as_deref()) {
                Ok(s) => s,
                Err(code) => return code,
            };
            report(
                runtime().and_then(|rt| rt.block_on(run(settings, simulate.then_some(firmware)))),
            )
        }
        Cmd::Simulate {
            link,
            firmware,
            reset_pin_wired,
        } => {
            let cfg = sim::SimConfig {
                firmware,
                reset_pin_wired,
                ..sim::SimConfig::default()
            };
            report(runtime().and_then(|rt| rt.block_on(sim::run_cli(link, cfg))))
        }
    }
}

/// The runtime of MQTT, HTTP and signal handling (and of the `simulate` command); the driver and
/// the serial link get one of their own from [`bridge::run`].
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads the settings; on a problem prints one line per problem naming the key (stderr)
/// and returns exit code 78.
fn load(file: Option<&Path>) -> Result<Settings, ExitCode> {
    config::load(file).map_err(|e| {
        print_config_error(&e);
        ExitCode::from(config::EX_CONFIG as u8)
    })
}

fn print_config_error(e: &ConfigError) {
    for problem in e.problems() {
        eprintln!("coffeebot: configuration: {problem}");
    }
}

fn check_config(file: Option<&Path>) -> ExitCode {
    match load(file) {
        Ok(settings) => {
            print!("{}", settings.to_toml_string());
            // A TOML comment, so that the output still loads as a configuration.
            if let Ok(PortSpec::Usb(id)) = PortSpec::parse(&settings.serial.port) {
                match port::resolve(&id, &port::scan(&port::sysfs_root())) {
                    Ok(device) => println!("# serial.port {id} is {} now", device.display()),
                    Err(none) => println!("# serial.port: {none}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `coffeebot schedule`: the plan as JSON lines. Exit 64 for a bad `--from`, 1 when the
/// calendar cannot be read.
fn print_schedule(settings: &Settings, from: Option<&str>, count: usize) -> ExitCode {
    use coffeebot::schedule::{self, source};
    use std::io::Write;
    let from = match from {
        None => chrono::Utc::now(),
        Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(at) => at.with_timezone(&chrono::Utc),
            Err(e) => {
                eprintln!("coffeebot: --from {text:?} is not an RFC 3339 time: {e}");
                return ExitCode::from(64);
            }
        },
    };
    let mut planner = schedule::Planner::from_settings(settings);
    let calendar = &settings.schedule.calendar;
    if !calendar.is_empty() {
        match source::load(calendar, schedule::CALENDAR_TIMEOUT) {
            Ok(parsed) => {
                for note in &parsed.notes {
                    eprintln!("coffeebot: schedule.calendar: {note}");
                }
                planner.calendar = Some(parsed);
            }
            Err(e) => {
                eprintln!("coffeebot: schedule.calendar: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if !settings.schedule.enabled {
        eprintln!("coffeebot: schedule.enabled is false: these brews would not start");
    }
    let preheat = schedule::shell::expected_preheat(settings);
    let mut out = std::io::stdout().lock();
    for brew in planner.plan(from, count, preheat) {
        if writeln!(out, "{}", brew.doc(planner.zone)).is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// Runs the bridge; `simulate` names the firmware build of a built-in simulated controller.
async fn run(mut settings: Settings, simulate: Option<sim::Build>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let _sim = if let Some(firmware) = simulate {
        let dir = std::env::temp_dir().join(format!("coffeebot-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).context("cannot create the simulator's directory")?;
        let dir = TempDir(dir);
        let link = dir.0.join("tty");
        let cfg = sim::SimConfig {
            firmware,
            ..sim::SimConfig::default()
        };
        let handle = sim::Simulator::start(cfg, link.clone())
            .await
            .context("cannot start the simulated controller")?;
        info!(port = %link.display(), %firmware, "simulated controller started");
        settings.serial.port = link.to_string_lossy().into_owned();
        Some(Simulated {
            _handle: handle,
            _dir: dir,
        })
    } else {
        None
    };
    bridge::run(settings, shutdown).await?;
    info!("stopped");
    Ok(())
}

/// The built-in simulated controller of `--simulate` and its directory. Fields drop in order:
/// the simulator stops first, then its directory goes.
struct Simulated {
    _handle: sim::SimHandle,
    _dir: TempDir,
}

/// A directory of this run that is removed when the run ends, however it ends (a return, an
/// error, or SIGTERM/SIGINT, which end the run through `shutdown`): `--simulate` leaves no
/// `coffeebot-sim-<pid>` folder behind.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.0.display(), "cannot remove the simulator's directory: {e}")
            }
        }
    }
}

/// Cancels `shutdown` on SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C).
async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
    shutdown.cancel();
}
