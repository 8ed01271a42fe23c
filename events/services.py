"""Every write to the outbox: build an event, store one, or store several in one INSERT.

Call them inside the transaction that makes the change, so a change and its event commit
(or roll back) together.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import models

from accounts.models import ApiKey, Project, User
from events.models import Event


def event_record(
    *,
    type: str,
    project: Project | uuid.UUID,
    task: models.Model | uuid.UUID | None,
    actor: User | None,
    api_key: ApiKey | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """Append one event. Call it inside the transaction that makes the change."""
    event = event_build(type=type, project=project, task=task, actor=actor, api_key=api_key, data=data)
    event.save(force_insert=True)
    return event


def event_build(
    *,
    type: str,
    project: Project | uuid.UUID,
    task: models.Model | uuid.UUID | None,
    actor: User | None,
    api_key: ApiKey | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """An event not yet stored, for a caller that stores several at once (``bulk_create``:
    one statement, in the order given, as the outbox reads them).

    ``task`` is a ``tasks.Task`` or its id (typed as any model: this layer sits below tasks).
    """
    return Event(
        type=type,
        project_id=project.pk if isinstance(project, Project) else project,
        task_id=task.pk if isinstance(task, models.Model) else task,
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_key_prefix=api_key.prefix if api_key is not None else "",
        data=data or {},
    )


def events_record(*events: Event) -> None:
    """Append ``events`` in one INSERT, in the order given (the outbox reads them by id)."""
    Event.objects.bulk_create(events)
