"""The entry point: run_script, and what the worker asks the sandbox at start-up
(reaping_problem, describe_isolation)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from executions.engine import cgroups
from executions.engine.cgroups import RunCgroup
from executions.engine.sandbox.bwrap import _bwrap_args, _choose_bwrap
from executions.engine.sandbox.config import (
    OUTPUTS_FILE_NAME,
    PARAMS_FILE_NAME,
    SANDBOX_LANG,
    SCRIPT_FILE_NAMES,
    SCRIPT_TYPES,
    TOOL_FAILURE_RE,
    TOOL_FAILURE_STATUSES,
    CancelCallback,
    Outcome,
    OutputCallback,
    RunResult,
    SandboxConfig,
    ScriptType,
    StartedCallback,
    StopReason,
    _resolve_executable,
    _resolve_tools,
    _SpawnError,
)
from executions.engine.sandbox.files import _read_outputs, _remove_tree, _validate_env_extra, _write_file
from executions.engine.sandbox.janitor import _janitor
from executions.engine.sandbox.limits import (
    _cgroup_launcher,
    _check_rlimits,
    _Limit,
    _memory_exceeded_detail,
    _prlimit_args,
    _rlimits,
    _run_cgroup,
)
from executions.engine.sandbox.output import _OutputStream, output_text
from executions.engine.sandbox.seccomp import _seccomp_fd
from executions.engine.sandbox.supervisor import _killpg, _Supervisor
from executions.engine.sandbox.uids import _acquire_uid, _setpriv_user_args, _UidLease

logger = logging.getLogger(__name__)

# Entry point
# --------------------------------------------------------------------------------------------
#
# run_script reads top to bottom as the run's steps: check the arguments, choose the isolation
# (tools, uid, limits, bwrap, cgroup), prepare the work directory, build the command line, spawn,
# supervise, then read the outcome; _clean_up runs whatever happened. A _Run carries what the
# steps share and what the result and the cleanup need.


@dataclass(slots=True)
class _Run:
    """The state of one run: what its result reports and what its cleanup must undo."""

    config: SandboxConfig
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.monotonic)
    work_dir: str | None = None
    pid: int | None = None
    bwrap: str | None = None
    lease: _UidLease | None = None
    cgroup: RunCgroup | None = None
    process: subprocess.Popen[bytes] | None = None
    cleanup_fds: list[int] = field(default_factory=list)

    def result(self, outcome: Outcome, **fields: Any) -> RunResult:
        values: dict[str, Any] = {
            "exit_code": None,
            "signal": None,
            "error": None,
            "error_detail": None,
            "stdout_bytes": 0,
            "stderr_bytes": 0,
            "stdout_truncated": False,
            "stderr_truncated": False,
            "killed_with_sigkill": False,
        }
        values.update(fields)
        return RunResult(
            outcome=outcome,
            started_at=self.started_at,
            finished_at=datetime.now(UTC),
            duration_ms=round((time.monotonic() - self.started) * 1000),
            pid=self.pid,
            sandboxed_with_bwrap=self.bwrap is not None,
            work_dir=self.work_dir,
            **values,
        )

    def spawn_failed(self, detail: str) -> RunResult:
        logger.warning("sandbox spawn failed: %s", detail)
        return self.result("spawn_failed", error="spawn_failed", error_detail=detail)


@dataclass(frozen=True, slots=True)
class _Isolation:
    """What the run is launched with: the util-linux tools, the interpreter and the rlimits."""

    prlimit: str
    setpriv: str
    interpreter: list[str]
    limits: list[_Limit]


@dataclass(frozen=True, slots=True)
class _Files:
    """The run's work directory and what is written into it."""

    work_dir: str
    tmp_dir: str
    script_path: str
    params_path: str
    outputs_path: str


@dataclass(slots=True)
class _Launch:
    """The command line and the descriptors only the child may keep (closed here once spawned)."""

    argv: list[str]
    pass_fds: list[int] = field(default_factory=list)
    status_read: int | None = None  # bwrap's --json-status-fd, read by the supervisor


