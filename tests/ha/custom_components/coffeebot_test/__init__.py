"""What the examples' tests need in Home Assistant besides coffeebot: a phone to notify.

`coffeebot_test:` in configuration.yaml registers the notify actions the examples call
(`notify.mobile_app_my_phone`) as actions that append each call, as a JSON line, to
`notifications.jsonl` in the configuration directory, so a test counts what a phone would
have received. The `calendar` platform of this integration (calendar.py) is a calendar whose
events a test writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import voluptuous as vol

from homeassistant.core import HomeAssistant, ServiceCall
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.typing import ConfigType

DOMAIN = "coffeebot_test"

CONFIG_SCHEMA = vol.Schema(
    {DOMAIN: vol.Schema({vol.Optional("notify", default=["mobile_app_my_phone"]): [cv.slug]})},
    extra=vol.ALLOW_EXTRA,
)


def _append(path: Path, line: str) -> None:
    with path.open("a") as out:
        out.write(line + "\n")


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Registers the recording notify actions."""
    path = Path(hass.config.path("notifications.jsonl"))

    async def record(call: ServiceCall) -> None:
        line = json.dumps({"action": f"notify.{call.service}", "data": dict(call.data)}, default=str)
        await hass.async_add_executor_job(_append, path, line)

    for name in config[DOMAIN]["notify"]:
        hass.services.async_register("notify", name, record)
    return True
