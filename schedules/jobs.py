"""The schedules app's job in the worker (registered in ``SchedulesConfig.ready``)."""

from __future__ import annotations

from schedules.services import TICK_BATCH, schedules_tick


def tick_schedules() -> float | None:
    """Fire what is due; at once again when a whole batch was due, else in a second."""
    return 0.0 if schedules_tick(limit=TICK_BATCH) >= TICK_BATCH else None
