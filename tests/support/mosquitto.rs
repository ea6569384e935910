//! A real mosquitto for tests, and small MQTT clients to talk to it.
//!
//! [`Broker::start`] runs the shipped `mosquitto/config/mosquitto.conf` (the LAN broker) with
//! exactly the shipped ACL files; only the listeners' ports (free loopback ports) and the paths
//! (a fresh temporary directory, with a password file holding the known
//! [`User::test_password`]s) are rewritten, and the rewrite refuses anything it does not know
//! how to move. The public broker of the pair, `mosquitto/config/public.conf` fed one way from
//! the LAN broker, is rewritten the same way and started on first use of the public side
//! ([`Broker::ws_port`]): tests that never touch it run one mosquitto, as before.
//! [`Broker::start_anonymous`] is a plain anonymous loopback broker for tests that do not care
//! about ACLs. Both wait until their ports accept connections, hold their ports ([`HeldPort`])
//! from the start to the drop, across [`Broker::restart`] too, and kill mosquitto on drop.
//!
//! [`TestClient`] is an MQTT 3.1.1 or 5 client ([`Protocol`]) on the LAN listener or, through a
//! tiny websocket relay (the `rumqttc` of this crate is built without its `websocket` feature),
//! on the public listener. Its waits end on an observable event (a CONNACK, a SUBACK, a PUBACK,
//! a message) or fail after [`WAIT`]; nothing sleeps to synchronise. Silence is proven by
//! ordering: mosquitto handles one connection's packets in order, routes a QoS 1 message to its
//! subscribers before it sends the PUBACK, and writes each connection's packets in order, so a
//! message a reader was going to get has arrived before a later message (or SUBACK) that the
//! reader waits for.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason, SubscribeReasonCode as V5Sub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::listen::{spawn_listening, HeldPort};

/// The address every test broker listens on.
pub const HOST: &str = "127.0.0.1";

/// Upper bound for anything a test waits for; only reached when the test is failing.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long mosquitto may take to open its ports.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The shipped broker layout: `config/` and `data/` below it, like the container's `/mosquitto`.
fn shipped_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mosquitto")
}

/// The shipped mosquitto configuration file (the LAN broker).
pub fn shipped_config() -> PathBuf {
    shipped_root().join("config").join("mosquitto.conf")
}

/// The shipped public broker's configuration file.
pub fn shipped_public_config() -> PathBuf {
    shipped_root().join("config").join("public.conf")
}

/// The users of the LAN listener's password file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum User {
    /// The bridge itself.
    Coffeebot,
    /// Home Assistant.
    HomeAssistant,
    /// People on the LAN.
    Lan,
}

impl User {
    /// Every user, in the password file's order.
    pub const ALL: [User; 3] = [User::Coffeebot, User::HomeAssistant, User::Lan];

    /// The MQTT username.
    pub fn name(self) -> &'static str {
        match self {
            User::Coffeebot => "coffeebot",
            User::HomeAssistant => "homeassistant",
            User::Lan => "lan",
        }
    }

    /// The password the test broker's password file holds for this user.
    pub fn test_password(self) -> &'static str {
        match self {
            User::Coffeebot => "test-coffeebot-secret",
            User::HomeAssistant => "test-homeassistant-secret",
            User::Lan => "test-lan-secret",
        }
    }
}

/// A username and password, as a client (the bridge under test, say) would be configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// MQTT username.
    pub username: String,
    /// MQTT password.
    pub password: String,
}

/// Which configuration a [`Broker`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// The shipped `mosquitto/` configuration and ACLs, ports and paths rewritten.
    Shipped,
    /// One anonymous plain-TCP loopback listener with persistence, no ACLs.
    Anonymous,
}

/// A mosquitto child process on free loopback ports (with [`Setup::Shipped`], the LAN broker,
/// and the public broker once used); killed on drop.
pub struct Broker {
    setup: Setup,
    dir: PathBuf,
    conf: PathBuf,
    lan_port: u16,
    feed_port: Option<u16>,
    public: Option<Mutex<PublicBroker>>,
    child: Option<Child>,
    /// Every port of the LAN and the public broker, for as long as the broker lives.
    _held: Vec<HeldPort>,
}

/// The public broker of [`Setup::Shipped`]: `mosquitto/config/public.conf`, its bridge feature
/// reading the LAN broker's feed listener.
struct PublicBroker {
    conf: PathBuf,
    ws_port: u16,
    tcp_port: u16,
    /// Whether a test has used the public side: then it runs whenever the LAN broker does.
    wanted: bool,
    child: Option<Child>,
}

/// The topic the harness sends through the feed to see it connected (a device state topic,
/// so that the shipped feed carries it; no test's device is called this).
pub const FEED_PROBE_TOPIC: &str = "coffeebot/harness-feed-probe/state";

impl Broker {
    /// Starts the shipped configuration ([`Setup::Shipped`]).
    pub fn start() -> Broker {
        Broker::start_with(Setup::Shipped)
    }

    /// Starts a plain anonymous loopback broker ([`Setup::Anonymous`]).
    pub fn start_anonymous() -> Broker {
        Broker::start_with(Setup::Anonymous)
    }

    /// Starts `setup` on fresh free ports and a fresh temporary directory, and waits until its
    /// ports accept connections. Panics if mosquitto is missing or does not come up.
    pub fn start_with(setup: Setup) -> Broker {
        Broker::started(Broker::prepare(setup))
    }

    /// `broker`, started; panics if it does not come up.
    fn started(mut broker: Broker) -> Broker {
        if let Err(e) = broker.spawn() {
            panic!("mosquitto did not start: {e}");
        }
        broker
    }

    /// Prepares `setup` on fresh free ports and a fresh directory without starting it: for
    /// tests of a client that comes up before its broker. [`Broker::launch`] starts it.
    pub fn reserve(setup: Setup) -> Broker {
        Broker::prepare(setup)
    }

