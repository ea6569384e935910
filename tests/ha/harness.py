"""The real parts the Home Assistant tests run against, as processes on loopback ports.

- `Broker`: mosquitto with the shipped mosquitto/ configuration, its listeners moved to free
  loopback ports and its files to a temporary directory (persistence on, as shipped, so a
  restart keeps the retained messages);
- `Simulator`: `coffeebot simulate`, the simulated controller on a real pseudo-terminal, with
  its fault controls (`unplug`, `replug`, ...) on stdin;
- `Bridge`: `coffeebot run` against the simulator's terminal and the broker's LAN listener;
- `HomeAssistant`: `hass -c DIR` with onboarding skipped by writing `.storage` (an owner, a
  long-lived access token, the MQTT config entry), talked to through its REST and websocket
  APIs;
- `Watcher`: an MQTT client (user `homeassistant`) that records what is published under the
  discovery prefix, so a test can wait for the bridge's discovery to reach the broker.

Runs inside the root made by scripts/ha-env.sh (Python and HA from there). `python
harness.py warm-up` starts HA once with the tests' configuration, so that HA installs its
integrations' requirements during the install rather than during a test.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("COFFEEBOT_BIN", REPO / "target" / "debug" / "coffeebot"))
PREFIX = "homeassistant"
NODE = "coffeebot_coffeepot"
DEVICE_TOPIC = f"{PREFIX}/device/{NODE}/config"


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check, timeout: float = 30.0, interval: float = 0.1):
    """Polls `check` until it returns something truthy (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = check()
        except (OSError, urllib.error.URLError, ValueError) as e:
            last = e
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}: {e!r}")
        else:
            if last and not isinstance(last, Exception):
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Process:
    """A child process whose output goes to a file and, line by line, to a list."""

    def __init__(self, name: str, argv: list[str], log: Path, env=None, cwd=None, stdin=False):
        self.name = name
        self.log_path = log
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        with open(self.log_path, "a") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, text: str, timeout: float = 30.0, start: int = 0) -> str:
        """Waits for an output line (from index `start`) containing `text`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._more():
                    raise AssertionError(f"{self.name}: no line with {text!r} in {timeout} s")
                self._cond.wait(left)

    def _more(self) -> bool:
        return not self.proc.stdout.closed

    def send(self, line: str):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self):
        self.stop(signal.SIGKILL)


class Broker:
    """mosquitto from the shipped configuration, on free loopback ports."""

    def __init__(self, workdir: Path):
        self.dir = workdir / "mosquitto"
        (self.dir / "config").mkdir(parents=True)
        (self.dir / "data").mkdir()
        # The LAN broker only: Home Assistant and the bridge never use the public broker.
        for name in ("mosquitto.conf", "acl-lan", "acl-feed"):
            shutil.copy(REPO / "mosquitto" / "config" / name, self.dir / "config" / name)
        self.port = free_port()
        self.feed_port = free_port()
        conf = self.dir / "config" / "mosquitto.conf"
        text = conf.read_text()
        moved = text.replace("\nlistener 1883\n", f"\nlistener {self.port} 127.0.0.1\n").replace(
            "\nlistener 1884 127.0.0.1\n", f"\nlistener {self.feed_port} 127.0.0.1\n"
        )
        assert f"listener {self.port} 127.0.0.1" in moved and f"listener {self.feed_port} 127.0.0.1" in moved, (
            "cannot move the listeners in mosquitto.conf"
        )
        conf.write_text(moved)
        self.passwords = {u: secrets.token_hex(12) for u in ("coffeebot", "homeassistant", "lan")}
        subprocess.run(
            [str(REPO / "mosquitto" / "make-passwords.sh"), "-f", str(self.dir / "config" / "passwd")],
            env=dict(os.environ, **{f"MQTT_PASSWORD_{u.upper()}": p for u, p in self.passwords.items()}),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        shutil.chown(self.dir / "data", "mosquitto")
        os.chmod(self.dir, 0o755)
        self.proc: Process | None = None

    def start(self):
        self.proc = Process(
            "mosquitto",
            ["/usr/sbin/mosquitto", "-c", "config/mosquitto.conf"],
            self.dir / "mosquitto.out",
            cwd=self.dir,
        )
        wait_until("mosquitto's LAN listener", lambda: port_open(self.port), 10)

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def restart(self):
        self.stop()
        self.start()


class Simulator:
    """`coffeebot simulate` on a pseudo-terminal; fault controls through stdin."""

    def __init__(self, workdir: Path):
        self.link = workdir / "sim" / "tty"
        self.proc = Process(
            "simulator",
            [str(BINARY), "simulate", "--link", str(self.link)],
            workdir / "simulator.out",
            env=dict(os.environ, RUST_LOG="warn"),
            stdin=True,
        )
        self.proc.wait_line("simulated controller on", 15)

    def control(self, line: str) -> str:
        start = len(self.proc.lines)
        self.proc.send(line)
        return self.proc.wait_line("ok", 10, start=start)

    def stop(self):
        self.proc.stop()


# Bridge settings that make the tests quick (as tests/support/bridge.rs FAST).
FAST = {
    "MQTT__STATE_INTERVAL_S": "5",
    "MQTT__KEEP_ALIVE_S": "5",
    "BREW__SECONDS_PER_CUP": "1.0",
    "BREW__PREHEAT_C": "25.0",
    "BREW__PREHEAT_TIMEOUT_S": "30",
    "KEEP_WARM__AFTER_BREW": "false",
    "HTTP__LISTEN": "",
    # Nor the operator server (metrics, probes): its default port may be taken on the machine.
    "HTTP__OPS_LISTEN": "",
    # The simulator answers as MrCoffeeBot 05a9a00 (three-line replies, no heater timeout).
    "SERIAL__ALLOW_FIRMWARE_WITHOUT_HEATER_TIMEOUT": "true",
}


class Bridge:
    """`coffeebot run` against the simulator and the broker."""

    def __init__(self, workdir: Path, sim: Simulator, broker: Broker, **settings: str):
        self.workdir = workdir
        self.sim = sim
        self.broker = broker
        self.settings = dict(FAST, **settings)
        self.proc: Process | None = None

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COFFEEBOT")}
        env.update(
            RUST_LOG="info",
            COFFEEBOT__SERIAL__PORT=str(self.sim.link),
            COFFEEBOT__MQTT__HOST="127.0.0.1",
            COFFEEBOT__MQTT__PORT=str(self.broker.port),
            COFFEEBOT__MQTT__CLIENT_ID="coffeebot-ha-test",
            COFFEEBOT__MQTT__USERNAME="coffeebot",
            COFFEEBOT__MQTT__PASSWORD=self.broker.passwords["coffeebot"],
        )
        env.update({f"COFFEEBOT__{k}": v for k, v in self.settings.items()})
        return env

    def start(self, **settings: str):
        self.settings.update(settings)
        self.proc = Process("bridge", [str(BINARY), "run"], self.workdir / "bridge.out", env=self.env())
        self.proc.wait_line("connected to the MQTT broker", 20)

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc = None

    def discovery(self) -> list[tuple[str, str]]:
        """What `coffeebot discovery` says this configuration publishes: (topic, payload)."""
        out = subprocess.run(
            [str(BINARY), "discovery"], env=self.env(), check=True, capture_output=True, text=True
        ).stdout
        return [tuple((line.split(" ", 1) + [""])[:2]) for line in out.splitlines() if line]


class Watcher:
    """Records every message under the discovery prefix (as user `homeassistant`)."""

    def __init__(self, broker: Broker):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, str, bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="coffeebot-ha-watcher")
        self.client.username_pw_set("homeassistant", broker.passwords["homeassistant"])
        self.client.on_message = self._on_message
        self._connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self._connected.clear()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_connect(self, client, *_):
        client.subscribe(f"{PREFIX}/#", qos=1)
        self._connected.set()

    def connected(self) -> bool:
        return self._connected.is_set()

    def retained(self, until: int | None = None) -> dict[str, str]:
        """The latest non-empty payload of each topic (every message up to `until`): what
        the broker holds retained under the prefix, as every publication there is retained."""
        latest: dict[str, str] = {}
        with self._cond:
            for topic, payload, _ in self.messages[:until]:
                latest[topic] = payload
        return {t: p for t, p in latest.items() if not holds_nothing(p)}

    def _on_message(self, _client, _userdata, msg):
        with self._cond:
            self.messages.append((msg.topic, msg.payload.decode(errors="replace"), bool(msg.retain)))
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def wait_for(self, what: str, pred, since: int, timeout: float = 30.0):
        """Waits until `pred(messages since the mark)` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.messages[since:]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self._cond.wait(left)

    def publish(self, topic: str, payload: str, retain: bool = False):
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


