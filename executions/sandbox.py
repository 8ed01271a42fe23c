"""Run one task script in a sandbox: the only place where Taskforge executes user code.

The worker calls :func:`run_script` once per execution, from one of its threads, and turns the
returned :class:`RunResult` into database writes. This module knows nothing about Django models;
the only Django touch point is :meth:`SandboxConfig.from_settings`, which reads the
``TASKFORGE_SANDBOX_*`` settings lazily.

Public API
==========

``SandboxConfig``
    Frozen dataclass of limits and knobs. ``SandboxConfig()`` gives the SPEC defaults without
    touching Django; ``SandboxConfig.from_settings(**overrides)`` reads the settings.

``run_script(*, script, script_type, timeout_seconds, on_output, should_cancel, env_extra=None,
params=None, on_started=None, config=None) -> RunResult``
    Runs the script to the end and returns. It never raises for anything that happens to the
    script (spawn failures included: outcome ``spawn_failed``). It raises ``ValueError`` for
    programming errors in its arguments (unknown ``script_type``, an ``env_extra`` key outside the
    allow-list, params that are not JSON), before anything is created. An exception raised by one
    of the worker's callbacks is re-raised *after* the process group has been killed and the work
    directory removed, so a failing callback never leaves a script running unsupervised.

    * ``on_output(stream, data)``: ``stream`` is ``"stdout"`` or ``"stderr"``, ``data`` non-empty
      ``bytes`` of at most ``config.chunk_bytes``. Chunks are flushed at least every
      ``config.flush_interval_seconds`` so a UI can follow live. Chunks never split a UTF-8
      character (an incomplete trailing sequence is held back until its remaining bytes arrive),
      so the worker can decode each chunk on its own with ``errors="replace"``. At most
      ``config.output_cap_bytes`` are delivered per stream; the rest is read and discarded.
    * ``should_cancel()``: polled every ``config.cancel_poll_seconds`` (0.25 s) while the script
      runs. Return ``None`` to continue, ``"cancelled"`` (a user cancelled the execution: outcome
      ``cancelled``) or ``"worker_shutdown"`` (the worker is stopping: outcome ``killed``, error
      ``worker_shutdown``). Either stops the run within ``cancel_poll_seconds +
      cancel_grace_seconds`` (about 1.25 s by default, inside the SPEC's 2 s).
    * ``on_started(pid)``: called once the process exists, with its pid, which is also its
      process-group id.

``RunResult``
    ``outcome`` is one of ``succeeded`` (exit 0), ``failed`` (non-zero exit, or death by a signal
    the sandbox did not send, such as SIGXCPU or an out-of-memory kill), ``timed_out``,
    ``cancelled``, ``killed`` (stopped for ``worker_shutdown``) or ``spawn_failed``. ``error`` uses
    the SPEC's codes (``timeout``, ``cancelled``, ``worker_shutdown``, ``spawn_failed``, and
    ``memory_exceeded`` for a failed run whose cgroup saw an OOM kill) and is ``None`` otherwise;
    ``error_detail`` is human-readable text for logs.

How the sandbox is built, and why
=================================

* **Work directory**: ``tempfile.mkdtemp`` per run, HOME is the directory itself and TMPDIR a
  ``tmp`` directory inside it; the script (``script.py``/``script.sh``) and ``params.json`` are
  written there. It is removed in every case: when the run ends, or after its uid sweep (below).
* **Environment**: built from scratch (never ``os.environ``): PATH, LANG, HOME, TMPDIR,
  TASKFORGE_PARAMS_FILE, plus ``env_extra`` keys matching ``PARAM_*``,
  ``TASKFORGE_EXECUTION_ID`` and ``TASKFORGE_TASK_ID``. Anything else is a ``ValueError``.
  (Under bwrap, its ``--chdir`` also sets PWD to the work directory.)
* **Interpreters**: Python scripts run with the *system* ``python3`` found on the sandbox PATH
  (``config.python``), not ``sys.executable``: the worker's interpreter lives in a virtualenv
  (often under a home directory the unprivileged user cannot read, and outside what bubblewrap
  exposes) and would hand the script Django and every installed package. Python runs with
  ``-u`` so output is live without the script flushing. Bash scripts run with ``/bin/bash``.
* **Resource limits and the child's setup** come from two util-linux programs (an essential
  package on Debian, so bash scripts need nothing else), exec'd in turn by the process Popen
  creates, so pid == pgid throughout: ``prlimit --as --fsize --nofile --core=0 --cpu=soft:hard
  [--nproc] -- <next>`` sets RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE (0), RLIMIT_CPU
  (ceil(timeout) + ``cpu_extra_seconds``, soft; hard one second later, so the script first gets
  a catchable SIGXCPU) and, with a per-run uid, RLIMIT_NPROC on itself, then execs; without
  bwrap, ``setpriv [--reuid --regid --clear-groups] --pdeathsig KILL --no-new-privs --
  <interpreter> <script>`` follows (the script dies if the worker is killed with SIGKILL; setuid
  binaries cannot regain root). Under bwrap, prlimit execs bwrap (through ``setpriv --reuid
  --regid --clear-groups`` with a per-run uid): ``--die-with-parent`` is the parent-death signal
  and bwrap sets ``no_new_privs`` in the sandbox itself (setting it before a setuid bwrap, as
  some distributions ship, would stop bwrap from working). ``Popen(restore_signals=True)``, the
  default, resets SIGPIPE and SIGXFSZ (Python ignores them; ignored signals survive exec) in C.
  Why not the alternatives: ``preexec_fn`` runs Python code between fork and exec and can
  deadlock when other threads hold locks (the worker is threaded); ``resource.prlimit(pid,
  ...)`` after spawn races with the script, which is already running; a ``python3 -I -S``
  trampoline (the previous design) cost 6.5 ms (``-c pass``) to ~14 ms (with its imports) of CPU
  per run, and made bash scripts need python3. Failures are found before spawning where they can
  be: a missing prlimit/setpriv (``_SpawnError`` naming it), a limit above the worker's own hard
  limit (an unprivileged child can only lower what it inherits). What is left (a kernel refusing
  a limit, an exec that fails) makes the tool print ``prlimit: ...``/``setpriv: ...`` and exit
  1, 126 or 127: under bwrap no sandbox was started (bwrap never reported it), without bwrap the
  exit status, that stderr line and an empty stdout are read as ``spawn_failed``; only the
  script itself could imitate that, and only for its own run. The parent-death signal is set a
  moment after the fork: a worker killed inside that window leaves a script behind, which the
  uid sweep below ends.
* **A uid of its own per run**: when the worker runs as root, each run takes a uid of
  ``config.uid_range`` (default 200000-200999; its gid is the same number; numeric ids need no
  /etc/passwd entry; the range is refused if a user or group of the host owns one of them, or
  if the worker's user namespace does not map it),
  by an exclusive non-blocking ``flock`` of ``<uid>.lock`` in a root-owned directory
  (``config.uid_lock_dir``, default /run/taskforge-sandbox, or one in the system temp dir). The
  kernel drops the lock when the worker dies, however it dies, so workers on one host never share
  a uid (they must share the directory and range), and the lowest free uid is taken, so a few
  uids serve most runs. ``setpriv --reuid --regid --clear-groups``, exec'd by prlimit, drops to
  it (Popen's ``user=``/``group=`` would do it too, safely with threads, but make Popen fork the
  whole worker instead of using vfork: 2.2 ms of CPU per run against 0.1 ms). The work
  directory and its files are chowned to it (mode 0700/0600).
  **The uid sweep** SIGKILLs every process whose real, effective, saved or filesystem uid is the
  run's (a /proc scan of ``status``; pidfds so a recycled pid is never hit), again until none
  remain, for at most ``UID_SWEEP_SECONDS``. It runs after the main process exits (after the
  group kill), so a process that called ``setsid()`` or double-forked dies with the run: at once
  when such a process still holds the run's pipes (the sweep closes them; the run cannot end
  before), otherwise within ``JANITOR_INTERVAL`` (0.1 s) after the run, in one scan for every
  run that ended meanwhile (a scan is ~2 ms of CPU, a tenth of a trivial run's cost when it was
  made per run), followed by the removal of the work directory; the uid stays locked until
  then. It also runs when a uid is acquired whose lock file does not say ``clean`` (written
  only after a sweep found nothing), which ends whatever a worker killed mid-run left behind.
  Under bwrap the exit sweep is skipped: the PID namespace already is one.
  RLIMIT_NPROC is therefore per run. A worker that is not root cannot switch users: scripts then
  run as the worker's own uid, without RLIMIT_NPROC and without the sweep.
* **A memory and pids cgroup per run** (``use_cgroup``, ``memory_bytes``; see
  ``executions/cgroups.py``): when the host allows one, the process Popen creates is first a
  ``/bin/sh`` that writes its own pid into the run's ``cgroup.procs`` file(s) and execs
  prlimit (pid == pgid still), so the run is born inside it and everything it holds in memory,
  tmpfs included, counts against ``memory_bytes``. An OOM kill there (``oom_kill`` in the
  cgroup's evidence) turns a failed run into error ``memory_exceeded``. After the run the
  cgroup is emptied and removed (by the janitor if killed processes are still exiting).
* **Process group**: ``start_new_session=True`` gives the child its own session and process group
  (pgid == pid), and no controlling terminal (no TIOCSTI injection into an operator's shell).
  Stopping means SIGTERM to the group, then SIGKILL after a grace (``kill_grace_seconds`` for
  timeouts, ``cancel_grace_seconds`` for cancellation and shutdown). When the main process
  exits, whatever it left in its group is SIGKILLed before the process is reaped (``waitid`` with
  ``WNOWAIT``), so the group id can never be recycled under us.
* **Bubblewrap** (``use_bwrap``: ``auto`` = when ``bwrap`` is on PATH and a cached probe shows it
  works; ``always`` = required, otherwise ``spawn_failed``; ``never``): ``--unshare-all`` (no
  network: only a loopback inside a fresh network namespace; own PID, IPC, UTS, cgroup and user
  namespaces), read-only binds of /usr, /bin, /sbin, /lib*, /etc, a fresh /proc, /dev and /tmp,
  the work directory bound read-write at the same path, ``--cap-drop ALL``, ``--die-with-parent``
  and ``--new-session``. prlimit and the user drop apply *outside* bwrap, to bwrap itself, and are
  inherited by everything inside (bwrap then runs unprivileged and uses a user namespace, so the
  sandbox never holds real root; the bwrap probe runs as a uid of the range too). Because of
  ``--new-session`` the sandboxed processes form their own group, whose id bwrap reports on
  ``--json-status-fd``; SIGTERM goes to that group only, so the script gets its real grace
  period (signalling the outer bwrap would make it die and take the sandbox down with SIGKILL at
  once). SIGKILL goes to that group first (the namespace's init dies and the kernel kills
  everything inside), then to the outer bwrap if it lingers. bwrap reports a sandbox killed by
  signal N as exit code 128 + N.

Known limits (documented, not solved here): when the worker is not root, every run has the
worker's uid: without bubblewrap a process that calls ``setsid()`` then escapes the group kill
and concurrent runs can see (and signal) each other's processes; with bubblewrap the PID
namespace closes both holes. Without bubblewrap, files a script leaves outside its work
directory (/tmp, /dev/shm) stay readable by a later run that gets the same uid. Workers in
separate containers on one host must be given disjoint uid ranges (or one shared lock
directory): their locks would not see each other. Without a cgroup per run (the host allows
none, or ``use_cgroup="never"``) RLIMIT_AS bounds each process, not the run. bwrap leaves
its exited init for PID 1 to reap, and so does killing
a group (or a uid) for grandchildren: run workers in containers under an init (``docker --init``,
tini) so such zombies are collected (a worker that is PID 1 says so at start, ``reaping_problem``),
and on a host whose PID 1 collects them promptly (zombies count against RLIMIT_NPROC).
"""

