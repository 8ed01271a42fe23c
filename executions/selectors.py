"""Reads about executions and workers that span models (the status endpoint, the dashboard)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.db.models import Count
from django.utils import timezone

from accounts.models import ApiKey, User
from executions.models import Execution, ExecutionStatus, Worker


def queue_summary(
    *, user: User | AnonymousUser, api_key: ApiKey | None = None, running_limit: int = 20
) -> dict[str, Any]:
    """Queue depth (queued/running), the oldest running executions, and live workers."""
    visible = Execution.objects.visible_to(user, api_key)
    depth = dict.fromkeys((ExecutionStatus.QUEUED, ExecutionStatus.RUNNING), 0)
    depth.update(
        dict(visible.active().order_by().values("status").annotate(n=Count("pk")).values_list("status", "n"))
    )
    now = timezone.now()
    running = [
        {
            "id": e.pk,
            "task": e.task_id,
            "number": e.number,
            "worker": e.worker.name if e.worker else None,
            "started_at": e.started_at,
            "age_seconds": round((now - e.started_at).total_seconds(), 1) if e.started_at else None,
        }
        for e in visible.filter(status=ExecutionStatus.RUNNING)
        .select_related("worker")
        .order_by("started_at")[:running_limit]
    ]
    workers = [
        {
            "id": w.pk,
            "name": w.name,
            "concurrency": w.concurrency,
            "isolation": w.sandbox,
            "started_at": w.started_at,
            "last_heartbeat_at": w.last_heartbeat_at,
        }
        for w in Worker.objects.alive()
    ]
    return {"executions": depth, "running": running, "workers": workers}
