"""Escape attempts through the real worker (WorkerProcess, real sandbox), with bubblewrap on
(``always``) and off (``never``). Complements tests/executions/test_sandbox.py and
test_engine.py (fork bomb, memory hog, timeout, output cap, own environment, network with
bwrap, read-only system): this module covers what they did not.

Each attempt checks: the execution ends with the right status, no secret reaches its output,
no process survives the run, and the worker and database carry on (the next script runs).
The no-bwrap limits (network reachable, /tmp shared) are asserted as such, so a change in
them is noticed; docs/security.md lists them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from executions import services
from executions.engine.sandbox import SAFE_PATH, SandboxConfig
from executions.engine.worker import WorkerProcess
from executions.models import Execution, ExecutionStatus
from tasks.models import Task
from tests.executions.test_sandbox import bwrap_problem, live_processes_with_arg
from tests.live import wait_for, worker

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        shutil.which("python3", path=SAFE_PATH) is None, reason="no python3 on the sandbox PATH"
    ),
]
IS_ROOT = os.geteuid() == 0


@pytest.fixture(params=["never", "always"])
def mode(request: pytest.FixtureRequest) -> str:
    if request.param == "always" and (problem := bwrap_problem()) is not None:
        pytest.skip(problem)
    return request.param


def enqueue(user: Any, script: str, *, name: str, script_type: str = "bash", timeout: int = 60) -> Execution:
    task = Task.objects.create(
        project=user.personal_project,
        created_by=user,
        name=name,
        script_type=script_type,
        script_content=script,
        timeout_seconds=timeout,
    )
    return services.execution_enqueue(task=task, actor=user)


def run(
    user: Any, script: str, mode: str, *, script_type: str = "bash", timeout: int = 10, **config: Any
) -> Execution:
    execution = enqueue(user, script, name="escape", script_type=script_type, timeout=timeout)
    WorkerProcess(concurrency=1, sandbox=SandboxConfig.from_settings(use_bwrap=mode, **config)).run_pending()
    execution.refresh_from_db()
    return execution


def out(execution: Execution, stream: str = "stdout") -> str:
    return "".join(execution.chunks.filter(stream=stream).order_by("seq").values_list("data", flat=True))


def assert_healthy(user: Any, mode: str) -> None:
    """The worker and the database carry on: the next script runs normally."""
    after = run(user, "echo still-here", mode)
    assert after.status == ExecutionStatus.SUCCEEDED, out(after, "stderr")
    assert out(after) == "still-here\n"


def marker() -> str:
    # A sleep length unique to this test, so its processes can be found in /proc.
    return f"{3000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"


def reap(arg: str) -> list[int]:
    """Kill (and report) leftover processes whose command line holds ``arg``."""
    pids = live_processes_with_arg(arg)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    return pids


@pytest.mark.skipif(not IS_ROOT, reason="without the user drop a script shares the worker's uid")
def test_no_secret_in_any_process_environment_or_command_line(user: Any, mode: str, monkeypatch: Any) -> None:
    monkeypatch.setenv("TASKFORGE_CANARY", "canary-5e1f")
    secret = settings.SECRET_KEY
    script = (
        "for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; echo; done"
        " | tr '\\0' '\\n' > all.txt\n"
        f"grep -c -F -e canary-5e1f all.txt || true\n"
        f"grep -c -F -e '{secret[:24]}' all.txt || true\n"
        "env | grep -c -E 'DATABASE_URL|REDIS_URL|DJANGO_SECRET_KEY|canary' || true\n"
    )
    execution = run(user, script, mode)
    assert execution.status == ExecutionStatus.SUCCEEDED, out(execution, "stderr")
    assert out(execution).split() == ["0", "0", "0"]
    assert_healthy(user, mode)


def test_the_database_and_the_settings_cannot_be_read(user: Any, mode: str) -> None:
    targets = [str(Path(settings.BASE_DIR) / "config" / "settings.py")]
    if connection.vendor == "sqlite":
        targets.append(str(connection.settings_dict["NAME"]))
    else:
        with connection.cursor() as cursor:
            cursor.execute("SHOW data_directory")  # needs a superuser (or pg_read_all_settings)
            targets.append(cursor.fetchone()[0])
    script = "".join(
        f"(if [ -d '{t}' ]; then ls '{t}'; else cat '{t}'; fi) >/dev/null 2>&1"
        " && echo readable || echo refused\n"
        for t in targets
    )
    execution = run(user, script, mode)
    lines = out(execution).split()
    if mode == "always":
        # Outside the sandbox's view entirely: the project and the database do not exist there.
        assert lines == ["refused"] * len(targets)
    else:
        # The database (file or cluster directory) is refused by permissions to the
        # unprivileged user; the settings module is source code (no secret: they come from the
        # environment), readable when the code is world-readable.
        assert lines[1] == "refused", f"the database is readable by scripts: {targets[1]}"
    assert_healthy(user, mode)


@pytest.mark.parametrize("target", ["127.0.0.1:5432", "127.0.0.1:6379", "169.254.169.254:80"])
def test_no_network_with_bwrap(user: Any, target: str) -> None:
    if (problem := bwrap_problem()) is not None:
        pytest.skip(problem)
    host, port = target.split(":")
    script = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout=2).close(); print('connected')\n"
        "except OSError as exc:\n"
        "    print('refused')\n"
    )
    execution = run(user, script, "always", script_type="python")
    assert execution.status == ExecutionStatus.SUCCEEDED, out(execution, "stderr")
    assert out(execution) == "refused\n"


def test_writing_outside_the_work_dir(user: Any, mode: str) -> None:
    name = f"escape-{uuid.uuid4().hex}"
    repo_target = Path(settings.BASE_DIR) / name
    tmp_target = Path("/tmp") / name  # noqa: S108 - the point: /tmp outside the sandbox
    script = (
        f"echo x > '{repo_target}' 2>/dev/null && echo repo-written || echo repo-refused\n"
        f"echo x > /etc/{name} 2>/dev/null && echo etc-written || echo etc-refused\n"
        f"echo x > '{tmp_target}' 2>/dev/null && echo tmp-written || echo tmp-refused\n"
        "echo x > inside.txt && echo work-written\n"
    )
    try:
        execution = run(user, script, mode)
        lines = out(execution).split()
        assert execution.status == ExecutionStatus.SUCCEEDED, out(execution, "stderr")
        assert lines[0] == "repo-refused" and lines[1] == "etc-refused" and lines[3] == "work-written"
        assert not repo_target.exists()
        if mode == "always":
            # The sandbox's /tmp is its own: nothing lands in the host's.
            assert not tmp_target.exists()
        # Without bwrap /tmp is shared (a documented limit): the write may land there.
    finally:
        repo_target.unlink(missing_ok=True)
        tmp_target.unlink(missing_ok=True)
    assert_healthy(user, mode)


def test_a_background_child_does_not_outlive_the_timeout(user: Any, mode: str) -> None:
    sleep = marker()
    script = f"(sleep {sleep} &)\nnohup sleep {sleep} >/dev/null 2>&1 &\nsleep {sleep}\n"
    execution = run(user, script, mode, timeout=1)
    assert execution.status == ExecutionStatus.TIMED_OUT
    time.sleep(0.3)
    assert reap(sleep) == [], "a background child outlived the timeout"
    assert_healthy(user, mode)


def test_a_background_child_does_not_outlive_cancel(user: Any, mode: str) -> None:
    sleep = marker()
    execution = enqueue(user, f"(sleep {sleep} &)\necho started\nsleep {sleep}\n", name="cancel me")
    with worker(extra_env={"TASKFORGE_SANDBOX_BWRAP": mode}):
        started = Execution.objects.filter(pk=execution.pk, chunks__data="started\n")
        wait_for(started.exists, timeout=20)
        services.execution_cancel(execution=execution, actor=user)
        requested = time.monotonic()
        wait_for(lambda: Execution.objects.get(pk=execution.pk).is_final, timeout=10)
        elapsed = time.monotonic() - requested
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.CANCELLED
    assert elapsed < 5, elapsed  # SPEC: within 2 s (polling adds a little here)
    time.sleep(0.3)
    assert reap(sleep) == [], "a background child outlived cancel"
    assert_healthy(user, mode)


def test_setsid_double_fork(user: Any, mode: str, tmp_path: Path) -> None:
    """A process that calls setsid() and is reparented by a double fork leaves the process group
    the worker kills. With bwrap the PID namespace takes it down with the sandbox; without it,
    the sweep of the run's own uid does (a root worker). It sleeps, then writes a marker: it
    must be dead when the run is recorded, and the marker must never appear."""
    if mode == "never" and not IS_ROOT:
        pytest.skip("without bwrap only a root worker's per-run uid catches processes outside the group")
    sleep = marker()
    tmp_path.chmod(0o1777)  # reachable for the escapee without bwrap (bwrap hides the host's /tmp)
    written = tmp_path / "escaped"
    script = (
        f"(setsid sh -c 'sleep {sleep} & sleep 1; echo escaped > {written}' </dev/null >/dev/null 2>&1 &)\n"
        "sleep 0.3\n"
        "echo forked\n"
    )
    execution = run(user, script, mode, timeout=5)
    assert execution.status == ExecutionStatus.SUCCEEDED, out(execution, "stderr")
    assert out(execution) == "forked\n"
    # Without bwrap, swept with the run's uid within JANITOR_INTERVAL (0.1 s) of the run's end.
    deadline = time.monotonic() + 2
    while live_processes_with_arg(sleep) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reap(sleep) == [], "a setsid'd, double-forked process outlived the run"
    time.sleep(1.5)  # the escapee, had it lived, would have written its marker by now
    assert not written.exists()
    assert_healthy(user, mode)


@pytest.mark.skipif(not IS_ROOT, reason="per-run uids need a root worker")
def test_leftovers_of_a_killed_worker_die_when_its_uid_is_next_used(
    user: Any, mode: str, tmp_path: Path
) -> None:
    """kill -9 of the worker mid-run: the script dies of its parent-death signal, but a process
    it moved out of its group (without bwrap) lives on. The next run that takes the uid finds
    the uid's lock file not marked clean and kills it first."""
    uid = 201_000 + uuid.uuid4().int % 900  # a one-uid range of this test's own
    private = {"uid_range": (uid, uid), "uid_lock_dir": str(tmp_path)}
    sleep, main = marker(), marker()
    script = f"setsid sh -c 'sleep {sleep}' </dev/null >/dev/null 2>&1 &\necho started\nexec sleep {main}\n"
    execution = enqueue(user, script, name="orphan maker")
    env = {
        "TASKFORGE_SANDBOX_BWRAP": mode,
        "TASKFORGE_SANDBOX_UID_RANGE": f"{uid}-{uid}",
        "TASKFORGE_SANDBOX_UID_LOCK_DIR": str(tmp_path),
    }
    try:
        with worker(extra_env=env) as doomed:
            wait_for(Execution.objects.filter(pk=execution.pk, chunks__data="started\n").exists, timeout=20)
            os.kill(doomed.pid, 9)
            doomed.wait()
        # The script itself (in the group) dies of its parent-death signal at once, long
        # before any sweep: setpriv sets it after taking the run's uid (which would clear it).
        wait_for(lambda: live_processes_with_arg(main) == [], timeout=5)
        if mode == "never":
            assert live_processes_with_arg(sleep) != [], "expected a leftover to clean up"

        # Without bwrap, so that the next script can look for the leftover itself: it must be
        # gone before the script starts, not only after it ends.
        look = (
            f"id -u\nfor p in /proc/[0-9]*; do grep -qsF {sleep} $p/cmdline && echo alive; done\n"
            "echo looked\n"
        )
        after = run(user, look, "never", **private)
        assert after.status == ExecutionStatus.SUCCEEDED, out(after, "stderr")
        assert out(after) == f"{uid}\nlooked\n"
        assert reap(sleep) == [], "a killed worker's leftover survived the next run of its uid"
    finally:
        reap(sleep)
        reap(main)