from __future__ import annotations

import atexit
import codecs
import contextlib
import errno
import fcntl
import grp
import json
import logging
import math
import os
import pwd
import re
import resource
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from executions import cgroups
from executions.cgroups import CGROUP_MODES, CgroupMode, RunCgroup

logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------------


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


OutputCallback = Callable[[StreamName, bytes], None]
CancelCallback = Callable[[], StopReason | None]
StartedCallback = Callable[[int], None]


# --------------------------------------------------------------------------------------------
# Output capture
# --------------------------------------------------------------------------------------------


def output_text(data: bytes | str, decoder: codecs.IncrementalDecoder | None = None) -> str:
    """Text that any database stores, from anything a script produced (the one place).

    Used for every chunk, the final output, the error detail and anything else that comes from
    the script or from the tools around it. Invalid UTF-8 becomes U+FFFD (the replacement
    character), and so does NUL (U+0000), which PostgreSQL's text type refuses; a lone
    surrogate in a ``str`` (from ``surrogateescape`` somewhere) becomes U+FFFD too, since it
    cannot be encoded. ``decoder``: an incremental UTF-8 decoder with ``errors="replace"``, so a
    character split between two chunks is decoded once it is whole.
    """
    if isinstance(data, str):
        text = data
        if not text.isascii():
            text = SURROGATES_RE.sub("\ufffd", text)
    elif decoder is not None:
        text = decoder.decode(data)
    else:
        text = data.decode("utf-8", "replace")
    return text.replace("\0", "\ufffd") if "\0" in text else text