def run_script(
    *,
    script: str,
    script_type: ScriptType,
    timeout_seconds: float,
    on_output: OutputCallback,
    should_cancel: CancelCallback,
    env_extra: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    on_started: StartedCallback | None = None,
    config: SandboxConfig | None = None,
) -> RunResult:
    """Run ``script`` in a fresh sandbox and wait for it; see the module docstring for the contract."""
    config = config or SandboxConfig()
    extra_env, params_json = _checked_arguments(script_type, timeout_seconds, env_extra, params)
    run = _Run(config)
    try:
        try:
            isolation = _choose_isolation(run, script_type, timeout_seconds)
            files = _prepare_work_dir(run, script, script_type, params_json)
            launch = _command_line(run, isolation, files)
            process = run.process = _spawn(launch, files, _environment(config, extra_env, files))
        except _SpawnError as exc:
            return run.spawn_failed(str(exc))
        except (OSError, subprocess.SubprocessError) as exc:
            return run.spawn_failed(f"{type(exc).__name__}: {exc}")
        _started(run, process, launch, on_started)
        status, supervisor, out, err = _supervise(
            run, process, launch, timeout_seconds, on_output, should_cancel
        )
        result = _outcome(run, status, supervisor, out, err, timeout_seconds)
        if result.outcome == "spawn_failed":
            return result
        outputs, problem = _read_outputs(
            files.work_dir, OUTPUTS_FILE_NAME, config.outputs_max_bytes, run.lease
        )
        return dataclasses.replace(result, outputs=outputs, outputs_problem=problem)
    finally:
        _clean_up(run)


def _checked_arguments(
    script_type: ScriptType,
    timeout_seconds: float,
    env_extra: Mapping[str, str] | None,
    params: Mapping[str, Any] | None,
) -> tuple[dict[str, str], bytes]:
    """Refuse programming errors before anything is created: the allow-listed extra environment
    and the params as JSON."""
    if script_type not in SCRIPT_TYPES:
        raise ValueError(f"script_type must be one of {SCRIPT_TYPES}, got {script_type!r}")
    if not timeout_seconds > 0:
        raise ValueError("timeout_seconds must be positive")
    extra_env = _validate_env_extra(env_extra or {})
    try:
        params_json = json.dumps(dict(params or {}), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"params must be JSON-serialisable: {exc}") from exc
    return extra_env, params_json


def _choose_isolation(run: _Run, script_type: ScriptType, timeout_seconds: float) -> _Isolation:
    """The tools and interpreter, the run's uid, its rlimits, bwrap or not, and its cgroup
    (``_SpawnError`` for what can be found wrong before spawning)."""
    config = run.config
    prlimit, setpriv = _resolve_tools(config)
    interpreter = (
        [_resolve_executable(config.python, config.path), "-u"]
        if script_type == "python"
        else [_resolve_executable(config.bash, config.path)]
    )
    run.lease = _acquire_uid(config)
    limits = _rlimits(config, timeout_seconds, run.lease)
    _check_rlimits(limits)
    run.bwrap = _choose_bwrap(config, run.lease)
    run.cgroup = _run_cgroup(config)
    return _Isolation(prlimit, setpriv, interpreter, limits)


def _prepare_work_dir(run: _Run, script: str, script_type: ScriptType, params_json: bytes) -> _Files:
    """A fresh work directory with its tmp directory, the script, the params file and the
    (empty) outputs file, owned by the run's uid when it has one. The outputs file exists
    before the run so that bwrap can bind it, writable, into the sandbox's own work directory."""
    run.work_dir = work_dir = tempfile.mkdtemp(prefix="taskforge-run-", dir=run.config.work_root)
    tmp_dir = os.path.join(work_dir, "tmp")
    os.mkdir(tmp_dir, 0o700)
    script_path = os.path.join(work_dir, SCRIPT_FILE_NAMES[script_type])
    params_path = os.path.join(work_dir, PARAMS_FILE_NAME)
    _write_file(script_path, script.encode("utf-8", "replace"), run.lease)
    _write_file(params_path, params_json, run.lease)
    outputs_path = os.path.join(work_dir, OUTPUTS_FILE_NAME)
    _write_file(outputs_path, b"", run.lease)
    if run.lease is not None:
        for directory in (work_dir, tmp_dir):
            os.chown(directory, run.lease.uid, run.lease.gid)
    return _Files(work_dir, tmp_dir, script_path, params_path, outputs_path)


