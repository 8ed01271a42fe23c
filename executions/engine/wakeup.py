"""Wake-up hints between processes: "something changed on channel C" (e.g. an execution was
queued), sent when the writing transaction commits.

On PostgreSQL this is ``NOTIFY`` (transactional: delivered at commit, never after a rollback),
heard by a ``LISTEN`` connection in the listening process. Without PostgreSQL (SQLite, the
embedded default) the processes sharing the database file share a machine, so a local socket
does it: every listener binds a Unix datagram socket of its own in
``TASKFORGE_WAKEUP_DIR/<channel>/`` (by default beside the database file:
``var/taskforge.sqlite3.wakeup/<channel>/``), and :func:`poke` sends one datagram to every socket
there, after the commit (``transaction.on_commit``). A datagram is a few microseconds, never
blocks the sender (a listener whose buffer is full has wake-ups pending already) and needs no
dependency; a socket left behind by a killed process refuses the datagram and is removed.

Correctness never depends on a wake-up: listeners also poll (the worker) or re-read (waiters).
Who may write the database may wake its listeners: the directory is created ``0770`` and each
socket ``0660``, so processes sharing the SQLite file (same user or group) can reach each other.

Use: ``notify(channel, payload)`` inside the writing transaction; in the listening process,
``listener = Listener(channel)`` (bound before the first read of what it waits for, so nothing
committed after that read is missed), then ``listener.wait(timeout)`` in a loop, which returns
the payloads received (an empty list: the timeout passed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import socket
from functools import partial
from pathlib import Path
from types import TracebackType

from django.conf import settings
from django.db import connection, transaction

logger = logging.getLogger("taskforge.wakeup")

MAX_PAYLOAD = 1024


def notify(channel: str, payload: str = "") -> None:
    """Wake the listeners of ``channel`` when the current transaction commits (at once
    outside a transaction; never if it rolls back)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])
        return
    transaction.on_commit(partial(poke, channel, payload), robust=True)


def base_dir() -> Path:
    """``TASKFORGE_WAKEUP_DIR``, or beside the database file: every process using that
    file (web, workers, the test suite's child processes) meets there, and no other."""
    if settings.TASKFORGE_WAKEUP_DIR:
        return Path(settings.TASKFORGE_WAKEUP_DIR)
    database = Path(str(connection.settings_dict["NAME"]))
    if not database.is_absolute():  # an in-memory database: one process, nobody to wake
        return Path(settings.BASE_DIR) / "var" / "wakeup"
    return database.with_name(f"{database.name}.wakeup")


def channel_dir(channel: str) -> Path:
    return base_dir() / channel


def poke(channel: str, payload: str = "") -> int:
    """Send ``payload`` to every local listener of ``channel`` now; returns how many got it."""
    data = payload.encode()[:MAX_PAYLOAD]
    try:
        entries = [entry.path for entry in os.scandir(channel_dir(channel)) if entry.name.endswith(".sock")]
    except FileNotFoundError:
        return 0
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for path in entries:
            try:
                sock.sendto(data, path)
                sent += 1
            except BlockingIOError:
                sent += 1  # its queue is full: it has wake-ups waiting to be read already
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):  # nobody bound: a killed process's socket
                    os.unlink(path)
            except OSError as exc:  # e.g. no permission: that listener polls instead
                logger.debug("wake-up of %s failed: %s", path, exc)
    return sent


class Listener:
    """A socket of this process in ``channel``'s directory, receiving its pokes."""

    def __init__(self, channel: str) -> None:
        directory = channel_dir(channel)
        directory.mkdir(mode=0o770, parents=True, exist_ok=True)
        self.path = str(directory / f"{os.getpid()}-{secrets.token_hex(4)}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(self.path)
            os.chmod(self.path, 0o660)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def wait(self, timeout: float) -> list[str]:
        """Block until pokes arrive (all of them are read) or ``timeout`` seconds pass."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return []
        payloads = []
        while True:
            try:
                payloads.append(self.sock.recv(MAX_PAYLOAD).decode(errors="replace"))
            except BlockingIOError:
                return payloads

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
