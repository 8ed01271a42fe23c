"""A memory and pids cgroup per run (issue 18 item 3): detection on fake cgroup trees, and real
runs against the host's cgroups (skipped, with the reason, where no backend is usable here)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from executions.engine import cgroups
from executions.engine.cgroups import Backend, Detection, detect
from executions.engine.sandbox import MIB, SandboxConfig, describe_isolation, finish_cleanup
from executions.engine.worker import WorkerProcess
from executions.models import ErrorCode, Execution, ExecutionStatus
from tests.executions.test_sandbox import bwrap_problem, run

# Allocates 200 MiB in 1 MiB pieces that are really written (bytes, not lazily mapped zeros).
ALLOCATE_200_MIB = "chunks = []\nfor _ in range(200):\n    chunks.append(b'x' * MIB)\nprint('allocated')\n"
ALLOCATE_200_MIB = "MIB = 1024 * 1024\n" + ALLOCATE_200_MIB


@pytest.fixture(autouse=True)
def _clean_cache() -> None:
    """Override the suite-wide cache reset: these tests touch neither the cache nor (mostly) the database."""


def backend() -> Backend | None:
    return cgroups.support("auto").backend


@pytest.fixture
def needs_cgroup() -> Backend:
    found = cgroups.support("auto")
    if found.backend is None:
        pytest.skip(f"no cgroup per run on this host: {found.reason}")
    return found.backend


@pytest.fixture(params=["never", "always"])
def bwrap_mode(request: pytest.FixtureRequest) -> str:
    if request.param == "always" and (problem := bwrap_problem()) is not None:
        pytest.skip(problem)
    return request.param


def our_run_cgroups(found: Backend) -> list[str]:
    """This process's run cgroups that still exist (each run's is removed when it ends)."""
    finish_cleanup()
    prefix = f"{cgroups.RUN_PREFIX}{os.getpid()}-"
    return [
        os.path.join(parent, name)
        for parent in found.parents()
        for name in os.listdir(parent)
        if name.startswith(prefix)
    ]


def wait_for_zombies_to_be_reaped(timeout: float = 15) -> None:
    """Wait (bounded) until PID 1 has collected the exited processes of the sandbox's uids: a
    killed run's children are zombies for a moment, and zombies count against RLIMIT_NPROC."""
    low, high = SandboxConfig().uid_range
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        zombies = 0
        for entry in Path("/proc").iterdir():
            try:
                status = (entry / "status").read_text() if entry.name.isdigit() else ""
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if (
                fields.get("State", "").strip().startswith("Z")
                and low <= int(fields["Uid"].split()[0]) <= high
            ):
                zombies += 1
        if zombies == 0:
            return
        time.sleep(0.05)


# --- Detection on fake trees -------------------------------------------------------------------


def make_tree(root: Path, files: dict[str, str]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def test_v2_with_memory_delegated_moves_the_worker_into_a_leaf_and_enables_controllers(
    tmp_path: Path,
) -> None:
    service = "system.slice/taskforge-worker.service"
    make_tree(
        tmp_path,
        {
            "cgroup.controllers": "cpu io memory pids\n",
            f"{service}/cgroup.controllers": "cpu memory pids\n",
            f"{service}/cgroup.subtree_control": "\n",
            f"{service}/cgroup.procs": "4242\n",
        },
    )
    found = detect(str(tmp_path), f"0::/{service}\n", pid=4242)
    assert found.backend is not None, found.reason
    assert found.backend.version == 2
    assert found.backend.memory_parent == str(tmp_path / service)
    assert found.backend.pids_parent == str(tmp_path / service)
    assert (tmp_path / service / cgroups.WORKER_LEAF / "cgroup.procs").read_text() == "4242"
    assert (tmp_path / service / "cgroup.subtree_control").read_text() == "+memory +pids"
    # Detected again from the leaf (where the worker now is): the same parent, nothing to enable.
    (tmp_path / service / "cgroup.subtree_control").write_text("memory pids\n")
    again = detect(str(tmp_path), f"0::/{service}/{cgroups.WORKER_LEAF}\n", pid=4242)
    assert again.backend is not None and again.backend.memory_parent == str(tmp_path / service)


def test_v2_without_the_memory_controller_and_no_v1_is_the_fallback(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            "cgroup.controllers": "cpu memory pids\n",
            "user.slice/cgroup.controllers": "cpu pids\n",
            "user.slice/cgroup.subtree_control": "\n",
        },
    )
    found = detect(str(tmp_path), "0::/user.slice\n", pid=1)
    assert found.backend is None
    assert "memory controller is not delegated" in found.reason
    assert "no cgroup v1 memory hierarchy" in found.reason
    assert not (tmp_path / "user.slice" / cgroups.WORKER_LEAF).exists()


