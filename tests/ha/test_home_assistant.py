"""coffeebot against a real Home Assistant Core (SPEC §4): the device and its entities as HA
shows them, commands from HA services, availability, and a clean HA log (no MQTT warning or
error) across restarts of each part and switches of the discovery mode.

One stack (mosquitto from the shipped config, the simulated controller, the bridge, HA) is
shared by the tests of this module, which run in order; each test leaves it running in
`components` mode with everything available. Run through scripts/ha-env.sh test.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import (
    DEVICE_TOPIC,
    NODE,
    PREFIX,
    Bridge,
    Broker,
    HomeAssistant,
    Simulator,
    Watcher,
    holds_nothing,
    wait_until,
)

# SPEC §4: key -> (platform, device_class, unit, state_class, entity_category, bridge alone).
# The unit is the one HA shows: the bridge declares the water distance in inches, and HA with
# a metric unit system (this one) converts distance sensors to millimetres.
ENTITIES = {
    "temperature": ("sensor", "temperature", "°C", "measurement", None, False),
    "water_level": ("sensor", None, "%", "measurement", None, False),
    "water_distance": ("sensor", "distance", "mm", "measurement", "diagnostic", True),
    "mode": ("sensor", "enum", None, None, None, False),
    "brew_ends_at": ("sensor", "timestamp", None, None, None, False),
    "updated_at": ("sensor", "timestamp", None, None, "diagnostic", True),
    "controller_reboots": ("sensor", None, None, "total_increasing", "diagnostic", True),
    "reply_format": ("sensor", "enum", None, None, "diagnostic", False),
    "heater": ("switch", None, None, None, None, False),
    "keep_warm": ("switch", None, None, None, None, False),
    "brew": ("button", None, None, None, None, False),
    "stop": ("button", None, None, None, None, False),
    "cups": ("number", None, None, None, None, False),
    "link": ("binary_sensor", "connectivity", None, None, "diagnostic", True),
    "bridge_started": ("sensor", "timestamp", None, None, "diagnostic", True),
    "fault": ("binary_sensor", "problem", None, None, None, False),
    "restart_controller": ("button", "restart", None, None, "config", False),
    "event": ("event", None, None, None, None, False),
    "schedule": ("switch", None, None, None, None, False),
    "next_brew": ("sensor", "timestamp", None, None, None, False),
    "skip_next_brew": ("button", None, None, None, None, False),
    "descaled": ("button", None, None, None, "config", False),
    "energy": ("sensor", "energy", "kWh", "total_increasing", None, False),
    "cups_brewed": ("sensor", None, "cups", "total_increasing", None, False),
    "brews": ("sensor", None, "brews", "total_increasing", None, False),
    "heater_on_time": ("sensor", "duration", "s", "total_increasing", None, False),
    "descale_due": ("binary_sensor", "problem", None, None, None, False),
}
MODES = ["off", "preheating", "brewing", "keep_warm", "manual"]


def entity_id(key: str) -> str:
    return f"{ENTITIES[key][0]}.coffee_pot_{key}"


def component_topic(key: str) -> str:
    return f"{PREFIX}/{ENTITIES[key][0]}/{NODE}/{key}/config"


@pytest.fixture(scope="module")
def stack(request):
    work = Path(tempfile.mkdtemp(prefix="coffeebot-ha."))
    os.chmod(work, 0o755)
    parts = []
    try:
        broker = Broker(work)
        broker.start()
        parts.append(broker)
        watcher = Watcher(broker)
        parts.append(watcher)
        sim = Simulator(work)
        parts.append(sim)
        bridge = Bridge(work, sim, broker)
        mark = watcher.mark()
        bridge.start()
        parts.append(bridge)
        # A module that sets HA_EXAMPLES gets HA with examples/homeassistant/ installed.
        ha = HomeAssistant(work, broker, examples=getattr(request.module, "HA_EXAMPLES", False))
        ha.start()
        parts.append(ha)
        s = SimpleNamespace(work=work, broker=broker, watcher=watcher, sim=sim, bridge=bridge, ha=ha)
        settle(s, mark)
        yield s
        if request.session.testsfailed == 0:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        for part in reversed(parts):
            part.stop()
        if work.exists():
            print(f"logs kept in {work}")


_markers = itertools.count(1)


def settle(s, since: int, timeout: float = 30.0):
    """Waits until HA has handled the bridge's discovery published since `since`.

    First the discovery reaches the broker (the watcher sees every config this configuration
    publishes, live, and every removal of a config that was there before); then a marker
    entity, published after it, appears in HA: HA reads its discovery subscription in order.
    """
    wanted = [t for t, p in s.bridge.discovery() if not holds_nothing(p)]
    before = s.watcher.retained(until=since)

    def done(msgs):
        live = {t for t, p, r in msgs if p and not r}
        cleared = {t for t, p, r in msgs if holds_nothing(p)}
        stale = {t for t in before if t.startswith(f"{PREFIX}/") and NODE in t and t not in wanted}
        return set(wanted) <= live and stale <= cleared

    s.watcher.wait_for("the bridge's discovery at the broker", done, since, timeout)
    # A button: it subscribes to nothing, so adding and removing it sends HA nothing to the
    # broker that a broker restart right after could interrupt.
    n = next(_markers)
    topic = f"{PREFIX}/button/coffeebot_test/marker_{n}/config"
    marker = f"button.coffeebot_test_marker_{n}"
    s.watcher.publish(
        topic,
        f'{{"name": "marker {n}", "unique_id": "coffeebot_test_marker_{n}", '
        f'"default_entity_id": "{marker}", "command_topic": "coffeebot/test/marker"}}',
        retain=True,
    )
    wait_until("HA to handle the marker", lambda: s.ha.state(marker), timeout)
    s.watcher.publish(topic, "", retain=True)
    wait_until("HA to remove the marker", lambda: s.ha.state(marker) is None, timeout)


def device_and_entities(ha: HomeAssistant):
    devices, entries = ha.ws({"type": "config/device_registry/list"}, {"type": "config/entity_registry/list"})
    ours = [d for d in devices if ["mqtt", NODE] in d["identifiers"]]
    assert len(ours) == 1, f"one device with identifier {NODE}: {ours}"
    device = ours[0]
    return device, [e for e in entries if e["device_id"] == device["id"]]


@pytest.fixture(autouse=True)
def problems_before(stack):
    """How many MQTT problems HA had logged before the test: each test answers for its own."""
    stack.ha.problems_before = len(stack.ha.mqtt_problems())


# What HA's MQTT client itself says when the broker goes away: expected at a broker restart.
BROKER_LOST = "Error returned from MQTT server: The connection was lost."


def assert_no_mqtt_problems(ha: HomeAssistant, allowed: tuple[str, ...] = ()):
    problems = [
        p for p in ha.mqtt_problems()[ha.problems_before :] if not any(a in p for a in allowed)
    ]
    assert problems == [], f"{len(problems)} MQTT warnings/errors in HA's log:\n" + "\n".join(problems[:20])


def available(ha: HomeAssistant, key: str) -> bool:
    state = ha.state(entity_id(key))
    return state is not None and state["state"] != "unavailable"


def wait_all_available(ha: HomeAssistant, timeout: float = 30.0):
    wait_until("every entity available", lambda: all(available(ha, k) for k in ENTITIES), timeout, 0.2)


def test_one_device_with_every_entity_as_the_spec_lists_them(stack):
    ha = stack.ha
    wait_all_available(ha)
    device, entries = device_and_entities(ha)
    assert device["name"] == "Coffee Pot"
    assert device["manufacturer"] == "coffeebot"
    state = ha.state(entity_id("reply_format"))
    assert state["state"] in ("one_line", "three_lines")
    by_id = {e["entity_id"]: e for e in entries}
    assert sorted(by_id) == sorted(entity_id(k) for k in ENTITIES)
    for key, (platform, device_class, unit, state_class, category, _) in ENTITIES.items():
        entry = by_id[entity_id(key)]
        attrs = ha.state(entity_id(key))["attributes"]
        assert entry["unique_id"] == f"{NODE}_{key}"
        assert entry["entity_category"] == category, key
        assert attrs.get("device_class") == device_class, key
        assert attrs.get("unit_of_measurement") == unit, key
        assert attrs.get("state_class") == state_class, key
    assert ha.state(entity_id("mode"))["attributes"]["options"] == MODES
    assert sorted(ha.state(entity_id("event"))["attributes"]["event_types"]) == sorted(
        [
            "brew_started", "brew_finished", "brew_aborted", "keep_warm_started",
            "keep_warm_finished", "heater_auto_off", "fault", "controller_rebooted",
            "command_rejected", "brew_skipped",
        ]
    )
    cups = ha.state(entity_id("cups"))["attributes"]
    assert (cups["min"], cups["step"]) == (1, 1)
    assert_no_mqtt_problems(ha)


def test_services_reach_the_controller(stack):
    ha = stack.ha
    ha.call("number", "set_value", entity_id=entity_id("cups"), value=3)
    ha.wait_state(entity_id("cups"), lambda s: float(s["state"]) == 3.0, "at 3")
    ha.call("switch", "turn_on", entity_id=entity_id("heater"))
    ha.wait_state(entity_id("heater"), lambda s: s["state"] == "on", "on")
    ha.call("switch", "turn_off", entity_id=entity_id("heater"))
    ha.wait_state(entity_id("heater"), lambda s: s["state"] == "off", "off")
    ha.call("button", "press", entity_id=entity_id("brew"))
    ha.wait_state(entity_id("mode"), lambda s: s["state"] in ("preheating", "brewing"), "brewing")
    ha.call("button", "press", entity_id=entity_id("stop"))
    ha.wait_state(entity_id("mode"), lambda s: s["state"] == "off", "off")
    ha.call("switch", "turn_on", entity_id=entity_id("keep_warm"))
    ha.wait_state(entity_id("keep_warm"), lambda s: s["state"] == "on", "on")
    ha.call("switch", "turn_off", entity_id=entity_id("keep_warm"))
    ha.wait_state(entity_id("keep_warm"), lambda s: s["state"] == "off", "off")
    reboots = int(ha.state(entity_id("controller_reboots"))["state"])
    start = len(stack.bridge.proc.lines)
    ha.call("button", "press", entity_id=entity_id("restart_controller"))
    stack.bridge.proc.wait_line('command accepted command="controller"', 10, start=start)
    # The simulated board's reset pin is not wired (as on the stock board): RESET only feeds
    # its watchdog. The reboot comes from the simulator's control instead.
    stack.sim.control("reboot")
    ha.wait_state(entity_id("controller_reboots"), lambda s: s["state"] not in ("unavailable", "unknown")
                  and int(s["state"]) > reboots, "counting the reboot")
    wait_all_available(ha)
    # The reboot's banner names the firmware: the device's software (the bridge is the origin).
    wait_until(
        "the firmware as the device's sw_version",
        lambda: device_and_entities(ha)[0]["sw_version"] == "MrCoffeeBot v2.0",
        30,
        0.2,
    )
    assert_no_mqtt_problems(ha)


def test_schedule_and_maintenance_from_ha(stack):
    ha = stack.ha
    # The stack's bridge has no schedule entries: nothing planned, the schedule on.
    ha.wait_state(entity_id("schedule"), lambda s: s["state"] == "on", "on")
    assert ha.state(entity_id("next_brew"))["state"] == "unknown"
    ha.call("switch", "turn_off", entity_id=entity_id("schedule"))
    ha.wait_state(entity_id("schedule"), lambda s: s["state"] == "off", "off")
    ha.call("switch", "turn_on", entity_id=entity_id("schedule"))
    ha.wait_state(entity_id("schedule"), lambda s: s["state"] == "on", "on")
    ha.call("button", "press", entity_id=entity_id("skip_next_brew"))
    ha.call("button", "press", entity_id=entity_id("descaled"))
    ha.wait_state(entity_id("descale_due"), lambda s: s["state"] == "off", "off")
    energy = float(ha.state(entity_id("energy"))["state"])
    assert energy >= 0.0
    assert int(ha.state(entity_id("brews"))["state"]) >= 0
    # The skip with nothing planned is refused as an event, which HA's event entity knows.
    ha.wait_state(entity_id("event"), lambda s: s["attributes"].get("event_type") == "command_rejected",
                  "the refused skip")
    assert_no_mqtt_problems(ha)


def trigger_types(ha: HomeAssistant) -> list[str]:
    device, _ = device_and_entities(ha)
    (triggers,) = ha.ws({"type": "device_automation/trigger/list", "device_id": device["id"]})
    return sorted(t["type"] for t in triggers if t.get("domain") == "mqtt")


TRIGGERS = sorted(["brew_finished", "keep_warm_finished", "fault", "heater_auto_off", "controller_rebooted"])


def test_device_triggers_are_offered_for_the_events_people_automate_on(stack):
    ha = stack.ha
    assert trigger_types(ha) == TRIGGERS
    assert_no_mqtt_problems(ha)


def test_no_mqtt_warnings_across_restarts_of_ha_bridge_and_broker(stack):
    s = stack
    mark = s.watcher.mark()
    s.ha.restart()  # its birth message makes the bridge publish discovery again
    settle(s, mark)
    wait_all_available(s.ha)
    assert_no_mqtt_problems(s.ha)

    mark = s.watcher.mark()
    s.bridge.stop()
    s.bridge.start()
    settle(s, mark)
    wait_all_available(s.ha)
    assert_no_mqtt_problems(s.ha)

    s.broker.restart()
    wait_until("the watcher back", lambda: s.watcher.connected(), 30)
    mark = s.watcher.mark()
    s.bridge.proc.wait_line("connected to the MQTT broker", 30, start=len(s.bridge.proc.lines) - 1)
    settle(s, mark)
    wait_all_available(s.ha)
    assert_no_mqtt_problems(s.ha, allowed=(BROKER_LOST,))
    assert sum(BROKER_LOST in p for p in s.ha.mqtt_problems()[s.ha.problems_before :]) <= 1


def switch_mode(s, mode: str):
    mark = s.watcher.mark()
    s.bridge.stop()
    s.bridge.start(HOMEASSISTANT__DISCOVERY=mode)
    settle(s, mark)
    wait_all_available(s.ha)


def test_switching_discovery_mode_keeps_entity_ids_and_renames_without_warnings(stack):
    s = stack
    renamed = entity_id("temperature")
    s.ha.ws({"type": "config/entity_registry/update", "entity_id": renamed, "name": "Pot temperature"})
    _, before = device_and_entities(s.ha)
    ids = sorted(e["entity_id"] for e in before)

    for mode in ("device", "components"):
        switch_mode(s, mode)
        _, after = device_and_entities(s.ha)
        assert sorted(e["entity_id"] for e in after) == ids, mode
        assert s.ha.state(renamed)["attributes"]["friendly_name"] == "Pot temperature", mode
        assert trigger_types(s.ha) == TRIGGERS, mode
        retained = s.watcher.retained()
        if mode == "device":
            assert retained.get(DEVICE_TOPIC), "the device config is retained"
            assert not any(retained.get(component_topic(k)) for k in ENTITIES), "no component config left"
        else:
            assert not retained.get(DEVICE_TOPIC), "no device config left"
            assert all(retained.get(component_topic(k)) for k in ENTITIES)
        assert_no_mqtt_problems(s.ha)


def test_kill_9_of_the_bridge_makes_every_entity_unavailable(stack):
    s = stack
    s.bridge.kill()
    wait_until(
        "every entity unavailable",
        lambda: all(not available(s.ha, k) for k in ENTITIES),
        30,
        0.2,
    )
    mark = s.watcher.mark()
    s.bridge.start()
    settle(s, mark)
    wait_all_available(s.ha)
    assert_no_mqtt_problems(s.ha)


def test_unplugged_controller_makes_device_entities_unavailable_but_not_bridge_diagnostics(stack):
    s = stack
    device_keys = [k for k, v in ENTITIES.items() if not v[5]]
    bridge_keys = [k for k, v in ENTITIES.items() if v[5]]
    s.sim.control("unplug")
    wait_until(
        "the device's entities unavailable",
        lambda: all(not available(s.ha, k) for k in device_keys),
        30,
        0.2,
    )
    assert all(available(s.ha, k) for k in bridge_keys), [
        (k, s.ha.state(entity_id(k))["state"]) for k in bridge_keys
    ]
    s.ha.wait_state(entity_id("link"), lambda st: st["state"] == "off", "off")
    s.sim.control("replug")
    wait_all_available(s.ha)
    s.ha.wait_state(entity_id("link"), lambda st: st["state"] == "on", "on")
    assert_no_mqtt_problems(s.ha)
