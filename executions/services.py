"""Every write about executions the API, admin and commands make: enqueue, cancel, prune.

The queue's own writes (claim, output, finish, reap, workers) are the engine's:
``executions.engine.queue``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, User
from core.errors import Conflict, field_error
from events.models import Event, EventType
from executions.engine.queue import QUEUE_CHANNEL, _execution_event, _finish, _next_number, _sync_task, notify
from executions.models import (
    FINAL_STATUSES,
    ErrorCode,
    Execution,
    ExecutionStatus,
    Trigger,
)
from executions.preparers import prepare_run
from tasks.models import Task
from tasks.services import task_blockers
from vault.services import secret_refs_check

logger = logging.getLogger("taskforge.executions")


def execution_event(
    execution: Execution, type_: str, *, actor: User | None = None, api_key: ApiKey | None = None, **data: Any
) -> None:
    _execution_event(execution, type_, actor=actor, api_key=api_key, **data).save(force_insert=True)


@transaction.atomic
def execution_enqueue(
    *,
    task: Task,
    actor: User | None,
    api_key: ApiKey | None = None,
    trigger: str = Trigger.API,
    timeout_seconds: int | None = None,
    parameters: Mapping[str, Any] | None = None,
    secret_parameters: Mapping[str, Any] | None = None,
    script: str | None = None,
    attempt: int = 1,
    retry_of: Execution | None = None,
) -> Execution:
    """Queue a run of ``task``'s script. 409 when it has no script, is archived, is claimed
    by an agent, or depends on tasks that are not completed.

    ``parameters`` (with ``secret_parameters``, all given values) are validated against the
    declarations a templated task keeps (its stored values are the base) and rendered into
    the script; secrets are masked in ``Execution.parameters``. A task not made from a
    template takes no parameters (400). The validating and rendering are the preparer's that
    templates_app registers (``executions.preparers``); a caller that has prepared the run
    already passes the rendered ``script`` with the validated ``parameters`` and
    ``secret_parameters``, which are then taken as they are.
    """
    task = Task.objects.select_for_update().get(pk=task.pk)  # serialises numbering per task
    if not task.script_content:
        raise Conflict("This task has no script: it is a work item for agents to claim.", code="no_script")
    if task.archived:
        raise Conflict("This task is archived; unarchive it to run it.", code="archived")
    if task.lease_expires_at is not None:
        raise Conflict("An agent holds a claim on this task.", code="claimed")
    blockers = task_blockers(task)
    if blockers:
        raise Conflict(
            "The task depends on tasks that are not completed.",
            code="blocked",
            blockers=[str(b) for b in blockers],
        )
    if timeout_seconds is not None and not 1 <= timeout_seconds <= 3600:
        raise field_error("timeout_seconds", "Must be between 1 and 3600.", "out_of_range")
    given = {**(parameters or {}), **(secret_parameters or {})}
    if script is not None:
        pass  # prepared by the caller: rendered, validated, secrets split out
    elif task.parameter_spec:
        script, parameters, secret_parameters = prepare_run(
            spec=task.parameter_spec,
            script=task.script_content,
            script_type=task.script_type,
            stored=task.parameters,
            given=given,
            digest=task.script_digest,
        )
    elif given:
        raise field_error(
            "parameters", "This task was not made from a template: it takes no parameters.", "no_parameters"
        )
    else:
        script = task.script_content
    # References to project secrets are checked now (400 naming a missing one) and resolved
    # when the run is claimed (executions.engine.queue).
    secret_refs_check(task.project_id, secret_parameters or {})
    execution = Execution.objects.create(
        project_id=task.project_id,
        task=task,
        number=_next_number(task),
        attempt=attempt,
        retry_of=retry_of,
        trigger=trigger,
        triggered_by=actor if actor is not None and actor.is_authenticated else None,
        triggered_by_key_prefix=api_key.prefix if api_key is not None else "",
        parameters=dict(parameters or {}),
        secret_parameters=dict(secret_parameters or {}),
        script_type=task.script_type,
        script=script,
        timeout_seconds=timeout_seconds or task.timeout_seconds,
        priority=task.priority,
    )
    queued = _execution_event(
        execution, EventType.EXECUTION_QUEUED, actor=actor, api_key=api_key, trigger=trigger
    )
    # The execution is numbered last, under the task's lock: it is the latest.
    _sync_task(task, execution, created=True, actor=actor, api_key=api_key, events=[queued])
    notify(QUEUE_CHANNEL, str(execution.pk))
    return execution


# --- Cancel -----------------------------------------------------------------------------------
@transaction.atomic
def execution_cancel(*, execution: Execution, actor: User | None, api_key: ApiKey | None = None) -> Execution:
    """Queued: cancelled at once. Running: flagged; its worker kills it within 2 s. Over: 409."""
    execution = Execution.objects.select_for_update().get(pk=execution.pk)
    if execution.status == ExecutionStatus.QUEUED:
        cancelled = _finish(
            execution,
            status=ExecutionStatus.CANCELLED,
            actor=actor,
            api_key=api_key,
            error=ErrorCode.CANCELLED,
        )
        assert cancelled is not None  # the row is locked and was read queued
        return cancelled
    if execution.status == ExecutionStatus.RUNNING:
        if execution.cancel_requested_at is None:
            execution.cancel_requested_at = timezone.now()
            execution.save(update_fields=["cancel_requested_at"])
            execution_event(execution, EventType.EXECUTION_CANCEL_REQUESTED, actor=actor, api_key=api_key)
        return execution
    raise Conflict(
        f"The execution is {execution.status}; only queued or running executions can be cancelled.",
        code="execution_finished",
        status=execution.status,
    )


def prune(*, older_than_days: int, dry_run: bool = False) -> dict[str, int]:
    """Delete finished executions (with their output) and events older than the cutoff.

    Queued and running executions are never pruned; a task's latest execution is kept so
    its ``last_execution`` and ``result`` stay meaningful.
    """

    if older_than_days < 1:
        raise ValueError("older_than_days must be at least 1")
    cutoff = timezone.now() - timedelta(days=older_than_days)
    executions = Execution.objects.filter(status__in=FINAL_STATUSES, finished_at__lt=cutoff).exclude(
        pk__in=Task.objects.filter(last_execution__isnull=False).values("last_execution")
    )
    events = Event.objects.filter(created_at__lt=cutoff)
    counts = {"executions": executions.count(), "events": events.count()}
    if not dry_run:
        with transaction.atomic():
            executions.delete()
            events.delete()
    return counts
