"""Schedules: cron or interval runs of a template or a task, and a record of every slot.

A ``Schedule`` lives in a project and runs either a template (with parameters and task
overrides, through the template trigger) or an existing task (through the executions' enqueue).
``next_fire_at`` is the next slot (the scheduled time); ``due_at`` is when its run starts (the
slot plus its jitter), which the ticker picks on. Every slot that came due leaves one
``ScheduleFire`` row (``UNIQUE (schedule, scheduled_for)``) saying what happened to it.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from accounts.models import Project, ProjectScopedQuerySet
from core.validators import validate_label_text, validate_name

NAME_MAX = 200
DESCRIPTION_MAX = 1000
CRON_MAX = 200
INTERVAL_MIN = 10
INTERVAL_MAX = 366 * 24 * 3600
JITTER_MAX = 3600
CATCHUP_DEFAULT = 3600
CATCHUP_MAX = 7 * 24 * 3600
RUN_ALL_CAP = 10
FAILURES_MAX = 100


class OverlapPolicy(models.TextChoices):
    SKIP = "skip", "Skip the slot"
    QUEUE_ONE = "queue_one", "Queue one run behind it"
    ALLOW = "allow", "Run alongside"
    CANCEL_PREVIOUS = "cancel_previous", "Cancel the previous run"


class MisfirePolicy(models.TextChoices):
    SKIP = "skip", "Skip missed slots"
    RUN_ONCE = "run_once", "Run once for the latest missed slot"
    RUN_ALL = "run_all", f"Run every missed slot (at most {RUN_ALL_CAP})"


class FireOutcome(models.TextChoices):
    FIRED = "fired", "Fired"
    SKIPPED_OVERLAP = "skipped_overlap", "Skipped: previous run still active"
    MISSED = "missed", "Missed"
    PAUSED = "paused", "Paused"
    INVALID = "invalid", "Invalid"


class RunOutcome(models.TextChoices):
    """What "run now" did (``POST /schedules/{id}/trigger``)."""

    FIRED = "fired", "Fired"
    QUEUED = "queued", "Queued behind the active run (queue_one)"


class FireKind(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    CATCHUP = "catchup", "Catch-up"
    MANUAL = "manual", "Run now"


class ScheduleQuerySet(ProjectScopedQuerySet):
    project_field = "project"

    def due(self, now: Any) -> ScheduleQuerySet:
        """Enabled schedules whose next run should have started, or with a queued slot waiting."""
        return self.filter(Q(enabled=True) & (Q(due_at__lte=now) | Q(pending_slot__isnull=False)))


class Schedule(models.Model):
    """When to run what: a cron expression in a zone, or an interval anchored to ``start_at``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="schedules", db_index=False)
    name = models.CharField(max_length=NAME_MAX, validators=[validate_name])
    description = models.TextField(blank=True, max_length=DESCRIPTION_MAX, validators=[validate_label_text])
    enabled = models.BooleanField(default=True, help_text="Off: paused (see paused_reason).")
    # What it runs: a template (parameters + task overrides) or an existing task.
    template = models.ForeignKey(
        "templates_app.Template", null=True, blank=True, on_delete=models.SET_NULL, related_name="schedules"
    )
    parameters = models.JSONField(default=dict, blank=True, help_text='Secrets as {"secret": "<name>"}.')
    overrides = models.JSONField(default=dict, blank=True, help_text="Task fields the template's tasks get.")
    task = models.ForeignKey(
        "tasks.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="schedules"
    )
    # When.
    cron = models.CharField(max_length=CRON_MAX, blank=True, help_text="5 fields, Debian cron semantics.")
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA zone the cron reads.")
    interval_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(INTERVAL_MIN), MaxValueValidator(INTERVAL_MAX)],
    )
    start_at = models.DateTimeField(null=True, blank=True, help_text="No slot before; anchors intervals.")
    end_at = models.DateTimeField(null=True, blank=True, help_text="No slot after.")
    jitter_seconds = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(JITTER_MAX)])
    # Policies.
    overlap_policy = models.CharField(
        max_length=16, choices=OverlapPolicy.choices, default=OverlapPolicy.SKIP
    )
    misfire_policy = models.CharField(
        max_length=16, choices=MisfirePolicy.choices, default=MisfirePolicy.RUN_ONCE
    )
    catchup_window_seconds = models.PositiveIntegerField(
        default=CATCHUP_DEFAULT, validators=[MaxValueValidator(CATCHUP_MAX)]
    )
    pause_after_failures = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(FAILURES_MAX)]
    )
    # State, written by the services and the ticker only.
    next_fire_at = models.DateTimeField(null=True, blank=True, editable=False)
    due_at = models.DateTimeField(null=True, blank=True, editable=False)
    pending_slot = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="queue_one: a slot waiting for the previous run."
    )
    pending_kind = models.CharField(max_length=10, choices=FireKind.choices, blank=True, editable=False)
    paused_at = models.DateTimeField(null=True, blank=True, editable=False)
    paused_reason = models.TextField(blank=True, editable=False)
    last_outcome = models.CharField(max_length=16, choices=FireOutcome.choices, blank=True, editable=False)
    last_scheduled_for = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(default=now, editable=False)

    objects = ScheduleQuerySet.as_manager()

    class Meta:
        ordering = ("name", "id")
        indexes = [
            models.Index(fields=["project", "name", "id"], name="schedule_list_idx"),
            # The ticker: enabled schedules by the time their next run starts.
            models.Index(fields=["due_at"], condition=Q(enabled=True), name="schedule_due_idx"),
            models.Index(
                fields=["pending_slot"], condition=Q(pending_slot__isnull=False), name="schedule_pending_idx"
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(template__isnull=True) | Q(task__isnull=True), name="schedule_one_target"
            ),
            models.CheckConstraint(
                condition=(Q(cron="") & Q(interval_seconds__isnull=False))
                | (~Q(cron="") & Q(interval_seconds__isnull=True)),
                name="schedule_cron_xor_interval",
            ),
            models.CheckConstraint(
                condition=Q(interval_seconds__isnull=True) | Q(interval_seconds__gte=INTERVAL_MIN),
                name="schedule_interval_min",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def when_text(self) -> str:
        if self.interval_seconds:
            return f"every {self.interval_seconds} s"
        return f"{self.cron} ({self.timezone})"


class ScheduleFireQuerySet(ProjectScopedQuerySet):
    project_field = "schedule__project"


class ScheduleFire(models.Model):
    """What happened to one slot of a schedule: fired (with its task and execution), skipped
    because the previous run was still active, missed while no worker ticked, or not run
    because the schedule was paused or its parameters no longer fit the template."""

    id = models.BigAutoField(primary_key=True)
    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="fires", db_index=False)
    scheduled_for = models.DateTimeField()
    kind = models.CharField(max_length=10, choices=FireKind.choices, default=FireKind.SCHEDULED)
    outcome = models.CharField(max_length=16, choices=FireOutcome.choices)
    reason = models.TextField(blank=True)
    task = models.ForeignKey(
        "tasks.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    execution = models.ForeignKey(
        "executions.Execution",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="schedule_fires",
        db_constraint=False,
    )
    created_at = models.DateTimeField(default=now)

    objects = ScheduleFireQuerySet.as_manager()

    class Meta:
        ordering = ("-scheduled_for", "-id")
        constraints = [
            # Exactly once: a second ticker's insert for the same slot does nothing.
            models.UniqueConstraint(fields=("schedule", "scheduled_for"), name="schedule_fire_once"),
            models.CheckConstraint(condition=Q(outcome__in=FireOutcome.values), name="schedule_fire_outcome"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule_id} {self.scheduled_for:%Y-%m-%d %H:%M:%S} {self.outcome}"