    /// Starts a [`Broker::reserve`]d (or stopped) broker on its ports; panics if it does not
    /// come up.
    pub fn launch(&mut self) {
        if self.is_running() {
            return;
        }
        if let Err(e) = self.spawn() {
            panic!("mosquitto did not start on its reserved ports: {e}");
        }
    }

    /// [`Broker::start_with`], with `lines` appended to the configuration (general options
    /// such as `max_queued_messages 20000`, for a test that must not lose a message to the
    /// broker's own limits).
    pub fn start_with_extra(setup: Setup, lines: &str) -> Broker {
        let broker = Broker::prepare(setup);
        let mut text = fs::read_to_string(&broker.conf).expect("read conf");
        text.push_str(lines);
        text.push('\n');
        fs::write(&broker.conf, text).expect("write conf");
        Broker::started(broker)
    }

    /// [`Setup::Shipped`] with `acl` as the LAN listener's ACL file instead of the shipped
    /// `acl-lan`: a broker whose ACL is someone else's (coffeebot added to an existing one).
    pub fn start_with_lan_acl(acl: &str) -> Broker {
        let broker = Broker::prepare(Setup::Shipped);
        fs::write(broker.dir.join("acl-lan"), acl).expect("write the LAN ACL");
        give_to_mosquitto_user(&broker.dir);
        Broker::started(broker)
    }

    fn prepare(setup: Setup) -> Broker {
        let dir = unique_temp_dir();
        let held: Vec<HeldPort> = (0..if setup == Setup::Shipped { 4 } else { 1 })
            .map(|_| HeldPort::new().expect("a free loopback port"))
            .collect();
        let ports: Vec<u16> = held.iter().map(HeldPort::port).collect();
        let lan_port = ports[0];
        let feed_port = ports.get(1).copied();
        let mut public = None;
        let text = match setup {
            Setup::Shipped => {
                let shipped = fs::read_to_string(shipped_config()).expect("read shipped conf");
                let feed = feed_port.expect("four ports");
                let text = rewrite_shipped(&shipped, &dir, lan_port, feed);
                write_password_file(&dir.join("passwd"));
                let (ws_port, tcp_port) = (ports[2], ports[3]);
                let public_text =
                    fs::read_to_string(shipped_public_config()).expect("read shipped public conf");
                let conf = dir.join("public.conf");
                let rewritten = rewrite_public(&public_text, &dir, ws_port, tcp_port, feed);
                fs::write(&conf, rewritten).expect("write public conf");
                public = Some(Mutex::new(PublicBroker {
                    conf,
                    ws_port,
                    tcp_port,
                    wanted: false,
                    child: None,
                }));
                text
            }
            Setup::Anonymous => format!(
                "# Plain anonymous loopback broker for tests that do not care about ACLs.\n\
                 persistence true\n\
                 persistence_location {data}/\n\
                 log_dest stdout\n\
                 listener {lan_port} {HOST}\n\
                 allow_anonymous true\n",
                data = dir.join("data").display()
            ),
        };
        fs::create_dir_all(dir.join("data")).expect("create data dir");
        let conf = dir.join("mosquitto.conf");
        fs::write(&conf, text).expect("write conf");
        give_to_mosquitto_user(&dir);
        Broker {
            setup,
            dir,
            conf,
            lan_port,
            feed_port,
            public,
            child: None,
            _held: held,
        }
    }

