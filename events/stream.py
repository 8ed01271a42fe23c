"""The live event stream: many subscribers per process, one reader of the outbox.

Every subscriber (an open ``GET /api/v1/events`` stream) waits on the process's one listener
thread (``core.listening``; PostgreSQL: ``LISTEN taskforge_events``, which a trigger on the
outbox sends at every commit that wrote events), with its database connection handed back.
When woken, the first subscriber refreshes the process's *feed* — one query for the events
that became final (``events.selectors.events_ready_after``) — and every subscriber takes what
it may see and asked for from the feed, in memory: an event costs one query per process, not
one per subscriber. A subscriber behind what the feed keeps (a resume from long ago, a slow
client) reads the outbox on its own, with its filters in the query, until it catches up.

Without PostgreSQL there is no NOTIFY: subscribers poll every ``SQLITE_POLL`` seconds (the
feed still reads once per poll for all of them). On PostgreSQL a subscriber also re-reads at
least every second (a lost notification only delays it), and every ``HELD_POLL`` seconds while
committed events wait for an older transaction to end.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import connection

from core.listening import dispatcher, release_connection
from core.sse import sse_frame
from events.models import Event
from events.selectors import (
    EventFilter,
    Position,
    events_ready_after,
    newest_position,
)
from events.serializers import StreamEventSerializer

EVENTS_CHANNEL = "taskforge_events"  # NOTIFYed by the outbox's trigger (events migration 0002)
WAKE_KEY = "events"
SAFETY_POLL = 1.0
SQLITE_POLL = 0.1
HELD_POLL = 0.02
READ_BATCH = 500
FEED_KEEP = 5000  # events the feed keeps in memory for subscribers a little behind
KEEP_ALIVE_SECONDS = 15
RETRY_MS = 1000

dispatcher.listen(EVENTS_CHANNEL, lambda payload: (WAKE_KEY,))


def event_document(event: Event) -> dict[str, Any]:
    """The event as the list and the stream show it."""
    return StreamEventSerializer(event).data


@dataclass
class FeedEvent:
    """An event as the feed keeps it: what filters need, and its frame rendered once."""

    event: Event
    position: Position
    frame: str


@dataclass
class _Feed:
    """The outbox as this process last read it, shared by every subscriber here: the final
    events past ``base`` up to ``head``, in stream order (at most ``FEED_KEEP``)."""

    base: Position
    head: Position
    lock: threading.Lock = field(default_factory=threading.Lock)
    positions: list[Position] = field(default_factory=list)
    events: list[FeedEvent] = field(default_factory=list)
    read_at: float = -1.0  # monotonic time the last refresh began
    complete: bool = True  # the last refresh left no final event unread
    held: bool = False  # committed events wait for an older transaction
    users: int = 0

    def refresh(self) -> None:
        began = time.monotonic()
        read = events_ready_after(self.head, READ_BATCH)
        release_connection()
        for event in read.ready:
            position = (event.txid, event.pk)
            self.positions.append(position)
            self.events.append(FeedEvent(event, position, sse_frame(None, event_document(event), event.pk)))
        if read.ready:
            self.head = self.positions[-1]
        if len(self.events) > FEED_KEEP:
            dropped = len(self.events) - FEED_KEEP
            self.base = self.positions[dropped - 1]
            del self.positions[:dropped], self.events[:dropped]
        self.read_at, self.complete, self.held = began, read.complete, read.held


_feed: _Feed | None = None
_feed_lock = threading.Lock()


class Subscription:
    """One subscriber: ``read()`` what is new for it, ``wait(timeout)`` until there may be
    more. Use as a context manager. ``after``: the last position it has (``START``: all)."""

    def __init__(self, event_filter: EventFilter, after: Position) -> None:
        self.filter = event_filter
        self.after = after
        self.wake = threading.Event()
        self.postgres = connection.vendor == "postgresql"
        self.interval = SAFETY_POLL if self.postgres else SQLITE_POLL
        # The feed must have been read since then (a poll interval before the last wake-up).
        self.fresh_after = time.monotonic() - self.interval
        self.held = False  # events wait for an older transaction: poll every HELD_POLL
        self.feed: _Feed

    def __enter__(self) -> Subscription:
        global _feed
        dispatcher.ensure_started()
        dispatcher.register(WAKE_KEY, self.wake)
        with _feed_lock:
            if _feed is None:
                now = newest_position()
                release_connection()
                _feed = _Feed(base=now, head=now)
            self.feed = _feed
            self.feed.users += 1
        return self

    def __exit__(self, *exc: object) -> None:
        global _feed
        dispatcher.unregister(WAKE_KEY, self.wake)
        with _feed_lock:
            self.feed.users -= 1
            if not self.feed.users and _feed is self.feed:
                _feed = None

    def read(self) -> tuple[list[FeedEvent], bool]:
        """The new events this subscriber wants, in order, and whether it is caught up (else
        read again at once)."""
        need = max(dispatcher.notified_at.get(WAKE_KEY, 0.0), self.fresh_after)
        feed = self.feed
        release_connection()  # never hold a pooled connection while queued on the lock
        with feed.lock:
            base = feed.base
            if self.after >= base:
                if feed.read_at < need or not feed.complete:
                    feed.refresh()
                start = bisect.bisect_right(feed.positions, self.after)
                wanted = [item for item in feed.events[start:] if self.filter.matches(item.event)]
                self.after = max(self.after, feed.head)
                self.held = feed.held
                return wanted, feed.complete
        return self._catch_up(base)

    def _catch_up(self, base: Position) -> tuple[list[FeedEvent], bool]:
        """Behind the feed: read the outbox with this subscriber's filters in the query."""
        read = events_ready_after(self.after, READ_BATCH, where=self.filter.q())
        release_connection()
        items = [
            FeedEvent(event, (event.txid, event.pk), sse_frame(None, event_document(event), event.pk))
            for event in read.ready
        ]
        if items:
            self.after = items[-1].position
        if read.complete and not read.held:
            # Everything up to the feed's base (final before this read began) was read.
            self.after = max(self.after, base)
        self.held = read.held
        return items, read.complete

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds (at most one poll interval) or until woken; the
        connection is handed back first."""
        release_connection()
        interval = HELD_POLL if self.held else self.interval
        self.wake.wait(max(0.0, min(interval, timeout)))
        self.wake.clear()
        self.fresh_after = time.monotonic() - interval


def sse_events(
    subscription: Subscription,
    *,
    lifetime: float,
    first: Sequence[str] = (),
    still_visible: Callable[[], EventFilter | None] | None = None,
) -> Iterator[str]:
    """The stream's frames: ``retry:``, the ``first`` frames (a ``reset``), then every new
    event the subscriber wants as soon as it is final, and a comment when nothing was sent for
    ``KEEP_ALIVE_SECONDS``; every ``KEEP_ALIVE_SECONDS`` ``still_visible`` re-reads what the
    caller may see (None ends the stream); after ``lifetime`` seconds ``event: reconnect``."""
    deadline = time.monotonic() + lifetime
    last_write = last_check = time.monotonic()
    last_id: int | None = None
    with subscription:
        yield f"retry: {RETRY_MS}\n\n"
        yield from first
        while True:
            items, caught_up = subscription.read()
            for item in items:
                yield item.frame
            if items:
                last_id, last_write = items[-1].event.pk, time.monotonic()
            if not caught_up:
                continue
            now = time.monotonic()
            if now >= deadline:
                yield sse_frame("reconnect", {"last_event_id": last_id, "after_seconds": lifetime}, last_id)
                return
            if still_visible is not None and now - last_check >= KEEP_ALIVE_SECONDS:
                last_check = now
                refreshed = still_visible()
                release_connection()
                if refreshed is None:
                    return
                subscription.filter = refreshed
            if now - last_write >= KEEP_ALIVE_SECONDS:
                last_write = now
                yield ": keep-alive\n\n"
            next_due = min(last_write, last_check) + KEEP_ALIVE_SECONDS
            subscription.wait(min(deadline, next_due) - now)
