"""Queue chaos against PostgreSQL with several real ``runworker`` processes and 2 s leases:
kill -9 (ten times, quickly), pg_terminate_backend of the workers' connections (killed with
the server up; a real restart, on a private cluster, is test_pg_restart.py), SIGKILL during
the SIGTERM grace, and a worker paused (SIGSTOP) past its lease whose late writes must be
fenced off.

Invariants after each: no execution lost (every attempt chain ends final), none started twice,
none left running once leases expire, retries counted (attempt n+1 retries attempt n, never
beyond max_retries), and each task's status follows its latest execution.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import pytest
from django.db import connection

from executions import services
from executions.models import ErrorCode, Execution, ExecutionStatus
from tests import live
from tests.hardening.queue_invariants import assert_invariants, make_tasks, settled
from tests.live import wait_for, worker

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="PostgreSQL-only: SKIP LOCKED, backends"),
]
LEASE = {"TASKFORGE_EXECUTION_LEASE_SECONDS": "2"}


def running_on(proc: subprocess.Popen) -> bool:
    return Execution.objects.filter(status=ExecutionStatus.RUNNING, worker__pid=proc.pid).exists()


def test_kill_9_ten_times(user: Any) -> None:
    """Ten workers in a row die with kill -9 mid-run; each successor reaps what the last one
    left (2 s leases) and runs the retries; a final worker drains the queue."""
    tasks = make_tasks(user, 4, "echo run $TASKFORGE_EXECUTION_ID; sleep 1", max_retries=12)
    for task in tasks:
        services.execution_enqueue(task=task, actor=None)
    kills = 0
    deadline = time.monotonic() + 75
    while kills < 10 and time.monotonic() < deadline:
        if settled(tasks):  # everything finished between kills: queue more work
            for task in tasks:
                services.execution_enqueue(task=task, actor=None)
        with worker("--concurrency", "2", extra_env=LEASE) as doomed:
            try:
                wait_for(lambda p=doomed: running_on(p), timeout=15, interval=0.05)
            except AssertionError:
                continue
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.wait()
            kills += 1
    with worker("--concurrency", "2", extra_env=LEASE):
        wait_for(lambda: settled(tasks), timeout=60, interval=0.2)
    assert kills >= 10
    assert Execution.objects.filter(error=ErrorCode.WORKER_LOST).exists()
    assert_invariants(tasks)


def _worker_backends(action: str = "count(*)") -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {action} FROM pg_stat_activity "  # noqa: S608 - a constant of this module
            "WHERE datname = current_database() AND application_name = 'chaos-worker'"
        )
        return cursor.fetchone()[0]


def _terminate_worker_backends() -> int:
    return _worker_backends("count(pg_terminate_backend(pid))")


def tagged_env() -> dict[str, str]:
    """LEASE, plus a DATABASE_URL naming the worker's connections so only they are killed."""
    url = live.test_database_env()["DATABASE_URL"]
    return {**LEASE, "DATABASE_URL": url + ("&" if "?" in url else "?") + "application_name=chaos-worker"}


def test_pg_terminate_backend_of_every_worker_connection(user: Any) -> None:
    """The stand-in for a PostgreSQL restart: every connection but ours dies, three times."""
    tasks = make_tasks(user, 4, "echo one; sleep 1; echo two", max_retries=5)
    for task in tasks:
        services.execution_enqueue(task=task, actor=None)
    env = tagged_env()
    with worker("--concurrency", "2", extra_env=env) as first, worker("--concurrency", "2", extra_env=env):
        for _ in range(3):
            # Wait for the workers to have reconnected (their pools reopen connections lazily)
            # while something runs; the rows of the runs just cut off may still say running.
            wait_for(
                lambda: (
                    _worker_backends() >= 1
                    and (Execution.objects.filter(status=ExecutionStatus.RUNNING).exists() or settled(tasks))
                ),
                timeout=20,
                interval=0.05,
            )
            terminated = _terminate_worker_backends()
            assert terminated >= 1, "no worker connection found to terminate"
            time.sleep(0.5)
        wait_for(lambda: settled(tasks), timeout=60, interval=0.2)
        assert first.poll() is None, "a worker died of a lost connection instead of reconnecting"
    assert_invariants(tasks)


def test_sigkill_during_the_sigterm_grace(user: Any) -> None:
    (task,) = make_tasks(user, 1, "echo go; sleep 3; echo done", max_retries=1)
    execution = services.execution_enqueue(task=task, actor=None)
    with worker("--grace", "20", extra_env=LEASE) as doomed:
        wait_for(lambda: Execution.objects.filter(pk=execution.pk, status="running").exists())
        doomed.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        doomed.kill()
        doomed.wait()
    with worker(extra_env=LEASE):
        wait_for(lambda: settled([task]), timeout=40, interval=0.2)
    assert_invariants([task])


def test_a_paused_worker_cannot_write_after_losing_its_lease(user: Any) -> None:
    (task,) = make_tasks(user, 1, "echo start; sleep 3; echo late-output", max_retries=1)
    execution = services.execution_enqueue(task=task, actor=None)
    with worker(extra_env=LEASE) as paused:
        wait_for(
            lambda: Execution.objects.filter(
                pk=execution.pk, status="running", chunks__data="start\n"
            ).exists()
        )
        paused.send_signal(signal.SIGSTOP)
        try:
            with worker(extra_env=LEASE):
                lost = wait_for(
                    lambda: Execution.objects.filter(pk=execution.pk, error=ErrorCode.WORKER_LOST).first(),
                    timeout=20,
                )
                wait_for(lambda: settled([task]), timeout=30, interval=0.2)
        finally:
            paused.send_signal(signal.SIGCONT)
        time.sleep(4)  # the paused worker resumes, its script ends, it tries to record both
    lost.refresh_from_db()
    assert lost.status == ExecutionStatus.FAILED and lost.error == ErrorCode.WORKER_LOST
    assert "late-output" not in "".join(lost.chunks.values_list("data", flat=True))
    assert_invariants([task])
