"""The Home Assistant examples (examples/homeassistant/) in a real Home Assistant: its
automations.yaml and blueprints installed as a user installs them, passing HA's configuration
check, and each example doing what it says when the coffee pot does its part; and a device
trigger of the bridge's discovery running an automation.

The phone is a test double (tests/ha/custom_components/coffeebot_test): the notify actions
`notify.mobile_app_my_phone` (the one automations.yaml uses) and `notify.test_phone` record
every call; a tap on a notification's action is the `mobile_app_notification_action` event
the companion app fires. `calendar.coffee` is a calendar whose events the test writes.

Shares the stack of test_home_assistant.py (its own instance: HA_EXAMPLES). Run through
scripts/ha-env.sh test.
"""

from __future__ import annotations

import datetime as dt

from harness import EXAMPLES, wait_until
from test_home_assistant import (  # noqa: F401 (fixtures)
    assert_no_mqtt_problems,
    device_and_entities,
    entity_id,
    problems_before,
    settle,
    stack,
    wait_all_available,
)

HA_EXAMPLES = True

# Loggers whose warnings or errors mean an example is broken.
EXAMPLE_LOGGERS = (
    "homeassistant.components.automation",
    "homeassistant.components.blueprint",
    "homeassistant.components.calendar",
    "homeassistant.helpers.script",
    "homeassistant.helpers.template",
    "homeassistant.helpers.condition",
    "homeassistant.helpers.trigger",
    "homeassistant.helpers.config_validation",
    "homeassistant.config",
    "homeassistant.components.notify",
)

SHIPPED = {
    "coffeebot_coffee_ready": "automation.coffee_ready_notification",
    "coffeebot_calendar_brew": "automation.coffee_ready_at_coffee_calendar_events",
    "coffeebot_morning_brew": "automation.coffee_weekday_morning_brew",
    "coffeebot_problem": "automation.coffee_problem_notification",
}


def assert_examples_clean(ha, before: int):
    problems = ha.problems(*EXAMPLE_LOGGERS)[before:]
    assert problems == [], "warnings/errors of the examples in HA's log:\n" + "\n".join(problems[:20])


def example_problems(ha) -> int:
    return len(ha.problems(*EXAMPLE_LOGGERS))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def mode(ha) -> str:
    return ha.state(entity_id("mode"))["state"]


def stop_brew(ha):
    ha.call("button", "press", entity_id=entity_id("stop"))
    ha.wait_state(entity_id("mode"), lambda s: s["state"] == "off", "off")


def brew_and_finish(s, cups: int):
    """A whole brew from HA: cups, Brew, and the bridge's brew_finished."""
    ha = s.ha
    # HA skips unavailable entities in an action: wait for them to be there.
    wait_all_available(ha)
    ha.call("number", "set_value", entity_id=entity_id("cups"), value=cups)
    ha.wait_state(entity_id("cups"), lambda st: float(st["state"]) == cups, f"at {cups}")
    ha.call("button", "press", entity_id=entity_id("brew"))
    ha.wait_state(entity_id("mode"), lambda st: st["state"] in ("preheating", "brewing"), "brewing")
    # The simulated plate warms slowly; a reading above brew.preheat_c (25 °C) ends the preheat.
    s.sim.control("temp 30")
    ha.wait_state(
        entity_id("event"),
        lambda st: st["attributes"].get("event_type") == "brew_finished",
        "brew_finished",
        60,
    )
    ha.wait_state(entity_id("mode"), lambda st: st["state"] == "off", "off", 30)


def ready_notifications(ha, action: str) -> list[dict]:
    return [
        n for n in ha.notifications() if n["action"] == action and "Coffee is ready" in n["data"].get("title", "")
    ]


def tap(ha, notification: dict, title_starts: str):
    """Taps the notification's action whose title starts with `title_starts`, as the app does."""
    (action,) = [a for a in notification["data"]["data"]["actions"] if a["title"].startswith(title_starts)]
    ha.fire("mobile_app_notification_action", action=action["action"])


def test_examples_pass_the_configuration_check_and_load(stack):
    ha = stack.ha
    wait_all_available(ha)
    assert ha.check_config()["result"] == "valid", ha.check_config()
    for automation in SHIPPED.values():
        ha.wait_state(automation, lambda s: s["state"] == "on", "loaded from automations.yaml")
    ids = {ha.state(a)["attributes"]["id"] for a in SHIPPED.values()}
    assert ids == set(SHIPPED)
    assert_examples_clean(ha, 0)
    assert_no_mqtt_problems(ha)