    /// `mosquitto -c CONF` in this broker's directory, its output appended to `log` there.
    fn mosquitto(&self, conf: &Path, log: &str) -> Command {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log))
            .expect("open the mosquitto log");
        let mut command = Command::new(find_program("mosquitto"));
        command
            .arg("-c")
            .arg(conf)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        command
    }

    /// Spawns mosquitto on this broker's config and waits for its ports.
    fn spawn(&mut self) -> Result<(), String> {
        let mut command = self.mosquitto(&self.conf, "mosquitto.log");
        let ports: Vec<u16> = [Some(self.lan_port), self.feed_port]
            .into_iter()
            .flatten()
            .collect();
        let child = spawn_listening(&mut command, &ports, READY_TIMEOUT, || self.log())?;
        self.child = Some(child);
        let public_wanted = self.public.as_ref().is_some_and(|p| lock(p).wanted);
        if public_wanted {
            self.spawn_public()
        } else {
            Ok(())
        }
    }

    /// The host to connect to.
    pub fn host(&self) -> &'static str {
        HOST
    }

    /// The LAN (authenticated, plain TCP) listener's port; the only listener of
    /// [`Setup::Anonymous`].
    pub fn lan_port(&self) -> u16 {
        self.lan_port
    }

    /// The public broker's (anonymous, read-only, websockets) listener's port. The public
    /// broker starts at the first call, and its feed is connected when this returns.
    pub fn ws_port(&self) -> u16 {
        self.use_public();
        lock(self.public.as_ref().expect("checked")).ws_port
    }

    /// The public broker's loopback plain-MQTT listener (same rights as the websockets one);
    /// starts the public broker like [`Broker::ws_port`].
    pub fn public_tcp_port(&self) -> u16 {
        self.use_public();
        lock(self.public.as_ref().expect("checked")).tcp_port
    }

    /// The public broker's process id while it runs.
    pub fn public_pid(&self) -> Option<u32> {
        let public = lock(self.public.as_ref()?);
        public.child.as_ref().map(Child::id)
    }

    /// What the public broker has written to its log so far.
    pub fn public_log(&self) -> String {
        fs::read_to_string(self.dir.join("public.log")).unwrap_or_default()
    }

    /// The rewritten public broker configuration ([`Setup::Shipped`] only).
    pub fn public_config_path(&self) -> Option<PathBuf> {
        self.public.as_ref().map(|p| lock(p).conf.clone())
    }

    /// Starts the public broker if no test has used it yet (panics with
    /// [`Setup::Anonymous`], which has none, or if it does not come up).
    fn use_public(&self) {
        let public = self
            .public
            .as_ref()
            .expect("this broker has no public side (Setup::Anonymous)");
        if lock(public).wanted {
            return;
        }
        lock(public).wanted = true;
        if self.child.is_some() {
            if let Err(e) = self.spawn_public() {
                panic!("the public mosquitto did not start: {e}");
            }
        }
    }

    /// Stops the public broker (SIGTERM) and starts it again on the same ports: whatever
    /// public clients left there is gone unless mosquitto kept it on disk.
    pub fn restart_public(&mut self) {
        self.use_public();
        if let Some(public) = &self.public {
            if let Some(child) = lock(public).child.take() {
                terminate(child);
            }
        }
        if let Err(e) = self.spawn_public() {
            panic!("the public mosquitto did not restart: {e}");
        }
    }

    /// Spawns the public broker and waits until its ports accept connections and a message
    /// published on the LAN broker arrives through the feed.
    fn spawn_public(&self) -> Result<(), String> {
        let public = self.public.as_ref().expect("a public side");
        let mut public = lock(public);
        let mut command = self.mosquitto(&public.conf, "public.log");
        let ports = [public.ws_port, public.tcp_port];
        let mut child = spawn_listening(&mut command, &ports, READY_TIMEOUT, || self.public_log())
            .map_err(|e| format!("public mosquitto: {e}"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        match raw::feed_probe(self.lan_port, public.tcp_port, deadline) {
            Ok(()) => {
                public.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{e}; public log:\n{}", self.public_log()))
            }
        }
    }

    /// Which configuration this broker runs.
    pub fn setup(&self) -> Setup {
        self.setup
    }

    /// The credentials the test password file holds for `user`.
    pub fn credentials(&self, user: User) -> Credentials {
        Credentials {
            username: user.name().to_owned(),
            password: user.test_password().to_owned(),
        }
    }

    /// The temporary directory holding the rewritten config, passwords, data and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rewritten configuration file mosquitto runs.
    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    /// What mosquitto has written to its log so far (it buffers: expect gaps while running).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// The mosquitto process id while it runs (to read its memory in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the mosquitto process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().expect("poll mosquitto").is_none(),
            None => false,
        }
    }

    /// Stops mosquitto gracefully (SIGTERM: it saves retained messages), killing it if it
    /// has not exited within [`WAIT`].
    pub fn stop(&mut self) {
        if let Some(public) = &self.public {
            if let Some(child) = lock(public).child.take() {
                terminate(child);
            }
        }
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }

    /// Kills mosquitto at once (SIGKILL), as a crash would: unsaved state is lost.
    pub fn kill(&mut self) {
        let public = self.public.as_ref().and_then(|p| lock(p).child.take());
        for mut child in [self.child.take(), public].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops mosquitto gracefully if it runs, then starts it again on the same ports and
    /// directory (so persisted retained messages come back). Panics if it does not come up.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("mosquitto did not restart on the same ports: {e}");
        }
    }

    /// Connects a test client; see [`TestClient`].
    pub async fn connect(
        &self,
        protocol: Protocol,
        listener: Listener,
        login: Login,
    ) -> Result<TestClient, ConnectError> {
        TestClient::connect(self, protocol, listener, login).await
    }

    /// A client on the LAN listener over MQTT 3.1.1 as `login`, connected or the test fails.
    pub async fn lan_client(&self, login: Login) -> TestClient {
        self.connect(Protocol::V311, Listener::Lan, login)
            .await
            .expect("test client connects")
    }

    /// Home Assistant's client subscribed to `topics` (SUBACK awaited): what a test watches
    /// the bridge with, started before the bridge so that nothing it publishes is missed.
    pub async fn watcher(&self, topics: &[&str]) -> TestClient {
        let mut watcher = self.lan_client(Login::User(User::HomeAssistant)).await;
        assert!(
            watcher.subscribe_many(topics).await.unwrap(),
            "the watcher subscribes to {topics:?}"
        );
        watcher
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("mosquitto test directory kept: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Rewrites the shipped LAN broker configuration: listeners 1883 and 1884 (the feed) onto
/// `lan` and `feed` on the loopback address, the password file and persistence into `dir`, the
/// ACL files copied unchanged into `dir`. Every other line stays as it is; a directive that
/// names a path the rewrite does not know how to move is refused rather than silently pointing
/// at the developer's machine.
fn rewrite_shipped(shipped: &str, dir: &Path, lan: u16, feed: u16) -> String {
    rewrite(shipped, dir, &[("1883", lan), ("1884", feed)], None)
}

/// Rewrites the shipped public broker configuration like [`rewrite_shipped`]: listeners 9001
/// and 9002 onto `ws` and `tcp`, the feed's `address` onto the LAN broker's `feed` port.
fn rewrite_public(shipped: &str, dir: &Path, ws: u16, tcp: u16, feed: u16) -> String {
    rewrite(shipped, dir, &[("9001", ws), ("9002", tcp)], Some(feed))
}

fn rewrite(shipped: &str, dir: &Path, ports: &[(&str, u16)], feed: Option<u16>) -> String {
    let root = shipped_root();
    let mut out = String::new();
    for line in shipped.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let rewritten = match words.as_slice() {
            [] => None,
            [first, ..] if first.starts_with('#') => None,
            ["listener", port, ..] => {
                let new = ports
                    .iter()
                    .find(|(shipped, _)| shipped == port)
                    .map(|(_, new)| *new)
                    .unwrap_or_else(|| panic!("shipped listener {port} unknown to the harness"));
                Some(format!("listener {new} {HOST}"))
            }
            ["address", "127.0.0.1:1884"] => {
                let feed = feed.unwrap_or_else(|| panic!("unexpected `{line}`"));
                Some(format!("address {HOST}:{feed}"))
            }
            ["address" | "addresses", ..] => {
                panic!("the test harness does not know how to move `{line}`")
            }
            ["password_file", _] => Some(format!("password_file {}", dir.join("passwd").display())),
            ["persistence_location", _] => Some(format!(
                "persistence_location {}/",
                dir.join("data").display()
            )),
            ["acl_file", path] => {
                let name = Path::new(path).file_name().expect("acl file name");
                let copy = dir.join(name);
                fs::copy(root.join(path), &copy)
                    .unwrap_or_else(|e| panic!("copy shipped {path}: {e}"));
                Some(format!("acl_file {}", copy.display()))
            }
            [key, ..]
                if matches!(
                    *key,
                    "include_dir"
                        | "pid_file"
                        | "certfile"
                        | "keyfile"
                        | "cafile"
                        | "capath"
                        | "crlfile"
                        | "psk_file"
                        | "dhparamfile"
                        | "plugin"
                        | "auth_plugin"
                        | "user"
                ) =>
            {
                panic!("the test harness does not know how to move `{line}`")
            }
            ["log_dest", "file", ..] => {
                panic!("the test harness does not know how to move `{line}`")
            }
            _ => None,
        };
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Sends SIGTERM (mosquitto saves what it persists) and waits for the exit, killing the process
/// if it has not exited within [`WAIT`].
fn terminate(mut child: Child) {
    // The shell's builtin `kill`: std can only send SIGKILL, and /bin/kill may be missing.
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("poll mosquitto").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        // Polling for the exit with a deadline.
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.wait();
}

/// The public side's lock; a test that panicked while holding it leaves a usable value.
fn lock(public: &Mutex<PublicBroker>) -> std::sync::MutexGuard<'_, PublicBroker> {
    public
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A password file with every [`User`]'s test password, made the way users make theirs: by
/// `mosquitto/make-passwords.sh`, the passwords in its environment.
fn write_password_file(path: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mosquitto/make-passwords.sh");
    let mut cmd = Command::new(script);
    cmd.arg("-f").arg(path);
    for user in User::ALL {
        cmd.env(
            format!("MQTT_PASSWORD_{}", user.name().to_uppercase()),
            user.test_password(),
        );
    }
    let out = cmd.output().expect("run mosquitto/make-passwords.sh");
    assert!(
        out.status.success(),
        "make-passwords.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run as root, mosquitto drops to the `mosquitto` user (or `nobody`) before it reads the
/// password file and writes persistence: hand the directory over, as a real install does.
fn give_to_mosquitto_user(dir: &Path) {
    let uid = Command::new("id").arg("-u").output().expect("run id");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return;
    }
    let has_mosquitto = Command::new("id")
        .arg("mosquitto")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let user = if has_mosquitto { "mosquitto" } else { "nobody" };
    let status = Command::new("chown")
        .args(["-R", user])
        .arg(dir)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown -R {user} {} failed", dir.display());
}

/// A fresh, empty directory under the system temporary directory.
fn unique_temp_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "coffeebot-mosquitto-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    assert!(
        !dir.to_string_lossy().contains(char::is_whitespace),
        "mosquitto cannot take paths with spaces: {}",
        dir.display()
    );
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Finds a mosquitto program on PATH or in the sbin directories (mosquitto lives in
/// /usr/sbin on Debian, which is not on every PATH); panics with the fix if it is missing.
pub fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: run scripts/install-test-deps.sh"))
}

/// Appends `n` as MQTT's variable-length "remaining length" (seven bits a byte, low first).
pub fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            break;
        }
    }
}

