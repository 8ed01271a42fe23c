"""Firing one slot of a locked schedule, and recording what happened to the slots that did not run.

Called by the ticker (``schedules.services.schedules_tick``) and by "run now"
(``schedule_trigger``), always inside the transaction that holds the schedule's row lock, so a
fire row, the task and execution it made, the events and the schedule's next fire all commit
together or not at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from core import sql
from core.errors import Conflict
from events.models import EventType
from events.services import event_record
from executions.models import Execution, ExecutionStatus, Trigger
from executions.services import execution_cancel, execution_enqueue
from schedules.models import FireKind, FireOutcome, Schedule, ScheduleFire
from templates_app.services import template_trigger

FAILED_STATUSES = frozenset({ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT})
_FIRE_COLUMNS = ("schedule", "scheduled_for", "kind", "outcome", "reason", "created_at")


class FireRefused(Exception):
    """What the schedule runs cannot run any more (parameters, template or task): pause it."""


def record(
    schedule: Schedule, slot: datetime, outcome: str, reason: str, *, kind: str, now: datetime
) -> int | None:
    """Insert the fire row of ``slot``; its id, or None when a row for the slot exists already
    (``ON CONFLICT DO NOTHING``: whoever inserted first owns the slot)."""
    params = sql.values(
        ScheduleFire,
        schedule=schedule.pk,
        scheduled_for=slot,
        kind=kind,
        outcome=outcome,
        reason=reason,
        created_at=now,
    )
    # Table and column names come from the model; every value is a parameter.
    statement = (
        f"INSERT INTO {sql.table(ScheduleFire)} ({sql.columns(ScheduleFire, _FIRE_COLUMNS)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(params))}) "
        f"ON CONFLICT ({sql.columns(ScheduleFire, ('schedule', 'scheduled_for'))}) DO NOTHING RETURNING id"
    )
    found = sql.rows(statement, params)
    if found:
        schedule.last_outcome, schedule.last_scheduled_for = outcome, slot
    return found[0][0] if found else None


def record_skipped(
    schedule: Schedule, slots: Iterable[datetime], outcome: str, reason: str, *, kind: str, now: datetime
) -> int:
    """Record ``slots`` as not run (one ``schedule.skipped`` event for them all); how many."""
    recorded = [slot for slot in slots if record(schedule, slot, outcome, reason, kind=kind, now=now)]
    if recorded:
        event_record(
            type=EventType.SCHEDULE_SKIPPED,
            project=schedule.project_id,
            task=None,
            actor=None,
            data={
                **_about(schedule),
                "outcome": outcome,
                "reason": reason,
                "count": len(recorded),
                "first": recorded[0].isoformat(),
                "last": recorded[-1].isoformat(),
            },
        )
    return len(recorded)


def _about(schedule: Schedule) -> dict[str, Any]:
    return {"schedule": str(schedule.pk), "name": schedule.name}


def active_runs(schedule: Schedule) -> list[Execution]:
    """Queued or running executions of what this schedule ran: its task, or the tasks its
    template fires made (retries included: they run the same task)."""
    if schedule.task_id is not None:
        tasks: Any = [schedule.task_id]
    else:
        tasks = ScheduleFire.objects.filter(
            schedule=schedule, outcome=FireOutcome.FIRED, task__isnull=False
        ).values("task_id")
    return list(Execution.objects.active().filter(task_id__in=tasks).order_by("queued_at", "id"))


def cancel_runs(runs: Iterable[Execution]) -> None:
    for run in runs:
        with contextlib.suppress(Conflict):  # it finished meanwhile
            execution_cancel(execution=run, actor=None)


def failure_streak(schedule: Schedule) -> bool:
    """True when the last ``pause_after_failures`` runs all ended failed (or timed out),
    retries included: a run whose retry succeeded did not fail."""
    wanted = schedule.pause_after_failures
    if not wanted:
        return False
    fires = list(
        ScheduleFire.objects.filter(schedule=schedule, outcome=FireOutcome.FIRED, execution__isnull=False)
        .select_related("execution")
        .order_by("-scheduled_for", "-id")[:wanted]
    )
    if len(fires) < wanted:
        return False
    for fire in fires:
        run = fire.execution
        while run is not None:
            retry = Execution.objects.filter(retry_of=run).order_by("-attempt").first()
            if retry is None:
                break
            run = retry
        if run is None or run.status not in FAILED_STATUSES:
            return False
    return True


def pause(schedule: Schedule, reason: str, *, actor: Any = None, api_key: Any = None, now: datetime) -> None:
    """Switch the locked ``schedule`` off with ``reason``; a slot waiting behind a run
    (queue_one) is recorded as paused. The caller saves the schedule."""
    if schedule.pending_slot is not None:
        kind = schedule.pending_kind or FireKind.SCHEDULED
        record(schedule, schedule.pending_slot, FireOutcome.PAUSED, reason, kind=kind, now=now)
    schedule.enabled = False
    schedule.paused_at = now
    schedule.paused_reason = reason
    schedule.next_fire_at = schedule.due_at = schedule.pending_slot = None
    schedule.pending_kind = ""
    event_record(
        type=EventType.SCHEDULE_PAUSED,
        project=schedule.project_id,
        task=None,
        actor=actor,
        api_key=api_key,
        data={**_about(schedule), "reason": reason},
    )


def _run(schedule: Schedule, actor: Any, api_key: Any) -> tuple[Any, Execution | None]:
    """Make the run: the template's trigger, or the task's enqueue. FireRefused says why not.
    ``actor``: who pressed "run now" (None for the ticker: the run is the schedule's)."""
    try:
        with transaction.atomic():  # a savepoint: a refusal leaves nothing behind
            if schedule.template_id is not None:
                return template_trigger(
                    template=schedule.template,
                    actor=actor,
                    api_key=api_key,
                    parameters=schedule.parameters,
                    overrides=schedule.overrides,
                    trigger=Trigger.SCHEDULE,
                )
            if schedule.task_id is not None:
                task = schedule.task
                return task, execution_enqueue(
                    task=task, actor=actor, api_key=api_key, trigger=Trigger.SCHEDULE
                )
    except ValidationError as exc:
        raise FireRefused(_describe(exc)) from None
    except Conflict as exc:
        raise FireRefused(f"{exc.detail} ({exc.get_codes()})") from None
    except TypeError as exc:  # an override the template trigger no longer takes
        raise FireRefused(str(exc)) from None
    raise FireRefused("Its template or task was deleted.")


def _describe(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        parts = [
            f"{field}: {' '.join(m.message % m.params if m.params else m.message for m in errors)}"
            for field, errors in exc.error_dict.items()
        ]
        return "; ".join(parts)
    return " ".join(exc.messages)


def fire(
    schedule: Schedule, slot: datetime, *, kind: str, now: datetime, actor: Any = None, api_key: Any = None
) -> ScheduleFire | None:
    """Fire ``slot``: claim its row, make the run, link them, write ``schedule.fired``.

    None when another ticker owns the slot already. Raises FireRefused (after recording the
    slot as ``invalid``) when the run cannot be made; the caller pauses the schedule.
    """
    fire_id = record(schedule, slot, FireOutcome.FIRED, "", kind=kind, now=now)
    if fire_id is None:
        return None
    try:
        task, execution = _run(schedule, actor, api_key)
    except FireRefused as refused:
        ScheduleFire.objects.filter(pk=fire_id).update(outcome=FireOutcome.INVALID, reason=str(refused))
        schedule.last_outcome = FireOutcome.INVALID
        raise
    ScheduleFire.objects.filter(pk=fire_id).update(task=task, execution=execution)
    event_record(
        type=EventType.SCHEDULE_FIRED,
        project=schedule.project_id,
        task=task,
        actor=actor,  # who pressed "run now"; None for the ticker
        api_key=api_key,
        data={
            **_about(schedule),
            "scheduled_for": slot.isoformat(),
            "kind": kind,
            "execution": str(execution.pk) if execution else None,
        },
    )
    return ScheduleFire.objects.get(pk=fire_id)