def _environment(config: SandboxConfig, extra_env: dict[str, str], files: _Files) -> dict[str, str]:
    return {
        **extra_env,
        "PATH": config.path,
        "LANG": SANDBOX_LANG,
        "HOME": files.work_dir,
        "TMPDIR": files.tmp_dir,
        "TASKFORGE_PARAMS_FILE": files.params_path,
        "TASKFORGE_OUTPUTS_FILE": files.outputs_path,
    }


def _command_line(run: _Run, isolation: _Isolation, files: _Files) -> _Launch:
    """cgroup launcher → prlimit → (setpriv → bwrap | setpriv) → interpreter → script."""
    # prlimit sets the limits on itself and execs the rest, all in the one process that
    # Popen created (already running as the run's uid): pid == pgid throughout.
    launch = _Launch(
        [*_cgroup_launcher(run.cgroup), isolation.prlimit, *_prlimit_args(isolation.limits), "--"]
    )
    # The run's uid is taken by setpriv after prlimit, not by Popen(user=): with a uid
    # change Popen must fork() the whole worker (2.2 ms of CPU per run measured with a
    # worker-sized process) where it otherwise uses vfork() (0.1 ms).
    drop = _setpriv_user_args(run.lease)
    if run.bwrap is not None:
        _add_bwrap(run, run.bwrap, launch, isolation.setpriv, drop, files)
    else:
        # setpriv sets the parent-death signal after the uid change (which would clear
        # it), checked by test: the script dies with a worker killed by SIGKILL.
        launch.argv += [isolation.setpriv, *drop, "--pdeathsig", "KILL", "--no-new-privs", "--"]
    launch.argv += [*isolation.interpreter, files.script_path]
    return launch


def _add_bwrap(run: _Run, bwrap: str, launch: _Launch, setpriv: str, drop: list[str], files: _Files) -> None:
    """The bwrap part of the command line, with its status pipe and seccomp filter."""
    status_read, status_write = os.pipe()
    run.cleanup_fds += [status_read, status_write]
    launch.status_read = status_read
    launch.pass_fds.append(status_write)
    # bwrap's --die-with-parent sets the parent-death signal on itself, and bwrap
    # sets no_new_privs in the sandbox (setting it before a setuid bwrap, as some
    # distributions ship, would stop bwrap from working).
    seccomp_read = _seccomp_fd()
    if seccomp_read is not None:
        run.cleanup_fds.append(seccomp_read)
        launch.pass_fds.append(seccomp_read)
    if drop:
        launch.argv += [setpriv, *drop, "--"]
    launch.argv += _bwrap_args(
        bwrap,
        run.config,
        files.work_dir,
        [files.script_path, files.params_path],
        status_write,
        seccomp_read,
        writable=[files.outputs_path],
    )


def _spawn(launch: _Launch, files: _Files, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        launch.argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=files.work_dir,
        env=env,
        start_new_session=True,
        close_fds=True,
        pass_fds=launch.pass_fds,
        # restore_signals (the default) resets SIGPIPE and SIGXFSZ, which Python
        # ignores, to their defaults before exec: ignored signals would survive it.
    )


def _started(
    run: _Run, process: subprocess.Popen[bytes], launch: _Launch, on_started: StartedCallback | None
) -> None:
    run.pid = process.pid
    # Only the child may hold the write ends, so EOF on them means it exec'd/exited.
    for fd in launch.pass_fds:
        os.close(fd)
        run.cleanup_fds.remove(fd)
    if on_started is not None:
        on_started(run.pid)