def test_coffee_ready_notifies_once_per_brew_and_its_actions_work(stack):
    s, ha = stack, stack.ha
    before = example_problems(ha)
    # Beside the shipped instance (defaults, notify.mobile_app_my_phone), one with a short
    # keep warm, so that its "Keep warm" action can be seen ending.
    ha.set_test_automations(
        [
            {
                "id": "test_coffee_ready",
                "alias": "test_coffee_ready",
                "use_blueprint": {
                    "path": "coffeebot/coffee_ready.yaml",
                    "input": {"notify_action": "notify.test_phone", "keep_warm_minutes": 0.05},
                },
            }
        ]
    )
    shipped, test = "notify.mobile_app_my_phone", "notify.test_phone"
    assert ready_notifications(ha, shipped) == [] and ready_notifications(ha, test) == []

    brew_and_finish(s, 2)
    wait_until("both ready notifications", lambda: ready_notifications(ha, shipped) and ready_notifications(ha, test))
    (first,) = ready_notifications(ha, shipped)
    assert first["data"]["message"].startswith("2 cups")
    assert [a["title"] for a in first["data"]["data"]["actions"]] == ["Keep warm 10 min", "Switch off"]

    # Reconnects and restarts of every part, while the last event is this brew_finished: the
    # event entity comes back with it, which is not a new brew.
    mark = s.watcher.mark()
    s.bridge.stop()
    s.bridge.start()
    settle(s, mark)
    wait_all_available(ha)
    mark = s.watcher.mark()
    ha.restart()
    settle(s, mark)
    wait_all_available(ha)
    s.broker.restart()
    wait_until("the watcher back", lambda: s.watcher.connected(), 30)
    mark = s.watcher.mark()
    s.bridge.proc.wait_line("connected to the MQTT broker", 30, start=len(s.bridge.proc.lines) - 1)
    settle(s, mark)
    wait_all_available(ha)
    assert ha.state(entity_id("event"))["attributes"]["event_type"] == "brew_finished"

    # The next brew: its notification is the second, with nothing in between.
    brew_and_finish(s, 1)
    wait_until("the second brew's notifications", lambda: len(ready_notifications(ha, shipped)) >= 2
               and len(ready_notifications(ha, test)) >= 2)
    assert len(ready_notifications(ha, shipped)) == 2, ready_notifications(ha, shipped)
    assert len(ready_notifications(ha, test)) == 2, ready_notifications(ha, test)
    second, second_test = ready_notifications(ha, shipped)[1], ready_notifications(ha, test)[1]
    assert second["data"]["message"].startswith("1 cups")

    # "Keep warm 0.05 min" on the test instance: keep warm on, then off 3 s later.
    tap(ha, second_test, "Keep warm")
    ha.wait_state(entity_id("keep_warm"), lambda st: st["state"] == "on", "on")
    ha.wait_state(entity_id("keep_warm"), lambda st: st["state"] == "off", "off again", 30)
    # "Switch off" on the shipped one, while the pot keeps warm.
    ha.call("switch", "turn_on", entity_id=entity_id("keep_warm"))
    ha.wait_state(entity_id("keep_warm"), lambda st: st["state"] == "on", "on")
    tap(ha, second, "Switch off")
    ha.wait_state(entity_id("keep_warm"), lambda st: st["state"] == "off", "switched off")
    assert_examples_clean(ha, before)
    assert_no_mqtt_problems(ha, allowed=("Error returned from MQTT server: The connection was lost.",))


def test_calendar_brew_starts_so_that_coffee_is_ready_at_the_event(stack):
    ha = stack.ha
    before = example_problems(ha)
    preheat_s, seconds_per_cup, cups = 5, 1.0, 3
    ready_at = (utcnow() + dt.timedelta(seconds=18)).replace(microsecond=0)
    start_at = ready_at - dt.timedelta(seconds=preheat_s + cups * seconds_per_cup)
    ha.set_calendar(
        [
            {
                "summary": f"Coffee {cups}",
                "start": ready_at.isoformat(),
                "end": (ready_at + dt.timedelta(minutes=30)).isoformat(),
            },
            # An all-day event: no brew.
            {"summary": "Coffee 6", "start": ready_at.date().isoformat(),
             "end": (ready_at.date() + dt.timedelta(days=1)).isoformat()},
        ]
    )
    # The calendar trigger reads the calendar when it is set up: at the reload.
    ha.set_test_automations(
        [
            {
                "id": "test_calendar_brew",
                "alias": "test_calendar_brew",
                "use_blueprint": {
                    "path": "coffeebot/calendar_brew.yaml",
                    "input": {
                        "calendar": "calendar.coffee",
                        "look_ahead": "-00:00:15",
                        "preheat_s": preheat_s,
                        "seconds_per_cup": seconds_per_cup,
                    },
                },
            }
        ]
    )
    assert utcnow() < start_at - dt.timedelta(seconds=1), "the set-up took too long to see the start"
    ha.wait_state(entity_id("mode"), lambda st: st["state"] != "off", "brewing", 30)
    started = utcnow()
    assert float(ha.state(entity_id("cups"))["state"]) == cups
    # The brew starts at the computed time: ready_at − (preheat + cups × seconds a cup).
    assert start_at - dt.timedelta(seconds=0.5) <= started <= start_at + dt.timedelta(seconds=3), (
        started, start_at)
    stop_brew(ha)
    ha.set_calendar([])
    assert_examples_clean(ha, before)
    assert_no_mqtt_problems(ha)


