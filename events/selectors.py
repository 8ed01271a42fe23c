"""Reading the outbox: new events for the webhook dispatcher (``events_after``), and the event
stream's ordered, final reads (``events_ready_after``) with the readers' filters."""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from django.db import connection
from django.db.models import Max, Q

from events.models import Event


def events_after(
    cursor: int,
    batch: int,
    *,
    gaps: Iterable[Sequence[Any]] = (),
    fields: Sequence[str] = (),
) -> list[Event]:
    """Up to ``batch`` events with an id above ``cursor`` or inside one of the ``gaps``
    (``(low, high, …)`` id ranges, inclusive, seen missing earlier), in id order.

    Ids come from a sequence at insert time but commit in any order, so a reader that only
    moved past the highest id seen would miss an event committed late: the caller keeps the
    ranges it has not seen yet and asks for them again. ``fields`` reads only those columns.
    """
    wanted = Q(pk__gt=cursor)
    for gap in gaps:
        wanted |= Q(pk__range=(gap[0], gap[1]))
    events = Event.objects.filter(wanted)
    if fields:
        events = events.only(*fields)
    return list(events.order_by("pk")[:batch])


# --- The event stream's order ------------------------------------------------------------------
# A position in the stream: (the inserting transaction's id, the event's id). Ids are drawn when
# a row is inserted but commit in any order; transactions older than every one still running
# can never commit anything new. So the stream is read in (txid, id) order and stops at the
# oldest running transaction (its "horizon"): what is delivered is final, and nothing can later
# appear before it. On SQLite txid is 0 (one writer at a time: ids commit in order).
Position = tuple[int, int]
START: Position = (0, 0)  # before every event


@dataclass
class StreamRead:
    """Events past a position, ``ready`` to deliver in order; ``held``: committed events exist
    past them that wait for an older transaction to end (look again soon); ``complete``: no
    more ready ones were left (else read again at once)."""

    ready: list[Event]
    held: bool
    complete: bool


@dataclass(frozen=True)
class Horizon:
    """PostgreSQL: ``oldest`` the oldest transaction still running (those before it are over);
    ``own`` the reading transaction's, if it wrote (a test, or a reader inside its own write:
    what it wrote is visible to it, so final for it)."""

    oldest: int
    own: int | None

    def final(self, txid: int) -> bool:
        return txid < self.oldest or txid == self.own

    def q(self) -> Q:
        return Q(txid__lt=self.oldest) | Q(txid=self.own) if self.own is not None else Q(txid__lt=self.oldest)


# The oldest transaction still running in the snapshot, leaving out those that run in another
# database of the cluster (they never write this outbox; the snapshot's own xmin counts them,
# so a long transaction of another application would hold the stream back). A transaction is
# left out only on evidence (pg_stat_activity shows it in another database): one that ended
# meanwhile, or that the view hides, still counts — never too early, at worst a little late.
# No transaction running: the snapshot's xmax (the next one to start).
HORIZON_SQL = """
SELECT coalesce(
    (SELECT min(x::text::bigint) FROM pg_snapshot_xip(pg_current_snapshot()) AS x
     WHERE NOT EXISTS (
         SELECT 1 FROM pg_stat_activity AS a
         WHERE a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database())
           AND a.backend_xid::text::bigint = x::text::bigint % 4294967296)),
    pg_snapshot_xmax(pg_current_snapshot())::text::bigint),
  pg_current_xact_id_if_assigned()::text::bigint
"""


def stream_horizon() -> Horizon | None:
    """Where the final events end now (PostgreSQL); None elsewhere (every committed event is
    final)."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(HORIZON_SQL)
        oldest, own = cursor.fetchone()
    return Horizon(int(oldest), int(own) if own is not None else None)


def _past(position: Position) -> Q:
    txid, pk = position
    return Q(txid__gt=txid) | Q(txid=txid, pk__gt=pk)


def events_ready_after(position: Position, batch: int, *, where: Q | None = None) -> StreamRead:
    """Up to ``batch`` events past ``position`` in stream order (those matching ``where``):
    the final ones up to the first that is not. The horizon is read first, so every event
    before it is visible to the read that follows."""
    horizon = stream_horizon()
    events = Event.objects.filter(_past(position))
    if where is not None:
        events = events.filter(where)
    rows = list(events.select_related("actor").order_by("txid", "pk")[:batch])
    ready = rows
    if horizon is not None:
        ready = list(itertools.takewhile(lambda event: horizon.final(event.txid), rows))
    return StreamRead(ready=ready, held=len(ready) < len(rows), complete=len(rows) < batch)


def newest_position() -> Position:
    """Where a stream that starts "now" begins: the last event that is final."""
    horizon = stream_horizon()
    events = Event.objects.all() if horizon is None else Event.objects.filter(horizon.q())
    row = events.order_by("-txid", "-pk").values_list("txid", "pk").first()
    return (int(row[0]), int(row[1])) if row is not None else START


def position_of(event_id: int) -> Position | None:
    """The stream position of event ``event_id`` (0: the start); None when there is no such
    event (pruned, or never written)."""
    if event_id == 0:
        return START
    row = Event.objects.filter(pk=event_id).values_list("txid", "pk").first()
    return (int(row[0]), int(row[1])) if row is not None else None


def newest_event_id() -> int:
    return Event.objects.aggregate(newest=Max("pk"))["newest"] or 0


# --- What a reader asked for -------------------------------------------------------------------
# ``?agent=`` and ``?workflow=`` (and ``?execution=``) match the id their events carry in data.
DATA_KEYS = {"execution": "execution_id", "agent": "agent_id", "workflow": "workflow_id"}


def glob_pattern(globs: Sequence[str]) -> str:
    """One anchored regular expression for type globs (``task.*``): ``*`` is any run of
    characters; the globs hold only ``[a-z0-9_.*-]`` (the caller checks), so this reads the
    same in Python, PostgreSQL and SQLite."""
    alternatives = (glob.replace(".", r"\.").replace("*", ".*") for glob in globs)
    return "^(" + "|".join(alternatives) + ")$"


@dataclass(frozen=True)
class EventFilter:
    """A reader's filters. ``projects``: the projects it may see (None: every project)."""

    projects: frozenset[uuid.UUID] | None
    types: tuple[str, ...] = ()
    project: uuid.UUID | None = None
    task: uuid.UUID | None = None
    execution: str | None = None
    agent: str | None = None
    workflow: str | None = None

    @cached_property
    def _type_re(self) -> re.Pattern[str] | None:
        return re.compile(glob_pattern(self.types)) if self.types else None

    def _data(self) -> dict[str, str]:
        return {key: value for name, key in DATA_KEYS.items() if (value := getattr(self, name)) is not None}

    def q(self) -> Q:
        """The filter as a query."""
        q = Q()
        if self.projects is not None:
            q &= Q(project_id__in=sorted(self.projects))
        if self.project is not None:
            q &= Q(project_id=self.project)
        if self.task is not None:
            q &= Q(task_id=self.task)
        if self.types:
            q &= Q(type__regex=glob_pattern(self.types))
        for key, value in self._data().items():
            q &= Q(**{f"data__{key}": value})
        return q

    def matches(self, event: Event) -> bool:
        """The same filter, on an event in memory."""
        if self.projects is not None and event.project_id not in self.projects:
            return False
        if self.project is not None and event.project_id != self.project:
            return False
        if self.task is not None and event.task_id != self.task:
            return False
        if self._type_re is not None and not self._type_re.match(event.type):
            return False
        data = event.data if isinstance(event.data, dict) else {}
        return all(data.get(key) == value for key, value in self._data().items())