/// Blocking MQTT 3.1.1 in a few packets, for the harness's own readiness check (it runs in
/// synchronous code, also inside a test's runtime).
mod raw {
    use super::{remaining_length, User, HOST, READY_TIMEOUT};
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    fn string(s: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        remaining_length(body.len(), &mut out);
        out.extend_from_slice(body);
        out
    }

    /// One complete packet `(first byte, body)` off the front of `buf`, if there is one.
    fn take(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
        let (mut len, mut shift, mut i) = (0usize, 0, 1);
        loop {
            let b = *buf.get(i)?;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if buf.len() < i + len {
            return None;
        }
        let body = buf[i..i + len].to_vec();
        let first = buf[0];
        buf.drain(..i + len);
        Some((first, body))
    }

    /// Reads until a packet with this packet type arrives or `deadline` passes.
    fn expect(
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        kind: u8,
        deadline: Instant,
    ) -> Result<Vec<u8>, String> {
        loop {
            while let Some((first, body)) = take(buf) {
                if first >> 4 == kind {
                    return Ok(body);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no packet of type {kind} in time"));
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => return Err("connection closed".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// A clean-session connection, CONNACK 0 checked.
    fn connect(
        port: u16,
        id: &str,
        login: Option<User>,
        deadline: Instant,
    ) -> Result<(TcpStream, Vec<u8>), String> {
        let mut stream = TcpStream::connect((HOST, port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        string("MQTT", &mut body);
        body.push(4);
        body.push(if login.is_some() { 0xC2 } else { 0x02 });
        body.extend_from_slice(&30u16.to_be_bytes());
        string(id, &mut body);
        if let Some(user) = login {
            string(user.name(), &mut body);
            string(user.test_password(), &mut body);
        }
        stream
            .write_all(&packet(0x10, &body))
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let connack = expect(&mut stream, &mut buf, 2, deadline)?;
        if connack.get(1) != Some(&0) {
            return Err(format!("{id}: CONNACK {connack:?}"));
        }
        Ok((stream, buf))
    }

    /// Waits until a message published on the LAN broker (as the bridge, on `lan_port`)
    /// reaches a subscriber of the public broker (`public_port`): the feed is connected and
    /// subscribed. Publishes again every 50 ms until then (or [`READY_TIMEOUT`]).
    pub fn feed_probe(lan_port: u16, public_port: u16, deadline: Instant) -> Result<(), String> {
        let deadline = deadline.max(Instant::now() + READY_TIMEOUT);
        let topic = super::FEED_PROBE_TOPIC;
        let (mut reader, mut rbuf) = connect(public_port, "harness-probe-reader", None, deadline)?;
        let mut body = 1u16.to_be_bytes().to_vec();
        string(topic, &mut body);
        body.push(0);
        reader
            .write_all(&packet(0x82, &body))
            .map_err(|e| e.to_string())?;
        expect(&mut reader, &mut rbuf, 9, deadline)?;
        let (mut writer, _) = connect(
            lan_port,
            "harness-probe-writer",
            Some(User::Coffeebot),
            deadline,
        )?;
        let mut publish = Vec::new();
        string(topic, &mut publish);
        publish.extend_from_slice(b"probe");
        let publish = packet(0x30, &publish);
        loop {
            writer.write_all(&publish).map_err(|e| e.to_string())?;
            let wait = (Instant::now() + Duration::from_millis(50)).min(deadline);
            match expect(&mut reader, &mut rbuf, 3, wait) {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => continue,
                Err(e) => return Err(format!("nothing came through the feed: {e}")),
            }
        }
        for mut stream in [reader, writer] {
            let _ = stream.write_all(&[0xE0, 0]);
        }
        Ok(())
    }
}

/// Whether an MQTT topic filter (with `+` and `#`) matches a topic name: the bridge's own.
pub use coffeebot::mqtt::topics::filter_matches as topic_matches;

// ---------------------------------------------------------------------------------------
// Clients

/// The MQTT protocol version a [`TestClient`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1 (`rumqttc`).
    V311,
    /// MQTT 5 (`rumqttc::v5`).
    V5,
}

impl Protocol {
    /// Both versions, for tests that must hold with either.
    pub const ALL: [Protocol; 2] = [Protocol::V311, Protocol::V5];
}

/// Which listener of the shipped configuration a client connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Listener {
    /// The authenticated plain-TCP listener (1883 when shipped).
    Lan,
    /// The anonymous read-only websockets listener (9001 when shipped).
    Public,
}

/// How a client logs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Login {
    /// No username, no password.
    Anonymous,
    /// The user with its test password.
    User(User),
    /// The user's name with a wrong password.
    WrongPassword(User),
}

impl Login {
    fn credentials(self) -> Option<(&'static str, &'static str)> {
        match self {
            Login::Anonymous => None,
            Login::User(user) => Some((user.name(), user.test_password())),
            Login::WrongPassword(user) => Some((user.name(), "not-the-password")),
        }
    }
}

/// Why [`TestClient::connect`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The broker answered CONNACK with a refusal (the reason code, as text).
    #[error("connection refused: {0}")]
    Refused(String),
    /// Anything else: no connection, no CONNACK within [`WAIT`], a websocket failure.
    #[error("connection failed: {0}")]
    Failed(String),
}

/// Waits (at most [`WAIT`]) for a connecting client's CONNACK: `next` polls its event loop
/// once and says whether that ended the wait (`Some`: the CONNACK, a refusal or an error).
async fn until_connack(
    mut next: impl AsyncFnMut() -> Option<Result<(), ConnectError>>,
) -> Result<(), ConnectError> {
    let wait = async {
        loop {
            if let Some(done) = next().await {
                return done;
            }
        }
    };
    timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| Err(ConnectError::Failed("no CONNACK".into())))
}

/// Why a [`TestClient`] operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// What was awaited did not happen within the timeout.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The connection ended (the event loop's error, as text).
    #[error("connection closed: {0}")]
    Closed(String),
    /// The client refused the request (e.g. its request channel closed).
    #[error("request failed: {0}")]
    Request(String),
}

/// A message a [`TestClient`] received.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// The retain flag as delivered (set for retained messages sent on subscription).
    pub retain: bool,
    /// The QoS it was delivered with.
    pub qos: u8,
    /// MQTT 5 Correlation Data, if the message carried any.
    pub correlation: Option<Vec<u8>>,
    /// When the client's event loop received it.
    pub at: Instant,
}

impl Message {
    /// The payload as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// The broker's answer to a QoS 1 publish. MQTT 3.1.1 has no reason codes: every PUBACK
/// reads [`PubAck::Ok`] there, even for a publish mosquitto dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PubAck {
    /// Accepted (MQTT 5: success).
    Ok,
    /// MQTT 5: accepted, no subscriber matched.
    NoMatchingSubscribers,
    /// MQTT 5: refused by the ACL.
    NotAuthorized,
    /// MQTT 5: another reason code.
    Other(String),
}

impl PubAck {
    /// Whether the broker took the message (the PUBACK says so; in MQTT 3.1.1 it always does).
    pub fn accepted(&self) -> bool {
        matches!(self, PubAck::Ok | PubAck::NoMatchingSubscribers)
    }
}

/// What the event-loop task reports to its [`TestClient`].
#[derive(Debug)]
enum ClientEvent {
    Message(Message),
    SubAck(Vec<bool>),
    PubAck(PubAck),
    Closed(String),
}

enum Handle {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// An MQTT client whose event loop runs in its own task and reports to this handle.
///
/// Requests are one at a time: [`TestClient::publish`] and [`TestClient::subscribe`] return
/// on their acknowledgement. Every message received, also while waiting for something else,
/// is kept in [`TestClient::seen`].
pub struct TestClient {
    handle: Handle,
    protocol: Protocol,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    seen: Vec<Message>,
    closed: Option<String>,
    id: String,
}

impl TestClient {
    /// Connects with a clean session and waits for the CONNACK (at most [`WAIT`]).
    pub async fn connect(
        broker: &Broker,
        protocol: Protocol,
        listener: Listener,
        login: Login,
    ) -> Result<TestClient, ConnectError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        TestClient::connect_as(broker, protocol, listener, login, &id).await
    }