def holds_nothing(payload: str) -> bool:
    """Whether a discovery payload defines no entity: empty, a pending migration, or a device
    config whose components are all removed (what the bridge leaves after a rollback)."""
    if not payload:
        return True
    try:
        config = json.loads(payload)
    except ValueError:
        return False
    if not isinstance(config, dict):
        return False
    if config.get("migrate_discovery") is True:
        return True
    cmps = config.get("cmps", config.get("components"))
    return isinstance(cmps, dict) and all(set(c) <= {"p", "platform"} for c in cmps.values())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: str, key: str, days: int = 3650) -> str:
    """An HS256 JSON web token as Home Assistant's auth makes for a refresh token."""
    import hashlib
    import hmac

    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = _b64(json.dumps({"iss": issuer, "iat": now, "exp": now + days * 86400}).encode())
    signature = hmac.new(key.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(signature)}"


CONFIGURATION_YAML = """\
homeassistant:
  name: Coffee test
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: NL
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {port}
logger:
  default: info
"""

# With the examples (examples/homeassistant/): its automations.yaml and blueprints as a user
# installs them, the tests' own automations (made from the same blueprints) beside them, and
# the test doubles of tests/ha/custom_components/coffeebot_test (a phone, a calendar).
EXAMPLES_YAML = """\
automation: !include automations.yaml
automation tests: !include test-automations.yaml
coffeebot_test:
  notify: [mobile_app_my_phone, test_phone]
calendar:
  - platform: coffeebot_test
"""
EXAMPLES = REPO / "examples" / "homeassistant"


