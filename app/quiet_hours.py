"""Quiet hours: hold a send to the recipient's local window (QUIET_HOURS, e.g. 08:00-21:00).

The recipient's time zones come from libphonenumber (`phonenumbers.timezone`), keeping only
US and Canadian zones (a toll-free number gets all of them); a number with none of those
is held to the window in both America/New_York and America/Los_Angeles. Where there are
several zones, the window must hold in every one of them at once. Daylight saving time is
`zoneinfo`'s business: local times are computed per zone and instant, so both transitions
move the window with the clocks.

Pure functions of an injected "now" (a UTC datetime): no clock is read here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as number_zones

SEARCH_DAYS = 30  # a window that holds in no moment of the next 30 days is refused
_WINDOW = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)")
FALLBACK_ZONES = ("America/New_York", "America/Los_Angeles")
# The US and Canadian zones of the tz database (zone.tab, country codes US and CA).
US_CA_ZONES = frozenset(
    (
        "America/Adak",
        "America/Anchorage",
        "America/Atikokan",
        "America/Blanc-Sablon",
        "America/Boise",
        "America/Cambridge_Bay",
        "America/Chicago",
        "America/Creston",
        "America/Dawson",
        "America/Dawson_Creek",
        "America/Denver",
        "America/Detroit",
        "America/Edmonton",
        "America/Fort_Nelson",
        "America/Glace_Bay",
        "America/Goose_Bay",
        "America/Halifax",
        "America/Indiana/Indianapolis",
        "America/Indiana/Knox",
        "America/Indiana/Marengo",
        "America/Indiana/Petersburg",
        "America/Indiana/Tell_City",
        "America/Indiana/Vevay",
        "America/Indiana/Vincennes",
        "America/Indiana/Winamac",
        "America/Inuvik",
        "America/Iqaluit",
        "America/Juneau",
        "America/Kentucky/Louisville",
        "America/Kentucky/Monticello",
        "America/Los_Angeles",
        "America/Menominee",
        "America/Metlakatla",
        "America/Moncton",
        "America/New_York",
        "America/Nome",
        "America/North_Dakota/Beulah",
        "America/North_Dakota/Center",
        "America/North_Dakota/New_Salem",
        "America/Phoenix",
        "America/Rankin_Inlet",
        "America/Regina",
        "America/Resolute",
        "America/Sitka",
        "America/St_Johns",
        "America/Swift_Current",
        "America/Toronto",
        "America/Vancouver",
        "America/Whitehorse",
        "America/Winnipeg",
        "America/Yakutat",
        "Pacific/Honolulu",
    )
)
# Aliases libphonenumber may use for the same places.
US_CA_ZONES |= {"America/Indianapolis", "America/Louisville", "America/Montreal"}


@dataclass(frozen=True, slots=True)
class Window:
    """A daily local window [start, end), start < end (it never crosses midnight)."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(text: str) -> Window:
    """`HH:MM-HH:MM` with start < end; ValueError otherwise (a startup error)."""
    match = _WINDOW.fullmatch(text.strip())
    if match is None:
        raise ValueError("must be HH:MM-HH:MM (24-hour clock), e.g. 08:00-21:00")
    start = time(int(match[1]), int(match[2]))
    end = time(int(match[3]), int(match[4]))
    if start >= end:
        raise ValueError("the start must be before the end (a window cannot cross midnight)")
    return Window(start, end)


@lru_cache(maxsize=4096)
def zones_for(number: str) -> tuple[ZoneInfo, ...]:
    """The recipient's US/CA time zones (libphonenumber), or New York and Los Angeles."""
    try:
        names = number_zones.time_zones_for_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        names = ()
    kept = sorted({name for name in names if name in US_CA_ZONES})
    return tuple(ZoneInfo(name) for name in (kept or FALLBACK_ZONES))


def inside(window: Window, zones: tuple[ZoneInfo, ...], at: datetime) -> bool:
    """Whether `at` (aware) is inside the window in every zone."""
    return all(window.start <= at.astimezone(zone).time() < window.end for zone in zones)


def _next_start(window: Window, zone: ZoneInfo, after: datetime) -> datetime:
    """The next instant after `after` at which the zone's local clock shows the start."""
    local = after.astimezone(zone)
    day = local.date() if local.time() < window.start else local.date() + timedelta(days=1)
    while True:
        # fold=0: in the autumn's repeated hour, the first occurrence; a start inside the
        # spring gap resolves to the instant after the gap (both are "the earliest").
        candidate = datetime.combine(day, window.start, tzinfo=zone).astimezone(UTC)
        if candidate > after:
            return candidate
        day += timedelta(days=1)


def next_moment(window: Window, zones: tuple[ZoneInfo, ...], after: datetime) -> datetime | None:
    """The earliest instant at or after `after` inside the window in every zone, or None
    when there is none within SEARCH_DAYS (e.g. zones too far apart for the window)."""
    limit = after + timedelta(days=SEARCH_DAYS)
    at = after.astimezone(UTC)
    while at <= limit:
        outside = [zone for zone in zones if not inside(window, (zone,), at)]
        if not outside:
            return at
        # Each step jumps to the latest of the next starts: never past a common moment
        # (before it, some zone is still outside), and always forward.
        at = max(_next_start(window, zone, at) for zone in outside)
    return None


def send_time(number: str, window: Window, after: datetime) -> datetime | None:
    """When a quiet-hours send to `number` may go, at or after `after`."""
    return next_moment(window, zones_for(number), after)
