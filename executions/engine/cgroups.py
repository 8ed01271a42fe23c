"""A memory and process-count cgroup per sandbox run: the bound on a run's *total* memory.

RLIMIT_AS bounds each process's address space, and the tmpfs mounts of the sandbox are each
sized, but neither bounds a run as a whole (many processes, tmpfs pages, SysV shared memory,
memfds). A memory cgroup does: every page a run's processes fault in or write to a tmpfs
(shmem is charged to the cgroup of the writer) counts against one limit, and when the run goes
past it the kernel's OOM killer kills inside the run, never outside it.

Two backends, picked once per process by :func:`support` (``TASKFORGE_SANDBOX_CGROUP``):

* **cgroup v2** (the unified hierarchy, with the ``memory`` controller delegated to the worker's
  cgroup, e.g. systemd ``Delegate=yes``): ``memory.max``, ``memory.swap.max = 0``,
  ``memory.oom.group = 1`` (an OOM kills the whole run), ``pids.max``; evidence from
  ``memory.events`` (``oom_kill``); leftovers killed with ``cgroup.kill``. A cgroup v2 that
  holds processes cannot hand controllers to children (the "no internal processes" rule), so
  the worker first moves itself into a leaf ``taskforge-worker`` of its own cgroup, then enables
  ``+memory +pids`` in its cgroup's ``cgroup.subtree_control``; runs are siblings of that leaf.
* **cgroup v1** (hybrid hosts: one hierarchy per controller): ``memory.limit_in_bytes`` and
  ``memory.memsw.limit_in_bytes`` (no swap either) under the worker's own memory cgroup,
  evidence from ``memory.oom_control`` (``oom_kill``), and ``pids.max`` in the pids hierarchy.

Neither usable (no cgroup file system, nothing writable, the controller not delegated, or
``never``): no cgroup, the documented fallback (RLIMIT_AS per process plus the sized tmpfs).
``always`` makes every run fail ``spawn_failed`` with the reason instead.

A run's cgroup is ``taskforge-run-<worker pid>-<worker start time>-<n>``: a worker that died
without cleaning up is recognised by the pid/start-time pair no longer naming a live process,
and its cgroups are emptied and removed by the next worker that detects cgroups on the host.
The script is put into its cgroup before it runs anything: the process Popen creates is a
``/bin/sh`` that writes its own pid into the run's ``cgroup.procs`` file(s), then execs the rest
of the chain (prlimit, setpriv, bwrap), so every process of the run is born inside it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Literal, get_args

logger = logging.getLogger(__name__)

CgroupMode = Literal["auto", "always", "never"]
CGROUP_MODES: tuple[str, ...] = get_args(CgroupMode)

DEFAULT_ROOT = "/sys/fs/cgroup"
RUN_PREFIX = "taskforge-run-"
WORKER_LEAF = "taskforge-worker"
RUN_NAME_RE = re.compile(rf"{RUN_PREFIX}(\d+)-(\d+)-\d+")
# How long removing a run's cgroup keeps killing what is left in it before it gives up.
KILL_SECONDS = 2.0

# The launcher Popen starts: enter every cgroup.procs file given before "--", then exec the rest
# (PWD, which the shell exports, is unset: the script's environment stays the allow-list).
# Its own failures print "taskforge-cgroup: ..." (the shell's $0) and exit 1 or 127.
LAUNCHER_NAME = "taskforge-cgroup"
LAUNCHER_SCRIPT = 'unset PWD; while [ "$1" != -- ]; do echo $$ >"$1" || exit 1; shift; done; shift; exec "$@"'


class CgroupError(Exception):
    """A cgroup could not be made, set up or used."""


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.events, memory.oom_control, pids.events) as a dict."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values


def _own_start_time() -> str:
    """This process's start time (clock ticks since boot), from /proc/self/stat."""
    data = _read("/proc/self/stat")
    return data[data.rfind(")") + 2 :].split()[19]


def _is_alive(pid: int, start_time: str) -> bool:
    try:
        data = _read(f"/proc/{pid}/stat")
    except OSError:
        return False
    return data[data.rfind(")") + 2 :].split()[19] == start_time


# --------------------------------------------------------------------------------------------
# One run's cgroup
# --------------------------------------------------------------------------------------------