def _supervise(
    run: _Run,
    process: subprocess.Popen[bytes],
    launch: _Launch,
    timeout_seconds: float,
    on_output: OutputCallback,
    should_cancel: CancelCallback,
) -> tuple[int, _Supervisor, _OutputStream, _OutputStream]:
    """Follow the run to its end (output, timeout, cancel, kill grace); its wait status, the
    supervisor's findings and the two streams."""
    if process.stdout is None or process.stderr is None:  # pragma: no cover - PIPE was asked for
        raise RuntimeError("subprocess pipes missing")
    out = _OutputStream("stdout", run.config, on_output)
    err = _OutputStream("stderr", run.config, on_output)
    supervisor = _Supervisor(
        process=process,
        config=run.config,
        timeout_seconds=timeout_seconds,
        should_cancel=should_cancel,
        streams={process.stdout.fileno(): out, process.stderr.fileno(): err},
        status_fd=launch.status_read,
        bwrap=run.bwrap is not None,
        # Under bwrap the PID namespace is the sweep: by the time the outer bwrap has exited,
        # the sandbox's init has exited too or been sent SIGKILL (--die-with-parent), and the
        # kernel kills everything in a namespace whose init dies; nothing of the uid runs
        # outside it. Without bwrap the uid is swept: at once if the pipes are still held
        # when the main process exits, otherwise in a batch after the run (_Janitor).
        on_exit=run.lease.sweep if run.lease is not None and run.bwrap is None else None,
    )
    status = supervisor.run()
    if run.lease is not None and run.bwrap is not None:
        run.lease.empty = True
    return status, supervisor, out, err


def _outcome(
    run: _Run,
    status: int,
    supervisor: _Supervisor,
    out: _OutputStream,
    err: _OutputStream,
    timeout_seconds: float,
) -> RunResult:
    """Read the run's result from its wait status, the supervisor's stop reason, its cgroup's
    OOM kills and the tools' messages on stderr."""
    fields: dict[str, Any] = {
        "stdout_bytes": out.captured,
        "stderr_bytes": err.captured,
        "stdout_truncated": out.truncated,
        "stderr_truncated": err.truncated,
        "killed_with_sigkill": supervisor.killed_with_sigkill,
    }
    if status < 0:
        fields["signal"] = -status
    else:
        fields["exit_code"] = status
    if run.cgroup is not None and status != 0 and supervisor.stop_reason is None and run.cgroup.oom_kills():
        # The run went past its memory: the OOM killer killed inside it (all of it on v2).
        detail = _memory_exceeded_detail(run.config)
        return run.result("failed", error="memory_exceeded", error_detail=detail, **fields)
    failure = _launch_failure(run, status, supervisor, out, err)
    if failure is not None:
        return run.spawn_failed(failure)
    return _exit_outcome(run, status, supervisor.stop_reason, timeout_seconds, fields)


def _launch_failure(
    run: _Run, status: int, supervisor: _Supervisor, out: _OutputStream, err: _OutputStream
) -> str | None:
    """Why the script never started (bwrap, prlimit or setpriv failed), or None when it ran."""
    tool_failed = TOOL_FAILURE_RE.match(err.head) is not None
    if run.bwrap is not None and supervisor.sandbox_pgid is None and supervisor.stop_reason is None:
        # bwrap (or prlimit before it) exited before starting the sandbox: the message is on
        # stderr, and no script ran.
        message = output_text(bytes(err.head)).strip()
        if tool_failed:
            return message
        return f"bubblewrap failed to start the sandbox: {message or status}"
    if run.bwrap is None and tool_failed and status in TOOL_FAILURE_STATUSES and out.captured == 0:
        # prlimit or setpriv could not set up the child or exec the next program. Without
        # bwrap nothing marks the moment the script starts, so this is read from what they
        # print; only the script itself could imitate it, and only for its own run.
        return output_text(bytes(err.head)).strip()
    return None