def test_cpu_spin_in_a_child_is_stopped_at_the_timeout(user: Any, mode: str) -> None:
    script = "python3 -c 'while True: pass' &\nwhile true; do :; done\n"
    started = time.monotonic()
    execution = run(user, script, mode, timeout=1)
    assert execution.status == ExecutionStatus.TIMED_OUT
    assert time.monotonic() - started < 15
    assert_healthy(user, mode)


def test_disk_filler_is_stopped_by_the_file_size_limit(user: Any, mode: str) -> None:
    # A smaller file-size limit than the 64 MiB default keeps this quick; the mechanism is the same.
    script = "head -c 50000000 /dev/zero > big.bin; echo exit=$?; ls -l big.bin | awk '{print $5}'\n"
    execution = run(user, script, mode, file_size_bytes=4 * 1024 * 1024)
    lines = out(execution).split()
    assert execution.status in (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED)
    assert lines[0] != "exit=0"
    assert int(lines[-1]) <= 4 * 1024 * 1024
    assert_healthy(user, mode)


def test_output_flood_is_capped_and_the_worker_survives(user: Any, mode: str) -> None:
    # The size: 1 GiB of output against a 256 KiB cap (about 5 s here per mode).
    script = "head -c 1073741824 /dev/zero | tr '\\0' 'x'; echo done >&2\n"
    execution = run(user, script, mode, timeout=120, output_cap_bytes=256 * 1024)
    assert execution.status == ExecutionStatus.SUCCEEDED
    assert execution.stdout_truncated is True
    assert len(out(execution)) <= 256 * 1024
    assert out(execution, "stderr") == "done\n"
    assert_healthy(user, mode)
