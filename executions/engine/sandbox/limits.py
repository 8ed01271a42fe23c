"""Resource limits: rlimits applied by prlimit, and the run's memory cgroup."""

from __future__ import annotations

import logging
import math
import resource
from dataclasses import dataclass

from executions.engine import cgroups
from executions.engine.cgroups import RunCgroup
from executions.engine.sandbox.config import SandboxConfig, _SpawnError
from executions.engine.sandbox.uids import _UidLease

logger = logging.getLogger(__name__)


def _run_cgroup(config: SandboxConfig) -> RunCgroup | None:
    """A memory (and pids) cgroup for one run, or None to run without (no backend here,
    ``never``, or making one failed under ``auto``); ``_SpawnError`` when one is required."""
    detection = cgroups.support(config.use_cgroup)
    if detection.backend is None:
        if config.use_cgroup == "always":
            raise _SpawnError(f"a cgroup per run is required (use_cgroup='always') but: {detection.reason}")
        return None
    try:
        return detection.backend.create(config.memory_bytes, config.max_processes)
    except cgroups.CgroupError as exc:
        if config.use_cgroup == "always":
            raise _SpawnError(str(exc)) from exc
        logger.warning("%s: this run goes without a cgroup", exc)
        return None


def _cgroup_launcher(cgroup: RunCgroup | None) -> list[str]:
    """The start of the command line that puts the process into the run's cgroup(s) before
    it execs the rest, so nothing of the run is ever outside (see executions/cgroups.py)."""
    if cgroup is None:
        return []
    return ["/bin/sh", "-c", cgroups.LAUNCHER_SCRIPT, cgroups.LAUNCHER_NAME, *cgroup.procs_files(), "--"]


def _memory_exceeded_detail(config: SandboxConfig) -> str:
    if not config.memory_bytes:  # no limit of its own: an ancestor cgroup or the host ran out
        return "out of memory (killed by the kernel's OOM killer; the run has no memory limit of its own)"
    return f"memory limit of {config.memory_bytes} bytes exceeded (killed by the kernel's OOM killer)"


@dataclass(frozen=True, slots=True)
class _Limit:
    option: str  # prlimit's option
    resource: int
    soft: int
    hard: int
    setting: str  # the SandboxConfig field it comes from, for error messages


def _rlimits(config: SandboxConfig, timeout_seconds: float, lease: _UidLease | None) -> list[_Limit]:
    cpu = math.ceil(timeout_seconds) + config.cpu_extra_seconds
    space, size, files = config.address_space_bytes, config.file_size_bytes, config.open_files
    limits = [
        _Limit("--as", resource.RLIMIT_AS, space, space, "address_space_bytes"),
        _Limit("--fsize", resource.RLIMIT_FSIZE, size, size, "file_size_bytes"),
        _Limit("--nofile", resource.RLIMIT_NOFILE, files, files, "open_files"),
        _Limit("--core", resource.RLIMIT_CORE, 0, 0, "(core dumps)"),
        # Soft first, hard one second later: the script first gets a catchable SIGXCPU.
        _Limit("--cpu", resource.RLIMIT_CPU, cpu, cpu + 1, "cpu_extra_seconds"),
    ]
    if lease is not None:
        # RLIMIT_NPROC counts every process of the uid, so it is only meaningful for a uid of
        # the run's own (a fork bomb stops there, the worker and other runs are untouched).
        # Running as an ordinary user, it would count that user's other processes too.
        n = config.max_processes
        limits.append(_Limit("--nproc", resource.RLIMIT_NPROC, n, n, "max_processes"))
    return limits


def _check_rlimits(limits: list[_Limit]) -> None:
    """Refuse, before spawning, limits the child could not set: it runs as an unprivileged uid
    (or the worker's own) and so can only lower the hard limits it inherits from the worker."""
    for limit in limits:
        _, inherited = resource.getrlimit(limit.resource)
        if inherited != resource.RLIM_INFINITY and limit.hard > inherited:
            raise _SpawnError(
                f"{limit.setting}: {limit.option[2:]} limit {limit.hard} is above the worker's own "
                f"hard limit {inherited}, which an unprivileged child cannot raise"
            )


def _prlimit_args(limits: list[_Limit]) -> list[str]:
    return [
        f"{limit.option}={limit.soft}"
        if limit.soft == limit.hard
        else f"{limit.option}={limit.soft}:{limit.hard}"
        for limit in limits
    ]