    /// [`TestClient::connect`] with this client id (e.g. to try to take another client's).
    pub async fn connect_as(
        broker: &Broker,
        protocol: Protocol,
        listener: Listener,
        login: Login,
        id: &str,
    ) -> Result<TestClient, ConnectError> {
        let id = id.to_owned();
        let port = match listener {
            Listener::Lan => broker.lan_port(),
            Listener::Public => websocket_relay(broker.ws_port())
                .await
                .map_err(|e| ConnectError::Failed(format!("websocket: {e}")))?,
        };
        let (tx, events) = mpsc::unbounded_channel();
        let handle = match protocol {
            Protocol::V311 => {
                let mut options = rumqttc::MqttOptions::new(&id, HOST, port);
                options.set_clean_session(true);
                if let Some((user, password)) = login.credentials() {
                    options.set_credentials(user, password);
                }
                let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
                eventloop.set_network_options(no_delay());
                until_connack(async || match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => Some(Ok(())),
                    Ok(_) => None,
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                        Some(Err(ConnectError::Refused(format!("{code:?}"))))
                    }
                    Err(e) => Some(Err(ConnectError::Failed(e.to_string()))),
                })
                .await?;
                tokio::spawn(pump(eventloop, tx));
                Handle::V311(client)
            }
            Protocol::V5 => {
                let mut options = rumqttc::v5::MqttOptions::new(&id, HOST, port);
                options.set_clean_start(true);
                options.set_network_options(no_delay());
                if let Some((user, password)) = login.credentials() {
                    options.set_credentials(user, password);
                }
                let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 64);
                until_connack(async || match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))) => Some(Ok(())),
                    Ok(_) => None,
                    Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
                        Some(Err(ConnectError::Refused(format!("{code:?}"))))
                    }
                    Err(e) => Some(Err(ConnectError::Failed(e.to_string()))),
                })
                .await?;
                tokio::spawn(pump(eventloop, tx));
                Handle::V5(client)
            }
        };
        Ok(TestClient {
            handle,
            protocol,
            events,
            seen: Vec::new(),
            closed: None,
            id,
        })
    }

    /// The protocol version this client speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The client id it connected with.
    pub fn client_id(&self) -> &str {
        &self.id
    }

    /// Every message received so far, in order of arrival.
    pub fn seen(&self) -> &[Message] {
        &self.seen
    }

    /// Subscribes to `filter` at QoS 1 and waits for the SUBACK; returns whether the broker
    /// granted it. (mosquitto 2.0 grants every subscription and applies read rights to each
    /// message at delivery, so `true` says nothing about what will arrive.)
    pub async fn subscribe(&mut self, filter: &str) -> Result<bool, ClientError> {
        self.subscribe_many(&[filter]).await
    }

    /// Subscribes to all `filters` at QoS 1 in one SUBSCRIBE and waits for the SUBACK;
    /// returns whether the broker granted every one.
    pub async fn subscribe_many(&mut self, filters: &[&str]) -> Result<bool, ClientError> {
        let sent = match &self.handle {
            Handle::V311(c) => c
                .subscribe_many(filters.iter().map(|f| {
                    rumqttc::SubscribeFilter::new(f.to_string(), rumqttc::QoS::AtLeastOnce)
                }))
                .await
                .map_err(|e| e.to_string()),
            Handle::V5(c) => c
                .subscribe_many(filters.iter().map(|f| {
                    rumqttc::v5::mqttbytes::v5::Filter::new(
                        *f,
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    )
                }))
                .await
                .map_err(|e| e.to_string()),
        };
        sent.map_err(ClientError::Request)?;
        self.acked(&format!("SUBACK for {filters:?}"), |event| match event {
            ClientEvent::SubAck(granted) => Ok(granted.iter().all(|g| *g)),
            other => Err(other),
        })
        .await
    }

    /// Waits (at most [`WAIT`]) for the acknowledgement `pick` takes (`Err` gives back any
    /// other event), keeping what comes before it.
    async fn acked<T>(
        &mut self,
        what: &str,
        pick: impl Fn(ClientEvent) -> Result<T, ClientEvent>,
    ) -> Result<T, ClientError> {
        loop {
            match pick(self.next_event(what, WAIT).await?) {
                Ok(ack) => return Ok(ack),
                Err(other) => self.stash(other, what)?,
            }
        }
    }

    /// Publishes `payload` to the default device's `command/set` topic (QoS 1), PUBACK
    /// awaited or the test fails.
    pub async fn command(&mut self, command: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.publish(&format!("{DEVICE_TOPIC}/{command}/set"), payload, retain)
            .await
            .unwrap();
    }

    /// Publishes at QoS 1 and waits for the PUBACK. mosquitto routes the message to its
    /// subscribers before it answers, which is what makes later ordering arguments hold.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        retain: bool,
    ) -> Result<PubAck, ClientError> {
        let payload = payload.into();
        let sent = match &self.handle {
            Handle::V311(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Handle::V5(c) => c
                .publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    retain,
                    payload,
                )
                .await
                .map_err(|e| e.to_string()),
        };
        sent.map_err(ClientError::Request)?;
        self.acked(&format!("PUBACK for {topic}"), |event| match event {
            ClientEvent::PubAck(ack) => Ok(ack),
            other => Err(other),
        })
        .await
    }

    /// MQTT 5 only: publishes a request (QoS 1) with this Response Topic and Correlation Data
    /// and waits for the PUBACK.
    pub async fn request(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        response_topic: &str,
        correlation: &[u8],
    ) -> Result<PubAck, ClientError> {
        let Handle::V5(c) = &self.handle else {
            return Err(ClientError::Request(
                "Response Topics need MQTT 5".to_owned(),
            ));
        };
        let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some(response_topic.to_owned()),
            correlation_data: Some(correlation.to_vec().into()),
            ..Default::default()
        };
        c.publish_with_properties(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            payload.into(),
            properties,
        )
        .await
        .map_err(|e| ClientError::Request(e.to_string()))?;
        let what = format!("PUBACK for {topic}");
        loop {
            match self.next_event(&what, WAIT).await? {
                ClientEvent::PubAck(ack) => return Ok(ack),
                other => self.stash(other, &what)?,
            }
        }
    }

    /// Waits (at most `limit`) for a message matching `pred`, looking first at the messages
    /// already seen; returns a copy of it.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> Result<Message, ClientError> {
        if let Some(found) = self.seen.iter().find(|m| pred(m)) {
            return Ok(found.clone());
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_event(what, left).await?;
            if let ClientEvent::Message(m) = &event {
                if pred(m) {
                    let found = m.clone();
                    self.stash(event, what)?;
                    return Ok(found);
                }
            }
            self.stash(event, what)?;
        }
    }

    /// Waits for the message with exactly this topic and payload.
    pub async fn wait_for_payload(
        &mut self,
        topic: &str,
        payload: &str,
    ) -> Result<Message, ClientError> {
        let what = format!("{payload:?} on {topic}");
        self.wait_for(&what, WAIT, |m| {
            m.topic == topic && m.payload == payload.as_bytes()
        })
        .await
    }

    /// Subscribes to `filter` and waits until `count` messages matching it have arrived after
    /// the subscription (e.g. the retained ones); returns them.
    pub async fn subscribe_and_collect(
        &mut self,
        filter: &str,
        count: usize,
        limit: Duration,
    ) -> Result<Vec<Message>, ClientError> {
        let start = self.seen.len();
        self.subscribe(filter).await?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got: Vec<Message> = self.seen[start..]
                .iter()
                .filter(|m| topic_matches(filter, &m.topic))
                .cloned()
                .collect();
            if got.len() >= count {
                return Ok(got);
            }
            let what = format!("{count} messages on {filter} (have {got:?})");
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_event(&what, left).await?;
            self.stash(event, &what)?;
        }
    }

    /// Makes a round trip to the broker (a SUBSCRIBE to a filter nothing is published on):
    /// every message that mosquitto routed to this client before it handled the round trip
    /// has arrived when this returns. Proves silence for a client that may read nothing.
    pub async fn round_trip(&mut self) -> Result<(), ClientError> {
        let filter = format!("coffeebot-test/round-trip/{}", self.id);
        self.subscribe(&filter).await.map(|_| ())
    }

    /// Sends DISCONNECT (so no last will is published).
    pub async fn disconnect(self) {
        let _ = match &self.handle {
            Handle::V311(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Handle::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }

    async fn next_event(
        &mut self,
        what: &str,
        limit: Duration,
    ) -> Result<ClientEvent, ClientError> {
        if let Some(why) = &self.closed {
            return Err(ClientError::Closed(why.clone()));
        }
        match timeout(limit, self.events.recv()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(ClientError::Closed("event loop task ended".into())),
            Err(_) => Err(ClientError::Timeout(what.to_owned())),
        }
    }

    /// Keeps a message that arrived while waiting for something else; fails on an
    /// acknowledgement nobody asked for (requests are one at a time) or a closed connection.
    fn stash(&mut self, event: ClientEvent, what: &str) -> Result<(), ClientError> {
        match event {
            ClientEvent::Message(m) => {
                self.seen.push(m);
                Ok(())
            }
            ClientEvent::Closed(why) => {
                self.closed = Some(why.clone());
                Err(ClientError::Closed(why))
            }
            other => Err(ClientError::Request(format!(
                "unexpected {other:?} while waiting for {what}"
            ))),
        }
    }
}

/// One request at a time means many small packets: without TCP_NODELAY, Nagle's algorithm
/// and delayed ACKs add tens of milliseconds to each round trip.
fn no_delay() -> rumqttc::NetworkOptions {
    let mut options = rumqttc::NetworkOptions::new();
    options.set_tcp_nodelay(true);
    options
}

/// Forwards a client's events to its [`TestClient`] until the connection or the receiver ends.
async fn pump(mut eventloop: impl PollEvent, tx: mpsc::UnboundedSender<ClientEvent>) {
    loop {
        let event = match eventloop.poll_event().await {
            Ok(Some(event)) => event,
            Ok(None) => continue,
            Err(why) => {
                let _ = tx.send(ClientEvent::Closed(why));
                return;
            }
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}

/// An event loop of either protocol version, as [`pump`] reads it.
trait PollEvent {
    /// Polls once and translates what came: `Ok(None)`, nothing to forward; `Err`, the
    /// connection ended, and why.
    async fn poll_event(&mut self) -> Result<Option<ClientEvent>, String>;
}

impl PollEvent for rumqttc::EventLoop {
    async fn poll_event(&mut self) -> Result<Option<ClientEvent>, String> {
        use rumqttc::{Event, Packet};
        Ok(Some(match self.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => ClientEvent::Message(Message {
                topic: p.topic.clone(),
                payload: p.payload.to_vec(),
                retain: p.retain,
                qos: p.qos as u8,
                correlation: None,
                at: Instant::now(),
            }),
            Ok(Event::Incoming(Packet::SubAck(s))) => ClientEvent::SubAck(
                s.return_codes
                    .iter()
                    .map(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
                    .collect(),
            ),
            Ok(Event::Incoming(Packet::PubAck(_))) => ClientEvent::PubAck(PubAck::Ok),
            Ok(_) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }))
    }
}

impl PollEvent for rumqttc::v5::EventLoop {
    async fn poll_event(&mut self) -> Result<Option<ClientEvent>, String> {
        use rumqttc::v5::Event;
        Ok(Some(match self.poll().await {
            Ok(Event::Incoming(V5Packet::Publish(p))) => ClientEvent::Message(Message {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload.to_vec(),
                retain: p.retain,
                qos: p.qos as u8,
                correlation: p
                    .properties
                    .as_ref()
                    .and_then(|props| props.correlation_data.as_ref())
                    .map(|c| c.to_vec()),
                at: Instant::now(),
            }),
            Ok(Event::Incoming(V5Packet::SubAck(s))) => ClientEvent::SubAck(
                s.return_codes
                    .iter()
                    .map(|c| matches!(c, V5Sub::Success(_)))
                    .collect(),
            ),
            Ok(Event::Incoming(V5Packet::PubAck(a))) => ClientEvent::PubAck(match a.reason {
                PubAckReason::Success => PubAck::Ok,
                PubAckReason::NoMatchingSubscribers => PubAck::NoMatchingSubscribers,
                PubAckReason::NotAuthorized => PubAck::NotAuthorized,
                other => PubAck::Other(format!("{other:?}")),
            }),
            Ok(_) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }))
    }
}

// ---------------------------------------------------------------------------------------
// Websocket relay: MQTT over websockets is the MQTT byte stream in binary frames. The relay
// opens the websocket to mosquitto, then carries one plain TCP connection from a rumqttc client
// over it (client frames masked, as RFC 6455 requires).

/// Opens a websocket (subprotocol `mqtt`) to `ws_port` and returns a loopback port whose first
/// TCP connection is relayed over it.
pub async fn websocket_relay(ws_port: u16) -> std::io::Result<u16> {
    let mut ws = TcpStream::connect((HOST, ws_port)).await?;
    // The key only has to be 16 bytes in base64; the RFC's sample nonce will do for a test.
    let request = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {HOST}:{ws_port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    ws.write_all(request.as_bytes()).await?;
    let mut buffered = Vec::new();
    let header_end = loop {
        if let Some(i) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = timeout(WAIT, ws.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("no websocket handshake answer"))??;
        if n == 0 {
            return Err(std::io::Error::other("closed during websocket handshake"));
        }
        buffered.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffered[..header_end]).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(std::io::Error::other(format!(
            "websocket upgrade refused: {head}"
        )));
    }
    let leftover = buffered.split_off(header_end);
    let listener = TcpListener::bind((HOST, 0)).await?;
    let port = listener.local_addr()?.port();
    ws.set_nodelay(true)?;
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let _ = relay(tcp, ws, leftover).await;
        }
    });
    Ok(port)
}

