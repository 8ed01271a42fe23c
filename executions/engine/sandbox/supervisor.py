"""Supervision of one running sandbox: reading its pipes, timeouts, cancels, and the signals
that stop it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from executions.engine.sandbox.config import KIB, STOP_REASONS, CancelCallback, SandboxConfig
from executions.engine.sandbox.output import _OutputStream

logger = logging.getLogger(__name__)


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


def _open_pidfd(pid: int) -> int | None:
    """A pidfd becomes readable when the child exits, so exits are seen at once rather than at
    the next 0.1 s tick (Linux >= 5.3; without it the tick still catches the exit)."""
    with contextlib.suppress(AttributeError, OSError):
        return os.pidfd_open(pid)
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
    # The run's clock, set by run(): its deadline, the next cancel poll, and when the main
    # process was seen to exit.
    _deadline: float = field(default=0.0, init=False)
    _next_cancel_poll: float = field(default=0.0, init=False)
    _exited_at: float | None = field(default=None, init=False)

    def run(self) -> int:
        """Supervise until the child exits and its output is drained; return its wait status.

        Each turn waits for output or the next due time (``_wait``), then notices the exit
        (``_on_exit``) and waits for the pipes to drain, or, while the script runs, checks its
        deadline and the cancel callback (``_check_stop``), or escalates a stop whose grace is
        over to SIGKILL (``_escalate``).
        """
        start = time.monotonic()
        self._deadline = start + self.timeout_seconds
        self._next_cancel_poll = start + self.config.cancel_poll_seconds
        selector = selectors.DefaultSelector()
        pidfd = _open_pidfd(self.process.pid)
        try:
            for fd in (*self.streams, self.status_fd, pidfd):
                if fd is not None:
                    os.set_blocking(fd, False)
                    selector.register(fd, selectors.EVENT_READ)
            while not self._turn(selector, pidfd):
                pass
            self._read_late_status()
        finally:
            selector.close()
            if pidfd is not None:
                os.close(pidfd)
        final = time.monotonic()
        for stream in self.streams.values():
            stream.flush(final, final=True)
        return self.process.wait()

    def _turn(self, selector: selectors.BaseSelector, pidfd: int | None) -> bool:
        """One turn of supervision; True once the child has exited and its pipes are drained
        (or their drain time is over)."""
        now = self._wait(selector, pidfd)
        if self._exited_at is None and _has_exited(self.process.pid):
            now = self._on_exit(selector, now)
        if self._exited_at is not None:
            drained = all(s.eof for s in self.streams.values())
            return drained or now >= self._exited_at + self.config.post_exit_drain_seconds
        if self.stop_reason is None:
            self._check_stop(now)
        elif self._kill_at is not None and now >= self._kill_at:
            self._escalate(now)
        return False

    def _wait(self, selector: selectors.BaseSelector, pidfd: int | None) -> float:
        """Wait for output, the exit or the next due time; read what came, flush what is due."""
        now = time.monotonic()
        for key, _events in selector.select(max(0.0, min(self._wake_times(now)) - now)):
            if key.fd == pidfd:
                selector.unregister(pidfd)  # stays readable: look once, then poll waitid
            else:
                self._read(selector, int(key.fd))
        now = time.monotonic()
        for stream in self.streams.values():
            stream.flush(now)
        return now

    def _wake_times(self, now: float) -> list[float]:
        """When something is due: a 0.1 s tick, the drain end, the cancel poll and deadline, the
        kill, and the streams' next flushes."""
        wake = [now + 0.1]
        if self._exited_at is not None:
            wake.append(self._exited_at + self.config.post_exit_drain_seconds)
        elif self.stop_reason is None:
            wake += [self._next_cancel_poll, self._deadline]
        elif self._kill_at is not None:
            wake.append(self._kill_at)
        wake += [t for s in self.streams.values() if (t := s.next_flush_at()) is not None]
        return wake

    def _on_exit(self, selector: selectors.BaseSelector, now: float) -> float:
        """The main process has exited: kill its group, sweep the uid if the pipes are still
        held; the time after that."""
        self._exited_at = now
        # Anything the script left behind in its group dies with it; the zombie
        # still holds the pgid, so this cannot hit a recycled group.
        _killpg(self.process.pid, signal.SIGKILL)
        if self.on_exit is not None and not self._drained(selector):
            self.on_exit()
            now = time.monotonic()
        return now

    def _check_stop(self, now: float) -> None:
        """Stop a running script at its deadline, or when the cancel callback (polled every
        ``cancel_poll_seconds``) asks for it."""
        if now >= self._deadline:
            self._stop("timeout", self.config.kill_grace_seconds, now)
        elif now >= self._next_cancel_poll:
            self._next_cancel_poll = now + self.config.cancel_poll_seconds
            reason = self.should_cancel()
            if reason is not None:
                if reason not in STOP_REASONS:
                    raise ValueError(f"should_cancel returned {reason!r}")
                self._stop(reason, self.config.cancel_grace_seconds, now)

    def _escalate(self, now: float) -> None:
        """The stop's grace is over: SIGKILL the sandbox's group first (under bwrap), then the
        whole group."""
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

    def _read_late_status(self) -> None:
        """bwrap's status may still sit unread in its pipe."""
        if self.status_fd is not None:
            with contextlib.suppress(OSError):
                while self.sandbox_pgid is None and (chunk := os.read(self.status_fd, 4096)):
                    self._status_buffer += chunk
                    self._parse_status()

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
