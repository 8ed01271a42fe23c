"""The events outbox: one row per change, written in the same transaction as the change.

The table keeps its historical name (``tasks_event``): the model moved here from ``tasks``
without touching the data. The task link is a string reference (``"tasks.Task"``), so this
module imports nothing above ``accounts``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models.sql.compiler import SQLCompiler
from django.utils import timezone

from accounts.models import Project, ProjectScopedQuerySet


class EventType(models.TextChoices):
    TASK_CREATED = "task.created"
    TASK_UPDATED = "task.updated"
    TASK_DELETED = "task.deleted"
    TASK_STATUS_CHANGED = "task.status_changed"
    TASK_CLAIMED = "task.claimed"
    TASK_RELEASED = "task.released"
    TASK_LEASE_EXPIRED = "task.lease_expired"
    TASK_COMPLETED = "task.completed"
    TASK_FAILED = "task.failed"
    TASK_NOTE_ADDED = "task.note_added"
    EXECUTION_QUEUED = "execution.queued"
    EXECUTION_STARTED = "execution.started"
    EXECUTION_FINISHED = "execution.finished"
    EXECUTION_CANCEL_REQUESTED = "execution.cancel_requested"
    SECRET_CREATED = "secret.created"  # noqa: S105 - event names, not secrets
    SECRET_UPDATED = "secret.updated"  # noqa: S105
    SECRET_DELETED = "secret.deleted"  # noqa: S105
    SECRET_USED = "secret.used"  # noqa: S105
    TRIGGER_CREATED = "trigger.created"
    TRIGGER_UPDATED = "trigger.updated"
    TRIGGER_DELETED = "trigger.deleted"
    TRIGGER_SECRET_ROTATED = "trigger.secret_rotated"  # noqa: S105 - an event name
    # Routing (tasks.routing): no online agent can take the task / one can again.
    TASK_UNROUTABLE = "task.unroutable"
    TASK_ROUTABLE = "task.routable"
    # Every change of an agent's state (agents.services).
    AGENT_REGISTERED = "agent.registered"
    AGENT_ONLINE = "agent.online"
    AGENT_OFFLINE = "agent.offline"
    AGENT_PAUSED = "agent.paused"
    AGENT_RESUMED = "agent.resumed"
    AGENT_DRAINING = "agent.draining"
    AGENT_DELETED = "agent.deleted"
    SCHEDULE_FIRED = "schedule.fired"
    SCHEDULE_SKIPPED = "schedule.skipped"
    SCHEDULE_PAUSED = "schedule.paused"
    # A workflow run and its nodes (workflows.engine); data carries workflow_id.
    WORKFLOW_STARTED = "workflow.started"
    WORKFLOW_PAUSED = "workflow.paused"
    WORKFLOW_RESUMED = "workflow.resumed"
    WORKFLOW_RETRIED = "workflow.retried"
    WORKFLOW_SUCCEEDED = "workflow.succeeded"
    WORKFLOW_FAILED = "workflow.failed"
    WORKFLOW_CANCELLED = "workflow.cancelled"
    WORKFLOW_NODE_STARTED = "workflow.node_started"
    WORKFLOW_NODE_FINISHED = "workflow.node_finished"
    WORKFLOW_NODE_SKIPPED = "workflow.node_skipped"


class CurrentTransaction(models.Func):
    """The inserting transaction's id, the default of ``Event.txid``: on PostgreSQL
    ``pg_current_xact_id()`` (the top-level transaction's, never wrapping); elsewhere 0, for
    SQLite lets one transaction write at a time, so its ids already commit in order."""

    allowed_default = True
    output_field = models.BigIntegerField()

    def as_sql(self, compiler: SQLCompiler, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:
        return "0", []

    def as_postgresql(
        self, compiler: SQLCompiler, connection: Any, **extra_context: Any
    ) -> tuple[str, list[Any]]:
        return "(pg_current_xact_id()::text::bigint)", []


class EventQuerySet(ProjectScopedQuerySet):
    project_field = "project"


class Event(models.Model):
    """One entry of the outbox: a change, written in the same transaction as the change.

    The task link has no database constraint and is never cascaded, so a task's history
    (``task_id``) outlives the task, for the audit trail and the webhook dispatcher.

    ``txid`` is the inserting transaction's id (set by the database): the event stream orders
    by ``(txid, id)`` and delivers only transactions older than every one still running, so an
    id that commits after a higher one is never skipped (``events.selectors``). On PostgreSQL a
    trigger also sends ``NOTIFY taskforge_events`` when an insert commits (migration 0002).
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="events")
    task = models.ForeignKey(
        "tasks.Task",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,  # event_task_idx leads with task_id
        related_name="events",
    )
    type = models.CharField(max_length=64, choices=EventType.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_key_prefix = models.CharField(max_length=16, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    txid = models.BigIntegerField(db_default=CurrentTransaction(), editable=False)

    objects = EventQuerySet.as_manager()

    class Meta:
        db_table = "tasks_event"
        ordering = ("created_at", "id")
        indexes = [
            models.Index(fields=["task", "created_at"], name="event_task_idx"),
            models.Index(fields=["created_at"], name="event_created_idx"),
            models.Index(fields=["txid", "id"], name="event_stream_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.task_id or ''}"


class StreamTicketQuerySet(models.QuerySet):
    def redeemable(self) -> StreamTicketQuerySet:
        return self.filter(used_at__isnull=True, expires_at__gt=timezone.now())


class StreamTicket(models.Model):
    """A short-lived, single-use pass to open the event stream without a header (a browser's
    ``EventSource`` cannot send one): bound to who asked for it (the user, and the API key
    whose scopes and project it stays within) and to the filters it was asked with.

    Only the SHA-256 of the ticket is stored; the ticket itself is shown once.
    """

    digest = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    filters = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    objects = StreamTicketQuerySet.as_manager()

    class Meta:
        ordering = ("created_at", "id")
        indexes = [models.Index(fields=["expires_at"], name="streamticket_expires_idx")]

    def __str__(self) -> str:
        return f"stream ticket of {self.user_id} until {self.expires_at:%H:%M:%S}"
