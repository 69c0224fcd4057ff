"""Quiet hours: the window, the recipient's zones, and the next moment inside it, on an
injected "now" -- several zones at once, and both daylight-saving transitions."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.quiet_hours import (
    FALLBACK_ZONES,
    Window,
    inside,
    next_moment,
    parse_window,
    send_time,
    zones_for,
)

TCPA = parse_window("08:00-21:00")
NEW_YORK = ZoneInfo("America/New_York")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def names(zones) -> list[str]:
    return [z.key for z in zones]


# The window --------------------------------------------------------------------------------
def test_parse_window():
    assert parse_window("08:00-21:00") == Window(time(8), time(21))
    assert parse_window(" 00:00-23:59 ") == Window(time(0), time(23, 59))
    assert str(parse_window("07:30-20:15")) == "07:30-20:15"


@pytest.mark.parametrize(
    "text", ["8:00-21:00", "08:00-24:00", "08:00", "08:00 - 21:00", "21:00-08:00", "09:00-09:00"]
)
def test_bad_windows_are_refused(text):
    with pytest.raises(ValueError):
        parse_window(text)


# The recipient's zones ---------------------------------------------------------------------
def test_zones_come_from_libphonenumber():
    assert names(zones_for("+14155550100")) == ["America/Los_Angeles"]
    assert names(zones_for("+12085550100")) == ["America/Boise", "America/Los_Angeles"]
    assert names(zones_for("+16045550100")) == ["America/Vancouver"]


def test_a_toll_free_number_gets_every_us_and_canadian_zone_only():
    zones = names(zones_for("+18005550100"))
    assert "Pacific/Honolulu" in zones and "America/St_Johns" in zones
    assert "America/Jamaica" not in zones and "Pacific/Guam" not in zones
    assert "America/Puerto_Rico" not in zones


def test_an_unknown_zone_falls_back_to_new_york_and_los_angeles():
    assert sorted(names(zones_for("not a number"))) == sorted(FALLBACK_ZONES)


# The next moment inside ------------------------------------------------------------------
def test_inside_now_is_now():
    noon_ny = utc(2026, 6, 10, 16)
    assert next_moment(TCPA, (NEW_YORK,), noon_ny) == noon_ny


def test_at_night_it_waits_for_the_morning():
    late = utc(2026, 6, 11, 2)  # 22:00 in New York (EDT)
    assert next_moment(TCPA, (NEW_YORK,), late) == utc(2026, 6, 11, 12)  # 08:00 EDT


def test_the_end_is_excluded():
    nine_pm = utc(2026, 6, 11, 1)  # 21:00 EDT sharp
    assert not inside(TCPA, (NEW_YORK,), nine_pm)
    assert inside(TCPA, (NEW_YORK,), nine_pm - timedelta(seconds=1))


def test_several_zones_must_all_be_inside():
    """New York and Los Angeles: 08:00 in LA (11:00 in NY) to 21:00 in NY (18:00 in LA)."""
    early = utc(2026, 6, 10, 12)  # 08:00 NY, 05:00 LA
    moment = next_moment(TCPA, (NEW_YORK, LOS_ANGELES), early)
    assert moment == utc(2026, 6, 10, 15)  # 08:00 PDT
    assert inside(TCPA, (NEW_YORK, LOS_ANGELES), moment)
    evening = utc(2026, 6, 11, 1, 30)  # 21:30 NY, 18:30 LA: NY is outside
    assert next_moment(TCPA, (NEW_YORK, LOS_ANGELES), evening) == utc(2026, 6, 11, 15)


def test_a_toll_free_number_waits_for_the_common_window():
    zones = zones_for("+18005550100")  # Newfoundland (UTC-2:30 in summer) to Hawaii (UTC-10)
    moment = send_time("+18005550100", TCPA, utc(2026, 6, 10, 0))
    assert moment is not None and inside(TCPA, zones, moment)
    assert moment == utc(2026, 6, 10, 18)  # 08:00 in Honolulu, 15:30 in St John's


def test_zones_too_far_apart_for_the_window_have_no_moment():
    narrow = parse_window("08:00-09:00")
    far = (ZoneInfo("America/St_Johns"), ZoneInfo("Pacific/Honolulu"))
    assert next_moment(narrow, far, utc(2026, 6, 10)) is None


def test_spring_forward_the_window_opens_at_eight_local_daylight_time():
    """2026-03-08: New York goes from EST (UTC-5) to EDT (UTC-4) at 02:00."""
    night = utc(2026, 3, 8, 5)  # 00:00 EST
    assert next_moment(TCPA, (NEW_YORK,), night) == utc(2026, 3, 8, 12)  # 08:00 EDT
    before = utc(2026, 3, 7, 5)  # the day before: 08:00 EST is 13:00 UTC
    assert next_moment(TCPA, (NEW_YORK,), before) == utc(2026, 3, 7, 13)


def test_fall_back_the_window_opens_at_eight_local_standard_time():
    """2026-11-01: New York goes from EDT back to EST at 02:00."""
    night = utc(2026, 11, 1, 4)  # 00:00 EDT
    assert next_moment(TCPA, (NEW_YORK,), night) == utc(2026, 11, 1, 13)  # 08:00 EST


def test_a_window_inside_the_repeated_hour_takes_its_first_occurrence():
    one_am = parse_window("01:00-01:30")
    night = utc(2026, 11, 1, 4)  # 00:00 EDT; 01:00 happens at 05:00 and 06:00 UTC
    assert next_moment(one_am, (NEW_YORK,), night) == utc(2026, 11, 1, 5)


def test_a_window_inside_the_skipped_hour_opens_after_the_gap():
    skipped = parse_window("02:00-03:30")
    night = utc(2026, 3, 8, 5)  # 00:00 EST; 02:00-03:00 does not exist that night
    moment = next_moment(skipped, (NEW_YORK,), night)
    assert moment is not None and inside(skipped, (NEW_YORK,), moment)
    assert moment.astimezone(NEW_YORK).time() == time(3)  # the first local time after the gap


@pytest.mark.parametrize(
    ("night", "opens"),
    [
        (utc(2026, 3, 7, 10), utc(2026, 3, 7, 16)),  # the day before spring: 08:00 PST
        (utc(2026, 3, 9, 10), utc(2026, 3, 9, 15)),  # the day after: 08:00 PDT
        (utc(2026, 10, 31, 10), utc(2026, 10, 31, 15)),  # the day before autumn: PDT
        (utc(2026, 11, 2, 10), utc(2026, 11, 2, 16)),  # the day after: PST
    ],
)
def test_across_both_transitions_in_two_zones(night, opens):
    """Los Angeles and New York change on the same dates: the common window (08:00 in
    Los Angeles) moves with both."""
    assert next_moment(TCPA, (NEW_YORK, LOS_ANGELES), night) == opens
