"""Tasks no online agent can take: found, marked (``unroutable_since``) and recorded, never
silently stuck.

A *routed* task (pinned to a registered agent, or requiring labels) can only be taken by an
agent. It is **unroutable** while it is pending and no agent of its project that is online
(not paused, draining, offline or deleted) carries its labels and, if it is pinned, is the
agent it names. Tasks that are neither pinned nor labelled stay claimable by any caller and are
never unroutable. ``routing_refresh`` re-checks a project's routed pending tasks: when a task is
created or changed, whenever an agent's state changes (``tasks.routing.after_agent_change``)
and on every agent sweep.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from django.utils import timezone

from agents.models import Agent, labels_match
from events.models import EventType
from events.services import event_build, events_record
from tasks.models import Status, Task

# Routed pending tasks re-checked per project and refresh (the oldest first).
REFRESH_LIMIT = 2000


def _why(pin: uuid.UUID | None, required: dict[str, str], pinned_to: Agent | None) -> str:
    if pin is not None:
        name = pinned_to.name if pinned_to is not None else str(pin)
        state = "deleted" if pinned_to is None or pinned_to.deleted_at else pinned_to.state_at()
        return f"It is pinned to agent {name!r}, which is {state}."
    wanted = ", ".join(f"{key}={value}" for key, value in sorted(required.items()))
    return f"No online agent carries the labels {wanted}."


def routing_refresh(
    *, project_id: uuid.UUID, task_ids: Iterable[uuid.UUID] | None = None, now: datetime | None = None
) -> int:
    """Mark the project's routed pending tasks that no online agent can take (``task.unroutable``)
    and clear the ones one can take again (``task.routable``). Returns how many changed."""
    now = now or timezone.now()
    ready = list(Agent.objects.filter(project_id=project_id).ready(now).only("pk", "labels"))
    tasks = Task.objects.filter(project_id=project_id)
    if task_ids is not None:
        task_ids = list(task_ids)
        tasks = tasks.filter(pk__in=task_ids)
        # A task that left the routed pending set (claimed, cancelled, unpinned) is not unroutable.
        Task.objects.filter(pk__in=task_ids, unroutable_since__isnull=False).exclude(
            pk__in=tasks.filter(status=Status.PENDING, archived=False).routed().values("pk")
        ).update(unroutable_since=None)
    else:
        tasks.filter(unroutable_since__isnull=False).exclude(status=Status.PENDING).update(
            unroutable_since=None
        )
    rows = list(
        tasks.filter(status=Status.PENDING, archived=False, claimed_by__isnull=True)
        .routed()
        .order_by("created_at", "id")
        .values_list("pk", "assigned_agent_id", "required_labels", "unroutable_since")[:REFRESH_LIMIT]
    )
    stuck, freed = [], []
    for pk, pin, required, since in rows:
        takers = [a for a in ready if (pin is None or pin == a.pk) and labels_match(required, a.labels)]
        if takers and since is not None:
            freed.append(pk)
        elif not takers and since is None:
            stuck.append((pk, pin, required))
    if not stuck and not freed:
        return 0
    pinned = Agent.objects.in_bulk({pin for _pk, pin, _required in stuck if pin is not None})
    Task.objects.filter(pk__in=[pk for pk, _pin, _required in stuck]).update(unroutable_since=now)
    Task.objects.filter(pk__in=freed).update(unroutable_since=None)
    events_record(
        *(
            event_build(
                type=EventType.TASK_UNROUTABLE,
                project=project_id,
                task=pk,
                actor=None,
                data={
                    "reason": _why(pin, required, pinned.get(pin)),
                    "required_labels": required,
                    "assigned_agent": None if pin is None else str(pin),
                },
            )
            for pk, pin, required in stuck
        ),
        *(event_build(type=EventType.TASK_ROUTABLE, project=project_id, task=pk, actor=None) for pk in freed),
    )
    return len(stuck) + len(freed)


def routed_projects(limit: int = 500) -> list[uuid.UUID]:
    """Projects that have routed pending tasks or tasks marked unroutable (the sweep's work)."""
    pending = Task.objects.filter(status=Status.PENDING, archived=False).routed()
    marked = Task.objects.filter(unroutable_since__isnull=False)
    ids = set(pending.order_by().values_list("project_id", flat=True).distinct()[:limit])
    ids |= set(marked.order_by().values_list("project_id", flat=True).distinct()[:limit])
    return sorted(ids)
