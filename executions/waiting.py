"""Waiting for an execution to finish without polling the database in a tight loop.

One listener thread per process (PostgreSQL: ``LISTEN taskforge_done``) wakes the request
threads waiting on ``?wait=N`` or following a live log. Each waiter still re-reads the row at
least once a second, so a lost notification only delays it, and on SQLite (no NOTIFY) the
re-read is the mechanism.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict

from django.db import connection

from executions.models import Execution

logger = logging.getLogger("taskforge.waiting")

SQLITE_POLL = 0.2
SAFETY_POLL = 1.0


class _Dispatcher:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiters: dict[str, set[threading.Event]] = defaultdict(set)
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()

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

        from executions.services import DONE_CHANNEL

        params = connection.get_connection_params()
        while not self.stopping.is_set():
            try:
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {DONE_CHANNEL}")
                    while not self.stopping.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.wake(note.payload)
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


dispatcher = _Dispatcher()


def release_connection() -> None:
    """Hand this thread's database connection back (to the pool) while it waits, so hundreds
    of waiting requests do not hold hundreds of connections. Never inside a transaction."""
    if not connection.in_atomic_block:
        connection.close()


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
