"""Reads about tasks that need care: which project a new task goes to, counts by status."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AnonymousUser
from django.db.models import Count

from accounts.models import ApiKey, Project, User
from accounts.selectors import project_for_new_object
from tasks.models import Status, Task


def project_for_new_task(*, user: User, api_key: ApiKey | None, project_id: uuid.UUID | None) -> Project:
    """The project a new task lands in (``accounts.selectors.project_for_new_object``)."""
    return project_for_new_object(user=user, api_key=api_key, project_id=project_id)


def task_status_counts(*, user: User | AnonymousUser, api_key: ApiKey | None = None) -> dict[str, int]:
    """How many tasks of the caller's projects are in each status (one aggregate query)."""
    counts = dict.fromkeys(Status.values, 0)
    rows = (
        Task.objects.visible_to(user, api_key)
        .order_by()
        .values("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    counts.update(dict(rows))
    return counts


def tasks_unroutable(*, user: User | AnonymousUser, limit: int = 15) -> list[Task]:
    """The caller's tasks no online agent can take (tasks.unroutable), longest waiting first."""
    return list(
        Task.objects.visible_to(user)
        .filter(unroutable_since__isnull=False)
        .select_related("assigned_agent")
        .order_by("unroutable_since", "id")[:limit]
    )
