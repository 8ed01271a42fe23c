"""Every write to the outbox: build an event, store one, or store several in one INSERT; and
the event stream's tickets.

Call them inside the transaction that makes the change, so a change and its event commit
(or roll back) together.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from accounts.models import ApiKey, Project, User
from events.models import Event, StreamTicket


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


# --- Stream tickets ----------------------------------------------------------------------------
TICKET_PREFIX = "evt_"


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def stream_ticket_create(
    *, user: User, api_key: ApiKey | None, filters: dict[str, Any]
) -> tuple[StreamTicket, str]:
    """A single-use ticket for the event stream, bound to ``user`` (and ``api_key``: its scopes
    and project still apply when it is used) and to ``filters``; returns it and the ticket,
    shown once. Expired tickets are swept here."""
    now = timezone.now()
    raw = TICKET_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        StreamTicket.objects.filter(expires_at__lte=now - timedelta(minutes=5)).delete()
        ticket = StreamTicket.objects.create(
            digest=_digest(raw),
            user=user,
            api_key=api_key,
            filters=filters,
            created_at=now,
            expires_at=now + timedelta(seconds=settings.TASKFORGE_EVENT_TICKET_SECONDS),
        )
    return ticket, raw


def stream_ticket_redeem(raw: str) -> StreamTicket | None:
    """The ticket ``raw`` names, used up now; None if it is unknown, used or expired. Two
    requests racing with one ticket: one gets it (one conditional UPDATE)."""
    if not raw.startswith(TICKET_PREFIX) or len(raw) > 100:
        return None
    digest = _digest(raw)
    if not StreamTicket.objects.redeemable().filter(digest=digest).update(used_at=timezone.now()):
        return None
    return StreamTicket.objects.select_related("user", "api_key").get(digest=digest)
