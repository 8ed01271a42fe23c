"""The sandbox's knobs (SandboxConfig, read from settings), its result (RunResult), the names
and constants every part shares, and the tools it resolves on the PATH."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from executions.engine.cgroups import CGROUP_MODES, CgroupMode

ScriptType = Literal["python", "bash"]
BwrapMode = Literal["auto", "always", "never"]
StreamName = Literal["stdout", "stderr"]
StopReason = Literal["cancelled", "worker_shutdown"]
Outcome = Literal["succeeded", "failed", "timed_out", "cancelled", "killed", "spawn_failed"]

BWRAP_MODES: tuple[str, ...] = get_args(BwrapMode)
SCRIPT_TYPES: tuple[str, ...] = get_args(ScriptType)
STOP_REASONS: tuple[str, ...] = get_args(StopReason)

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
SANDBOX_LANG = "C.UTF-8"
PARAMS_FILE_NAME = "params.json"
# Where a script publishes its outputs (a JSON object; TASKFORGE_OUTPUTS_FILE names it).
OUTPUTS_FILE_NAME = "outputs.json"
SCRIPT_FILE_NAMES: dict[str, str] = {"python": "script.py", "bash": "script.sh"}

# Keys the worker may pass in env_extra; everything else in the environment is set here.
ALLOWED_EXTRA_ENV = frozenset({"TASKFORGE_EXECUTION_ID", "TASKFORGE_TASK_ID"})
PARAM_ENV_RE = re.compile(r"PARAM_[A-Za-z0-9_]+")
# Lone surrogates (from surrogateescape) cannot be encoded: output_text replaces them.
SURROGATES_RE = re.compile("[\ud800-\udfff]")

# util-linux tools (an essential package on Debian) that set up the child before the script,
# after the cgroup launcher (/bin/sh, see executions/cgroups.py) when the run has a cgroup.
# Their own failures are a line "prlimit: ..." / "setpriv: ..." on stderr and exit 1, 126 or 127.
TOOL_FAILURE_RE = re.compile(rb"\A(?:prlimit|setpriv|taskforge-cgroup): ")
TOOL_FAILURE_STATUSES = frozenset({1, 126, 127})

# Per-run uids: one lock file per uid in a root-owned directory (see _UidLease).
DEFAULT_UID_RANGE = (200000, 200999)
DEFAULT_UID_LOCK_DIR = "/run/taskforge-sandbox"
UID_CLEAN_MARK = b"clean\n"
# How long a uid sweep keeps SIGKILLing before it gives up on processes that will not die.
UID_SWEEP_SECONDS = 2.0
# How long a finished run's cleanup may wait to be batched with others' (see _Janitor).
JANITOR_INTERVAL = 0.1

# System directories bwrap exposes read-only; symlinks (merged /usr) are recreated as symlinks.
BWRAP_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The only parts of /etc a script sees (read-only; symlinks recreated; missing ones skipped):
# the dynamic linker's cache and configuration, names of users, groups and hosts (glibc's NSS),
# the time zone, Debian's alternatives (awk, editor, ... and on some systems python3 are
# symlinks through /etc/alternatives), Python's per-version configuration (Debian's
# sitecustomize), CA certificates and OpenSSL's configuration (no network, but libraries load
# them), and small read-only tables (services, protocols, mime.types). Not there: shadow,
# gshadow, hostname, machine-id, ssh, the host's credentials and every service's configuration.
BWRAP_ETC_PATHS = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/alternatives",
    "/etc/python3",
    *(f"/etc/python3.{minor}" for minor in range(8, 20)),
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/mime.types",
    "/etc/debian_version",
    "/etc/os-release",
    "/etc/locale.alias",
    "/etc/magic",
    "/etc/bash.bashrc",
    "/etc/inputrc",
)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Limits and knobs for one run; the defaults are the SPEC's (section 5, "Sandbox")."""

    use_bwrap: BwrapMode = "auto"
    address_space_bytes: int = 1 * GIB
    file_size_bytes: int = 64 * MIB
    # Size of each writable tmpfs under bwrap: /tmp, /dev/shm and the work directory.
    tmpfs_bytes: int = 64 * MIB
    # A run's whole memory (RAM of all its processes plus what it keeps in tmpfs), bounded by a
    # cgroup per run where one can be made (executions/cgroups.py); 0 = no memory limit.
    memory_bytes: int = 512 * MIB
    # "auto": a cgroup per run when the host allows it; "always": required (spawn_failed
    # otherwise); "never": none (RLIMIT_AS per process and the sized tmpfs only).
    use_cgroup: CgroupMode = "auto"
    open_files: int = 256
    # Processes of one run at once (RLIMIT_NPROC counts per uid, and each run has its own uid).
    max_processes: int = 512
    # RLIMIT_CPU = ceil(timeout_seconds) + this: a safety net for CPU-bound scripts whose wall
    # clock timeout could be missed (e.g. the worker stalls); normally the timeout fires first.
    cpu_extra_seconds: int = 5
    output_cap_bytes: int = 1 * MIB
    # The most a script may write to its outputs file (TASKFORGE_OUTPUTS_FILE).
    outputs_max_bytes: int = 64 * KIB
    kill_grace_seconds: float = 5.0
    # Cancellation must reach the script within 2 s: poll interval + this grace stays well below.
    cancel_grace_seconds: float = 1.0
    cancel_poll_seconds: float = 0.25
    # Output reaches live logs this long after it is written, at most (issue 19: <= 50 ms).
    flush_interval_seconds: float = 0.02
    chunk_bytes: int = 64 * KIB
    # After the main process exits, how long to keep reading pipes still held open by processes
    # that escaped the group (without bwrap). Within the group, everything is killed at once.
    post_exit_drain_seconds: float = 1.0
    # Inclusive range of uids (and gids: a run's gid is its uid) handed out one per run when the
    # worker runs as root. No user or group may own one: everything of a run's uid is killed.
    uid_range: tuple[int, int] = DEFAULT_UID_RANGE
    # Where the per-uid lock files live: the same directory for every worker on the host.
    # None = DEFAULT_UID_LOCK_DIR, or a directory in the system temp dir when /run is missing.
    uid_lock_dir: str | None = None
    prlimit: str = "prlimit"
    setpriv: str = "setpriv"
    python: str = "python3"
    bash: str = "/bin/bash"
    path: str = SAFE_PATH
    work_root: str | None = None

    def __post_init__(self) -> None:
        if self.use_bwrap not in BWRAP_MODES:
            raise ValueError(f"use_bwrap must be one of {BWRAP_MODES}, got {self.use_bwrap!r}")
        if self.use_cgroup not in CGROUP_MODES:
            raise ValueError(f"use_cgroup must be one of {CGROUP_MODES}, got {self.use_cgroup!r}")
        if not isinstance(self.memory_bytes, int) or self.memory_bytes < 0:
            raise ValueError("memory_bytes must be a number of bytes, 0 for no limit")
        for name in (
            "address_space_bytes",
            "file_size_bytes",
            "tmpfs_bytes",
            "open_files",
            "max_processes",
            "output_cap_bytes",
            "outputs_max_bytes",
            "chunk_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.cpu_extra_seconds < 0:
            raise ValueError("cpu_extra_seconds must not be negative")
        for name in (
            "kill_grace_seconds",
            "cancel_grace_seconds",
            "cancel_poll_seconds",
            "flush_interval_seconds",
            "post_exit_drain_seconds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        low, high = self.uid_range
        if not (isinstance(low, int) and isinstance(high, int) and 0 < low <= high < 2**32 - 1):
            raise ValueError(f"uid_range must be two uids with 0 < low <= high, got {self.uid_range!r}")

    @classmethod
    def from_settings(cls, **overrides: Any) -> SandboxConfig:
        """Build from Django's ``TASKFORGE_SANDBOX_*`` settings; missing settings keep defaults."""
        from django.conf import settings  # keeps this module importable without Django

        names = {
            "use_bwrap": "TASKFORGE_SANDBOX_BWRAP",
            "address_space_bytes": "TASKFORGE_SANDBOX_ADDRESS_SPACE_BYTES",
            "file_size_bytes": "TASKFORGE_SANDBOX_FILE_SIZE_BYTES",
            "tmpfs_bytes": "TASKFORGE_SANDBOX_TMPFS_BYTES",
            "memory_bytes": "TASKFORGE_SANDBOX_MEMORY_BYTES",
            "use_cgroup": "TASKFORGE_SANDBOX_CGROUP",
            "open_files": "TASKFORGE_SANDBOX_OPEN_FILES",
            "max_processes": "TASKFORGE_SANDBOX_MAX_PROCESSES",
            "cpu_extra_seconds": "TASKFORGE_SANDBOX_CPU_EXTRA_SECONDS",
            "output_cap_bytes": "TASKFORGE_SANDBOX_OUTPUT_CAP_BYTES",
            "outputs_max_bytes": "TASKFORGE_OUTPUTS_MAX_BYTES",
            "kill_grace_seconds": "TASKFORGE_SANDBOX_KILL_GRACE_SECONDS",
            "uid_range": "TASKFORGE_SANDBOX_UID_RANGE",
            "uid_lock_dir": "TASKFORGE_SANDBOX_UID_LOCK_DIR",
            "python": "TASKFORGE_SCRIPT_PYTHON",
        }
        values: dict[str, Any] = {}
        for attr, setting in names.items():
            if hasattr(settings, setting):
                values[attr] = getattr(settings, setting)
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class RunResult:
    """What happened to one run; the worker maps it onto the execution row."""

    outcome: Outcome
    exit_code: int | None
    signal: int | None
    error: str | None
    error_detail: str | None
    stdout_bytes: int
    stderr_bytes: int
    stdout_truncated: bool
    stderr_truncated: bool
    started_at: datetime
    finished_at: datetime
    duration_ms: int
    pid: int | None
    sandboxed_with_bwrap: bool
    # True when a stop needed SIGKILL because the group outlived the grace period.
    killed_with_sigkill: bool
    # Already removed when the result is returned; kept for logs.
    work_dir: str | None
    # What the script wrote to TASKFORGE_OUTPUTS_FILE (None: nothing, or the file was
    # unreadable), and why it cannot be used (too large, not a regular file), else None.
    outputs: bytes | None = None
    outputs_problem: str | None = None


OutputCallback = Callable[[StreamName, bytes], None]
CancelCallback = Callable[[], StopReason | None]
StartedCallback = Callable[[int], None]


class _SpawnError(Exception):
    """Setup failed before or while starting the child: becomes outcome ``spawn_failed``."""


def _resolve_executable(name: str, path: str, what: str = "interpreter") -> str:
    if os.path.isabs(name):
        if os.access(name, os.X_OK) and os.path.isfile(name):
            return name
        raise _SpawnError(f"{what} {name} is missing or not executable")
    found = shutil.which(name, path=path)
    if found is None:
        raise _SpawnError(f"{what} {name!r} not found on PATH {path}")
    return found


def _resolve_tools(config: SandboxConfig) -> tuple[str, str]:
    """Absolute paths of ``prlimit`` and ``setpriv``; a clear ``_SpawnError`` when one is missing."""
    return (
        _resolve_executable(config.prlimit, config.path, "prlimit (util-linux)"),
        _resolve_executable(config.setpriv, config.path, "setpriv (util-linux)"),
    )
