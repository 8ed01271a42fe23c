"""Hooks the layers above tasks register, so a task change can reach them without tasks
importing them (the arrow stays downward).

``on_task_cancel``: called by ``tasks.services.task_move`` for a task being cancelled, inside
its transaction and with the task's row locked, before the task's own status changes. Each
hook returns True when it changed something the task follows (then the task is re-read and,
if it is cancelled already, left as it is). ``executions`` registers the hook that cancels the
task's queued and running executions (``executions.apps``).
"""

from __future__ import annotations

from typing import Protocol

from accounts.models import ApiKey, User
from tasks.models import Task


class TaskCancelHook(Protocol):
    def __call__(self, *, task: Task, actor: User | None, api_key: ApiKey | None) -> bool: ...


on_task_cancel: list[TaskCancelHook] = []


def register_task_cancel(hook: TaskCancelHook) -> None:
    """Add ``hook`` once (``AppConfig.ready`` may run more than once in tests)."""
    if hook not in on_task_cancel:
        on_task_cancel.append(hook)
