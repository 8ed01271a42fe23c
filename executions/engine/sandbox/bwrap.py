"""bubblewrap: feature detection, the command line, and the probe that picks it (or not)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading

from executions.engine.sandbox.config import (
    BWRAP_ETC_PATHS,
    BWRAP_SYSTEM_PATHS,
    SAFE_PATH,
    SANDBOX_LANG,
    SandboxConfig,
    _SpawnError,
)
from executions.engine.sandbox.seccomp import _seccomp_fd
from executions.engine.sandbox.uids import _UidLease, _user_kwargs

logger = logging.getLogger(__name__)

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
    *,
    writable: list[str] | None = None,
) -> list[str]:
    """The whole bwrap command line up to the script. The work directory is a tmpfs of its
    own (``tmpfs_bytes``) with ``tmp`` in it, ``files`` (script, params) bound read-only and
    ``writable`` (the outputs file) bound read-write, so what the script writes there is read
    after the run;
    with a bwrap that cannot size a tmpfs, the host's work directory is bound instead."""
    features = _bwrap_features(bwrap)
    if "--size" in features:
        work = _bwrap_tmpfs(features, config.tmpfs_bytes, work_dir, private=True)
        work += ["--dir", os.path.join(work_dir, "tmp")]
        for path in files:
            work += ["--ro-bind", path, path]
        for path in writable or []:
            work += ["--bind", path, path]
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
