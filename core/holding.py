"""Long-lived requests (``?wait``, live-log and event streams): the ``wait`` parameter and the caps.

Every such request holds a web thread, so each takes a *slot* first (``take_slot``): at most
``TASKFORGE_MAX_STREAMS_PER_PROCESS`` in this process and ``TASKFORGE_MAX_STREAMS_PER_PRINCIPAL``
per user across every process (the shared cache); otherwise 429 (DRF's ``Throttled``) with
``Retry-After``. ``wait_seconds`` reads a request's ``?wait`` (the executions API and the
template trigger share it) and takes its slot; the sealed base gives the slots of a request back
when its response is finalized (``accounts.api.base``). No app in here: only the cache and the
settings. The waiting itself: ``core/listening.py`` (the process's LISTEN connection), used by
``executions/engine/waiting.py`` and ``events/stream.py``.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import cache
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import Throttled, ValidationError
from rest_framework.request import Request

logger = logging.getLogger("taskforge.waiting")

# --- Slots for long-lived requests -----------------------------------------------------------
# Slots held per process: a plain counter (the cap protects this process's threads).
_local_lock = threading.Lock()
_local_held = 0
# A principal's slot outlives the request it was taken for by this much at most if the process
# dies without giving it back (each slot is a cache key with its own expiry).
SLOT_GRACE_SECONDS = 30
RETRY_AFTER_MAX = 10


class Slot:
    """One long-lived request's place; ``release()`` is idempotent."""

    def __init__(self, key: str | None, token: str) -> None:
        self.key = key
        self.token = token
        self.released = False

    def release(self) -> None:
        global _local_held
        if self.released:
            return
        self.released = True
        with _local_lock:
            _local_held -= 1
        if self.key is not None:
            try:
                if cache.get(self.key, "").startswith(self.token):
                    cache.delete(self.key)
            except Exception:  # the cache is away: the key expires on its own
                logger.warning("could not give back the stream slot %s", self.key, exc_info=True)


def process_cap() -> int:
    """Long-lived requests this process may hold: TASKFORGE_MAX_STREAMS_PER_PROCESS, or (0)
    the web server's threads less a reserve for ordinary requests — a quarter of them, at
    least 8 and at most half, at least one (128 threads: 96; 8 threads: 4; 1 thread: 0)."""
    configured = settings.TASKFORGE_MAX_STREAMS_PER_PROCESS
    if configured > 0:
        return configured
    threads = int(os.environ.get("TASKFORGE_GUNICORN_THREADS") or os.environ.get("GUNICORN_THREADS") or 128)
    return max(0, threads - max(1, threads // 4, min(8, threads // 2)))


def _slot_keys(user_id: object) -> list[str]:
    return [f"streams:user:{user_id}:{n}" for n in range(settings.TASKFORGE_MAX_STREAMS_PER_PRINCIPAL)]


def take_slot(user_id: object, seconds: float, what: str) -> Slot:
    """A slot for a request that will hold its thread up to ``seconds``; 429 if none is free.

    Per principal, the slots are ``TASKFORGE_MAX_STREAMS_PER_PRINCIPAL`` cache keys, each taken
    with an atomic ``add`` (Redis ``SET NX``; the database cache's insert) and expiring
    ``seconds`` + 30 s after it was taken, so a process that dies holding slots cannot keep
    them beyond that. ``what`` names the request kind in the problem's detail.
    """
    global _local_held
    with _local_lock:
        if _local_held >= process_cap():
            raise _refused(
                f"This server is holding as many long-lived requests as it may ({what}); retry shortly.",
                1,
                "process",
            )
        _local_held += 1
    token = uuid.uuid4().hex
    try:
        keys = _slot_keys(user_id)
        start = random.randrange(len(keys)) if keys else 0  # noqa: S311 - spreading, not security
        expires = time.time() + seconds + SLOT_GRACE_SECONDS
        for key in keys[start:] + keys[:start]:
            if cache.add(key, f"{token}:{expires:.0f}", timeout=seconds + SLOT_GRACE_SECONDS):
                return Slot(key, token)
        raise _refused(
            f"At most {len(keys)} long-lived requests (live logs, event streams, ?wait) at once per user; "
            f"this one would exceed it ({what}).",
            _retry_after(keys),
            "user",
        )
    except BaseException:
        with _local_lock:
            _local_held -= 1
        raise


def _retry_after(keys: list[str]) -> int:
    """Seconds until a held slot surely frees (its expiry), at most RETRY_AFTER_MAX."""
    now = time.time()
    ends = []
    for value in cache.get_many(keys).values():
        try:
            ends.append(float(str(value).rsplit(":", 1)[1]) - SLOT_GRACE_SECONDS - now)
        except (IndexError, ValueError):
            continue
    return int(max(1, min([RETRY_AFTER_MAX, *ends])))


def _refused(detail: str, retry_after: int, scope: str) -> Throttled:
    """429: ``concurrency_limit`` says which cap was met ("user" or "process")."""
    exc = Throttled(wait=retry_after, detail=detail)
    exc.extra = {"concurrency_limit": scope}  # type: ignore[attr-defined]
    return exc


@contextmanager
def held_slot(user_id: object, seconds: float, what: str) -> Iterator[Slot]:
    slot = take_slot(user_id, seconds, what)
    try:
        yield slot
    finally:
        slot.release()


def slots_held_here() -> int:
    """Slots held in this process (tests, /status)."""
    return _local_held


# --- ?wait ------------------------------------------------------------------------------------
WAIT_PARAM = OpenApiParameter(
    "wait",
    {"type": "integer", "minimum": 0, "maximum": settings.TASKFORGE_MAX_WAIT_SECONDS},
    description=f"Hold the request up to N seconds (max {settings.TASKFORGE_MAX_WAIT_SECONDS}) "
    "until the execution finishes. A waiting request counts against the caller's cap on "
    "concurrent long-lived requests (429 beyond it).",
)


def wait_seconds(request: Request) -> int:
    """The request's ``?wait`` in seconds (0 without it; 400 when it is not an integer in
    0..``TASKFORGE_MAX_WAIT_SECONDS``); a wait takes its slot (429 beyond the caps)."""
    raw = request.query_params.get("wait")
    if raw is None:  # "" is not a number of seconds: 400 like any other non-integer
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError({"wait": [f"Must be an integer number of seconds, got {raw!r}."]}) from None
    limit = settings.TASKFORGE_MAX_WAIT_SECONDS
    if not 0 <= value <= limit:
        raise ValidationError({"wait": [f"Must be between 0 and {limit}."]}, code="out_of_range")
    if value:
        # Before anything is written: a refused ?wait (429) must not have queued a run. The
        # slot is given back when the response is finalized (accounts.api.base).
        hold_for_request(request, take_slot(request.user.pk, value, "?wait"))
    return value


def hold_for_request(request: Request, slot: Slot) -> None:
    """Give ``slot`` back when ``request``'s response is finalized (the sealed base does)."""
    request._taskforge_slots = [*getattr(request, "_taskforge_slots", []), slot]
