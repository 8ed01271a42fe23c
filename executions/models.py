"""Executions (one run of a task's script), their output, and the workers that run them.

The queue is this table: a worker claims the next queued execution in one short transaction
(``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL), marks it running with a fresh claim
token and a lease, and renews the lease while the script runs. Every later write about a
running execution is fenced by (status = running, claim_token), so a worker that lost its
lease changes nothing.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Project, ProjectScopedQuerySet
from core.crypto import EncryptedJSONField


class ExecutionStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"
    CANCELLED = "cancelled", "Cancelled"


FINAL_STATUSES: frozenset[str] = frozenset(
    {ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT, ExecutionStatus.CANCELLED}
)
# Outcomes worth another attempt when the task allows retries (a cancel is a decision, not a failure).
RETRYABLE_STATUSES: frozenset[str] = frozenset({ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT})


class Trigger(models.TextChoices):
    API = "api", "API"
    TEMPLATE = "template", "Template"
    ADMIN = "admin", "Admin"
    CLI = "cli", "Command line"
    RETRY = "retry", "Retry"
    HOOK = "hook", "Inbound trigger"
    HOOK_REPLAY = "hook_replay", "Inbound trigger replay"
    SCHEDULE = "schedule", "Schedule"
    WORKFLOW = "workflow", "Workflow"


class ErrorCode(models.TextChoices):
    NONZERO_EXIT = "nonzero_exit", "Non-zero exit code"
    TIMEOUT = "timeout", "Timed out"
    CANCELLED = "cancelled", "Cancelled"
    WORKER_LOST = "worker_lost", "Worker lost"
    WORKER_SHUTDOWN = "worker_shutdown", "Worker shut down"
    SPAWN_FAILED = "spawn_failed", "Could not start the script"
    KILLED_BY_SIGNAL = "killed_by_signal", "Killed by a signal (e.g. a resource limit)"
    MEMORY_EXCEEDED = "memory_exceeded", "Memory limit exceeded"
    WORKER_ERROR = "worker_error", "The worker could not store the outcome"
    SECRET_MISSING = "secret_missing", "A project secret it refers to no longer exists"
    INVALID_OUTPUTS = "invalid_outputs", "The outputs file is not a JSON object within the size limit"


class Stream(models.TextChoices):
    STDOUT = "stdout", "stdout"
    STDERR = "stderr", "stderr"


class WorkerQuerySet(models.QuerySet):
    def alive(self, now: datetime | None = None) -> WorkerQuerySet:
        """Workers that have not stopped and heartbeated within the dead-after window."""
        cutoff = (now or timezone.now()) - timedelta(seconds=settings.TASKFORGE_WORKER_DEAD_AFTER)
        return self.filter(stopped_at__isnull=True, last_heartbeat_at__gte=cutoff)


class Worker(models.Model):
    """A ``runworker`` process. It heartbeats; a stale heartbeat marks it lost."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    concurrency = models.PositiveSmallIntegerField()
    sandbox = models.CharField(max_length=32, blank=True, help_text="bwrap or rlimits")
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ("-started_at", "id")
        indexes = [models.Index(fields=["stopped_at", "-last_heartbeat_at"], name="worker_alive_idx")]

    def __str__(self) -> str:
        return self.name


class ExecutionQuerySet(ProjectScopedQuerySet):
    project_field = "project"

    def claim_order(self) -> ExecutionQuerySet:
        """Queued executions, highest priority first, then oldest: the order of one project's
        queue (projects take turns: ``executions.engine.queue.execution_claim_batch``)."""
        return self.filter(status=ExecutionStatus.QUEUED).order_by("-priority", "queued_at", "id")

    def lease_expired(self, now: datetime | None = None) -> ExecutionQuerySet:
        return self.filter(status=ExecutionStatus.RUNNING, lease_expires_at__lt=now or timezone.now())

    def active(self) -> ExecutionQuerySet:
        return self.filter(status__in=(ExecutionStatus.QUEUED, ExecutionStatus.RUNNING))


