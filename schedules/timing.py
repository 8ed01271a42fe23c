"""When a schedule fires: cron (cronsim, in an IANA zone) or a fixed interval, and the jitter.

Pure functions of their arguments (no database, no clock), so the DST rules are tested with
any "now" and the API previews exactly what the ticker will do.

DST, for cron (the rules cronsim implements, Debian cron's):

- a wall time inside the spring-forward gap fires once, at the first valid instant after it
  (``30 2 * * *`` on 2025-03-09 in New York fires at 03:00 EDT);
- a wall time repeated at fall-back fires once, the first time (``30 3 * * *`` on
  2025-10-26 in Riga fires at 03:30 EEST, never again at 03:30 EET);
- an expression with a wildcard hour fires every real hour: ``0 * * * *`` fires 23 times on
  a spring-forward day and 25 times on a fall-back day.

cronsim iterates wall times from a local starting point. Inside the repeated hour the local
time of an instant is ambiguous, so cronsim may hand back a wall time whose *first* occurrence
lies before the starting instant; :func:`cron_after` skips anything not strictly after it in
UTC, so the first occurrence is the only one that fires.

Intervals are plain UTC arithmetic from ``start_at``: every ``interval_seconds``, whatever the
wall clock does.
"""

from __future__ import annotations

import hashlib
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
# cronsim also reads a seconds field and the L / # / W / ? extensions; Debian cron does not.
_FIELD_RE = re.compile(r"^[0-9A-Za-z*,/-]+$")
_NAMES = {"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}
_NAMES |= {"sun", "mon", "tue", "wed", "thu", "fri", "sat"}
# A wall time inside a gap is at most a few hours from a valid one; cronsim never needs more
# than a handful of candidates to find the next instant strictly after a start.
_SKIP_MAX = 1000


class TimingError(ValueError):
    """A bad expression or zone: ``field`` names what is wrong, the message says why."""

    def __init__(self, field: str, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.field = field
        self.code = code


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; raises TimingError naming ``timezone``."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise TimingError("timezone", "An IANA time zone name, e.g. Europe/Riga or UTC.")
    try:
        return ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise TimingError(
            "timezone", f"{name!r} is not an IANA time zone (e.g. Europe/Riga, America/New_York, UTC)."
        ) from None


def check_cron(expression: str) -> str:
    """``expression`` normalised (single spaces), or TimingError naming ``cron``.

    Five fields with Debian cron's syntax; an expression that can never fire (``0 0 31 2 *``)
    is refused, as is any field out of range (``61 * * * *``).
    """
    fields = expression.split() if isinstance(expression, str) else []
    if len(fields) != len(CRON_FIELDS):
        raise TimingError(
            "cron",
            f"Five fields ({', '.join(CRON_FIELDS)}), got {len(fields)}: e.g. '*/15 * * * *'.",
        )
    for name, text in zip(CRON_FIELDS, fields, strict=True):
        words = {w.lower() for w in re.findall(r"[A-Za-z]+", text)}
        if not _FIELD_RE.match(text) or not words <= _NAMES:
            raise TimingError(
                "cron",
                f"The {name} field {text!r} is not Debian cron syntax (numbers, names, * , - /).",
            )
    normalised = " ".join(fields)
    try:
        iterator = CronSim(normalised, datetime(2000, 1, 1, tzinfo=UTC))
        next(iterator)
    except CronSimError as exc:
        raise TimingError("cron", f"{normalised!r}: {exc}.") from None
    except StopIteration:
        raise TimingError("cron", f"{normalised!r} never fires.") from None
    return normalised


def cron_after(expression: str, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """The fire instants of ``expression`` in ``tz`` strictly after ``after``, in UTC, in order."""
    after = after.astimezone(UTC)
    skipped = 0
    for local in CronSim(expression, after.astimezone(tz)):
        instant = local.astimezone(UTC)
        if instant <= after:  # the first occurrence of an ambiguous wall time: already past
            skipped += 1
            if skipped > _SKIP_MAX:
                return
            continue
        yield instant


def interval_after(start: datetime, seconds: int, after: datetime) -> Iterator[datetime]:
    """``start + k * seconds`` (k >= 0) strictly after ``after``, in order."""
    step = timedelta(seconds=seconds)
    k = 0 if after < start else int((after - start) // step) + 1
    slot = start + k * step
    while True:
        yield slot
        slot += step


@dataclass(frozen=True, slots=True)
class When:
    """What a schedule's slots are: a cron expression in a zone, or an interval from a start."""

    cron: str = ""
    timezone: str = "UTC"
    interval_seconds: int | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None

    def slots_after(self, after: datetime) -> Iterator[datetime]:
        """The slots strictly after ``after`` (and not before ``start_at``), until ``end_at``."""
        if self.start_at is not None and after < self.start_at:
            after = self.start_at - timedelta(microseconds=1)
        if self.interval_seconds:
            anchor = self.start_at or datetime(2000, 1, 1, tzinfo=UTC)
            found = interval_after(anchor, self.interval_seconds, after)
        else:
            found = cron_after(self.cron, zone(self.timezone), after)
        for slot in found:
            if self.end_at is not None and slot > self.end_at:
                return
            yield slot

    def next_after(self, after: datetime) -> datetime | None:
        return next(self.slots_after(after), None)


def jitter(schedule_id: object, slot: datetime, jitter_seconds: int) -> timedelta:
    """How long after ``slot`` its run starts: 0..jitter_seconds, derived from a hash of the
    schedule id and the slot, so every worker and every restart agrees on it."""
    if jitter_seconds <= 0:
        return timedelta(0)
    digest = hashlib.sha256(f"{schedule_id}|{slot.astimezone(UTC).isoformat()}".encode()).digest()
    return timedelta(seconds=int.from_bytes(digest[:8], "big") % (jitter_seconds + 1))


def describe(instant: datetime, tz: ZoneInfo) -> dict[str, object]:
    """One previewed fire: the wall time in the zone, the instant in UTC, whether DST is on."""
    local = instant.astimezone(tz)
    return {
        "local": local.isoformat(),
        "utc": instant.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "dst": bool(local.dst()),
    }
