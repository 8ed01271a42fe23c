"""The one reader of the task state machine, and the engine's writer of task status.

``status_check`` is the only function that reads the tables in ``tasks.models`` (``MOVES``: a
person's ``TRANSITIONS``, the claim protocol's, the engine's). Every write of a task's status
checks its move here first: ``task_move`` and the claim protocol in ``tasks.services``, and
``task_follow_execution`` below for the execution engine, so no other module writes
``tasks_task.status``.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from accounts.models import ApiKey, User
from core import sql
from core.errors import Conflict
from events.models import Event, EventType
from events.services import event_build
from tasks.models import MOVES, Mover, Status, Task


def allowed_targets(status: str, mover: str = Mover.PERSON) -> tuple[str, ...]:
    """The statuses ``mover`` may move a ``status`` task to."""
    return MOVES[Mover(mover)].get(Status(status), ())


def status_check(*, from_status: str, to_status: str, mover: str = Mover.PERSON) -> None:
    """409 ``invalid_transition`` (listing the allowed targets) unless ``mover``'s table allows
    ``from_status -> to_status``. A dict look-up: no query."""
    allowed = allowed_targets(from_status, mover)
    if to_status not in allowed:
        raise Conflict(
            f"A {from_status} task cannot move to {to_status}; allowed: {', '.join(allowed) or 'none'}.",
            code="invalid_transition",
            current_status=from_status,
            allowed=list(allowed),
        )


def task_follow_execution(
    *,
    task: Task,
    to_status: str,
    last_execution: Any,
    result: dict[str, Any] | None = None,
    actor: User | None = None,
    api_key: ApiKey | None = None,
) -> list[Event]:
    """Move ``task`` to ``to_status``, the status its latest execution ``last_execution`` shows
    (its ``pk``, ``exit_code`` and ``error`` are read), recorded as the task's
    ``last_execution``, with ``result`` once that run finished; returns the task's events, built
    and not stored (the engine stores them after its own in one INSERT).

    The hot path (a worker's claim and finish): one plain UPDATE (``core.sql``) in the caller's
    transaction, whose caller holds the task's row lock (or SQLite's write lock) and read
    ``task.status`` under it; ``task`` is updated too. 409, and nothing written, if the engine's
    table does not allow the move.
    """
    old_status = task.status
    status_check(from_status=old_status, to_status=to_status, mover=Mover.EXECUTION)
    fields: dict[str, Any] = {"status": to_status, "updated_at": timezone.now()}
    fields["last_execution"] = last_execution
    if result is not None:
        fields["result"] = result
    assigned, params = sql.assignments(Task, **fields)
    # The names are constants of the code, every value a bound parameter (core.sql).
    statement = f'UPDATE "tasks_task" SET {assigned} WHERE "id" = %s'  # noqa: S608
    sql.execute(statement, [*params, *sql.values(Task, id=task.pk)])
    task.status, task.last_execution = to_status, last_execution
    if old_status == to_status:
        return []
    return _status_events(task, old_status, to_status, last_execution, actor=actor, api_key=api_key)


def _status_events(
    task: Task,
    old_status: str,
    new_status: str,
    execution: Any,
    *,
    actor: User | None,
    api_key: ApiKey | None,
) -> list[Event]:
    """task.status_changed (reason ``execution``), then task.completed or task.failed if it ended so."""
    events = [
        event_build(
            type=EventType.TASK_STATUS_CHANGED,
            project=task.project_id,
            task=task.pk,
            actor=actor,
            api_key=api_key,
            data={
                "from": old_status,
                "to": new_status,
                "reason": "execution",
                "execution_id": str(execution.pk),
            },
        )
    ]
    ended = {
        Status.COMPLETED: (EventType.TASK_COMPLETED, {}),
        Status.FAILED: (EventType.TASK_FAILED, {"error": execution.error or None}),
    }.get(new_status)
    if ended is not None:
        type_, extra = ended
        data = {"execution_id": str(execution.pk), "exit_code": execution.exit_code, **extra}
        events.append(event_build(type=type_, project=task.project_id, task=task.pk, actor=None, data=data))
    return events
