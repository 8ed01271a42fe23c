"""The Django side of test_pg_restart.py, run as a subprocess whose default database is the
test's private PostgreSQL (the test process itself stays on the suite's database).

    python -m tests.hardening.pg_restart_probe seed <label> <long> <short> <copies>
        -> {"user": username, "key": an API key, "tasks": [ids]}: tasks with scripts, each
           enqueued <copies> times
    python -m tests.hardening.pg_restart_probe enqueue <task ids...>
        -> {"executions": [ids]}: one more execution of each
    python -m tests.hardening.pg_restart_probe check <task ids...> --in-flight <execution ids...>
        -> the queue invariants (AssertionError, exit 1, if one fails), then a JSON summary
           (with the status of each execution that was running when the server went down)
"""

from __future__ import annotations

import itertools
import json
import sys
from collections import Counter
from typing import Any

LONG_SCRIPT = "echo start; sleep 4; echo end"
SHORT_SCRIPT = "echo quick"
MAX_RETRIES = 3


def seed(label: str, long: int, short: int, copies: int) -> dict[str, Any]:
    from executions import services
    from tests.factories import UserFactory, make_key
    from tests.hardening.queue_invariants import make_tasks

    user = UserFactory(username=f"restart-{label}")
    tasks = make_tasks(user, long, LONG_SCRIPT, max_retries=MAX_RETRIES)
    tasks += make_tasks(user, short, SHORT_SCRIPT, max_retries=MAX_RETRIES)
    for _ in range(copies):
        for task in tasks:
            services.execution_enqueue(task=task, actor=None)
    _, raw = make_key(user, ["*"])
    return {"user": user.username, "key": raw, "tasks": [str(task.pk) for task in tasks]}


def enqueue(task_ids: list[str]) -> dict[str, Any]:
    from executions import services
    from tasks.models import Task

    tasks = Task.objects.filter(pk__in=task_ids)
    executions = [services.execution_enqueue(task=task, actor=None) for task in tasks]
    return {"executions": [str(execution.pk) for execution in executions]}


def check(task_ids: list[str], in_flight: list[str]) -> dict[str, Any]:
    from executions.models import Execution
    from tasks.models import Task
    from tests.hardening.queue_invariants import assert_invariants

    tasks = list(Task.objects.filter(pk__in=task_ids))
    assert len(tasks) == len(task_ids), "a task disappeared"
    assert_invariants(tasks)
    executions = Execution.objects.filter(task__in=tasks).select_related("worker")
    by_task: dict[Any, list[Execution]] = {}
    for execution in executions.order_by("task_id", "number"):
        by_task.setdefault(execution.task_id, []).append(execution)
    # Never two executions of one task (max_concurrency 1) running at once.
    for chain in by_task.values():
        for previous, current in itertools.pairwise(chain):
            if previous.started_at and current.started_at:
                assert previous.finished_at <= current.started_at, (previous.pk, current.pk)
    # Output survives the outage: complete, each chunk once, for every run that succeeded.
    expected = {LONG_SCRIPT: "start\nend\n", SHORT_SCRIPT: "quick\n"}
    for execution in executions.filter(status="succeeded"):
        output = "".join(execution.chunks.order_by("seq").values_list("data", flat=True))
        assert output == expected[execution.script], (execution.pk, output)
    return {
        "executions": executions.count(),
        "statuses": dict(Counter(executions.values_list("status", flat=True))),
        "errors": dict(Counter(e for e in executions.values_list("error", flat=True) if e)),
        "retries": executions.filter(retry_of__isnull=False).count(),
        "max_attempt": max(e.attempt for e in executions),
        "worker_pids": sorted({e.worker.pid for e in executions if e.worker is not None}),
        "pids_by_execution": {str(e.pk): e.worker.pid for e in executions if e.worker is not None},
        "in_flight": {str(e.pk): e.status for e in Execution.objects.filter(pk__in=in_flight)},
        "tasks": dict(Counter(Task.objects.filter(pk__in=task_ids).values_list("status", flat=True))),
    }


def main(argv: list[str]) -> None:
    import django

    django.setup()
    command, args = argv[0], argv[1:]
    if command == "seed":
        out = seed(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif command == "enqueue":
        out = enqueue(args)
    elif command == "check":
        split = args.index("--in-flight") if "--in-flight" in args else len(args)
        out = check(args[:split], args[split + 1 :])
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
