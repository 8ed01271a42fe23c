"""The slot arithmetic alone: cron with DST in two zones, intervals, jitter, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import pytest

from schedules import timing

RIGA = ZoneInfo("Europe/Riga")
NEW_YORK = ZoneInfo("America/New_York")


def local_day(expression: str, tz: ZoneInfo, day: datetime) -> list[datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC) - timedelta(microseconds=1)
    end = datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(days=1)
    end = end.replace(hour=0).astimezone(UTC)
    found = []
    for slot in timing.cron_after(expression, tz, start):
        if slot >= end:
            break
        found.append(slot)
    return found


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        (RIGA, datetime(2025, 3, 30), 23),
        (RIGA, datetime(2025, 10, 26), 25),
        (NEW_YORK, datetime(2025, 3, 9), 23),
        (NEW_YORK, datetime(2025, 11, 2), 25),
    ],
)
def test_hourly_fires_every_real_hour(tz, day, hours):
    slots = local_day("0 * * * *", tz, day)
    assert len(slots) == hours
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(slots))


def test_a_wall_time_in_the_spring_gap_fires_once_at_the_first_valid_instant():
    (riga,) = local_day("30 3 * * *", RIGA, datetime(2025, 3, 30))  # 03:00-04:00 does not exist
    assert riga.astimezone(RIGA).isoformat() == "2025-03-30T04:00:00+03:00"
    (york,) = local_day("30 2 * * *", NEW_YORK, datetime(2025, 3, 9))
    assert york.astimezone(NEW_YORK).isoformat() == "2025-03-09T03:00:00-04:00"


def test_a_repeated_wall_time_fires_once_the_first_time():
    (riga,) = local_day("30 3 * * *", RIGA, datetime(2025, 10, 26))
    assert riga.astimezone(RIGA).isoformat() == "2025-10-26T03:30:00+03:00"
    (york,) = local_day("30 1 * * *", NEW_YORK, datetime(2025, 11, 2))
    assert york.astimezone(NEW_YORK).isoformat() == "2025-11-02T01:30:00-04:00"


def test_starting_inside_the_repeated_hour_never_fires_its_first_occurrence_again():
    # 03:10 EET (the second 03:10) is after 03:30 EEST in real time: the next is tomorrow's.
    inside = datetime(2025, 10, 26, 1, 10, tzinfo=UTC)
    following = next(timing.cron_after("30 3 * * *", RIGA, inside))
    assert following.astimezone(RIGA).isoformat() == "2025-10-27T03:30:00+02:00"


def test_interval_slots_are_anchored_to_the_start():
    start = datetime(2025, 1, 1, 0, 0, 5, tzinfo=UTC)
    slots = list(islice(timing.interval_after(start, 10, start + timedelta(seconds=12)), 3))
    assert [s.second for s in slots] == [25, 35, 45]
    assert next(timing.interval_after(start, 10, start - timedelta(days=1))) == start


def test_when_respects_start_and_end():
    when = timing.When(
        interval_seconds=60,
        start_at=datetime(2025, 1, 1, tzinfo=UTC),
        end_at=datetime(2025, 1, 1, 0, 2, tzinfo=UTC),
    )
    assert [s.minute for s in when.slots_after(datetime(2024, 1, 1, tzinfo=UTC))] == [0, 1, 2]
    cron = timing.When(cron="0 0 * * *", start_at=datetime(2025, 6, 1, 12, tzinfo=UTC))
    assert cron.next_after(datetime(2025, 1, 1, tzinfo=UTC)) == datetime(2025, 6, 2, tzinfo=UTC)


def test_jitter_is_stable_and_bounded():
    slot = datetime(2025, 1, 1, tzinfo=UTC)
    values = {timing.jitter("a", slot + timedelta(minutes=i), 30) for i in range(200)}
    assert all(timedelta(0) <= v <= timedelta(seconds=30) for v in values)
    assert len(values) > 10
    assert timing.jitter("a", slot, 30) == timing.jitter("a", slot, 30)
    assert timing.jitter("a", slot, 0) == timedelta(0)


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("0 0 31 2 *", "day-of-month"),
        ("61 * * * *", "minute"),
        ("* * * *", "Five fields"),
        ("0 0 * * * *", "Five fields"),
        ("0 0 L * *", "not Debian cron"),
        ("0 0 * * mon#2", "not Debian cron"),
    ],
)
def test_bad_expressions_are_refused_with_the_reason(expression, words):
    with pytest.raises(timing.TimingError) as caught:
        timing.check_cron(expression)
    assert caught.value.field == "cron"
    assert words.lower() in str(caught.value).lower()


def test_names_and_steps_are_fine():
    assert timing.check_cron(" */15  9-17 * jan-mar mon-fri ") == "*/15 9-17 * jan-mar mon-fri"


def test_bad_zone():
    with pytest.raises(timing.TimingError) as caught:
        timing.zone("Mars/Olympus")
    assert caught.value.field == "timezone"


def test_describe_flags_dst():
    summer = timing.describe(datetime(2025, 7, 1, 12, tzinfo=UTC), RIGA)
    winter = timing.describe(datetime(2025, 1, 1, 12, tzinfo=UTC), RIGA)
    assert summer == {"local": "2025-07-01T15:00:00+03:00", "utc": "2025-07-01T12:00:00Z", "dst": True}
    assert winter["dst"] is False
