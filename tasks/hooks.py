"""Hooks the layers above tasks register, so a task change can reach them without tasks
importing them (the arrow stays downward).

``on_task_cancel``: called by ``tasks.services.task_move`` for a task being cancelled, inside
its transaction and with the task's row locked, before the task's own status changes. Each
hook returns True when it changed something the task follows (then the task is re-read and,
if it is cancelled already, left as it is). ``executions`` registers the hook that cancels the
task's queued and running executions (``executions.apps``).
"""

from __future__ import annotations

from typing import Any, Protocol

from accounts.models import ApiKey, User
from tasks.models import Task


class TaskCancelHook(Protocol):
    def __call__(self, *, task: Task, actor: User | None, api_key: ApiKey | None) -> bool: ...


on_task_cancel: list[TaskCancelHook] = []


def register_task_cancel(hook: TaskCancelHook) -> None:
    """Add ``hook`` once (``AppConfig.ready`` may run more than once in tests)."""
    if hook not in on_task_cancel:
        on_task_cancel.append(hook)


class TaskFinishedHook(Protocol):
    def __call__(
        self, *, task: Task, outputs: dict[str, Any], actor: User | None, api_key: ApiKey | None
    ) -> None: ...


# ``on_task_finished``: called for a task marked ``in_workflow`` whose status has just become
# completed, failed or cancelled (by its execution, an agent's complete/fail, or a person),
# inside the transaction that wrote the status and with the task's row locked; ``outputs`` is
# what the run published (an execution's outputs, an agent's ``result`` object). ``workflows``
# registers the hook that records the node's end and decides what runs next.
on_task_finished: list[TaskFinishedHook] = []


def register_task_finished(hook: TaskFinishedHook) -> None:
    if hook not in on_task_finished:
        on_task_finished.append(hook)


def task_finished(
    task: Task, *, outputs: Any = None, actor: User | None = None, api_key: ApiKey | None = None
) -> None:
    """Tell the layers above that ``task`` (just moved to ``task.status``) ended; nothing to do
    (and no query) for a task no workflow follows or a status that is not final."""
    from tasks.models import TERMINAL

    if task.status not in TERMINAL or not task.in_workflow:
        return
    published = dict(outputs) if isinstance(outputs, dict) else {}
    for hook in on_task_finished:
        hook(task=task, outputs=published, actor=actor, api_key=api_key)