def utf8_safe_cut(data: bytes | bytearray, limit: int) -> int:
    """Largest ``n <= limit`` such that ``data[:n]`` does not end inside a UTF-8 character.

    Only an *incomplete* sequence at the cut is held back; invalid bytes are passed through (the
    reader replaces them), so arbitrary binary output still makes progress.
    """
    limit = min(limit, len(data))
    for back in range(1, min(4, limit) + 1):
        index = limit - back
        byte = data[index]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if byte >= 0xF0:
            needed = 4
        elif byte >= 0xE0:
            needed = 3
        elif byte >= 0xC0:
            needed = 2
        else:
            needed = 1
        if index + needed > limit and index > 0:
            return index
        return limit
    return limit


class _OutputStream:
    """One captured stream: caps, chunks and time-based flushing, with O(chunk) memory."""

    def __init__(self, name: StreamName, config: SandboxConfig, on_output: OutputCallback) -> None:
        self.name: StreamName = name
        self._cap = config.output_cap_bytes
        self._chunk = config.chunk_bytes
        self._flush_interval = config.flush_interval_seconds
        self._on_output = on_output
        self._pending = bytearray()
        self._pending_since: float | None = None
        self.captured = 0  # bytes accepted (delivered or pending), never above the cap
        self.truncated = False
        self.eof = False
        self.head = bytearray()  # first bytes, for error details (bwrap's own messages)

    def feed(self, data: bytes, now: float) -> None:
        if len(self.head) < 2 * KIB:
            self.head += data[: 2 * KIB - len(self.head)]
        if self.truncated:
            return  # keep draining the pipe, but drop the bytes
        room = self._cap - self.captured
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        if data:
            if self._pending_since is None:
                self._pending_since = now
            self._pending += data
            self.captured += len(data)
        if self.truncated:
            # Nothing will ever complete a character cut by the cap: drop its first bytes.
            keep = utf8_safe_cut(self._pending, len(self._pending))
            self.captured -= len(self._pending) - keep
            del self._pending[keep:]
        self.flush(now, final=self.truncated)

    def flush(self, now: float, *, final: bool = False) -> None:
        while len(self._pending) >= self._chunk:
            self._emit(utf8_safe_cut(self._pending, self._chunk), now)
        if not self._pending:
            return
        if final:
            self._emit(len(self._pending), now)
        elif self._pending_since is not None and now - self._pending_since >= self._flush_interval:
            self._emit(utf8_safe_cut(self._pending, len(self._pending)), now)

    def next_flush_at(self) -> float | None:
        if self._pending_since is None:
            return None
        return self._pending_since + self._flush_interval

    def _emit(self, size: int, now: float) -> None:
        if size <= 0:
            # Only an incomplete character is pending: wait for its remaining bytes.
            return
        data = bytes(self._pending[:size])
        del self._pending[:size]
        self._pending_since = now if self._pending else None
        self._on_output(self.name, data)


# --------------------------------------------------------------------------------------------
# Child setup: limits, per-run uid, bwrap
# --------------------------------------------------------------------------------------------


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


# --- Per-run uids ------------------------------------------------------------------------------

_checked_uid_ranges: set[tuple[int, int]] = set()
_checked_uid_ranges_lock = threading.Lock()


def _check_uid_range(low: int, high: int) -> None:
    """Refuse a range that holds a uid or gid in use on this host (checked once per process).

    Everything running under a run's uid is SIGKILLed at the end of the run, and its gid grants
    that group's file access: neither may belong to anyone else.
    """
    with _checked_uid_ranges_lock:
        if (low, high) in _checked_uid_ranges:
            return
        taken: list[str] = []
        with contextlib.suppress(OSError, ValueError):
            with open("/proc/sys/kernel/overflowuid") as handle:
                overflow = int(handle.read())
            if low <= overflow <= high:
                taken.append(f"the overflow uid {overflow}")
        taken += [f"user {e.pw_name} ({e.pw_uid})" for e in pwd.getpwall() if low <= e.pw_uid <= high]
        taken += [f"group {e.gr_name} ({e.gr_gid})" for e in grp.getgrall() if low <= e.gr_gid <= high]
        if os.getuid() != 0 and low <= os.getuid() <= high:
            taken.append(f"the worker's own uid {os.getuid()}")
        if taken:
            raise _SpawnError(f"sandbox uid range {low}-{high} overlaps {', '.join(taken[:3])}")
        for kind in ("uid", "gid"):
            if not _id_map_covers(f"/proc/self/{kind}_map", low, high):
                # A container with a user namespace (rootless Docker, Podman) maps few ids.
                raise _SpawnError(
                    f"sandbox uid range {low}-{high} is not mapped in this user namespace "
                    f"(/proc/self/{kind}_map): set TASKFORGE_SANDBOX_UID_RANGE to ids it maps"
                )
        _checked_uid_ranges.add((low, high))


