"""Runs the Home Assistant stack of the tests (shipped mosquitto config, simulator, bridge, HA
with the examples) for a screenshot of the coffee pot's device page, taken by headless
Chromium outside the root (scripts/ha-screenshot.sh).

    python screenshot.py DIR

Writes DIR/url (the device page, with a one-time login code for the frontend's own OAuth
callback) once everything is up, then waits until DIR/done exists (at most 5 minutes) and
stops the stack.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness import NODE, Bridge, Broker, HomeAssistant, Simulator, wait_until


def login_code(ha: HomeAssistant, client_id: str) -> str:
    """A login code for `client_id` from HA's login flow, for a user made for it."""
    user_id = next(u["id"] for u in ha.ws({"type": "config/auth/list"})[0] if u["is_owner"])
    password = secrets.token_hex(16)
    ha.ws(
        {
            "type": "config/auth_provider/homeassistant/create",
            "user_id": user_id,
            "username": "owner",
            "password": password,
        }
    )

    def post(path: str, body: dict) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{ha.port}{path}",
            method="POST",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    flow = post(
        "/auth/login_flow",
        {"client_id": client_id, "handler": ["homeassistant", None], "redirect_uri": client_id},
    )
    done = post(
        f"/auth/login_flow/{flow['flow_id']}",
        {"client_id": client_id, "username": "owner", "password": password},
    )
    assert done["type"] == "create_entry", done
    return done["result"]


def main(out: Path):
    work = Path(tempfile.mkdtemp(prefix="coffeebot-ha-shot."))
    os.chmod(work, 0o755)
    broker = Broker(work)
    sim = bridge = ha = None
    try:
        broker.start()
        sim = Simulator(work)
        bridge = Bridge(work, sim, broker)
        bridge.start()
        ha = HomeAssistant(work, broker, examples=True)
        # The frontend's configuration panels (the device page among them).
        with (ha.dir / "configuration.yaml").open("a") as config:
            config.write("config:\n")
        ha.start()
        wait_until("the coffee pot in HA", lambda: ha.state("sensor.coffee_pot_mode"), 60)
        wait_until(
            "the coffee pot available",
            lambda: ha.state("sensor.coffee_pot_temperature")["state"] not in ("unavailable", "unknown"),
            60,
        )
        # Something to see: the firmware (known after a reboot) and a finished brew.
        sim.control("reboot")
        wait_until(
            "the firmware known",
            lambda: any(d.get("sw_version") == "MrCoffeeBot v2.0"
                        for d in ha.ws({"type": "config/device_registry/list"})[0]),
            60,
        )
        wait_until(
            "the coffee pot available again",
            lambda: all(ha.state(e)["state"] != "unavailable"
                        for e in ("number.coffee_pot_cups", "button.coffee_pot_brew", "sensor.coffee_pot_mode")),
            60,
        )
        ha.call("number", "set_value", entity_id="number.coffee_pot_cups", value=2)
        ha.call("button", "press", entity_id="button.coffee_pot_brew")
        sim.control("temp 30")
        wait_until(
            "a finished brew",
            lambda: ha.state("event.coffee_pot_event")["attributes"].get("event_type") == "brew_finished",
            60,
        )
        devices = ha.ws({"type": "config/device_registry/list"})[0]
        device = next(d for d in devices if ["mqtt", NODE] in d["identifiers"])
        base = f"http://127.0.0.1:{ha.port}"
        client_id = f"{base}/"
        state = base64.b64encode(json.dumps({"hassUrl": base, "clientId": client_id}).encode()).decode()
        code = login_code(ha, client_id)
        url = f"{base}/config/devices/device/{device['id']}?auth_callback=1&code={code}&state={state}"
        (out / "url").write_text(url)
        deadline = time.monotonic() + 300
        while not (out / "done").exists() and time.monotonic() < deadline:
            time.sleep(0.5)  # waiting for the host's screenshot, a file it writes
    finally:
        for part in (ha, bridge, sim, broker):
            if part is not None:
                part.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
