"""The queue invariants the chaos suites check after every disaster (kill -9, a lost
connection, a PostgreSQL restart): shared by test_queue_chaos.py and test_pg_restart.py
(which runs them in a subprocess against its private PostgreSQL)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from django.db.models import Count

from events.models import Event
from executions.models import ErrorCode, Execution, ExecutionStatus
from tasks.models import Status, Task

FOLLOWS = {
    ExecutionStatus.QUEUED: Status.QUEUED,
    ExecutionStatus.RUNNING: Status.RUNNING,
    ExecutionStatus.SUCCEEDED: Status.COMPLETED,
    ExecutionStatus.FAILED: Status.FAILED,
    ExecutionStatus.TIMED_OUT: Status.FAILED,
    ExecutionStatus.CANCELLED: Status.CANCELLED,
}


def make_tasks(user: Any, count: int, script: str, max_retries: int = 3) -> list[Task]:
    return [
        Task.objects.create(
            project=user.personal_project,
            created_by=user,
            name=f"chaos {index}",
            script_type="bash",
            script_content=script,
            max_retries=max_retries,
            timeout_seconds=30,
        )
        for index in range(count)
    ]


def settled(tasks: Iterable[Task]) -> bool:
    """Every task's latest execution is final (nothing queued or running)."""
    return all(
        (latest := Execution.objects.filter(task=task).order_by("-number").first()) is not None
        and latest.is_final
        for task in tasks
    )


def assert_invariants(tasks: list[Task]) -> None:
    executions = Execution.objects.filter(task__in=tasks)
    # None stuck: nothing running or queued once things settle.
    assert not executions.filter(status__in=[ExecutionStatus.RUNNING, ExecutionStatus.QUEUED]).exists()
    # None started twice.
    started = (
        Event.objects.filter(type="execution.started", data__execution_id__in=[str(e.pk) for e in executions])
        .values("data__execution_id")
        .annotate(n=Count("id"))
    )
    assert all(row["n"] == 1 for row in started), list(started)
    for task in tasks:
        runs = list(Execution.objects.filter(task=task).order_by("number"))
        assert runs, f"task {task.pk} has no execution"
        retried = {e.retry_of_id: e for e in runs if e.retry_of_id is not None}
        # One chain per enqueue: the run the API (or a test) queued, then its retries.
        for root in (e for e in runs if e.retry_of_id is None):
            assert root.attempt == 1, root
            chain = [root]
            while chain[-1].pk in retried:
                chain.append(retried[chain[-1].pk])
            # Retries counted: each retry follows the previous attempt, never beyond max_retries.
            for previous, current in itertools.pairwise(chain):
                assert current.attempt == previous.attempt + 1, (task, previous.attempt, current.attempt)
                assert previous.status in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT), previous
            last = chain[-1]
            assert last.attempt <= task.max_retries + 1
            # No execution lost: a lost run is retried while retries remain, and the chain ends
            # in success, or in failure only once retries ran out.
            assert last.error != ErrorCode.WORKER_LOST or last.attempt == task.max_retries + 1, last
            assert last.status == ExecutionStatus.SUCCEEDED or last.attempt == task.max_retries + 1, last
        # Every retry belongs to a chain (it retries a run of the same task).
        assert all(e.retry_of_id in {r.pk for r in runs} for e in retried.values())
        task.refresh_from_db()
        assert task.status == FOLLOWS[runs[-1].status], (task.status, runs[-1].status)
