from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from accounts.models import Project, User
from schedules import services
from schedules.models import Schedule
from tasks.models import Task
from templates_app.models import Template
from templates_app.services import template_create

REPORT_PARAMETERS: list[dict[str, Any]] = [
    {"name": "env", "type": "choice", "choices": ["staging", "production"], "default": "staging"},
    {"name": "days", "type": "integer", "min": 1, "max": 30, "required": True},
    {"name": "token", "type": "string", "secret": True},
]


def at(text: str) -> datetime:
    """An aware UTC datetime from ``YYYY-MM-DDTHH:MM[:SS]``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def template(user: User, project: Project) -> Template:
    return template_create(
        project=project,
        actor=user,
        slug="report",
        name="Report",
        name_pattern="Report for {{ env }}",
        script_type="bash",
        script="echo report {{ env }} {{ days }}",
        parameters=REPORT_PARAMETERS,
    )


@pytest.fixture
def script_task(project: Project) -> Task:
    return Task.objects.create(project=project, name="job", script_type="bash", script_content="echo tick")


@pytest.fixture
def make_schedule(user: User, project: Project, template: Template) -> Callable[..., Schedule]:
    """``make_schedule(**fields)``: a schedule of the report template (days=3) by default,
    created with the clock at ``created`` (so the first slot is known)."""

    def make(*, created: datetime | None = None, **fields: Any) -> Schedule:
        if "task" not in fields:
            fields.setdefault("template", template)
            fields.setdefault("parameters", {"days": 3})
        if "cron" not in fields:
            fields.setdefault("interval_seconds", 60)
        fields.setdefault("name", "nightly")
        schedule = services.schedule_create(project=project, actor=user, **fields)
        if created is not None:
            schedule.next_fire_at = None
            services._plan(schedule, created)
            schedule.save()
        return schedule

    return make