const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

async fn relay(mut tcp: TcpStream, mut ws: TcpStream, mut from_ws: Vec<u8>) -> std::io::Result<()> {
    let mut tcp_buf = vec![0u8; 16 * 1024];
    let mut ws_buf = vec![0u8; 16 * 1024];
    loop {
        while let Some((opcode, payload)) = take_frame(&mut from_ws) {
            match opcode {
                // Continuation, text or binary: the MQTT byte stream, frame edges don't matter.
                0x0..=0x2 => tcp.write_all(&payload).await?,
                OP_CLOSE => return tcp.shutdown().await,
                OP_PING => ws.write_all(&frame(OP_PONG, &payload)).await?,
                _ => {}
            }
        }
        tokio::select! {
            n = tcp.read(&mut tcp_buf) => {
                let n = n?;
                if n == 0 {
                    return ws.write_all(&frame(OP_CLOSE, &[])).await;
                }
                ws.write_all(&frame(OP_BINARY, &tcp_buf[..n])).await?;
            }
            n = ws.read(&mut ws_buf) => {
                let n = n?;
                if n == 0 {
                    return tcp.shutdown().await;
                }
                from_ws.extend_from_slice(&ws_buf[..n]);
            }
        }
    }
}

/// Takes one complete frame `(opcode, unmasked payload)` off the front of `buf`, if there is one.
fn take_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut pos) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        126 | 127 => return None,
        short => (short as usize, 2),
    };
    let mask = if masked {
        let mask: [u8; 4] = buf.get(pos..pos + 4)?.try_into().expect("4 bytes");
        pos += 4;
        Some(mask)
    } else {
        None
    };
    let end = pos + len;
    if buf.len() < end {
        return None;
    }
    let mut payload = buf[pos..end].to_vec();
    if let Some(mask) = mask {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= mask[i % 4]);
    }
    buf.drain(..end);
    Some((opcode, payload))
}

