"""Waiting for an execution without polling the database in a tight loop.

The process's one listener thread (``core.listening``; on PostgreSQL, here ``LISTEN
taskforge_done`` and ``LISTEN taskforge_output``, beside the channels other apps name) wakes the
request threads waiting on ``?wait=N`` (an execution finished) or following a live log (new
output stored, or finished). Each waiter still re-reads at least once a second, so a lost
notification only delays it, and on SQLite (no NOTIFY) a short re-read is the mechanism.

The caps on requests that wait (slots, 429) are the API's: ``core/holding.py``.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from django.db import connection

from core.listening import dispatcher, release_connection
from executions.engine.queue import DONE_CHANNEL, OUTPUT_CHANNEL
from executions.models import Execution, OutputChunk

SQLITE_POLL = 0.2
SQLITE_OUTPUT_POLL = 0.05  # SQLite has no NOTIFY: a live log re-reads this often
SAFETY_POLL = 1.0
OUTPUT_PREFIX = "output:"


def _finished(payload: str) -> list[str]:
    """An execution finished: those waiting for it and those following its log."""
    return [payload, OUTPUT_PREFIX + payload]


def _output(payload: str) -> list[str]:
    return [OUTPUT_PREFIX + payload]


dispatcher.listen(DONE_CHANNEL, _finished)
dispatcher.listen(OUTPUT_CHANNEL, _output)


def wait_until_final(execution_id: uuid.UUID, timeout: float) -> Execution:
    """Block up to ``timeout`` seconds for the execution to finish; return it as it stands."""
    dispatcher.ensure_started()
    key = str(execution_id)
    event = threading.Event()
    dispatcher.register(key, event)
    deadline = time.monotonic() + timeout
    interval = SAFETY_POLL if connection.vendor == "postgresql" else SQLITE_POLL
    try:
        while True:
            execution = Execution.objects.get(pk=execution_id)
            remaining = deadline - time.monotonic()
            if execution.is_final or remaining <= 0:
                return execution
            release_connection()
            event.wait(min(interval, remaining))
            event.clear()
    finally:
        dispatcher.unregister(key, event)


CHUNKS_PER_READ = 500
FEED_KEEP_CHUNKS = 2000


@dataclass
class LogRead:
    """What a follower gets: the execution's status as read *before* the chunks (so once it is
    final, every chunk is among those read), the chunks after its offset, and whether those are
    all there was (else read again at once)."""

    status: str | None  # None: the execution is gone
    exit_code: int | None
    chunks: list[tuple[int, str, str]]
    caught_up: bool


@dataclass
class _Feed:
    """One execution's recent output as this process last read it, shared by every stream
    following it here: a chunk stored wakes N streams but costs two queries, not 2N (a
    hundred streams on one run each querying on every line held the GIL and the database
    pool long enough to slow every other request, docs/performance.md)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    base: int = 0  # the seq just before the first chunk kept
    chunks: list[tuple[int, str, str]] = field(default_factory=list)
    status: str | None = None
    exit_code: int | None = None
    read_at: float = -1.0  # monotonic time the last refresh began
    complete: bool = False  # the last refresh found fewer than CHUNKS_PER_READ chunks
    users: int = 0

    @property
    def last(self) -> int:
        return self.chunks[-1][0] if self.chunks else self.base

    def refresh(self, execution_id: uuid.UUID) -> None:
        began = time.monotonic()
        row = Execution.objects.filter(pk=execution_id).values_list("status", "exit_code").first()
        new = _chunks_after(execution_id, self.last)
        release_connection()
        self.status, self.exit_code = row if row is not None else (None, None)
        self.chunks.extend(new)
        if len(self.chunks) > FEED_KEEP_CHUNKS:
            dropped = len(self.chunks) - FEED_KEEP_CHUNKS
            self.base = self.chunks[dropped - 1][0]
            del self.chunks[:dropped]
        self.read_at, self.complete = began, len(new) < CHUNKS_PER_READ


def _chunks_after(execution_id: uuid.UUID, offset: int) -> list[tuple[int, str, str]]:
    return list(
        OutputChunk.objects.filter(execution_id=execution_id, seq__gt=offset)
        .order_by("seq")
        .values_list("seq", "stream", "data")[:CHUNKS_PER_READ]
    )


_feeds: dict[str, _Feed] = {}
_feeds_lock = threading.Lock()


class OutputFollower:
    """Following a live log: ``read(offset)`` for what is new, ``wait(timeout)`` until there
    may be more (new output stored — the worker's NOTIFY, pushed by the listener thread — or
    the execution finished; on SQLite, a short poll). Use as a context manager."""

    def __init__(self, execution_id: uuid.UUID) -> None:
        self.execution_id = execution_id
        self.key = OUTPUT_PREFIX + str(execution_id)
        self.event = threading.Event()
        self.interval = SAFETY_POLL if connection.vendor == "postgresql" else SQLITE_OUTPUT_POLL
        self.woke_at = time.monotonic()

    def __enter__(self) -> OutputFollower:
        dispatcher.ensure_started()
        dispatcher.register(self.key, self.event)
        with _feeds_lock:
            self.feed = _feeds.setdefault(self.key, _Feed())
            self.feed.users += 1
        return self

    def __exit__(self, *exc: object) -> None:
        dispatcher.unregister(self.key, self.event)
        with _feeds_lock:
            self.feed.users -= 1
            if not self.feed.users:
                _feeds.pop(self.key, None)

    def read(self, offset: int) -> LogRead:
        """What follows ``offset``, from a read begun after the last notification (or at most
        one poll interval before this follower last woke)."""
        need = max(dispatcher.notified_at.get(self.key, 0.0), self.woke_at - self.interval)
        feed = self.feed
        # Never hold a pooled connection while queued on the lock: a hundred streams waiting
        # for one refresh would hold a hundred connections (the pool lends 20).
        release_connection()
        with feed.lock:
            if not feed.chunks and feed.read_at < 0:
                feed.base = offset  # the first follower here: keep from its offset on
            if offset >= feed.base:
                if feed.read_at < need or not feed.complete:
                    feed.refresh(self.execution_id)
                chunks = [c for c in feed.chunks if c[0] > offset][:CHUNKS_PER_READ]
                last = chunks[-1][0] if chunks else offset
                return LogRead(feed.status, feed.exit_code, chunks, feed.complete and last >= feed.last)
        # Behind what this process keeps (a late follower of a long log): read on its own.
        row = Execution.objects.filter(pk=self.execution_id).values_list("status", "exit_code").first()
        chunks = _chunks_after(self.execution_id, offset)
        release_connection()
        status, exit_code = row if row is not None else (None, None)
        return LogRead(status, exit_code, chunks, len(chunks) < CHUNKS_PER_READ)

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds (less on SQLite) or until woken; the connection is
        handed back first."""
        release_connection()
        self.event.wait(max(0.0, min(self.interval, timeout)))
        self.event.clear()
        self.woke_at = time.monotonic()
