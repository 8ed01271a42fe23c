"""What executions does when a layer below it changes (registered in ``executions.apps``)."""

from __future__ import annotations

from accounts.models import ApiKey, User
from executions.services import execution_cancel
from tasks.models import Task


def cancel_task_executions(*, task: Task, actor: User | None, api_key: ApiKey | None) -> bool:
    """Cancelling a task cancels its queued and running executions too (a running script is
    killed by its worker within 2 s). True when the task had any."""
    active = list(task.executions.active())
    for execution in active:
        execution_cancel(execution=execution, actor=actor, api_key=api_key)
    return bool(active)