/// One final, masked client frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        len if len < 126 => out.push(0x80 | len as u8),
        len if len <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let mask = fastrand::u32(..).to_be_bytes();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// How long [`next_message`] and [`message_since`] wait.
pub const MESSAGE_WAIT: Duration = Duration::from_secs(10);

/// A message's payload as JSON (`null` if it is not JSON).
pub fn json(m: &Message) -> serde_json::Value {
    serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null)
}

/// The first message matching `pred` among those arriving from now on (at most
/// [`MESSAGE_WAIT`]).
pub async fn next_message(
    client: &mut TestClient,
    what: &str,
    pred: impl Fn(&Message) -> bool,
) -> Message {
    let old = client.seen().len();
    message_since(client, old, what, pred).await
}

/// The first message matching `pred` among those seen after the first `old` ones.
/// [`TestClient::wait_for`] looks at the messages already seen first; the counter makes it
/// skip them (it scans them in order, one call each).
pub async fn message_since(
    client: &mut TestClient,
    old: usize,
    what: &str,
    pred: impl Fn(&Message) -> bool,
) -> Message {
    let calls = std::cell::Cell::new(0usize);
    client
        .wait_for(what, MESSAGE_WAIT, |m| {
            calls.set(calls.get() + 1);
            calls.get() > old && pred(m)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The default device's topics (`mqtt.base_topic`/`device.id`), as the tests run the bridge.
pub const DEVICE_TOPIC: &str = "coffeebot/coffeepot";

/// The first JSON document (from now on) on the default device's topic `suffix` for which
/// `pred` holds.
async fn next_doc(
    client: &mut TestClient,
    suffix: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let topic = format!("{DEVICE_TOPIC}/{suffix}");
    json(&next_message(client, what, |m| m.topic == topic && pred(&json(m))).await)
}

/// The first state of the default device (from now on) for which `pred` holds.
pub async fn next_state(
    client: &mut TestClient,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    next_doc(client, "state", what, pred).await
}

/// The first event (from now on) of this type on the default device for which `pred` holds.
pub async fn next_event(
    client: &mut TestClient,
    event_type: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    next_doc(client, "event", event_type, |e| {
        e["event_type"] == event_type && pred(e)
    })
    .await
}

/// Publishes a command to the default device as `lan` (a fresh connection over MQTT 3.1.1,
/// QoS 1, PUBACK awaited).
pub async fn lan_command(broker: &Broker, command: &str, payload: impl Into<Vec<u8>>) {
    let mut lan = broker
        .connect(Protocol::V311, Listener::Lan, Login::User(User::Lan))
        .await
        .expect("lan connects");
    lan.command(command, payload, false).await;
    lan.disconnect().await;
}
