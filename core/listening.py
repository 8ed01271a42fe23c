"""One ``LISTEN`` connection per process, shared by every request thread that waits.

Requests that hold a web thread until something happens (``?wait``, live logs, the event
stream) do not each keep a database connection open: they wait on a ``threading.Event`` that
this module's listener thread sets when PostgreSQL delivers a notification. An app names the
channels it needs (``listen(channel, route)``: ``route`` turns a notification's payload into
the keys of the waiters to wake) and registers its waiters under those keys.

Waiters still re-read on their own at least once a second (a lost notification only delays
them); without PostgreSQL there is no NOTIFY and a short re-read is the mechanism, so nothing
here starts. ``release_connection()`` hands a waiting thread's connection back to the pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from django.db import connection

logger = logging.getLogger("taskforge.waiting")

Route = Callable[[str], Iterable[str]]


class Dispatcher:
    """The listener thread and the waiters it wakes, by key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiters: dict[str, set[threading.Event]] = defaultdict(set)
        self.notified_at: dict[str, float] = {}  # key -> when its last notification came
        self.routes: dict[str, Route] = {}  # channel -> keys to wake for a payload
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def listen(self, channel: str, route: Route) -> None:
        """Wake ``route(payload)``'s waiters on every notification of ``channel``. A channel
        named after the thread started is LISTENed within half a second."""
        with self.lock:
            self.routes[channel] = route

    def ensure_started(self) -> None:
        if connection.vendor != "postgresql":
            return
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.stopping.clear()
                self.thread = threading.Thread(target=self._listen, name="done-listener", daemon=True)
                self.thread.start()

    def _listen(self) -> None:
        import psycopg

        params = connection.get_connection_params()
        while not self.stopping.is_set():
            try:
                with psycopg.connect(**params, autocommit=True) as conn:
                    listening: set[str] = set()
                    while not self.stopping.is_set():
                        for channel in set(self.routes) - listening:
                            conn.execute(f"LISTEN {channel}")
                            listening.add(channel)
                        for note in conn.notifies(timeout=0.5):
                            route = self.routes.get(note.channel)
                            for key in route(note.payload) if route is not None else ():
                                self.wake(key)
            except Exception:
                logger.exception("done-listener lost its connection; reconnecting in 1s")
                time.sleep(1)

    def stop(self) -> None:
        """Stop listening and close the connection (tests, before dropping the database)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
            self.thread = None

    def wake(self, key: str) -> None:
        with self.lock:
            events = list(self.waiters.get(key, ()))
            if events:
                self.notified_at[key] = time.monotonic()
        for event in events:
            event.set()

    def register(self, key: str, event: threading.Event) -> None:
        with self.lock:
            self.waiters[key].add(event)

    def unregister(self, key: str, event: threading.Event) -> None:
        with self.lock:
            self.waiters[key].discard(event)
            if not self.waiters[key]:
                del self.waiters[key]
                self.notified_at.pop(key, None)


dispatcher = Dispatcher()


def release_connection() -> None:
    """Hand this thread's database connection back (to the pool) while it waits, so hundreds
    of waiting requests do not hold hundreds of connections. Never inside a transaction."""
    if not connection.in_atomic_block:
        connection.close()
