"""The policy's ``drills:`` section: blocked windows (UTC, across midnight, by weekday) and the
errors a bad entry gives."""

from __future__ import annotations

import calendar

import pytest
from pydantic import ValidationError

from gtm.models.drill import BlockedWindow, DrillLimits


def utc(y: int, mo: int, d: int, h: int, mi: int) -> float:
    return float(calendar.timegm((y, mo, d, h, mi, 0)))


# 2026-12-07 is a Monday.
MON_1700 = utc(2026, 12, 7, 17, 0)


def test_weekday_window_covers_only_its_days_and_hours() -> None:
    w = BlockedWindow(days=("mon", "tue"), start="16:00", end="18:00", reason="peak")
    assert w.covers(MON_1700)
    assert w.covers(utc(2026, 12, 7, 16, 0))  # start is inside
    assert not w.covers(utc(2026, 12, 7, 18, 0))  # end is outside
    assert not w.covers(utc(2026, 12, 9, 17, 0))  # a Wednesday
    assert w.describe() == "mon,tue 16:00-18:00 UTC (peak)"


def test_window_past_midnight_belongs_to_the_day_it_starts() -> None:
    w = BlockedWindow(days=("fri",), start="22:00", end="02:00")
    fri = utc(2026, 12, 11, 23, 30)
    sat_early = utc(2026, 12, 12, 1, 30)
    sat_late = utc(2026, 12, 12, 23, 30)
    fri_early = utc(2026, 12, 11, 1, 30)  # Thursday's night: not blocked
    assert w.covers(fri) and w.covers(sat_early)
    assert not w.covers(sat_late) and not w.covers(fri_early)


def test_limits_pick_the_covering_window() -> None:
    limits = DrillLimits(blocked_windows=(BlockedWindow(start="08:00", end="09:00"),
                                          BlockedWindow(days=("mon",), start="16:30", end="17:30", reason="launch")))
    hit = limits.blocked_at(MON_1700)
    assert hit is not None and hit.reason == "launch"
    assert limits.blocked_at(utc(2026, 12, 7, 12, 0)) is None


@pytest.mark.parametrize(("doc", "needle"), [
    ({"start": "25:00", "end": "01:00"}, "'25:00' is not a time of day as HH:MM"),
    ({"start": "10:00", "end": "10:00"}, "the window would be empty"),
    ({"start": "10:00", "end": "11:00", "days": ["monday"]}, "days.0"),
])
def test_bad_windows_are_refused_with_the_value(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        DrillLimits.model_validate({"blocked_windows": [doc]})
    assert needle in str(err.value)


def test_limits_refuse_a_lease_too_short_to_renew() -> None:
    with pytest.raises(ValidationError, match="lease_s"):
        DrillLimits(lease_s=1)
