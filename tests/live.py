"""Real processes against the test database: gunicorn on loopback (and, later, workers).

Use with ``@pytest.mark.django_db(transaction=True)`` so what the test writes is committed
and visible to the subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def test_database_env() -> dict[str, str]:
    """Environment that points a child process at the test database the suite is using."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["DJANGO_SETTINGS_MODULE"] = "config.test_settings"
    env["TASKFORGE_TESTING"] = "1"
    name = connection.settings_dict["NAME"]
    if connection.vendor == "postgresql":
        parts = urlsplit(os.environ["DATABASE_URL"])
        env["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{name}"))
    else:
        env.pop("DATABASE_URL", None)
        env["TASKFORGE_SQLITE_PATH"] = str(name)
    env["DJANGO_SECRET_KEY"] = settings.SECRET_KEY
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gunicorn(workers: int = 2, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Run gunicorn (WSGI, ``workers`` processes) on a free loopback port; yield its base URL."""
    port = free_port()
    env = {**test_database_env(), **(extra_env or {})}
    # Output goes to a file, not a pipe nobody reads: a long run (schemathesis logs a warning
    # per 4xx) filled the 64 KiB pipe and froze every gunicorn worker mid-request.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code < 600:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                out = log.read().decode(errors="replace")
                raise RuntimeError(f"gunicorn did not start:\n{out}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def worker(
    *args: str, extra_env: dict[str, str] | None = None, log_to: Path | None = None
) -> Iterator[subprocess.Popen]:
    """Run ``manage.py runworker`` against the test database; stopped (SIGTERM) on exit.
    Its output goes to ``log_to`` when given (to read it afterwards), else to a temporary file."""
    env = {**test_database_env(), **(extra_env or {})}
    log = open(log_to, "w") if log_to else tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runworker", "--queue-poll", "0.2", *args],
        cwd=ROOT,
        env=env,
        stdout=log,  # a file, not an unread pipe (see gunicorn above)
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.1) -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
