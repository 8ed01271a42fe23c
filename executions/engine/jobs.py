"""Periodic jobs the worker runs beside its runs, registered by the apps above the engine.

The engine knows no app above it: an app that needs housekeeping in the worker process (the
webhooks app: fan-out and delivery) registers a job from its ``AppConfig.ready()``, and every
worker runs each registered job in a thread of its own until it stops. ``runworker`` can skip a
job by name (``--no-webhooks`` skips :data:`WEBHOOK_DELIVERY`, ``--no-schedules``
:data:`SCHEDULE_TICK`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# The webhooks app's job (named here so runworker can skip it without importing webhooks).
WEBHOOK_DELIVERY = "webhook delivery"
# The tasks app's agent housekeeping (silent agents go offline, their work returns; unroutable
# tasks are marked), registered by executions.apps.
AGENT_HOUSEKEEPING = "agent housekeeping"
# The schedules app's ticker (runworker --no-schedules skips it).
SCHEDULE_TICK = "schedule tick"


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    every_seconds: float
    # Returns how long to wait before the next call (0: at once), or None for every_seconds.
    func: Callable[[], float | None]


_jobs: dict[str, Job] = {}


def register_job(name: str, every_seconds: float, func: Callable[[], float | None]) -> None:
    """Run ``func`` in every worker, again ``every_seconds`` after each call (or after what it
    returns). Registering a name again replaces the job (``ready()`` may run more than once)."""
    _jobs[name] = Job(name, every_seconds, func)


def registered_jobs() -> list[Job]:
    return list(_jobs.values())