def test_v2_memory_without_pids_gives_no_pids_limit(tmp_path: Path) -> None:
    make_tree(tmp_path, {"cgroup.controllers": "memory\n", "cgroup.subtree_control": "memory\n"})
    found = detect(str(tmp_path), "0::/\n", pid=1)
    assert found.backend is not None and found.backend.version == 2
    assert found.backend.memory_parent == str(tmp_path)
    assert found.backend.pids_parent is None


def test_hybrid_host_uses_the_v1_memory_and_pids_hierarchies(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            "unified/cgroup.controllers": "hugetlb\n",
            "unified/cgroup.subtree_control": "\n",
            "memory/process_api/abc/memory.limit_in_bytes": "9223372036854771712\n",
            "pids/cgroup.procs": "",
        },
    )
    text = "8:pids:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/\n"
    found = detect(str(tmp_path), text, pid=1)
    assert found.backend is not None, found.reason
    assert found.backend.version == 1
    assert found.backend.memory_parent == str(tmp_path / "memory/process_api/abc")
    assert found.backend.pids_parent == str(tmp_path / "pids")
    assert found.backend.label == "cgroup1"


def test_v1_memory_without_a_pids_hierarchy(tmp_path: Path) -> None:
    make_tree(tmp_path, {"memory/memory.limit_in_bytes": "1\n"})
    found = detect(str(tmp_path), "4:memory:/\n", pid=1)
    assert found.backend is not None and found.backend.version == 1
    assert found.backend.pids_parent is None


def test_no_cgroup_file_system_is_the_fallback(tmp_path: Path) -> None:
    found = detect(str(tmp_path), "0::/\n", pid=1)
    assert found.backend is None
    assert "no cgroup v2 hierarchy" in found.reason and "no cgroup v1 memory hierarchy" in found.reason


def test_stale_run_cgroups_of_dead_workers_are_removed(tmp_path: Path) -> None:
    start = cgroups._own_start_time()
    mine = tmp_path / f"{cgroups.RUN_PREFIX}{os.getpid()}-{start}-1"
    reused_pid = tmp_path / f"{cgroups.RUN_PREFIX}{os.getpid()}-{int(start) + 1}-1"  # same pid, another start
    unrelated = tmp_path / "system.slice"
    for path in (mine, reused_pid, unrelated):
        path.mkdir()
    assert Backend(1, str(tmp_path), None).remove_stale() == 1
    assert mine.exists() and unrelated.exists() and not reused_pid.exists()