class Execution(models.Model):
    """One run of a task's script, with everything needed to audit it afterwards."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="executions")
    task = models.ForeignKey("tasks.Task", on_delete=models.CASCADE, related_name="executions")
    number = models.PositiveIntegerField(help_text="1, 2, … per task")
    attempt = models.PositiveSmallIntegerField(default=1)
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries"
    )
    status = models.CharField(max_length=10, choices=ExecutionStatus.choices, default=ExecutionStatus.QUEUED)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.API)
    triggered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    triggered_by_key_prefix = models.CharField(max_length=16, blank=True)
    # Parameters as shown (secrets masked, project-secret references as they were given) and
    # the secret values the script needs (or references to project secrets, resolved at claim:
    # vault), encrypted at rest, never serialized and wiped when the execution finishes.
    parameters = models.JSONField(default=dict, blank=True)
    secret_parameters = EncryptedJSONField(editable=False)
    # The script and limits as they were when triggered: editing the task later changes nothing here.
    script_type = models.CharField(max_length=10)
    script = models.TextField()
    timeout_seconds = models.PositiveIntegerField()
    priority = models.PositiveSmallIntegerField()

    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveBigIntegerField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.CharField(max_length=20, choices=ErrorCode.choices, blank=True)
    error_detail = models.CharField(max_length=500, blank=True)
    stdout_truncated = models.BooleanField(default=False)
    stderr_truncated = models.BooleanField(default=False)
    # What the script published in $TASKFORGE_OUTPUTS_FILE: a JSON object, secret values masked.
    outputs = models.JSONField(default=dict, blank=True)

    worker = models.ForeignKey(
        Worker, null=True, blank=True, on_delete=models.SET_NULL, related_name="executions"
    )
    claim_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    sandbox = models.CharField(max_length=32, blank=True)

    objects = ExecutionQuerySet.as_manager()

    # Not a column: the secret values a claimed run hands its script (passed values and
    # resolved project secrets), set by the claim (executions.engine.queue._resolve_secrets).
    secret_values: dict[str, Any] | None = None

    class Meta:
        ordering = ("-queued_at", "-id")
        constraints = [
            models.UniqueConstraint(fields=("task", "number"), name="execution_number_per_task"),
            models.CheckConstraint(
                condition=Q(status__in=ExecutionStatus.values), name="execution_status_valid"
            ),
            # finished_at is set exactly when the execution is over.
            models.CheckConstraint(
                condition=Q(finished_at__isnull=True, status__in=("queued", "running"))
                | Q(finished_at__isnull=False, status__in=sorted(FINAL_STATUSES)),
                name="execution_finished_iff_final",
            ),
            models.CheckConstraint(
                condition=Q(claim_token__isnull=False) | ~Q(status="running"),
                name="execution_running_has_claim",
            ),
        ]
        indexes = [
            # The queue, per project: the projects with queued work (a skip scan of the first
            # column) and each one's head, highest priority first, then oldest.
            models.Index(
                fields=["project", "-priority", "queued_at", "id"],
                condition=Q(status="queued"),
                name="execution_project_queue_idx",
            ),
            # Fair claiming and TASKFORGE_PROJECT_MAX_RUNNING: a project's running executions.
            models.Index(
                fields=["project"], condition=Q(status="running"), name="execution_running_project_idx"
            ),
            # The reaper: running executions by lease.
            models.Index(
                fields=["lease_expires_at"], condition=Q(status="running"), name="execution_lease_idx"
            ),
            models.Index(fields=["task", "-number"], name="execution_task_idx"),
            # max_concurrency: a task's running executions are counted at every claim.
            models.Index(fields=["task"], condition=Q(status="running"), name="execution_running_task_idx"),
            # The dashboard's "failures in the last 24 h".
            models.Index(
                fields=["-finished_at"],
                condition=Q(status__in=("failed", "timed_out")),
                name="execution_failures_idx",
            ),
            models.Index(fields=["project", "-queued_at", "-id"], name="execution_list_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} #{self.number}"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class OutputChunk(models.Model):
    """A piece of an execution's stdout or stderr, inserted while the script runs so that
    ``/log`` follows it live and a crash never loses what was already printed."""

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="chunks")
    seq = models.PositiveIntegerField()
    stream = models.CharField(max_length=6, choices=Stream.choices)
    data = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("execution", "seq")
        constraints = [models.UniqueConstraint(fields=("execution", "seq"), name="chunk_seq_unique")]

    def __str__(self) -> str:
        return f"{self.execution_id}:{self.seq} {self.stream}"
