"""Reading the outbox: the one reader the webhook dispatcher (and a later event stream) share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db.models import Q

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
