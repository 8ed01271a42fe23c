"""Fair claiming across projects (issue 18 item 8): projects take turns for free worker
slots, priority orders runs within a project only, TASKFORGE_PROJECT_MAX_RUNNING caps a
project's running executions over all workers — with real concurrent claimers, each on its
own connection — and every execution is still claimed exactly once."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from django.test import override_settings

from accounts.models import Project
from events.models import Event
from executions import services
from executions.engine import queue
from executions.models import Execution, ExecutionStatus, Worker
from tasks.models import Task
from tests.factories import UserFactory
from tests.tasks.test_claims import run_concurrently


def _tenant(name: str) -> Project:
    return UserFactory(username=name).personal_project


def _queue(project: Project, count: int, *, priority: int = 5, name: str = "job") -> list[uuid.UUID]:
    """``count`` queued executions of one task of ``project`` (which may run them all at once)."""
    task = Task.objects.create(
        project=project,
        name=name,
        script_type="bash",
        script_content="echo ok",
        priority=priority,
        max_concurrency=100,
    )
    return [services.execution_enqueue(task=task, actor=None).pk for _ in range(count)]


def _worker() -> Worker:
    return queue.worker_register(concurrency=1, sandbox="test")


def _running(project: Project) -> int:
    return Execution.objects.filter(project=project, status=ExecutionStatus.RUNNING).count()


def _finish(pk: uuid.UUID) -> None:
    execution = Execution.objects.get(pk=pk)
    queue.execution_finish(
        execution=execution, claim_token=execution.claim_token, status="succeeded", exit_code=0
    )


@pytest.mark.django_db
def test_the_reported_case_the_other_projects_run_gets_the_next_free_slot():
    """Three long runs at priority 10 from one project fill a two-slot worker; another
    project's priority-5 run is queued after them. The first slot that frees goes to it,
    not to the third high-priority run."""
    busy, other = _tenant("busy"), _tenant("other")
    long_runs = _queue(busy, 3, priority=10, name="sleep 12")
    worker = queue.worker_register(concurrency=2, sandbox="test")
    started = queue.execution_claim_batch(worker=worker, limit=2)
    assert [e.pk for e in started] == long_runs[:2]
    echo = _queue(other, 1, priority=5, name="echo")[0]
    _finish(long_runs[0])
    assert queue.execution_claim_next(worker=worker).pk == echo
    _finish(long_runs[1])
    assert queue.execution_claim_next(worker=worker).pk == long_runs[2]


@pytest.mark.django_db
def test_a_free_slot_goes_to_the_project_with_fewer_running_whatever_the_priorities():
    busy, other = _tenant("busy"), _tenant("other")
    high = _queue(busy, 5, priority=10)
    low = _queue(other, 2, priority=0)
    worker = _worker()
    assert queue.execution_claim_next(worker=worker).pk == high[0]
    assert queue.execution_claim_next(worker=worker).pk == low[0]
    # One each running: the tie goes to the project whose next run has waited longest.
    assert queue.execution_claim_next(worker=worker).pk == high[1]
    assert queue.execution_claim_next(worker=worker).pk == low[1]
    assert [e.pk for e in queue.execution_claim_batch(worker=worker, limit=5)] == high[2:]


@pytest.mark.django_db
def test_a_batch_takes_turns_and_priority_orders_within_a_project():
    one, two, three = _tenant("one"), _tenant("two"), _tenant("three")
    low_one = _queue(one, 2, priority=1, name="low")
    high_one = _queue(one, 2, priority=9, name="high")
    runs_two = _queue(two, 3)
    runs_three = _queue(three, 1)
    claimed = queue.execution_claim_batch(worker=_worker(), limit=7)
    by_project = {p.pk: [e.pk for e in claimed if e.project_id == p.pk] for p in (one, two, three)}
    assert by_project[one.pk] == [*high_one, low_one[0]]  # priority first, then age
    assert by_project[two.pk] == runs_two
    assert by_project[three.pk] == runs_three
    # Turns: every project's first run before any project's second.
    firsts = {by_project[p.pk][0] for p in (one, two, three)}
    assert {e.pk for e in claimed[:3]} == firsts


@pytest.mark.django_db
def test_a_project_at_its_cap_waits_and_the_others_go_on():
    busy, other = _tenant("busy"), _tenant("other")
    busy_runs = _queue(busy, 6)
    other_runs = _queue(other, 1)
    worker = queue.worker_register(concurrency=8, sandbox="test")
    with override_settings(TASKFORGE_PROJECT_MAX_RUNNING=2):
        claimed = queue.execution_claim_batch(worker=worker, limit=8)
        assert sorted(e.pk for e in claimed) == sorted([*busy_runs[:2], *other_runs])
        assert queue.execution_claim_batch(worker=worker, limit=8) == []
        _finish(busy_runs[0])
        assert [e.pk for e in queue.execution_claim_batch(worker=worker, limit=8)] == [busy_runs[2]]
    assert _running(busy) == 2
    # Without the cap (0, the default) the rest start.
    assert len(queue.execution_claim_batch(worker=worker, limit=8)) == 3


# --- races: real concurrent connections ---------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_concurrent_claimers_do_not_let_a_busy_project_starve_another():
    """A hundred high-priority runs of one project queued first, one low-priority run of
    another queued last; four workers with one free slot each claim at once. The other
    project's run is among the four claimed: the second claim to serve the busy project sees
    its first run (its row lock makes the count exact) or finds it being served, and turns to
    the other project. (Each claim locks up to 20 candidates SKIP LOCKED: with fewer queued
    runs than 20 per concurrent claimer, a claim can find every candidate locked and come
    back empty, to claim again at the next wake-up.)"""
    busy, other = _tenant("busy"), _tenant("other")
    _queue(busy, 100, priority=10)
    late = _queue(other, 1, priority=0)[0]
    workers = [_worker() for _ in range(4)]

    def claim(index: int) -> Any:
        # An empty claim (every candidate it looked at was locked by the others) claims again,
        # as a worker does at its next wake-up; a second empty one is a failure.
        for _ in range(2):
            execution = queue.execution_claim_next(worker=workers[index])
            if execution is not None:
                return execution.pk
        return None

    results = run_concurrently(4, claim)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert None not in results and len(set(results)) == 4, results
    assert late in results
    assert _running(busy) == 3 and _running(other) == 1


@pytest.mark.django_db(transaction=True)
@override_settings(TASKFORGE_PROJECT_MAX_RUNNING=3)
def test_the_cap_holds_under_concurrent_claimers_and_each_run_is_claimed_once():
    """Eight workers claim in batches at once over three projects (30, 20 and 2 queued) with
    a cap of three: no project ever runs more than three, each execution is claimed once."""
    projects = [_tenant(f"t{i}") for i in range(3)]
    queued = {p.pk: _queue(p, n) for p, n in zip(projects, (30, 20, 2), strict=True)}
    workers = [queue.worker_register(concurrency=4, sandbox="test") for _ in range(8)]

    def claim(index: int) -> list[uuid.UUID]:
        claimed: list[uuid.UUID] = []
        for _ in range(3):
            claimed += [e.pk for e in queue.execution_claim_batch(worker=workers[index], limit=2)]
        return claimed

    results = run_concurrently(8, claim)
    assert not [r for r in results if isinstance(r, Exception)], results
    claimed = [pk for r in results for pk in r]
    assert len(claimed) == len(set(claimed)), "an execution was claimed twice"
    per_project = Counter(Execution.objects.filter(pk__in=claimed).values_list("project_id", flat=True))
    assert per_project == {projects[0].pk: 3, projects[1].pk: 3, projects[2].pk: 2}, per_project
    for project in projects:  # in priority-then-age order within each project
        expected = queued[project.pk][: per_project[project.pk]]
        assert set(
            Execution.objects.filter(project=project, status="running").values_list("pk", flat=True)
        ) == set(expected)
    assert Event.objects.filter(type="execution.started").count() == 8


@pytest.mark.django_db(transaction=True)
def test_racing_workers_drain_several_projects_exactly_once():
    projects = [_tenant(f"t{i}") for i in range(3)]
    queued = [pk for p in projects for pk in _queue(p, 15)]
    workers = [queue.worker_register(concurrency=3, sandbox="test") for _ in range(6)]

    def drain(index: int) -> list[uuid.UUID]:
        claimed: list[uuid.UUID] = []
        while batch := queue.execution_claim_batch(worker=workers[index], limit=3):
            claimed += [e.pk for e in batch]
            for execution in batch:
                _finish(execution.pk)
        return claimed

    results = run_concurrently(6, drain)
    assert not [r for r in results if isinstance(r, Exception)], results
    claimed = [pk for r in results for pk in r]
    assert sorted(claimed) == sorted(queued)
    assert Execution.objects.filter(status=ExecutionStatus.SUCCEEDED).count() == len(queued)
    assert Event.objects.filter(type="execution.started").count() == len(queued)