def _id_map_covers(path: str, low: int, high: int) -> bool:
    """Whether ``low..high`` lies within one line of a uid_map/gid_map (True if unreadable)."""
    try:
        with open(path) as handle:
            lines = [[int(v) for v in line.split()] for line in handle if line.strip()]
    except (OSError, ValueError):
        return True
    return any(len(f) == 3 and f[0] <= low and high < f[0] + f[2] for f in lines)


def _uid_lock_dir(config: SandboxConfig) -> str:
    """The root-owned directory of the per-uid lock files, created on first use."""
    directory = config.uid_lock_dir
    if directory is None:
        directory = (
            DEFAULT_UID_LOCK_DIR
            if os.path.isdir(os.path.dirname(DEFAULT_UID_LOCK_DIR))
            else os.path.join(tempfile.gettempdir(), "taskforge-sandbox-uids")
        )
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    try:
        info = os.lstat(directory)
    except OSError as exc:
        raise _SpawnError(f"sandbox uid lock directory {directory}: {exc}") from exc
    # Anyone else able to create or replace lock files there could hand two runs one uid.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise _SpawnError(
            f"sandbox uid lock directory {directory} must be a directory owned by uid "
            f"{os.geteuid()} and writable by it alone"
        )
    return directory


def _read_status(pid: int | str) -> tuple[bytes, tuple[int, ...]] | None:
    """``(state, uids)`` of a process from /proc/<pid>/status (real, effective, saved, fs)."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The Name line is escaped by the kernel (no raw newline), so "\n<Key>:" finds the key.
    state_at, uid_at = data.find(b"\nState:"), data.find(b"\nUid:")
    if state_at < 0 or uid_at < 0:
        return None
    state = data[state_at + 7 : data.find(b"\n", state_at + 1)].split(maxsplit=1)[:1]
    try:
        uids = tuple(int(v) for v in data[uid_at + 5 : data.find(b"\n", uid_at + 1)].split())
    except ValueError:
        return None
    return (state[0] if state else b"?"), uids


def _live_processes_of(uids: Collection[int]) -> list[tuple[int, int]]:
    """``(pid, uid)`` of the processes (not zombies) one of whose uids is in ``uids``: one
    scan of /proc, whatever the number of uids."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            status = _read_status(name)
            if status is not None and status[0] not in (b"Z", b"X"):
                for uid in status[1]:
                    if uid in uids:
                        found.append((int(name), uid))
                        break
    return found


def _sweep(leases: Collection[_UidLease]) -> None:
    """SIGKILL every process of the leases' uids until none remain (zombies aside), within
    ``UID_SWEEP_SECONDS``; sets each lease's ``empty``. Catches what the group kill misses:
    ``setsid()``, double forks, leftovers of a worker killed before it could clean up."""
    uids = {lease.uid for lease in leases}
    deadline = time.monotonic() + UID_SWEEP_SECONDS
    stuck: set[int] = set()
    while found := _live_processes_of(uids):
        for pid, uid in found:
            _kill_if_owned(pid, uid)
        if time.monotonic() >= deadline:
            stuck = {uid for _, uid in found}
            logger.warning("sandbox uids %s: processes %s would not die", sorted(stuck), found[:10])
            break
        time.sleep(0.005)  # SIGKILLed processes leave /proc once they have exited
    for lease in leases:
        lease.empty = lease.uid not in stuck


def _kill_if_owned(pid: int, uid: int) -> None:
    """SIGKILL ``pid`` if it still belongs to ``uid``: a pidfd pins the process across the check,
    so a pid recycled by an unrelated process between the scan and the kill is never hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # pragma: no cover - kernels before 5.3: a plain kill, after a re-check
        status = _read_status(pid)
        if status is not None and uid in status[1]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return
    try:
        status = _read_status(pid)
        if status is not None and uid in status[1]:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)


class _UidLease:
    """One uid of ``config.uid_range``, held by one run through an exclusive ``flock``.

    The lock is on ``<lock dir>/<uid>.lock``, opened close-on-exec so no script inherits it; the
    kernel drops it when the worker dies, however it dies. The file says ``clean`` once a run has
    ended and none of the uid's processes remain; any other content (a run in progress, or a
    worker killed mid-run) makes the next holder sweep the uid before using it.
    """

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        self.gid = uid
        self._fd: int | None = fd
        self.empty = False  # True when the last sweep left no process of the uid

    def sweep(self) -> bool:
        """Sweep this uid now (see :func:`_sweep`); True when none of its processes remain."""
        _sweep([self])
        return self.empty

    def mark(self, content: bytes) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, content, 0)

    def release(self) -> None:
        """Sweep (unless the last sweep already found the uid empty), then unlock."""
        if self._fd is None:
            return
        if not self.empty:
            self.sweep()
        self.unlock()

    def unlock(self) -> None:
        """Mark the uid clean if the last sweep found it empty, then release the lock."""
        if self._fd is None:
            return
        try:
            if self.empty:
                try:
                    self.mark(UID_CLEAN_MARK)
                except OSError:  # left unmarked, the uid is swept again by its next holder
                    logger.exception("could not mark sandbox uid %s clean", self.uid)
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None


class _Janitor:
    """Ends finished runs off their path, in batches: one /proc scan sweeps the uids of every
    run that ended in the last ``JANITOR_INTERVAL`` seconds, then their work directories are
    removed and their uids released. A scan costs ~2 ms of CPU on a quiet host (more with
    more processes on it); once per run it was a tenth of the worker's CPU per trivial run.

    A run whose pipes are still held when its main process exits is swept at once instead
    (the run cannot end before they close). A uid waiting here stays locked, so it is never
    handed to another run before it is swept. A run's cgroup that could not be removed at
    once (killed processes still exiting) is emptied and removed here too.
    :func:`finish_cleanup` empties the queue now: the worker calls it when it stops, and at
    interpreter exit it is called anyway.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the queue and the thread
        self._batch_lock = threading.Lock()  # one batch at a time
        self._queue: list[tuple[_UidLease | None, str | None, RunCgroup | None]] = []
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, lease: _UidLease | None, work_dir: str | None, cgroup: RunCgroup | None = None) -> None:
        with self._lock:
            self._queue.append((lease, work_dir, cgroup))
            if self._thread is None or not self._thread.is_alive():
                if self._thread is None:
                    atexit.register(self.finish)
                self._thread = threading.Thread(target=self._loop, name="sandbox-janitor", daemon=True)
                self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(JANITOR_INTERVAL)  # let a batch gather
            try:
                self.finish()
            except Exception:  # pragma: no cover - logged; the next holder of a uid sweeps it
                logger.exception("sandbox cleanup failed")

    def finish(self) -> None:
        """Sweep, clean up and release every run queued so far (waits for a batch in progress)."""
        with self._batch_lock:
            with self._lock:
                batch, self._queue = self._queue, []
            if not batch:
                return
            try:
                for _, _, cgroup in batch:
                    if cgroup is not None and not cgroup.remove(cgroups.KILL_SECONDS):
                        # Removed as stale by the next worker that starts on this host.
                        logger.warning("sandbox cgroup %s could not be removed", cgroup.paths)
                _sweep([lease for lease, _, _ in batch if lease is not None])
            finally:
                # Even if the sweep failed: its uids are then left unmarked (swept again by
                # their next holders), never locked for good.
                for lease, work_dir, _ in batch:
                    try:
                        if work_dir is not None:
                            _remove_tree(work_dir)  # logs what it cannot remove
                    finally:
                        if lease is not None:
                            lease.unlock()


