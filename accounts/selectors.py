"""Reads about projects that every app's views share: where a new object lands."""

from __future__ import annotations

import uuid

from accounts.models import ApiKey, Project, User
from core.errors import field_error


def project_for_new_object(*, user: User, api_key: ApiKey | None, project_id: uuid.UUID | None) -> Project:
    """The project a new task, template or webhook lands in: the one named, else the key's,
    else the user's own.

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