@dataclass
class RunCgroup:
    """The cgroup(s) of one run: one directory on v2, a memory and (if any) a pids one on v1."""

    version: int
    paths: tuple[str, ...]
    memory_bytes: int

    @property
    def name(self) -> str:
        return os.path.basename(self.paths[0])

    def procs_files(self) -> list[str]:
        return [os.path.join(path, "cgroup.procs") for path in self.paths]

    def oom_kills(self) -> int:
        """How many processes of the run the kernel's OOM killer killed (0 if unreadable)."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            return _keyed(_read(os.path.join(self.paths[0], name))).get("oom_kill", 0)
        except OSError:
            return 0

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files():
            with contextlib.suppress(OSError):
                found.update(int(v) for v in _read(path).split())
        return found

    def kill(self) -> None:
        """SIGKILL everything in the run's cgroup(s): ``cgroup.kill`` on v2 (5.14+), otherwise
        each pid listed, through a pidfd and after checking it is still in the cgroup."""
        kill_file = os.path.join(self.paths[0], "cgroup.kill")
        if self.version == 2 and os.path.exists(kill_file):
            with contextlib.suppress(OSError):
                _write(kill_file, "1")
                return
        for pid in self.pids():
            self._kill_member(pid)

    def _kill_member(self, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return
        try:
            # A pid read from cgroup.procs may have been recycled since: only a member dies.
            if f"/{self.name}\n" in _read(f"/proc/{pid}/cgroup"):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(pidfd)

    def remove(self, wait_seconds: float = 0.0) -> bool:
        """Kill what is left and remove the directories; True when they are gone. Retries for
        ``wait_seconds`` while killed processes are still exiting (the cgroup is busy)."""
        deadline = time.monotonic() + wait_seconds
        while True:
            self.kill()
            remaining = []
            for path in self.paths:
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    remaining.append(path)
            self.paths = tuple(remaining) or self.paths
            if not remaining:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# Backends and detection
# --------------------------------------------------------------------------------------------


@dataclass
class Backend:
    """Where and how run cgroups are made on this host."""

    version: Literal[1, 2]
    memory_parent: str
    # v2: the same directory when the pids controller is enabled there; v1: the pids hierarchy.
    pids_parent: str | None
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def label(self) -> str:
        return f"cgroup{self.version}"

    def describe(self) -> str:
        pids = "pids" if self.pids_parent else "no pids controller"
        return f"cgroup v{self.version} under {self.memory_parent} (memory, {pids})"

    def create(self, memory_bytes: int, max_processes: int) -> RunCgroup:
        """A new run cgroup with its limits set; ``CgroupError`` when that fails (nothing left)."""
        name = f"{RUN_PREFIX}{os.getpid()}-{_own_start_time()}-{next(self._counter)}"
        parents = [self.memory_parent]
        if self.version == 1 and self.pids_parent:
            parents.append(self.pids_parent)
        made = RunCgroup(self.version, (), memory_bytes)
        try:
            for parent in parents:
                os.mkdir(os.path.join(parent, name), 0o755)
                made.paths += (os.path.join(parent, name),)
            self._set_limits(made, memory_bytes, max_processes)
        except OSError as exc:
            made.remove()
            raise CgroupError(f"cannot set up the run's cgroup {name}: {exc}") from exc
        return made

    def _set_limits(self, made: RunCgroup, memory_bytes: int, max_processes: int) -> None:
        memory_dir = made.paths[0]
        if self.version == 2:
            if memory_bytes:
                _write(os.path.join(memory_dir, "memory.max"), str(memory_bytes))
                if os.path.exists(os.path.join(memory_dir, "memory.swap.max")):
                    _write(os.path.join(memory_dir, "memory.swap.max"), "0")
            _write(os.path.join(memory_dir, "memory.oom.group"), "1")
            if self.pids_parent:
                _write(os.path.join(memory_dir, "pids.max"), str(max_processes))
            return
        if memory_bytes:
            _write(os.path.join(memory_dir, "memory.limit_in_bytes"), str(memory_bytes))
            memsw = os.path.join(memory_dir, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):  # memory + swap: no swap either (set after the first)
                _write(memsw, str(memory_bytes))
        if len(made.paths) > 1:
            _write(os.path.join(made.paths[1], "pids.max"), str(max_processes))

    def parents(self) -> list[str]:
        return [p for p in (self.memory_parent, self.pids_parent) if p]

    def remove_stale(self) -> int:
        """Empty and remove run cgroups whose worker is gone (pid + start time); returns how many."""
        removed = 0
        for parent in dict.fromkeys(self.parents()):
            try:
                names = os.listdir(parent)
            except OSError:
                continue
            for name in names:
                match = RUN_NAME_RE.fullmatch(name)
                if match is None or _is_alive(int(match[1]), match[2]):
                    continue
                if RunCgroup(self.version, (os.path.join(parent, name),), 0).remove(KILL_SECONDS):
                    removed += 1
                else:
                    logger.warning("stale sandbox cgroup %s could not be removed", os.path.join(parent, name))
        return removed


@dataclass(frozen=True)
class Detection:
    """What :func:`detect` found: a backend, or why there is none."""

    backend: Backend | None
    reason: str


def _self_cgroups(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as {controller: path}; the v2 line is under ``""``."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            paths[""] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def _join(root: str, path: str) -> str:
    return os.path.normpath(os.path.join(root, path.lstrip("/")))


def _detect_v2(root: str, own_path: str | None, pid: int) -> Backend | str:
    """Use the unified hierarchy if memory is (or can be) enabled for children of our cgroup."""
    candidates = (root, os.path.join(root, "unified"))
    hierarchy = next((h for h in candidates if os.path.isfile(f"{h}/cgroup.controllers")), None)
    if hierarchy is None or own_path is None:
        return "no cgroup v2 hierarchy"
    own = _join(hierarchy, own_path)
    if os.path.basename(own) == WORKER_LEAF:
        own = os.path.dirname(own)  # moved there by an earlier detection in this process
    try:
        available = _read(f"{own}/cgroup.controllers").split()
        enabled = _read(f"{own}/cgroup.subtree_control").split()
    except OSError as exc:
        return f"cgroup v2 {own}: {exc}"
    if "memory" not in available:
        return f"cgroup v2 {own}: the memory controller is not delegated to the worker's cgroup"
    wanted = [c for c in ("memory", "pids") if c in available and c not in enabled]
    if wanted:
        if not os.access(own, os.W_OK) or not os.access(f"{own}/cgroup.subtree_control", os.W_OK):
            return f"cgroup v2 {own} is not writable by the worker (not delegated)"
        try:
            # No internal processes: leave our own cgroup for a leaf before enabling controllers.
            with contextlib.suppress(FileExistsError):
                os.mkdir(f"{own}/{WORKER_LEAF}", 0o755)
            _write(f"{own}/{WORKER_LEAF}/cgroup.procs", str(pid))
            _write(f"{own}/cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        except OSError as exc:
            return (
                f"cgroup v2 {own}: cannot enable {'+'.join(wanted)} for children ({exc}); the worker "
                "must be the only process of a delegated cgroup"
            )
        enabled += wanted
    return Backend(2, own, own if "pids" in enabled else None)


def _detect_v1(root: str, paths: dict[str, str]) -> Backend | str:
    """Use the v1 memory hierarchy (and the pids one if writable) under the worker's cgroups."""
    if "memory" not in paths:
        return "no cgroup v1 memory hierarchy"
    memory = _join(f"{root}/memory", paths["memory"])
    if not os.path.isfile(f"{memory}/memory.limit_in_bytes"):
        return f"cgroup v1 memory cgroup {memory} not found"
    if not os.access(memory, os.W_OK):
        return f"cgroup v1 memory cgroup {memory} is not writable by the worker"
    pids = _join(f"{root}/pids", paths["pids"]) if "pids" in paths else None
    if pids is not None and not (os.path.isdir(pids) and os.access(pids, os.W_OK)):
        pids = None
    return Backend(1, memory, pids)