_janitor = _Janitor()


def finish_cleanup() -> None:
    """Finish cleaning up after every run that has ended: their leftover processes killed,
    work directories removed, uids released. Runs end this way within ``JANITOR_INTERVAL``
    by themselves; call this to wait for it (a worker stopping, a test)."""
    _janitor.finish()


def _acquire_uid(config: SandboxConfig) -> _UidLease | None:
    """A uid of its own for one run, or None when the worker is not root (no drop possible).

    Tries the range from its start, so the same few uids serve most runs and a uid left dirty
    by a killed worker is swept soon. Several worker processes on one host never share a uid,
    as long as they use the same lock directory.
    """
    if os.geteuid() != 0:
        return None
    low, high = config.uid_range
    _check_uid_range(low, high)
    directory = _uid_lock_dir(config)
    for uid in range(low, high + 1):
        path = os.path.join(directory, f"{uid}.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _SpawnError(f"sandbox uid lock {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except OSError as exc:
            os.close(fd)
            raise _SpawnError(f"sandbox uid lock {path}: {exc}") from exc
        lease = _UidLease(uid, fd)
        try:
            if os.pread(fd, 64, 0) != UID_CLEAN_MARK and not lease.sweep():
                os.close(fd)  # stays dirty: try the next uid
                continue
            lease.mark(f"in use by pid {os.getpid()}\n".encode())
            lease.empty = False  # from now on, processes of the run may exist
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return lease
    raise _SpawnError(f"no free sandbox uid: all of {low}-{high} are in use on this host")


def _setpriv_user_args(lease: _UidLease | None) -> list[str]:
    """setpriv's arguments that drop to the run's uid and gid with no supplementary groups."""
    if lease is None:
        return []
    return [f"--reuid={lease.uid}", f"--regid={lease.gid}", "--clear-groups"]


def _user_kwargs(lease: _UidLease | None) -> dict[str, Any]:
    if lease is None:
        return {}
    return {"user": lease.uid, "group": lease.gid, "extra_groups": []}


_features_lock = threading.Lock()
_features_cache: dict[str, frozenset[str]] = {}


def _bwrap_features(bwrap: str) -> frozenset[str]:
    """The options this bwrap knows among those that depend on its version (``--size`` and
    ``--perms`` since 0.5/0.6, ``--disable-userns`` since 0.8), read once from its ``--help``."""
    with _features_lock:
        if bwrap not in _features_cache:
            try:
                completed = subprocess.run(
                    [bwrap, "--help"], capture_output=True, timeout=10, check=False, env={"PATH": SAFE_PATH}
                )
                text = completed.stdout + completed.stderr
            except (OSError, subprocess.SubprocessError):
                text = b""
            wanted = ("--size", "--perms", "--disable-userns", "--remount-ro", "--seccomp")
            found = frozenset(name for name in wanted if f" {name} ".encode() in text)
            missing = sorted(set(wanted) - found)
            if missing:
                logger.warning("bubblewrap at %s lacks %s: the sandbox is weaker", bwrap, ", ".join(missing))
            _features_cache[bwrap] = found
        return _features_cache[bwrap]


def _bwrap_tmpfs(features: frozenset[str], size: int, path: str, *, private: bool = False) -> list[str]:
    """A tmpfs of at most ``size`` bytes at ``path`` (unbounded only with a bwrap too old)."""
    args = ["--size", str(size)] if "--size" in features else []
    if private and "--perms" in features:
        args += ["--perms", "0700"]
    return [*args, "--tmpfs", path]


def _bwrap_base_args(bwrap: str, config: SandboxConfig) -> list[str]:
    """Namespaces, the read-only system, the listed /etc files, /proc, /dev, /tmp, /dev/shm."""
    features = _bwrap_features(bwrap)
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if "--disable-userns" in features:
        # No user namespace inside (unshare -U fails): bwrap caps the count at its own.
        args += ["--unshare-user", "--disable-userns"]
    for path in (*BWRAP_SYSTEM_PATHS, *BWRAP_ETC_PATHS):
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += _bwrap_tmpfs(features, config.tmpfs_bytes, "/tmp")  # noqa: S108 - a private tmpfs
    args += _bwrap_tmpfs(features, config.tmpfs_bytes, "/dev/shm")  # noqa: S108 - a private tmpfs
    return args


def _bwrap_seal_args(bwrap: str, seccomp_fd: int | None) -> list[str]:
    """Last setup steps: / and /dev read-only (bwrap's own tmpfs under them would be
    unbounded), then the seccomp filter."""
    features = _bwrap_features(bwrap)
    args = ["--remount-ro", "/dev", "--remount-ro", "/"] if "--remount-ro" in features else []
    if seccomp_fd is not None and "--seccomp" in features:
        args += ["--seccomp", str(seccomp_fd)]
    return args


def _bwrap_args(
    bwrap: str,
    config: SandboxConfig,
    work_dir: str,
    files: list[str],
    status_fd: int,
    seccomp_fd: int | None,
) -> list[str]:
    """The whole bwrap command line up to the script. The work directory is a tmpfs of its
    own (``tmpfs_bytes``) with ``tmp`` in it and ``files`` (script, params) bound read-only;
    with a bwrap that cannot size a tmpfs, the host's work directory is bound instead."""
    features = _bwrap_features(bwrap)
    if "--size" in features:
        work = _bwrap_tmpfs(features, config.tmpfs_bytes, work_dir, private=True)
        work += ["--dir", os.path.join(work_dir, "tmp")]
        for path in files:
            work += ["--ro-bind", path, path]
    else:
        work = ["--bind", work_dir, work_dir]
    return [
        *_bwrap_base_args(bwrap, config),
        *work,
        *_bwrap_seal_args(bwrap, seccomp_fd),
        "--chdir",
        work_dir,
        "--json-status-fd",
        str(status_fd),
        "--",
    ]


# --- seccomp ------------------------------------------------------------------------------------
#
# A classic BPF program for bwrap's ``--seccomp FD`` (bwrap loads it right before it execs the
# script, after its own setup, so bwrap itself is not filtered). Written here with ``struct``
# rather than with libseccomp: its Python binding is not installable into a virtualenv from
# PyPI in a maintained form, and the program is short enough to read in full. It returns EPERM
# for a short list of system calls that a script has no use for and that are the usual way
# into kernel bugs or out of a sandbox (new namespaces and mounts, keyrings, BPF, perf,
# ptrace, module and kexec loading, file handles, userfaultfd, io_uring, other processes'
# memory), ENOSYS for clone3 (its flags sit in memory a filter cannot read; glibc then falls
# back to clone, whose flags are checked: any CLONE_NEW* is EPERM), and kills a process that
# makes a system call of another architecture (x32 or i386 entry points on x86_64, arm32 on
# aarch64), which would otherwise bypass the numbers checked. Everything else is allowed: the
# filter narrows the kernel's surface, bwrap's namespaces do the isolating.

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
_SECCOMP_NR, _SECCOMP_ARCH, _SECCOMP_ARG0_LOW = 0, 4, 16  # little-endian: low half of args[0]
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_JSET_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_KILL_PROCESS, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_CLONE_NEW_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_X32_SYSCALL_BIT = 0x40000000

# Per architecture: (AUDIT_ARCH_*, {name: number}). Numbers from the kernel's unistd headers.
_SECCOMP_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {
            "unshare": 272,
            "setns": 308,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "chroot": 161,
            "open_tree": 428,
            "move_mount": 429,
            "fsopen": 430,
            "fsconfig": 431,
            "fsmount": 432,
            "fspick": 433,
            "mount_setattr": 442,
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
            "bpf": 321,
            "perf_event_open": 298,
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "kexec_load": 246,
            "kexec_file_load": 320,
            "init_module": 175,
            "finit_module": 313,
            "delete_module": 176,
            "open_by_handle_at": 304,
            "name_to_handle_at": 303,
            "userfaultfd": 323,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "swapon": 167,
            "swapoff": 168,
            "reboot": 169,
            "acct": 163,
            "quotactl": 179,
            "syslog": 103,
            "vhangup": 153,
            "lookup_dcookie": 212,
            "iopl": 172,
            "ioperm": 173,
            "clone": 56,
            "clone3": 435,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "unshare": 97,
            "setns": 268,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "chroot": 51,
            "open_tree": 428,
            "move_mount": 429,
            "fsopen": 430,
            "fsconfig": 431,
            "fsmount": 432,
            "fspick": 433,
            "mount_setattr": 442,
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
            "bpf": 280,
            "perf_event_open": 241,
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "kexec_load": 104,
            "kexec_file_load": 294,
            "init_module": 105,
            "finit_module": 273,
            "delete_module": 106,
            "open_by_handle_at": 265,
            "name_to_handle_at": 264,
            "userfaultfd": 282,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "swapon": 224,
            "swapoff": 225,
            "reboot": 142,
            "acct": 89,
            "quotactl": 60,
            "syslog": 116,
            "vhangup": 58,
            "lookup_dcookie": 18,
            "clone": 220,
            "clone3": 435,
        },
    ),
}


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The filter for this machine's architecture (``os.uname().machine``) as bwrap reads it
    (an array of ``struct sock_filter``), or None for an architecture not listed here."""
    machine = machine or os.uname().machine
    if machine not in _SECCOMP_ARCHES:
        return None
    arch, numbers = _SECCOMP_ARCHES[machine]
    denied = [nr for name, nr in numbers.items() if name not in ("clone", "clone3")]
    # (code, jump-if-true label, jump-if-false label, k); labels resolve to relative offsets.
    program: list[tuple[int, str | None, str | None, int]] = [
        (_BPF_LD_W_ABS, None, None, _SECCOMP_ARCH),
        (_BPF_JEQ_K, None, "kill", arch),
        (_BPF_LD_W_ABS, None, None, _SECCOMP_NR),
    ]
    if machine == "x86_64":
        program.append((_BPF_JGE_K, "kill", None, _X32_SYSCALL_BIT))
    program += [(_BPF_JEQ_K, "deny", None, nr) for nr in denied]
    program += [
        (_BPF_JEQ_K, "clone", None, numbers["clone"]),
        (_BPF_JEQ_K, "enosys", None, numbers["clone3"]),
        (_BPF_RET_K, None, None, _RET_ALLOW),
    ]
    labels = {"clone": len(program)}
    program += [
        (_BPF_LD_W_ABS, None, None, _SECCOMP_ARG0_LOW),
        (_BPF_JSET_K, "deny", None, _CLONE_NEW_FLAGS),
        (_BPF_RET_K, None, None, _RET_ALLOW),
    ]
    labels["deny"] = len(program)
    program.append((_BPF_RET_K, None, None, _RET_ERRNO | errno.EPERM))
    labels["enosys"] = len(program)
    program.append((_BPF_RET_K, None, None, _RET_ERRNO | errno.ENOSYS))
    labels["kill"] = len(program)
    program.append((_BPF_RET_K, None, None, _RET_KILL_PROCESS))
    out = bytearray()
    for index, (code, if_true, if_false, k) in enumerate(program):
        jt = labels[if_true] - index - 1 if if_true else 0
        jf = labels[if_false] - index - 1 if if_false else 0
        out += struct.pack("=HBBI", code, jt, jf, k)
    return bytes(out)


def _seccomp_fd() -> int | None:
    """A pipe's read end holding the filter (bwrap reads it to the end), or None when there is
    no filter for this architecture. The caller passes it to bwrap and closes it."""
    program = seccomp_program()
    if program is None:
        return None
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, program)  # a few hundred bytes: within the pipe's buffer
    finally:
        os.close(write_end)
    return read_end


_probe_lock = threading.Lock()
_probe_cache: dict[tuple[str, bool], str | None] = {}


def _probe_bwrap(bwrap: str, lease: _UidLease | None, config: SandboxConfig) -> str | None:
    """Whether bwrap works here, as the kind of user the runs will use (a uid of the range, or
    the worker's own): ``None`` if it does, else why.

    Cached per process: a bwrap that is installed but blocked (no user namespaces in a container,
    seccomp) fails the same way every time, and the probe costs a process start.
    """
    key = (bwrap, lease is not None)
    with _probe_lock:
        if key in _probe_cache:
            return _probe_cache[key]
        seccomp_fd = _seccomp_fd()
        try:
            completed = subprocess.run(
                [*_bwrap_base_args(bwrap, config), *_bwrap_seal_args(bwrap, seccomp_fd), "--", "/bin/true"],
                pass_fds=[] if seccomp_fd is None else [seccomp_fd],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
                check=False,
                env={"PATH": SAFE_PATH, "LANG": SANDBOX_LANG},
                start_new_session=True,
                **_user_kwargs(lease),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            problem: str | None = f"{type(exc).__name__}: {exc}"
        else:
            problem = None
            if completed.returncode != 0:
                message = completed.stderr.decode("utf-8", "replace").strip()
                problem = f"exit {completed.returncode}: {message[:500]}"
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        if problem is not None:
            logger.warning("bubblewrap at %s is not usable: %s", bwrap, problem)
        _probe_cache[key] = problem
        return problem


def _choose_bwrap(config: SandboxConfig, lease: _UidLease | None) -> str | None:
    """Path of a working bwrap, ``None`` to run without; ``_SpawnError`` when required but broken."""
    if config.use_bwrap == "never":
        return None
    bwrap = shutil.which("bwrap", path=config.path)
    if bwrap is None:
        if config.use_bwrap == "always":
            raise _SpawnError("bubblewrap is required (use_bwrap='always') but bwrap is not installed")
        return None
    problem = _probe_bwrap(bwrap, lease, config)
    if problem is not None:
        if config.use_bwrap == "always":
            raise _SpawnError(f"bubblewrap is required (use_bwrap='always') but does not work: {problem}")
        return None
    return bwrap


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


def _validate_env_extra(env_extra: Mapping[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in env_extra.items():
        if key not in ALLOWED_EXTRA_ENV and not PARAM_ENV_RE.fullmatch(key):
            raise ValueError(
                f"environment variable {key!r} is not allowed in the sandbox "
                "(only PARAM_*, TASKFORGE_EXECUTION_ID, TASKFORGE_TASK_ID)"
            )
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"environment variable {key!r} must be a string without NUL bytes")
        env[key] = value
    return env


def _write_file(path: str, content: bytes, lease: _UidLease | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, content)  # small files: one write suffices on a regular file
        if lease is not None:
            os.fchown(fd, lease.uid, lease.gid)
    finally:
        os.close(fd)


def _remove_tree(path: str) -> None:
    """Remove the work dir even if the script made parts of it read-only or unsearchable."""

    def retry_writable(function: Callable[..., Any], failed: str, _exc: BaseException) -> None:
        parent = os.path.dirname(failed)
        with contextlib.suppress(OSError):
            os.chmod(parent, stat.S_IRWXU)
        with contextlib.suppress(OSError):
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IRWXU)
        with contextlib.suppress(FileNotFoundError):
            function(failed)

    try:
        shutil.rmtree(path, onexc=retry_writable)
    except OSError:
        logger.exception("could not remove sandbox work dir %s", path)


# --------------------------------------------------------------------------------------------
# Supervision
# --------------------------------------------------------------------------------------------


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _parent_of(pid: int) -> int | None:
    """Parent pid from /proc: checks that a pid bwrap reported really is its sandbox child, so
    nothing written to the status pipe can make the worker signal an unrelated group."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may contain anything.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def _has_exited(pid: int) -> bool:
    """Whether the child exited, *without* reaping it (its pid stays reserved as our pgid)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid == pid


@dataclass(slots=True)
class _Supervisor:
    process: subprocess.Popen[bytes]
    config: SandboxConfig
    timeout_seconds: float
    should_cancel: CancelCallback
    streams: dict[int, _OutputStream]
    status_fd: int | None
    bwrap: bool
    # Called once the main process has exited and its group was killed, if its pipes are still
    # held: the uid sweep, which also ends processes that left the group, so their copies of
    # the pipes close at once.
    on_exit: Callable[[], object] | None = None
    stop_reason: Literal["timeout", "cancelled", "worker_shutdown"] | None = None
    killed_with_sigkill: bool = False
    sandbox_pgid: int | None = None  # bwrap's inner group, once reported
    _status_buffer: bytearray = field(default_factory=bytearray)
    _kill_at: float | None = None
    _sandbox_killed: bool = False

    def run(self) -> int:
        """Supervise until the child exits and its output is drained; return its wait status."""
        start = time.monotonic()
        deadline = start + self.timeout_seconds
        next_cancel_poll = start + self.config.cancel_poll_seconds
        exited_at: float | None = None
        selector = selectors.DefaultSelector()
        # A pidfd becomes readable when the child exits, so exits are seen at once rather than at
        # the next 0.1 s tick (Linux >= 5.3; without it the tick still catches the exit).
        pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            pidfd = os.pidfd_open(self.process.pid)
        try:
            for fd in (*self.streams, self.status_fd, pidfd):
                if fd is not None:
                    os.set_blocking(fd, False)
                    selector.register(fd, selectors.EVENT_READ)
            while True:
                now = time.monotonic()
                wake = [now + 0.1]
                if exited_at is not None:
                    wake.append(exited_at + self.config.post_exit_drain_seconds)
                elif self.stop_reason is None:
                    wake += [next_cancel_poll, deadline]
                elif self._kill_at is not None:
                    wake.append(self._kill_at)
                wake += [t for s in self.streams.values() if (t := s.next_flush_at()) is not None]
                for key, _events in selector.select(max(0.0, min(wake) - now)):
                    if key.fd == pidfd:
                        selector.unregister(pidfd)  # stays readable: look once, then poll waitid
                    else:
                        self._read(selector, int(key.fd))
                now = time.monotonic()
                for stream in self.streams.values():
                    stream.flush(now)

                if exited_at is None and _has_exited(self.process.pid):
                    exited_at = now
                    # Anything the script left behind in its group dies with it; the zombie
                    # still holds the pgid, so this cannot hit a recycled group.
                    _killpg(self.process.pid, signal.SIGKILL)
                    if self.on_exit is not None and not self._drained(selector):
                        self.on_exit()
                        now = time.monotonic()
                if exited_at is not None:
                    drained = all(s.eof for s in self.streams.values())
                    if drained or now >= exited_at + self.config.post_exit_drain_seconds:
                        break
                    continue

                if self.stop_reason is None:
                    if now >= deadline:
                        self._stop("timeout", self.config.kill_grace_seconds, now)
                    elif now >= next_cancel_poll:
                        next_cancel_poll = now + self.config.cancel_poll_seconds
                        reason = self.should_cancel()
                        if reason is not None:
                            if reason not in STOP_REASONS:
                                raise ValueError(f"should_cancel returned {reason!r}")
                            self._stop(reason, self.config.cancel_grace_seconds, now)
                elif self._kill_at is not None and now >= self._kill_at:
                    self.killed_with_sigkill = True
                    logger.info("sandboxed pid %s outlived its grace: SIGKILL", self.process.pid)
                    if not self._sandbox_killed and self._signal_sandbox(signal.SIGKILL):
                        # Kill the namespace first: the outer bwrap then exits by itself and
                        # reports it (128 + 9); it gets SIGKILL too if it lingers.
                        self._sandbox_killed = True
                        self._kill_at = now + 1.0
                    else:
                        self._kill_at = None
                        _killpg(self.process.pid, signal.SIGKILL)
            # bwrap's status may still sit unread in its pipe.
            if self.status_fd is not None:
                with contextlib.suppress(OSError):
                    while self.sandbox_pgid is None and (chunk := os.read(self.status_fd, 4096)):
                        self._status_buffer += chunk
                        self._parse_status()
        finally:
            selector.close()
            if pidfd is not None:
                os.close(pidfd)
        final = time.monotonic()
        for stream in self.streams.values():
            stream.flush(final, final=True)
        return self.process.wait()

    def _drained(self, selector: selectors.BaseSelector) -> bool:
        """Read what the pipes hold now; True when every one is at end of file (the exited
        process held the last copies: nothing it left behind keeps them open)."""
        for _ in range(64):  # a pipe holds 64 KiB: bounded even if something keeps writing
            ready = [key.fd for key, _events in selector.select(0) if key.fd in self.streams]
            if not ready:
                break
            for fd in ready:
                self._read(selector, int(fd))
        return all(stream.eof for stream in self.streams.values())

    def _read(self, selector: selectors.BaseSelector, fd: int) -> None:
        try:
            data = os.read(fd, self.config.chunk_bytes)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            selector.unregister(fd)
            if fd in self.streams:
                self.streams[fd].eof = True
            return
        if fd in self.streams:
            self.streams[fd].feed(data, time.monotonic())
        elif fd == self.status_fd:
            self._status_buffer += data[: 64 * KIB]
            self._parse_status()

    def _parse_status(self) -> None:
        """Pick bwrap's first ``child-pid`` line: the id of the sandbox's own process group.

        bwrap writes it before the script starts, so a script writing to an inherited copy of the
        pipe cannot come first; ``_signal_sandbox`` checks the parentage again before signalling.
        """
        while self.sandbox_pgid is None and b"\n" in self._status_buffer:
            line, _, rest = bytes(self._status_buffer).partition(b"\n")
            self._status_buffer = bytearray(rest)
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                child = message.get("child-pid") if isinstance(message, dict) else None
                if isinstance(child, int) and child > 1:
                    self.sandbox_pgid = child
        if self.sandbox_pgid is not None:
            self._status_buffer.clear()

    def _stop(
        self, reason: Literal["timeout", "cancelled", "worker_shutdown"], grace: float, now: float
    ) -> None:
        self.stop_reason = reason
        self._kill_at = now + grace
        logger.info("stopping sandboxed pid %s: %s", self.process.pid, reason)
        # Only the sandboxed processes under bwrap: the outer bwrap must survive to give them
        # their grace (it would die of SIGTERM and take the sandbox down with SIGKILL at once).
        if not self._signal_sandbox(signal.SIGTERM):
            _killpg(self.process.pid, signal.SIGTERM)

    def _signal_sandbox(self, sig: int) -> bool:
        """Signal bwrap's inner group; False when there is none (no bwrap, not started, gone)."""
        if self.sandbox_pgid is None or _parent_of(self.sandbox_pgid) != self.process.pid:
            return False
        _killpg(self.sandbox_pgid, sig)
        return True


# --------------------------------------------------------------------------------------------
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