def test_modes_and_settings(settings: Any) -> None:
    assert cgroups.support("never").backend is None
    assert "never" in cgroups.support("never").reason
    with pytest.raises(ValueError, match="cgroup mode"):
        cgroups.support("sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="use_cgroup"):
        SandboxConfig(use_cgroup="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory_bytes"):
        SandboxConfig(memory_bytes=-1)
    settings.TASKFORGE_SANDBOX_MEMORY_BYTES = 96 * MIB
    settings.TASKFORGE_SANDBOX_CGROUP = "never"
    config = SandboxConfig.from_settings()
    assert (config.memory_bytes, config.use_cgroup) == (96 * MIB, "never")
    assert SandboxConfig().memory_bytes == 512 * MIB


# --- Real runs -----------------------------------------------------------------------------------


def test_allocating_beyond_the_memory_limit_fails_memory_exceeded(
    needs_cgroup: Backend, bwrap_mode: str
) -> None:
    # RLIMIT_AS (1 GiB) would allow 200 MiB: the cgroup is what stops it.
    result, output = run(ALLOCATE_200_MIB, "python", mode=bwrap_mode, memory_bytes=64 * MIB)
    assert result.outcome == "failed", output.stderr
    assert result.error == "memory_exceeded"
    assert result.error_detail == (
        f"memory limit of {64 * MIB} bytes exceeded (killed by the kernel's OOM killer)"
    )
    assert "allocated" not in output.stdout
    assert our_run_cgroups(needs_cgroup) == []
    # The worker (this process) is fine and the next run succeeds.
    result, output = run("print('next')", "python", mode=bwrap_mode, memory_bytes=64 * MIB)
    assert result.outcome == "succeeded", output.stderr
    assert output.stdout == "next\n"


def test_tmpfs_and_ram_together_are_bounded(needs_cgroup: Backend) -> None:
    if (problem := bwrap_problem()) is not None:
        pytest.skip(problem)
    # Each tmpfs holds 48 MiB, so every write fits its mount; together they pass 64 MiB.
    script = (
        "set -e\n"
        "head -c 41943040 /dev/zero > /dev/shm/a\n"
        "head -c 41943040 /dev/zero > /tmp/b\n"
        "echo wrote-80-MiB\n"
    )
    limits = {"mode": "always", "tmpfs_bytes": 48 * MIB, "memory_bytes": 64 * MIB}
    result, output = run(script, "bash", **limits)
    assert result.outcome == "failed", output.stdout
    assert result.error == "memory_exceeded"
    assert "wrote-80-MiB" not in output.stdout
    assert our_run_cgroups(needs_cgroup) == []
    # Without the cgroup (the fallback), only each mount's size applies: the same run succeeds.
    result, output = run(script, "bash", use_cgroup="never", **limits)
    assert result.outcome == "succeeded", output.stderr
    assert "wrote-80-MiB" in output.stdout


def test_the_script_runs_inside_its_cgroup_with_the_limits(needs_cgroup: Backend) -> None:
    # Without bwrap the script sees the host's cgroup file system and can read its own limits.
    script = (
        "paths = dict(line.split(':', 2)[1:] for line in open('/proc/self/cgroup').read().splitlines())\n"
        "if paths.get('memory'):\n"
        "    base = '/sys/fs/cgroup/memory' + paths['memory'].strip()\n"
        "    print(open(base + '/memory.limit_in_bytes').read().strip())\n"
        "    print(open('/sys/fs/cgroup/pids' + paths['pids'].strip() + '/pids.max').read().strip())\n"
        "else:\n"
        "    base = '/sys/fs/cgroup' + paths[''].strip()\n"
        "    print(open(base + '/memory.max').read().strip())\n"
        "    print(open(base + '/pids.max').read().strip())\n"
        "print(base.rsplit('/', 1)[1])\n"
    )
    result, output = run(script, "python", mode="never", memory_bytes=80 * MIB, max_processes=40)
    assert result.outcome == "succeeded", output.stderr
    memory, pids, name = output.stdout.split()
    assert memory == str(80 * MIB)
    if needs_cgroup.pids_parent is not None:
        assert pids == "40"
    assert name.startswith(f"{cgroups.RUN_PREFIX}{os.getpid()}-")
    assert our_run_cgroups(needs_cgroup) == []


def test_fork_bomb_is_bounded(needs_cgroup: Backend, bwrap_mode: str) -> None:
    if needs_cgroup.pids_parent is None:
        pytest.skip("the pids controller is not available to the worker here")
    script = (
        "import os, time\n"
        "children = 0\n"
        "try:\n"
        "    for _ in range(500):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        children += 1\n"
        "except OSError as exc:\n"
        "    print('fork refused', exc.errno)\n"
        "print('children', children)\n"
    )
    wait_for_zombies_to_be_reaped()  # they count against the next run's RLIMIT_NPROC of 24
    result, output = run(script, "python", mode=bwrap_mode, max_processes=24)
    assert result.outcome == "succeeded", output.stderr
    assert "fork refused" in output.stdout
    assert int(output.stdout.split("children ")[1]) < 24
    assert our_run_cgroups(needs_cgroup) == []  # its sleeping children were killed with it


def test_what_is_left_in_a_run_cgroup_is_killed_and_the_cgroup_removed(needs_cgroup: Backend) -> None:
    cgroup = needs_cgroup.create(32 * MIB, 8)
    launcher = ["/bin/sh", "-c", cgroups.LAUNCHER_SCRIPT, cgroups.LAUNCHER_NAME, *cgroup.procs_files(), "--"]
    process = subprocess.Popen([*launcher, "sleep", "300"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while process.pid not in cgroup.pids():
            assert time.monotonic() < deadline, "the launcher never entered the cgroup"
            time.sleep(0.01)
        assert cgroup.remove(cgroups.KILL_SECONDS)
        assert process.wait(timeout=10) == -9
        assert not any(os.path.exists(path) for path in cgroup.paths)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_fallback_runs_without_a_cgroup_and_the_worker_says_which() -> None:
    found = backend()
    if found is not None:
        assert describe_isolation(SandboxConfig()).endswith(f"+{found.label}")
    never = SandboxConfig(use_cgroup="never")
    assert "cgroup" not in describe_isolation(never)
    result, output = run(ALLOCATE_200_MIB, "python", use_cgroup="never", memory_bytes=64 * MIB)
    assert result.outcome == "succeeded", output.stderr  # only RLIMIT_AS (1 GiB) applies
    assert output.stdout == "allocated\n"


def test_always_without_a_usable_cgroup_fails_the_run_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    # A host where detection found nothing (what support() returns there, cached per mode).
    key = ("always", cgroups.DEFAULT_ROOT)
    monkeypatch.setitem(cgroups._support_cache, key, Detection(None, "no cgroup v2 hierarchy"))
    result, _ = run("print('never runs')", "python", use_cgroup="always")
    assert result.outcome == "spawn_failed"
    assert "cgroup per run is required" in (result.error_detail or "")
    assert describe_isolation(SandboxConfig(use_cgroup="always")).startswith("broken:")


@pytest.mark.django_db
def test_worker_records_memory_exceeded_and_keeps_working(
    api: Any, make_task: Any, needs_cgroup: Backend
) -> None:
    from tests.executions.test_engine import execute

    task = make_task(ALLOCATE_200_MIB, "python")
    execution_id = execute(api, task).json()["id"]
    worker = WorkerProcess(concurrency=1, sandbox=SandboxConfig.from_settings(memory_bytes=64 * MIB))
    assert worker.run_pending() == 1
    execution = Execution.objects.get(pk=execution_id)
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error == ErrorCode.MEMORY_EXCEEDED
    assert (
        execution.error_detail
        == f"memory limit of {64 * MIB} bytes exceeded (killed by the kernel's OOM killer)"
    )
    assert execution.sandbox.endswith(f"+{needs_cgroup.label}")
    detail = api.get(f"/api/v1/tasks/{task.pk}/executions/{execution_id}").json()
    assert detail["error"] == "memory_exceeded"
    follow_up = make_task("echo still-here", name="after")
    execute(api, follow_up)
    assert worker.run_pending() == 1
    assert Execution.objects.get(task=follow_up).status == ExecutionStatus.SUCCEEDED
    assert our_run_cgroups(needs_cgroup) == []


def test_a_dead_workers_run_cgroup_is_emptied_and_removed(needs_cgroup: Backend) -> None:
    """What a worker killed mid-run leaves behind: a run cgroup with a process still in it."""
    name = f"{cgroups.RUN_PREFIX}{os.getpid()}-1-1"  # this pid, but not this process's start time
    paths = [os.path.join(parent, name) for parent in needs_cgroup.parents()]
    for path in paths:
        os.mkdir(path)
    procs = [os.path.join(path, "cgroup.procs") for path in paths]
    launcher = ["/bin/sh", "-c", cgroups.LAUNCHER_SCRIPT, cgroups.LAUNCHER_NAME, *procs, "--"]
    process = subprocess.Popen([*launcher, "sleep", "300"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while str(process.pid) not in Path(procs[0]).read_text().split():
            assert time.monotonic() < deadline, "the launcher never entered the cgroup"
            time.sleep(0.01)
        assert needs_cgroup.remove_stale() >= 1
        assert process.wait(timeout=10) == -9
        assert not any(os.path.exists(path) for path in paths)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for path in paths:
            if os.path.exists(path):
                os.rmdir(path)
