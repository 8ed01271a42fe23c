"""Per-run uids: one lock file per uid (a lease), the sweep that ends whatever a uid left
behind, and the setpriv/Popen arguments that drop to it."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import logging
import os
import pwd
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Collection
from typing import Any

from executions.engine.sandbox.config import (
    DEFAULT_UID_LOCK_DIR,
    UID_CLEAN_MARK,
    UID_SWEEP_SECONDS,
    SandboxConfig,
    _SpawnError,
)

logger = logging.getLogger(__name__)

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