def _exit_outcome(
    run: _Run, status: int, stop_reason: StopReason | None, timeout_seconds: float, fields: dict[str, Any]
) -> RunResult:
    """The outcome of a script that ran: stopped (timeout, cancel, shutdown), or its own exit."""
    if stop_reason == "timeout":
        detail = f"timed out after {timeout_seconds:g} s"
        return run.result("timed_out", error="timeout", error_detail=detail, **fields)
    if stop_reason == "cancelled":
        return run.result("cancelled", error="cancelled", error_detail="cancelled while running", **fields)
    if stop_reason == "worker_shutdown":
        return run.result(
            "killed", error="worker_shutdown", error_detail="stopped by worker shutdown", **fields
        )
    if status == 0:
        return run.result("succeeded", **fields)
    detail = f"exit code {status}" if status > 0 else f"killed by {_signal_name(-status)}"
    return run.result("failed", error_detail=detail, **fields)


def _clean_up(run: _Run) -> None:
    """Whatever happened: no process left unsupervised, descriptors closed, then the cgroup,
    the uid and the work directory released (now, or by the janitor)."""
    if run.process is not None:
        _end_process(run.process)
    for fd in run.cleanup_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    # Whatever is left in the run's cgroup is killed; if it is still exiting, the janitor
    # removes the cgroup a moment later.
    cgroup_left = run.cgroup if run.cgroup is not None and not run.cgroup.remove() else None
    if (run.lease is not None and not run.lease.empty) or cgroup_left is not None:
        # Processes of the uid may remain: swept (then the work dir removed, the uid
        # released) with the other runs that end about now, off this run's path.
        _janitor.submit(run.lease, run.work_dir, cgroup_left)
    else:
        if run.lease is not None:
            run.lease.unlock()
        if run.work_dir is not None:
            _remove_tree(run.work_dir)


def _end_process(process: subprocess.Popen[bytes]) -> None:
    if process.returncode is None:
        # Only reached when a callback raised: never leave the script unsupervised.
        _killpg(process.pid, signal.SIGKILL)
        process.wait()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def reaping_problem() -> str | None:
    """Why the sandboxes' exited processes would never be collected in this process, or None.

    bwrap leaves its sandbox's exited init to PID 1 (as killing a group leaves grandchildren),
    and a zombie counts against its uid's RLIMIT_NPROC until it is collected: a worker that is
    PID 1 itself (a container started without an init) never collects them, so after
    ``max_processes`` runs on a uid every new run there fails to start.
    """
    if os.getpid() != 1:
        return None
    return (
        "this worker is PID 1 (a container without an init): nothing collects the sandboxes' "
        "exited processes, and each run's uid fills up with them until its process limit refuses "
        "new runs; start the container with an init (docker run --init, tini)"
    )


def describe_isolation(config: SandboxConfig) -> str:
    """What isolation runs get with ``config``, for the worker's start-up log and its row:
    ``bwrap`` or ``rlimits``, plus ``+user`` when each run drops to a uid of its own and
    ``+cgroup2``/``+cgroup1`` when each run gets a memory cgroup (``executions/cgroups.py``)."""
    lease: _UidLease | None = None
    try:
        _resolve_tools(config)
        lease = _acquire_uid(config)
        kind = "bwrap" if _choose_bwrap(config, lease) else "rlimits"
        backend = cgroups.support(config.use_cgroup).backend
        if backend is None and config.use_cgroup == "always":
            raise _SpawnError(f"a cgroup per run is required but: {cgroups.support('always').reason}")
    except _SpawnError as exc:
        logger.error("the sandbox cannot run scripts: %s", exc)
        return f"broken: {exc}"[:32]
    finally:
        if lease is not None:
            lease.release()
    kind = f"{kind}+user" if lease else kind
    return f"{kind}+{backend.label}" if backend is not None else kind