class HomeAssistant:
    """`hass -c DIR`, onboarded through its storage files, on a free loopback port."""

    def __init__(self, workdir: Path, broker: Broker, examples: bool = False):
        self.dir = workdir / "ha"
        (self.dir / ".storage").mkdir(parents=True)
        self.port = free_port()
        self.broker = broker
        self.runs = 0
        self.problems_before = 0
        self.proc: Process | None = None
        config = CONFIGURATION_YAML.format(port=self.port)
        if examples:
            config += EXAMPLES_YAML
            shutil.copy(EXAMPLES / "automations.yaml", self.dir / "automations.yaml")
            shutil.copytree(EXAMPLES / "blueprints", self.dir / "blueprints")
            shutil.copytree(
                Path(__file__).parent / "custom_components",
                self.dir / "custom_components",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            (self.dir / "test-automations.yaml").write_text("[]\n")
        (self.dir / "configuration.yaml").write_text(config)
        self.token = self._write_storage()

    def _write_storage(self) -> str:
        now = dt.datetime.now(dt.UTC).isoformat()
        user_id, token_id = uuid.uuid4().hex, uuid.uuid4().hex
        jwt_key = secrets.token_hex(64)

        def store(key, data, version=1, minor=1):
            doc = {"version": version, "minor_version": minor, "key": key, "data": data}
            (self.dir / ".storage" / key).write_text(json.dumps(doc, indent=1))

        store("onboarding", {"done": ["user", "core_config", "analytics", "integration"]}, 4)
        store(
            "auth",
            {
                "users": [
                    {
                        "id": user_id,
                        "group_ids": ["system-admin"],
                        "is_owner": True,
                        "is_active": True,
                        "name": "Owner",
                        "system_generated": False,
                        "local_only": False,
                    }
                ],
                "groups": [
                    {"id": "system-admin", "name": "Administrators"},
                    {"id": "system-users", "name": "Users"},
                    {"id": "system-read-only", "name": "Read Only"},
                ],
                "credentials": [],
                "refresh_tokens": [
                    {
                        "id": token_id,
                        "user_id": user_id,
                        "client_id": None,
                        "client_name": "coffeebot tests",
                        "client_icon": None,
                        "token_type": "long_lived_access_token",
                        "created_at": now,
                        "access_token_expiration": 3650 * 86400.0,
                        "token": secrets.token_hex(64),
                        "jwt_key": jwt_key,
                        "last_used_at": None,
                        "last_used_ip": None,
                        "expire_at": None,
                        "credential_id": None,
                        "version": None,
                    }
                ],
            },
        )
        store(
            "core.config_entries",
            {
                "entries": [
                    {
                        "created_at": now,
                        "data": {
                            "broker": "127.0.0.1",
                            "port": self.broker.port,
                            "username": "homeassistant",
                            "password": self.broker.passwords["homeassistant"],
                        },
                        "disabled_by": None,
                        "discovery_keys": {},
                        "domain": "mqtt",
                        "entry_id": uuid.uuid4().hex,
                        "minor_version": 2,
                        "modified_at": now,
                        "options": {"discovery": True},
                        "pref_disable_new_entities": False,
                        "pref_disable_polling": False,
                        "source": "user",
                        "subentries": [],
                        "title": "127.0.0.1",
                        "unique_id": None,
                        "version": 1,
                    }
                ]
            },
            1,
            5,
        )
        return _jwt(token_id, jwt_key)

    # ----- process ---------------------------------------------------------------------

    @property
    def log_file(self) -> Path:
        return self.dir / f"hass-{self.runs}.log"

    def start(self, timeout: float = 120.0):
        self.runs += 1
        self.proc = Process(
            "hass",
            [sys.executable, "-m", "homeassistant", "-c", str(self.dir), "--log-file", str(self.log_file)],
            self.dir / f"hass-{self.runs}.out",
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        wait_until(
            "Home Assistant to run",
            lambda: self.proc.proc.poll() is None and self.get("/api/config").get("state") == "RUNNING"
            or self._died(),
            timeout,
            0.5,
        )

    def _died(self):
        if self.proc.proc.poll() is not None:
            raise AssertionError(f"hass exited with {self.proc.proc.returncode}: see {self.log_file}")
        return False

    def stop(self):
        if self.proc:
            self.proc.stop(timeout=60)
            self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def log_lines(self) -> list[str]:
        """Every line HA logged in every run so far."""
        lines = []
        for n in range(1, self.runs + 1):
            path = self.dir / f"hass-{n}.log"
            if path.exists():
                lines += path.read_text(errors="replace").splitlines()
        return lines

    def problems(self, *loggers: str) -> list[str]:
        """Warnings and errors logged by the given loggers (prefixes), in every run so far."""
        return [
            line
            for line in self.log_lines()
            if (" WARNING " in line or " ERROR " in line or " CRITICAL " in line)
            and any(f"[{name}" in line for name in loggers)
        ]

    def mqtt_problems(self) -> list[str]:
        """Warnings and errors of HA's MQTT integration, in every run so far."""
        return [
            line
            for line in self.log_lines()
            if (" WARNING " in line or " ERROR " in line or " CRITICAL " in line)
            and "homeassistant.components.mqtt" in line
        ]

    # ----- REST and websocket ----------------------------------------------------------

    def _request(self, method: str, path: str, body=None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def get(self, path: str):
        return self._request("GET", path)

    def state(self, entity_id: str) -> dict | None:
        try:
            return self.get(f"/api/states/{entity_id}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def states(self) -> list[dict]:
        return self.get("/api/states")

    def call(self, domain: str, service: str, **data):
        return self._request("POST", f"/api/services/{domain}/{service}", data)

    def render(self, template: str) -> str:
        """A template rendered by HA (POST /api/template)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/template",
            method="POST",
            data=json.dumps({"template": template}).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read().decode()

    def fire(self, event_type: str, **data):
        return self._request("POST", f"/api/events/{event_type}", data)

    def check_config(self) -> dict:
        """HA's configuration check (what Settings → Developer tools → Check configuration runs)."""
        return self._request("POST", "/api/config/core/check_config")

    # ----- the examples' test doubles (HomeAssistant(examples=True)) -------------------

    def notifications(self) -> list[dict]:
        """Every notify action call the test phone recorded, in order."""
        path = self.dir / "notifications.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def set_calendar(self, events: list[dict]):
        """The events of `calendar.coffee` (summary, description, start, end)."""
        (self.dir / "calendar.json").write_text(json.dumps(events))

    def set_test_automations(self, automations: list[dict]):
        """Replaces the tests' own automations (beside the examples' ones) and reloads all."""
        (self.dir / "test-automations.yaml").write_text(json.dumps(automations, indent=1))
        self.call("automation", "reload")
        for a in automations:
            self.wait_state(f"automation.{a['id']}", lambda s: s["state"] == "on", "loaded")

    def traces(self, automation_id: str) -> list[dict]:
        """The stored runs of an automation (by its `id`), oldest first."""
        (runs,) = self.ws({"type": "trace/list", "domain": "automation", "item_id": automation_id})
        return sorted(runs, key=lambda r: r["timestamp"]["start"])

    def wait_state(self, entity_id: str, pred, what: str = "", timeout: float = 30.0) -> dict:
        """Waits until the entity's state object satisfies `pred`; returns it."""

        def check():
            s = self.state(entity_id)
            return s if s is not None and pred(s) else None

        return wait_until(f"{entity_id} {what}", check, timeout, 0.2)

    def ws(self, *commands: dict) -> list:
        """Sends websocket commands in one authenticated session; their results, in order."""
        import aiohttp

        async def run():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"http://127.0.0.1:{self.port}/api/websocket") as ws:
                    assert (await ws.receive_json())["type"] == "auth_required"
                    await ws.send_json({"type": "auth", "access_token": self.token})
                    assert (await ws.receive_json())["type"] == "auth_ok"
                    results = []
                    for n, command in enumerate(commands, 1):
                        await ws.send_json(dict(command, id=n))
                        while True:
                            msg = await ws.receive_json(timeout=30)
                            if msg.get("id") == n and msg["type"] == "result":
                                break
                        if not msg["success"]:
                            raise AssertionError(f"{command}: {msg['error']}")
                        results.append(msg["result"])
                    return results

        return asyncio.run(run())


def warm_up():
    """Starts HA once with the tests' configuration and an MQTT broker, then stops it."""
    with tempfile.TemporaryDirectory(prefix="coffeebot-ha-warmup.") as tmp:
        os.chmod(tmp, 0o755)
        work = Path(tmp)
        broker = Broker(work)
        broker.start()
        ha = HomeAssistant(work, broker)
        try:
            started = time.monotonic()
            ha.start(timeout=900)
            wait_until("MQTT to load", lambda: ha.state("sensor.nothing") is None and
                       "mqtt" in ha.get("/api/config")["components"], 120, 0.5)
            print(f"warm-up: Home Assistant ran after {time.monotonic() - started:.0f} s")
        finally:
            ha.stop()
            broker.stop()


if __name__ == "__main__":
    if sys.argv[1:] == ["warm-up"]:
        warm_up()
    else:
        sys.exit("usage: harness.py warm-up")
