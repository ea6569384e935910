"""A calendar whose events a test writes: `calendar.json` in the configuration directory, a
list of {"summary", "description", "start", "end"} (ISO 8601: a date for all-day
events, else a date and time with its offset), read at every query."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from homeassistant.components.calendar import CalendarEntity, CalendarEvent
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddEntitiesCallback
from homeassistant.helpers.typing import ConfigType, DiscoveryInfoType


async def async_setup_platform(
    hass: HomeAssistant,
    config: ConfigType,
    async_add_entities: AddEntitiesCallback,
    discovery_info: DiscoveryInfoType | None = None,
) -> None:
    """Adds `calendar.coffee`."""
    async_add_entities([FileCalendar(Path(hass.config.path("calendar.json")))])


def _when(text: str) -> dt.date | dt.datetime:
    """A date (all-day events) or a date and time with its offset."""
    return dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text)


def _read(path: Path) -> list[CalendarEvent]:
    if not path.exists():
        return []
    return [
        CalendarEvent(
            start=_when(e["start"]),
            end=_when(e["end"]),
            summary=e["summary"],
            description=e.get("description"),
        )
        for e in json.loads(path.read_text())
    ]


class FileCalendar(CalendarEntity):
    """The events of `calendar.json`."""

    _attr_name = "coffee"
    _attr_should_poll = False

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def event(self) -> CalendarEvent | None:
        # The entity's own state is not what the tests look at; the calendar trigger asks
        # async_get_events. (Reading the file here would block the event loop.)
        return None

    async def async_get_events(
        self, hass: HomeAssistant, start_date: dt.datetime, end_date: dt.datetime
    ) -> list[CalendarEvent]:
        events = await hass.async_add_executor_job(_read, self._path)
        return [e for e in events if e.start_datetime_local < end_date and e.end_datetime_local > start_date]
