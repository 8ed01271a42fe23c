"""The run's files: the allow-listed extra environment, files written as the run's uid, and the
work directory's removal."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from typing import Any

from executions.engine.sandbox.config import ALLOWED_EXTRA_ENV, PARAM_ENV_RE
from executions.engine.sandbox.uids import _UidLease

logger = logging.getLogger(__name__)


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


def _read_outputs(
    work_dir: str, name: str, max_bytes: int, lease: _UidLease | None
) -> tuple[bytes | None, str | None]:
    """What the script wrote to its outputs file and why it cannot be used (None, None: no file
    or nothing written). Read without following links from a directory opened without following
    links, non-blocking (a FIFO never hangs the worker), at most ``max_bytes`` + 1 bytes."""
    try:
        directory = os.open(work_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return None, f"the work directory could not be opened: {exc.strerror}"
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"{name} could not be opened: {exc.strerror}"
    finally:
        os.close(directory)
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or (lease is not None and found.st_uid != lease.uid):
            return None, f"{name} is not a regular file of the run"
        data = bytearray()
        while len(data) <= max_bytes and (piece := os.read(fd, max_bytes + 1 - len(data))):
            data += piece
    except OSError as exc:
        return None, f"{name} could not be read: {exc.strerror}"
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        return None, f"{name} is larger than {max_bytes} bytes"
    return (bytes(data) or None), None


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
