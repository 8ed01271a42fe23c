"""The real stack the benchmark measures: its own database, gunicorn with the production
configuration on loopback, ``runworker`` processes, and (for the baseline) a Celery worker.

Every process gets the configured settings (``bench.settings``: production settings plus
the baseline view), the benchmark database and the configured Redis; nothing runs in DEBUG.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections

from core import crypto

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_MODULE = "bench.settings"


class BenchmarkError(RuntimeError):
    """The benchmark could not run, or a correctness check failed (a task claimed twice)."""


# --- The benchmark database ----------------------------------------------------------------
def _maintenance_connection() -> Any:
    import psycopg

    params = connection.get_connection_params()
    for key in ("cursor_factory", "context", "dbname"):
        params.pop(key, None)
    return psycopg.connect(**params, dbname="postgres", autocommit=True)


def _switch_to(name: str) -> None:
    """Point the default connection of this process at database ``name`` (as Django's test
    runner does: close connections and the pool, then change the NAME)."""
    connections.close_all()
    if hasattr(connection, "close_pool"):
        connection.close_pool()
    settings.DATABASES["default"]["NAME"] = name
    connection.settings_dict["NAME"] = name


class BenchDatabase:
    """A database made for the run and dropped afterwards, beside the configured one.

    PostgreSQL: ``<configured name>_bench`` on the same server. SQLite: a file beside the
    configured one. ``in_place`` (the test suite only) uses the configured, already-migrated
    test database instead and leaves its cleaning to the test framework.
    """

    def __init__(self, *, in_place: bool = False, keep: bool = False, name: str | None = None) -> None:
        self.vendor = connection.vendor
        self.original = str(connection.settings_dict["NAME"])
        self.in_place = in_place
        self.keep = keep
        if in_place:
            self.name = self.original
        elif name:
            self.name = name
        elif self.vendor == "postgresql":
            self.name = f"{self.original}_bench"
        else:
            self.name = str(Path(self.original).with_suffix("")) + "-bench.sqlite3"
        if not in_place and self.name == self.original:
            raise BenchmarkError("The benchmark database must not be the configured database.")
        self.reused = False

    def __enter__(self) -> BenchDatabase:
        if self.in_place:
            return self
        if self.vendor == "postgresql":
            with _maintenance_connection() as admin:
                exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.name]).fetchone()
                if exists and self.keep:
                    self.reused = True
                else:
                    admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                    admin.execute(f'CREATE DATABASE "{self.name}"')
        else:
            path = Path(self.name)
            if path.exists() and self.keep:
                self.reused = True
            else:
                self._remove_sqlite()
        _switch_to(self.name)
        call_command("migrate", verbosity=0, interactive=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.in_place:
            return
        _switch_to(self.original)
        if self.keep:
            return
        if self.vendor == "postgresql":
            with _maintenance_connection() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        else:
            self._remove_sqlite()

    def _remove_sqlite(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(self.name + suffix).unlink()

    def env(self) -> dict[str, str]:
        """DATABASE_URL (or the SQLite path) of this database, for child processes."""
        if self.vendor != "postgresql":
            return {"DATABASE_URL": "", "TASKFORGE_SQLITE_PATH": self.name}
        s = connection.settings_dict
        auth = quote(s.get("USER") or "", safe="")
        if s.get("PASSWORD"):
            auth += ":" + quote(s["PASSWORD"], safe="")
        host = s.get("HOST") or "127.0.0.1"
        port = f":{s['PORT']}" if s.get("PORT") else ""
        return {"DATABASE_URL": f"postgres://{auth}@{host}{port}/{quote(self.name)}"}


# --- Child processes -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """Starts and stops the processes of one run; every process it started is stopped on exit."""

    def __init__(self, database: BenchDatabase) -> None:
        self.database = database
        self.logs = Path(tempfile.mkdtemp(prefix="taskforge-bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTEST", "GUNICORN_")) and k not in ("DEBUG", "TASKFORGE_TESTING")
        }
        env.update(self.database.env())
        env["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
        env["DJANGO_SECRET_KEY"] = settings.SECRET_KEY
        # The children run without DEBUG, so they need the keys this process reads (core/crypto.py).
        env["TASKFORGE_SECRETS_KEYS"] = ",".join(crypto.keys())
        env["ALLOWED_HOSTS"] = "127.0.0.1,localhost"
        env.update(extra)
        return {k: v for k, v in env.items() if v != "" or k == "DATABASE_URL"}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    @contextlib.contextmanager
    def gunicorn(self) -> Iterator[str]:
        """gunicorn with ``config/gunicorn.conf.py`` (production: gthread, a process per core)."""
        port = free_port()
        proc = self._spawn(
            "gunicorn",
            [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "config.wsgi"],
            self.env(GUNICORN_BIND=f"127.0.0.1:{port}"),
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code in (200, 503):
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchmarkError(f"gunicorn did not start:\n{self.log_tail('gunicorn')}")
                time.sleep(0.1)
            yield base
        finally:
            self.stop(proc)

    @contextlib.contextmanager
    def workers(self, count: int, *, concurrency: int, bwrap: str = "auto") -> Iterator[list[int]]:
        """``count`` runworker processes; yields their pids once each has registered."""
        from executions.models import Worker

        procs = [
            self._spawn(
                f"worker-{i}",
                [
                    sys.executable,
                    "manage.py",
                    "runworker",
                    "--concurrency",
                    str(concurrency),
                    "--grace",
                    "10",
                ],
                self.env(TASKFORGE_SANDBOX_BWRAP=bwrap),
            )
            for i in range(count)
        ]
        try:
            pids = [p.pid for p in procs]
            deadline = time.monotonic() + 60
            while Worker.objects.filter(pid__in=pids, stopped_at__isnull=True).count() < count:
                dead = [p for p in procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise BenchmarkError(f"a worker did not start:\n{self.log_tail('worker-0')}")
                time.sleep(0.05)
            yield pids
        finally:
            for proc in procs:
                self.stop(proc, wait=False)
            for proc in procs:
                self.stop(proc)

    @contextlib.contextmanager
    def celery(self, *, broker: str, queue: str, concurrency: int) -> Iterator[subprocess.Popen[bytes]]:
        proc = self._spawn(
            "celery",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.celery_app",
                "worker",
                "-Q",
                queue,
                "--pool",
                "prefork",
                "--concurrency",
                str(concurrency),
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            self.env(TASKFORGE_BENCH_CELERY_BROKER=broker),
        )
        try:
            yield proc
        finally:
            self.stop(proc)

    def stop(self, proc: subprocess.Popen[bytes], *, wait: bool = True) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if not wait:
            return
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)
