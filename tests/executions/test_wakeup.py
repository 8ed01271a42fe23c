"""Waking a worker on enqueue without PostgreSQL (issue 19 item 11): local Unix datagram
sockets (executions.engine.wakeup), poked after the enqueue commits; and a live worker whose poll
timer never fires starts what is queued because the wake-up reached it (NOTIFY on
PostgreSQL, the socket on SQLite)."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.test import override_settings

from executions import services
from executions.engine import queue, wakeup
from executions.engine.sandbox import SandboxConfig
from executions.engine.worker import WorkerProcess
from executions.models import Execution, ExecutionStatus
from tests.live import wait_for

pytestmark = pytest.mark.django_db  # (the rate limits' cache may be the database)
sqlite_only = pytest.mark.skipif(connection.vendor == "postgresql", reason="PostgreSQL wakes with NOTIFY")


@pytest.fixture
def wakeup_dir() -> Iterator[Path]:
    # A short path of its own: a Unix socket's path is limited to ~107 bytes.
    path = Path(tempfile.mkdtemp(prefix="tfw"))
    with override_settings(TASKFORGE_WAKEUP_DIR=str(path)):
        yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_poke_reaches_every_listener_of_its_channel_only(wakeup_dir):
    with wakeup.Listener("jobs") as one, wakeup.Listener("jobs") as two, wakeup.Listener("other") as other:
        assert wakeup.poke("jobs", "e1") == 2
        assert wakeup.poke("jobs", "e2") == 2
        assert one.wait(5) == ["e1", "e2"]  # all pending pokes at once
        assert two.wait(5) == ["e1", "e2"]
        assert other.wait(0) == []
        assert one.wait(0) == []  # drained: the timeout passes
    assert list((wakeup_dir / "jobs").iterdir()) == []  # closing removes the sockets
    assert wakeup.poke("jobs") == 0
    assert wakeup.poke("never-listened") == 0


def test_a_socket_left_by_a_killed_process_is_removed(wakeup_dir):
    (wakeup_dir / "jobs").mkdir()
    stale = wakeup_dir / "jobs" / "1-dead.sock"
    orphan = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    orphan.bind(str(stale))
    orphan.close()  # bound, never unlinked: nobody reads it any more
    with wakeup.Listener("jobs") as alive:
        assert wakeup.poke("jobs", "x") == 1
        assert alive.wait(5) == ["x"]
    assert not stale.exists()


@sqlite_only
@pytest.mark.django_db(transaction=True)
def test_enqueue_pokes_after_commit_and_never_after_a_rollback(wakeup_dir, make_task):
    task = make_task()
    with wakeup.Listener(queue.QUEUE_CHANNEL) as listener:
        with transaction.atomic():
            execution = services.execution_enqueue(task=task, actor=None)
            assert listener.wait(0) == []  # not before the commit: the worker would not see it
        assert listener.wait(5) == [str(execution.pk)]
        with transaction.atomic():
            services.execution_enqueue(task=task, actor=None)
            transaction.set_rollback(True)
        assert Execution.objects.count() == 1
        assert listener.wait(0) == []


@pytest.mark.django_db(transaction=True)
def test_an_idle_worker_starts_a_queued_run_on_the_wake_up_not_the_poll(wakeup_dir, make_task):
    """The worker polls once an hour: once it is idle, the run queued next can only start
    because the enqueue's wake-up ended the worker's wait."""
    task = make_task("echo woken")
    worker = WorkerProcess(
        concurrency=1, poll_interval=3600, sandbox=SandboxConfig.from_settings(), webhooks=False
    )
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    try:
        assert worker.idle.wait(30), "the worker never went idle"
        if connection.vendor != "postgresql":
            assert len(list((wakeup_dir / queue.QUEUE_CHANNEL).iterdir())) == 1  # its socket
        execution = services.execution_enqueue(task=task, actor=None)
        done = wait_for(
            lambda: Execution.objects.filter(pk=execution.pk, status=ExecutionStatus.SUCCEEDED).first(),
            timeout=30,
        )
        assert done.chunks.get().data == "woken\n"
    finally:
        worker.stopping.set()
        worker.wake.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    if connection.vendor != "postgresql":
        assert list((wakeup_dir / queue.QUEUE_CHANNEL).iterdir()) == []  # closed on the way out


@sqlite_only
@pytest.mark.django_db(transaction=True)
def test_a_runworker_process_and_this_one_meet_beside_the_database_file(make_task):
    """No setting: the child worker (pointed at the test database) binds its socket beside
    that file, where this process's enqueues poke; with an hour's poll, each run starts."""
    from tests.live import worker

    sockets = wakeup.channel_dir(queue.QUEUE_CHANNEL)
    assert sockets.parent.name == f"{Path(connection.settings_dict['NAME']).name}.wakeup"
    task = make_task("echo $TASKFORGE_EXECUTION_ID", max_concurrency=2)
    with worker("--queue-poll", "3600"):
        wait_for(lambda: sockets.is_dir() and any(sockets.iterdir()))
        for _ in range(2):  # the second is queued while the worker idles after the first
            execution = services.execution_enqueue(task=task, actor=None)
            done = wait_for(
                lambda pk=execution.pk: Execution.objects.filter(pk=pk, status="succeeded").first(),
                timeout=30,
            )
            assert done.chunks.get().data == f"{execution.pk}\n"
    assert not any(sockets.iterdir())  # removed at the worker's clean stop