def detect(root: str = DEFAULT_ROOT, self_cgroup: str | None = None, pid: int | None = None) -> Detection:
    """Find a usable backend (v2 preferred, then v1) from the cgroup file system at ``root``
    and ``self_cgroup`` (the text of /proc/self/cgroup). May move this process into a leaf
    of its own cgroup v2 (see the module docstring). Does not create run cgroups."""
    try:
        text = self_cgroup if self_cgroup is not None else _read("/proc/self/cgroup")
    except OSError as exc:
        return Detection(None, f"cannot read /proc/self/cgroup: {exc}")
    paths = _self_cgroups(text)
    reasons = []
    for found in (_detect_v2(root, paths.get(""), pid or os.getpid()), _detect_v1(root, paths)):
        if isinstance(found, Backend):
            return Detection(found, found.describe())
        reasons.append(found)
    return Detection(None, "; ".join(reasons))


def _probe(backend: Backend) -> str | None:
    """Make and remove one run cgroup with a limit: None when that works, else why."""
    try:
        backend.create(64 * 1024**2, 8).remove(KILL_SECONDS)
    except (CgroupError, OSError) as exc:
        return str(exc)
    return None


_support_lock = threading.Lock()
_support_cache: dict[tuple[str, str], Detection] = {}


def support(mode: CgroupMode, root: str = DEFAULT_ROOT) -> Detection:
    """The backend runs use in this process (detected, probed and logged once per mode)."""
    if mode not in CGROUP_MODES:
        raise ValueError(f"cgroup mode must be one of {CGROUP_MODES}, got {mode!r}")
    with _support_lock:
        key = (mode, root)
        if key not in _support_cache:
            _support_cache[key] = _select(mode, root)
        return _support_cache[key]


def _select(mode: CgroupMode, root: str) -> Detection:
    if mode == "never":
        found = Detection(None, "cgroups off (TASKFORGE_SANDBOX_CGROUP=never)")
    else:
        found = detect(root)
        if found.backend is not None and (problem := _probe(found.backend)) is not None:
            found = Detection(None, f"{found.reason}: a run cgroup cannot be made: {problem}")
    if found.backend is not None:
        stale = found.backend.remove_stale()
        logger.info(
            "sandbox memory: a cgroup per run, %s%s",
            found.reason,
            f" ({stale} stale run cgroups of dead workers removed)" if stale else "",
        )
    elif mode != "never":
        logger.warning(
            "sandbox memory: no cgroup per run (%s); a run's memory is bounded only per process "
            "(RLIMIT_AS) plus the sized tmpfs mounts",
            found.reason,
        )
    return found
