"""Careful reads about schedules (the operators' dashboard)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings

from schedules.models import Schedule

LATE_SHOWN = 15


def late_schedules(*, user: Any, now: datetime) -> list[Schedule]:
    """Enabled schedules of ``user``'s projects whose run should have started more than the
    misfire grace ago (the dashboard shows them only while workers are up: then they mean the
    ticker is stuck or overloaded). Each carries ``late_by`` and ``grace`` for the page."""
    grace = settings.TASKFORGE_SCHEDULE_MISFIRE_GRACE_SECONDS
    found = list(
        Schedule.objects.visible_to(user)
        .filter(enabled=True, due_at__lt=now - timedelta(seconds=grace))
        .select_related("project")
        .order_by("due_at", "id")[:LATE_SHOWN]
    )
    for schedule in found:
        schedule.late_by = f"{(now - schedule.due_at).total_seconds():.0f} s"  # type: ignore[attr-defined]
        schedule.grace = grace  # type: ignore[attr-defined]
    return found
