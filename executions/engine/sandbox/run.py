"""The entry point: run_script, and what the worker asks the sandbox at start-up
(reaping_problem, describe_isolation)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from executions.engine import cgroups
from executions.engine.cgroups import RunCgroup
from executions.engine.sandbox.bwrap import _bwrap_args, _choose_bwrap
from executions.engine.sandbox.config import (
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
    _resolve_executable,
    _resolve_tools,
    _SpawnError,
)
from executions.engine.sandbox.files import _remove_tree, _validate_env_extra, _write_file
from executions.engine.sandbox.janitor import _janitor
from executions.engine.sandbox.limits import (
    _cgroup_launcher,
    _check_rlimits,
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
    if script_type not in SCRIPT_TYPES:
        raise ValueError(f"script_type must be one of {SCRIPT_TYPES}, got {script_type!r}")
    if not timeout_seconds > 0:
        raise ValueError("timeout_seconds must be positive")
    extra_env = _validate_env_extra(env_extra or {})
    try:
        params_json = json.dumps(dict(params or {}), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"params must be JSON-serialisable: {exc}") from exc

    started_at = datetime.now(UTC)
    started = time.monotonic()
    work_dir: str | None = None
    pid: int | None = None
    bwrap: str | None = None
    lease: _UidLease | None = None
    cgroup: RunCgroup | None = None
    cleanup_fds: list[int] = []

    def result(outcome: Outcome, **fields: Any) -> RunResult:
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
            started_at=started_at,
            finished_at=datetime.now(UTC),
            duration_ms=round((time.monotonic() - started) * 1000),
            pid=pid,
            sandboxed_with_bwrap=bwrap is not None,
            work_dir=work_dir,
            **values,
        )

    def spawn_failed(detail: str) -> RunResult:
        logger.warning("sandbox spawn failed: %s", detail)
        return result("spawn_failed", error="spawn_failed", error_detail=detail)

    process: subprocess.Popen[bytes] | None = None
    try:
        try:
            prlimit, setpriv = _resolve_tools(config)
            command = (
                [_resolve_executable(config.python, config.path), "-u"]
                if script_type == "python"
                else [_resolve_executable(config.bash, config.path)]
            )
            lease = _acquire_uid(config)
            limits = _rlimits(config, timeout_seconds, lease)
            _check_rlimits(limits)
            bwrap = _choose_bwrap(config, lease)
            cgroup = _run_cgroup(config)

            work_dir = tempfile.mkdtemp(prefix="taskforge-run-", dir=config.work_root)
            tmp_dir = os.path.join(work_dir, "tmp")
            os.mkdir(tmp_dir, 0o700)
            script_path = os.path.join(work_dir, SCRIPT_FILE_NAMES[script_type])
            params_path = os.path.join(work_dir, PARAMS_FILE_NAME)
            _write_file(script_path, script.encode("utf-8", "replace"), lease)
            _write_file(params_path, params_json, lease)
            if lease is not None:
                for directory in (work_dir, tmp_dir):
                    os.chown(directory, lease.uid, lease.gid)

            env = {
                **extra_env,
                "PATH": config.path,
                "LANG": SANDBOX_LANG,
                "HOME": work_dir,
                "TMPDIR": tmp_dir,
                "TASKFORGE_PARAMS_FILE": params_path,
            }
            pass_fds: list[int] = []
            status_read: int | None = None
            # prlimit sets the limits on itself and execs the rest, all in the one process that
            # Popen created (already running as the run's uid): pid == pgid throughout.
            argv = [*_cgroup_launcher(cgroup), prlimit, *_prlimit_args(limits), "--"]
            # The run's uid is taken by setpriv after prlimit, not by Popen(user=): with a uid
            # change Popen must fork() the whole worker (2.2 ms of CPU per run measured with a
            # worker-sized process) where it otherwise uses vfork() (0.1 ms).
            drop = _setpriv_user_args(lease)
            if bwrap is not None:
                status_read, status_write = os.pipe()
                cleanup_fds += [status_read, status_write]
                pass_fds.append(status_write)
                # bwrap's --die-with-parent sets the parent-death signal on itself, and bwrap
                # sets no_new_privs in the sandbox (setting it before a setuid bwrap, as some
                # distributions ship, would stop bwrap from working).
                seccomp_read = _seccomp_fd()
                if seccomp_read is not None:
                    cleanup_fds.append(seccomp_read)
                    pass_fds.append(seccomp_read)
                if drop:
                    argv += [setpriv, *drop, "--"]
                argv += _bwrap_args(
                    bwrap, config, work_dir, [script_path, params_path], status_write, seccomp_read
                )
            else:
                # setpriv sets the parent-death signal after the uid change (which would clear
                # it), checked by test: the script dies with a worker killed by SIGKILL.
                argv += [setpriv, *drop, "--pdeathsig", "KILL", "--no-new-privs", "--"]
            argv += [*command, script_path]
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=work_dir,
                env=env,
                start_new_session=True,
                close_fds=True,
                pass_fds=pass_fds,
                # restore_signals (the default) resets SIGPIPE and SIGXFSZ, which Python
                # ignores, to their defaults before exec: ignored signals would survive it.
            )
        except _SpawnError as exc:
            return spawn_failed(str(exc))
        except (OSError, subprocess.SubprocessError) as exc:
            return spawn_failed(f"{type(exc).__name__}: {exc}")

        pid = process.pid
        # Only the child may hold the write ends, so EOF on them means it exec'd/exited.
        for fd in pass_fds:
            os.close(fd)
            cleanup_fds.remove(fd)
        if on_started is not None:
            on_started(pid)

        if process.stdout is None or process.stderr is None:  # pragma: no cover - PIPE was asked for
            raise RuntimeError("subprocess pipes missing")
        streams = {
            process.stdout.fileno(): _OutputStream("stdout", config, on_output),
            process.stderr.fileno(): _OutputStream("stderr", config, on_output),
        }
        supervisor = _Supervisor(
            process=process,
            config=config,
            timeout_seconds=timeout_seconds,
            should_cancel=should_cancel,
            streams=streams,
            status_fd=status_read,
            bwrap=bwrap is not None,
            # Under bwrap the PID namespace is the sweep: by the time the outer bwrap has exited,
            # the sandbox's init has exited too or been sent SIGKILL (--die-with-parent), and the
            # kernel kills everything in a namespace whose init dies; nothing of the uid runs
            # outside it. Without bwrap the uid is swept: at once if the pipes are still held
            # when the main process exits, otherwise in a batch after the run (_Janitor).
            on_exit=lease.sweep if lease is not None and bwrap is None else None,
        )
        status = supervisor.run()
        if lease is not None and bwrap is not None:
            lease.empty = True
        out, err = streams[process.stdout.fileno()], streams[process.stderr.fileno()]
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
        if cgroup is not None and status != 0 and supervisor.stop_reason is None and cgroup.oom_kills():
            # The run went past its memory: the OOM killer killed inside it (all of it on v2).
            detail = _memory_exceeded_detail(config)
            return result("failed", error="memory_exceeded", error_detail=detail, **fields)

        tool_failed = TOOL_FAILURE_RE.match(err.head) is not None
        if bwrap is not None and supervisor.sandbox_pgid is None and supervisor.stop_reason is None:
            # bwrap (or prlimit before it) exited before starting the sandbox: the message is on
            # stderr, and no script ran.
            message = output_text(bytes(err.head)).strip()
            if tool_failed:
                return spawn_failed(message)
            return spawn_failed(f"bubblewrap failed to start the sandbox: {message or status}")
        if bwrap is None and tool_failed and status in TOOL_FAILURE_STATUSES and out.captured == 0:
            # prlimit or setpriv could not set up the child or exec the next program. Without
            # bwrap nothing marks the moment the script starts, so this is read from what they
            # print; only the script itself could imitate it, and only for its own run.
            return spawn_failed(output_text(bytes(err.head)).strip())
        if supervisor.stop_reason == "timeout":
            detail = f"timed out after {timeout_seconds:g} s"
            return result("timed_out", error="timeout", error_detail=detail, **fields)
        if supervisor.stop_reason == "cancelled":
            return result("cancelled", error="cancelled", error_detail="cancelled while running", **fields)
        if supervisor.stop_reason == "worker_shutdown":
            return result(
                "killed", error="worker_shutdown", error_detail="stopped by worker shutdown", **fields
            )
        if status == 0:
            return result("succeeded", **fields)
        detail = f"exit code {status}" if status > 0 else f"killed by {_signal_name(-status)}"
        return result("failed", error_detail=detail, **fields)
    finally:
        if process is not None:
            if process.returncode is None:
                # Only reached when a callback raised: never leave the script unsupervised.
                _killpg(process.pid, signal.SIGKILL)
                process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        for fd in cleanup_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        # Whatever is left in the run's cgroup is killed; if it is still exiting, the janitor
        # removes the cgroup a moment later.
        cgroup_left = cgroup if cgroup is not None and not cgroup.remove() else None
        if (lease is not None and not lease.empty) or cgroup_left is not None:
            # Processes of the uid may remain: swept (then the work dir removed, the uid
            # released) with the other runs that end about now, off this run's path.
            _janitor.submit(lease, work_dir, cgroup_left)
        else:
            if lease is not None:
                lease.unlock()
            if work_dir is not None:
                _remove_tree(work_dir)


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
