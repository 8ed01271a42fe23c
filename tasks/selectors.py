"""Reads about tasks that need care: which project a new task goes to, counts by status."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AnonymousUser
from django.db.models import Count

from accounts.models import ApiKey, Project, User
from core.errors import field_error
from tasks.models import Status, Task


def project_for_new_task(*, user: User, api_key: ApiKey | None, project_id: uuid.UUID | None) -> Project:
    """The project a new task lands in: the one named, else the key's, else the user's own.

    A project the caller cannot see is reported like an unknown one (400 on ``project``),
    so the answer never tells whether it exists. The caller still checks the role.
    """
    visible = Project.objects.visible_to(user, api_key)
    if project_id is not None:
        project = visible.filter(pk=project_id).first()
        if project is None:
            raise field_error("project", "No project of yours has this id.", "does_not_exist")
        return project
    if api_key is not None and api_key.project_id is not None:
        return api_key.project
    project = getattr(user, "personal_project", None)
    if project is None:
        raise field_error("project", "You have no personal project; name a project.", "required")
    return project


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
