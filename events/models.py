"""The events outbox: one row per change, written in the same transaction as the change.

The table keeps its historical name (``tasks_event``): the model moved here from ``tasks``
without touching the data. The task link is a string reference (``"tasks.Task"``), so this
module imports nothing above ``accounts``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
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
    SCHEDULE_FIRED = "schedule.fired"
    SCHEDULE_SKIPPED = "schedule.skipped"
    SCHEDULE_PAUSED = "schedule.paused"


class EventQuerySet(ProjectScopedQuerySet):
    project_field = "project"


class Event(models.Model):
    """One entry of the outbox: a change, written in the same transaction as the change.

    The task link has no database constraint and is never cascaded, so a task's history
    (``task_id``) outlives the task, for the audit trail and the webhook dispatcher.
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

    objects = EventQuerySet.as_manager()

    class Meta:
        db_table = "tasks_event"
        ordering = ("created_at", "id")
        indexes = [
            models.Index(fields=["task", "created_at"], name="event_task_idx"),
            models.Index(fields=["created_at"], name="event_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.task_id or ''}"