def test_weekday_brew_runs_on_its_weekdays_only(stack):
    ha = stack.ha
    before = example_problems(ha)
    at = (utcnow() + dt.timedelta(seconds=6)).replace(microsecond=0)
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    today = days[at.weekday()]

    def weekday_brew(name: str, weekdays: list[str], cups: int, **inputs) -> dict:
        return {
            "id": name,
            "alias": name,
            "use_blueprint": {
                "path": "coffeebot/weekday_brew.yaml",
                "input": {"at": at.strftime("%H:%M:%S"), "weekdays": weekdays, "cups": cups, **inputs},
            },
        }

    ha.set_test_automations(
        [
            weekday_brew("test_weekday_today", [today], 3),
            weekday_brew("test_weekday_other_days", [d for d in days if d != today], 5),
            # With an extra condition that does not hold (nobody is home here).
            weekday_brew(
                "test_weekday_nobody_home",
                [today],
                6,
                extra_conditions=[{"condition": "numeric_state", "entity_id": "zone.home", "above": 0}],
            ),
        ]
    )
    assert utcnow() < at, "the set-up took too long to see the trigger"
    ha.wait_state(entity_id("mode"), lambda st: st["state"] != "off", "brewing", 30)
    assert utcnow() >= at
    assert float(ha.state(entity_id("cups"))["state"]) == 3
    for other in ("test_weekday_other_days", "test_weekday_nobody_home"):
        runs = wait_until(f"{other} to have run", lambda: ha.traces(other), 10)
        assert [r["script_execution"] for r in runs] == ["failed_conditions"], runs
    stop_brew(ha)
    assert float(ha.state(entity_id("cups"))["state"]) == 3
    assert_examples_clean(ha, before)
    assert_no_mqtt_problems(ha)


def test_a_device_trigger_of_the_coffee_pot_runs_an_automation(stack):
    s, ha = stack, stack.ha
    before = example_problems(ha)
    device, _ = device_and_entities(ha)
    (offered,) = ha.ws({"type": "device_automation/trigger/list", "device_id": device["id"]})
    # The triggers as the automation editor writes them when one picks "Coffee Pot: …".
    by_type = {t["type"]: {k: v for k, v in t.items() if k != "metadata"} for t in offered}
    ha.set_test_automations(
        [
            {
                "id": "test_device_triggers",
                "alias": "test_device_triggers",
                "mode": "queued",
                "triggers": [
                    {**by_type["controller_rebooted"], "id": "rebooted"},
                    {**by_type["fault"], "id": "fault"},
                ],
                "actions": [{"action": "notify.test_phone", "data": {"message": "{{ trigger.id }}"}}],
            }
        ]
    )

    def fired() -> list[str]:
        return [n["data"]["message"] for n in ha.notifications()
                if n["action"] == "notify.test_phone" and n["data"]["message"] in ("rebooted", "fault")]

    already = len(fired())
    s.sim.control("reboot")
    wait_until("the reboot's device trigger", lambda: len(fired()) > already, 30)
    s.sim.control("probe absent")
    ha.wait_state(entity_id("fault"), lambda st: st["state"] == "on", "on")
    wait_until("the fault's device trigger", lambda: len(fired()) > already + 1, 30)
    s.sim.control("probe ok")
    ha.wait_state(entity_id("fault"), lambda st: st["state"] == "off", "off", 30)
    assert fired()[already:] == ["rebooted", "fault"]
    wait_all_available(ha)
    assert_examples_clean(ha, before)
    assert_no_mqtt_problems(ha)


def test_problem_notification_once_per_refused_command(stack):
    ha = stack.ha
    before = example_problems(ha)

    def problems() -> list[dict]:
        return [n for n in ha.notifications() if n["data"].get("title") == "Coffee pot: command rejected"]

    already = len(problems())
    # With no brew planned, "skip the next brew" is refused: a command_rejected event.
    ha.call("button", "press", entity_id=entity_id("skip_next_brew"))
    wait_until("the problem notification", lambda: len(problems()) > already, 30)
    assert len(problems()) == already + 1
    assert problems()[-1]["action"] == "notify.mobile_app_my_phone"
    assert problems()[-1]["data"]["message"]
    assert_examples_clean(ha, before)
    assert_no_mqtt_problems(ha)


def test_dashboard_card_names_only_entities_that_exist_and_its_markdown_renders(stack):
    import re

    import yaml

    ha = stack.ha
    text = (EXAMPLES / "dashboard-card.yaml").read_text()
    card = yaml.safe_load(text)
    assert card["type"] == "vertical-stack"
    named = set(re.findall(r"\b(?:sensor|button|number|switch|binary_sensor|event)\.coffee_pot_\w+", text))
    assert len(named) >= 10, named
    missing = [e for e in sorted(named) if ha.state(e) is None]
    assert missing == [], f"dashboard-card.yaml names entities HA does not have: {missing}"
    (markdown,) = [c["card"]["content"] for c in card["cards"] if c["type"] == "conditional"]
    rendered = ha.render(markdown)
    assert rendered.startswith("**Fault:**"), rendered
