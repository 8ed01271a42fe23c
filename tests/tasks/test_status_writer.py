"""One writer of task status: every move, the engine's included, is checked against the
state machine's tables in tasks.models by tasks.status, and the worker's hot path did not
grow for it (issue 20 item 3)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.errors import Conflict
from events.models import Event, EventType
from executions import services as execution_services
from executions.engine import queue
from executions.models import Execution
from tasks import status as task_status
from tasks.models import (
    CLAIM_TRANSITIONS,
    EXECUTION_TRANSITIONS,
    FOLLOWS_EXECUTION,
    MOVES,
    TRANSITIONS,
    Mover,
    Status,
    Task,
)

pytestmark = pytest.mark.django_db  # (the cache is the database's on SQLite)

ROOT = Path(__file__).resolve().parents[2]


def test_every_mover_has_its_table():
    assert MOVES == {
        Mover.PERSON: TRANSITIONS,
        Mover.CLAIM: CLAIM_TRANSITIONS,
        Mover.EXECUTION: EXECUTION_TRANSITIONS,
    }
    assert CLAIM_TRANSITIONS == {"pending": ("running",), "running": ("completed", "failed", "pending")}
    assert FOLLOWS_EXECUTION == ("queued", "running", "completed", "failed", "cancelled")
    assert dict.fromkeys(Status.values, FOLLOWS_EXECUTION) == EXECUTION_TRANSITIONS


def test_the_engine_table_holds_every_status_an_execution_shows():
    assert set(queue.TASK_STATUS_FOR.values()) == set(FOLLOWS_EXECUTION)


@pytest.mark.parametrize(
    ("mover", "old", "new"),
    [
        (Mover.PERSON, "queued", "pending"),
        (Mover.PERSON, "running", "pending"),
        (Mover.CLAIM, "pending", "completed"),
        (Mover.CLAIM, "queued", "running"),
        (Mover.EXECUTION, "completed", "pending"),
        (Mover.EXECUTION, "running", "pending"),
    ],
)
def test_a_move_outside_its_table_is_a_conflict(mover, old, new):
    with pytest.raises(Conflict) as caught:
        task_status.status_check(from_status=old, to_status=new, mover=mover)
    assert caught.value.get_codes() == "invalid_transition"
    assert caught.value.extra == {"current_status": old, "allowed": list(MOVES[mover].get(old, ()))}


def _queued(project, user) -> tuple[Task, Execution]:
    task = Task.objects.create(project=project, name="job", script_type="bash", script_content="echo hi")
    execution = execution_services.execution_enqueue(task=task, actor=user)
    task.refresh_from_db()
    return task, execution


@pytest.mark.parametrize("old", Status.values)
@pytest.mark.parametrize("new", FOLLOWS_EXECUTION)
def test_the_task_follows_its_execution_from_any_status(project, user, old, new):
    task, execution = _queued(project, user)
    Task.objects.filter(pk=task.pk).update(status=old)  # wherever a person's moves left it
    task.refresh_from_db()
    Event.objects.all().delete()
    events = task_status.task_follow_execution(task=task, to_status=new, last_execution=execution)
    task.refresh_from_db()
    assert (task.status, task.last_execution_id) == (new, execution.pk)
    types = [event.type for event in events]
    if old == new:
        assert types == []
    else:
        assert types[0] == EventType.TASK_STATUS_CHANGED
        assert events[0].data == {
            "from": old,
            "to": new,
            "reason": "execution",
            "execution_id": str(execution.pk),
        }
    assert not Event.objects.exists()  # built, not stored: the engine stores them in one INSERT


def test_an_engine_move_the_table_refuses_raises_and_changes_nothing(project, user):
    task, execution = _queued(project, user)
    before = Task.objects.values().get(pk=task.pk)
    events_before = Event.objects.count()
    with CaptureQueriesContext(connection) as captured, pytest.raises(Conflict) as caught:
        task_status.task_follow_execution(task=task, to_status=Status.PENDING, last_execution=execution)
    assert caught.value.get_codes() == "invalid_transition"
    assert captured.captured_queries == []  # refused before any write
    assert task.status == Status.QUEUED
    assert Task.objects.values().get(pk=task.pk) == before
    assert Event.objects.count() == events_before


# Measured on main before the engine's task write moved to tasks.status (`fdfd834`): the same
# statements, in the same order, on each database.
CLAIM_STATEMENTS = {
    "postgresql": [
        "BEGIN",
        "SET",
        "WITH",
        "SELECT",
        'SELECT FROM "tasks_task"',
        'UPDATE "executions_execution"',
        'UPDATE "tasks_task"',
        'INSERT INTO "tasks_event"',
        "COMMIT",
    ],
    "sqlite": [
        "BEGIN",
        "WITH",
        "SELECT",
        'SELECT FROM "tasks_task"',
        'UPDATE "executions_execution"',
        'UPDATE "tasks_task"',
        'INSERT INTO "tasks_event"',
        "COMMIT",
    ],
}
FINISH_STATEMENTS = [
    "BEGIN",
    'UPDATE "executions_execution"',
    'INSERT INTO "executions_outputchunk"',
    'SELECT FROM "tasks_task"',
    'UPDATE "tasks_task"',
    'INSERT INTO "tasks_event"',
    "COMMIT",
]


def _shape(statement: str) -> str:
    """A statement's verb, and its table for the writes and the task's lock."""
    verb = statement.split(None, 1)[0].upper()
    if verb in ("UPDATE", "INSERT"):
        return " ".join(statement.split()[:2] if verb == "UPDATE" else statement.split()[:3])
    if verb == "SELECT" and re.search(r'FROM "tasks_task" WHERE "id" = ', statement):
        return 'SELECT FROM "tasks_task"'
    return verb


@pytest.mark.django_db(transaction=True)
def test_the_workers_claim_and_finish_did_not_grow(project, user):
    task, _ = _queued(project, user)
    worker = queue.worker_register(concurrency=1, sandbox="test")
    with CaptureQueriesContext(connection) as claim:
        execution = queue.execution_claim_next(worker=worker)
    assert execution is not None
    with CaptureQueriesContext(connection) as finish:
        queue.execution_finish(
            execution=execution,
            claim_token=execution.claim_token,
            status="succeeded",
            exit_code=0,
            chunks=[(0, "stdout", "hi\n")],
            tails={"stdout": "hi\n", "stderr": ""},
        )
    assert [_shape(query["sql"]) for query in claim.captured_queries] == CLAIM_STATEMENTS[connection.vendor]
    assert [_shape(query["sql"]) for query in finish.captured_queries] == FINISH_STATEMENTS
    task.refresh_from_db()
    assert task.status == Status.COMPLETED
    assert task.result["stdout_tail"] == "hi\n"
    types = list(Event.objects.filter(task=task).order_by("id").values_list("type", flat=True))
    assert types[-3:] == ["execution.finished", "task.status_changed", "task.completed"]


def _modules_outside_tasks() -> list[Path]:
    skipped = {".venv", "tests", "tasks", "node_modules", ".git"}
    return [
        path
        for path in ROOT.rglob("*.py")
        if not skipped.intersection(path.relative_to(ROOT).parts) and "migrations" not in path.parts
    ]


def test_no_module_outside_tasks_writes_the_task_table():
    raw_update = re.compile(r'UPDATE\s+"?tasks_task"?(\s|$)', re.IGNORECASE)
    orm_status = re.compile(r"Task\.objects\b[^\n]*\.update\([^\n]*\bstatus=")
    modules = _modules_outside_tasks()
    assert any(path.name == "queue.py" for path in modules)  # the scan reaches the engine
    writers = [
        str(path.relative_to(ROOT))
        for path in modules
        if raw_update.search(text := path.read_text()) or orm_status.search(text)
    ]
    assert writers == []
    assert raw_update.search((ROOT / "tasks" / "status.py").read_text())  # the pattern does match
