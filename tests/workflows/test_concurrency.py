"""Branches ending together: a join starts exactly once, never twice and never not.

Every node's end is decided under the run's row lock (``workflows.engine.lock``) in the
transaction that records it, so two ends are decided one after the other. These tests end
nodes from real separate database connections (threads, each its own connection), the way
workers finishing at the same moment do, on PostgreSQL (SQLite has one writer at a time: there
is no race to show there).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections, transaction

from events.models import Event
from tasks.models import Task
from templates_app.services import template_create
from tests.workflows.conftest import end_node, statuses
from workflows import engine, services
from workflows.models import NodeStatus, RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

WIDTH = 8
RUNS = 20


def require_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip(
            "SQLite has one writer at a time: its IMMEDIATE transactions serialise the ends, so "
            "there is no race to show (the live worker tests run on both databases)"
        )


@pytest.fixture
def joiner(user, project):
    """The join's own template, so the tasks made for joins can be counted."""
    return template_create(
        project=project,
        actor=user,
        slug="joiner",
        name="Joiner",
        name_pattern="join",
        script_type="bash",
        script="echo joined",
    )


def fan_in(make_workflow: Callable[..., Any], join: str, width: int) -> Any:
    """``width`` parallel nodes p0..p{width-1}, each -> ``join``."""
    parallel = [f"p{i}" for i in range(width)]
    return make_workflow(
        slug=f"fan-in-{join}-{width}",
        name=f"Fan-in {join} {width}",
        nodes=[
            *({"key": key, "template": "step", "parameters": {"message": key}} for key in parallel),
            {"key": "join", "template": "joiner", "join": join},
        ],
        edges=[{"from": key, "to": "join"} for key in parallel],
    )


def join_starts(run: WorkflowRun) -> int:
    return Event.objects.filter(
        type="workflow.node_started", data__workflow_id=str(run.pk), data__node="join"
    ).count()


@pytest.mark.parametrize("join", ["all", "any"])
def test_many_wide_fan_ins_ending_together_start_each_join_once(make_workflow, joiner, user, join):
    """20 runs of 8 parallel nodes -> 1 join; for each run, 8 threads (each its own
    connection) released together by a barrier end the 8 nodes at once.

    Checked against the engine without its lock (``workflows.engine.lock`` monkeypatched to a
    plain ``WorkflowRun.objects.get``), twice, and it failed both times: with join "all" 11 of
    the 20 runs never started their join (each end saw some of the others still queued); with
    join "any" all 20 started it 4 to 8 times. That form depends on timing, so it is not kept
    as a test; the deterministic form of the check is the next test.
    """
    require_postgres()
    workflow = fan_in(make_workflow, join, WIDTH)
    runs = [services.workflow_run_create(workflow=workflow, actor=user) for _ in range(RUNS)]
    for run in runs:
        assert statuses(run) == {**{f"p{i}": "queued" for i in range(WIDTH)}, "join": "waiting"}
    barrier = threading.Barrier(WIDTH)
    errors: list[BaseException] = []

    def end_mine(index: int) -> None:
        try:
            for run in runs:
                barrier.wait(timeout=60)  # the 8 ends of one run, at once
                end_node(run, f"p{index}")
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=end_mine, args=(i,)) for i in range(WIDTH)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors, errors
    for run in runs:
        node = run.nodes.get(key="join")
        assert node.status == NodeStatus.QUEUED, (run.pk, statuses(run))  # never missed
        assert node.attempts == 1 and join_starts(run) == 1  # never twice
        assert node.task.template_id == joiner.pk
    assert Task.objects.filter(template=joiner).count() == RUNS  # one task per join
    for run in runs:
        end_node(run, "join")
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, statuses(run)
        assert set(statuses(run).values()) == {"succeeded"}


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def waits_on_a_lock(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row is not None and row[0] == "Lock"


def unlocked(run_id: Any) -> WorkflowRun:
    """The engine's ``lock`` without its lock: what the decision would be without it."""
    return WorkflowRun.objects.get(pk=run_id)


@pytest.mark.parametrize(
    ("join", "run_lock", "started", "second_waited"),
    [
        # With the lock, the second end waits for the first to commit, then sees both.
        ("all", True, 1, True),
        ("any", True, 1, True),
        # Without it, each end decides on what it alone sees.
        ("all", False, 0, False),  # each saw the other still queued: the join is missed
        ("any", False, 2, True),  # both started it (the second waited only on the node's row)
    ],
)
def test_two_ends_interleaved_start_the_join_once_only_under_the_run_lock(
    make_workflow, joiner, user, monkeypatch, join, run_lock, started, second_waited
):
    """x and y -> join. The end of x is recorded and held uncommitted; then y ends, in
    another connection; then x commits. Deterministic: the test waits until y's transaction
    either finished or waits on a lock before letting x commit. Under the run lock y waits
    for x and sees it succeeded; without the lock (``engine.lock`` monkeypatched to a plain
    read) the join is missed (all) or started twice (any): the lock is what makes it right."""
    require_postgres()
    if not run_lock:
        monkeypatch.setattr(engine, "lock", unlocked)
    workflow = make_workflow(
        slug=f"pair-{join}",
        name=f"Pair {join}",
        nodes=[
            {"key": "x", "template": "step"},
            {"key": "y", "template": "step"},
            {"key": "join", "template": "joiner", "join": join},
        ],
        edges=[{"from": "x", "to": "join"}, {"from": "y", "to": "join"}],
    )
    run = services.workflow_run_create(workflow=workflow, actor=user)
    held, release, second_done = threading.Event(), threading.Event(), threading.Event()
    pid: list[int] = []
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with transaction.atomic():
                end_node(run, "x")
                held.set()
                assert release.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)
            held.set()
        finally:
            connections.close_all()

    def second() -> None:
        try:
            pid.append(backend_pid())
            end_node(run, "y")
        except BaseException as exc:
            errors.append(exc)
        finally:
            second_done.set()
            connections.close_all()

    one = threading.Thread(target=first)
    one.start()
    assert held.wait(timeout=30)
    two = threading.Thread(target=second)
    two.start()
    waited = False
    deadline = time.monotonic() + 30
    while not second_done.is_set() and time.monotonic() < deadline:
        if pid and waits_on_a_lock(pid[0]):
            waited = True
            break
        time.sleep(0.02)
    release.set()
    one.join(timeout=30)
    two.join(timeout=30)
    assert not errors, errors
    assert waited is second_waited
    assert statuses(run)["x"] == statuses(run)["y"] == "succeeded"
    assert join_starts(run) == started
    assert Task.objects.filter(template=joiner).count() == started
    node = run.nodes.get(key="join")
    if started == 0:
        assert node.status == NodeStatus.WAITING  # and nothing will ever start it
        run.refresh_from_db()
        assert run.status == RunStatus.RUNNING
    else:
        assert node.status == NodeStatus.QUEUED
