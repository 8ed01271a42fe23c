"""PostgreSQL restarted under two real workers, for real: on a private cluster of our own.

The suite's PostgreSQL is shared and must never be restarted, so this module runs ``initdb``
into a temporary directory (as the ``postgres`` user: initdb refuses root), starts that
cluster on a free loopback port, migrates a database there (``manage.py migrate`` in a
subprocess) and points two ``runworker`` processes (concurrency 2, 10 s leases) at it. With
long (4 s) and short scripts queued and running, it restarts the server three ways:
``pg_ctl restart -m fast`` (clean: connections are closed), ``pg_ctl restart -m immediate``
(a crash: no shutdown checkpoint, crash recovery on start), and ``stop -m fast``, 3 s down,
``start`` (running scripts end while the server is down), then queues more work.

What the product promises (and the test checks, once everything settles):

- both workers survive the restart (same pids), reconnect, and run the work queued after it;
- the API (gunicorn, 2 processes, on the same cluster) never answers 500: a request made
  while the server is down waits for it or gets 503 with ``Retry-After``, and the first
  requests once it is back get 200 (the pool checks a connection before lending it);
- no execution lost, none started twice, none left ``running`` or ``queued``, retries chained
  and counted (never past ``max_retries``), each task's status follows its latest execution,
  no two executions of one task overlapping;
- a script that ended while the server was down is recorded when it comes back (the worker
  retries its writes for up to a lease), never failed with a "worker error"; the only failure
  allowed is ``worker_lost`` (a lease that ran out during the outage), and then retried.

Skipped unless run as root with PostgreSQL's ``initdb`` installed, and on SQLite. The private
cluster is stopped and deleted by the fixture's finalizer, whatever happens.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from django.conf import settings
from django.db import connection

from tests.hardening.pg_restart_probe import LONG_SCRIPT
from tests.live import ROOT, free_port, gunicorn, wait_for, worker


def _pg_bindir() -> Path | None:
    found = sorted(
        (p for p in glob.glob("/usr/lib/postgresql/*/bin/initdb") if Path(p).parts[-3].isdigit()),
        key=lambda p: int(Path(p).parts[-3]),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


BINDIR = _pg_bindir()


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (initdb and pg_ctl run as the postgres user through runuser)"
    if BINDIR is None or not (BINDIR / "pg_ctl").exists():
        return "PostgreSQL's initdb/pg_ctl are not installed"
    if shutil.which("runuser") is None:
        return "runuser is not available"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no postgres system user to own the private cluster"
    return None


pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="PostgreSQL only (the suite runs on SQLite)"
    ),
    pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or ""),
]

LEASE_SECONDS = 10
DBNAME = "taskforge"


@dataclass
class PrivatePostgres:
    datadir: Path
    port: int
    options: str = ""

    @property
    def logfile(self) -> str:
        return str(self.datadir / "server.log")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{DBNAME}"

    def pg_ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", str(BINDIR / "pg_ctl"), "-D", str(self.datadir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
        )

    def start(self) -> None:
        result = self.pg_ctl("-o", self.options, "-l", self.logfile, "-w", "-t", "60", "start")
        assert result.returncode == 0, result.stdout + result.stderr + self.log()

    def restart(self, mode: str, down_for: float = 0, while_down: Callable[[], None] | None = None) -> None:
        """``pg_ctl restart -m mode``; with ``down_for``, stop, call ``while_down``, stay down
        ``down_for`` seconds in all, start."""
        if not down_for:
            result = self.pg_ctl("-m", mode, "-w", "-t", "60", "-l", self.logfile, "restart")
            assert result.returncode == 0, result.stdout + result.stderr + self.log()
            return
        result = self.pg_ctl("-m", mode, "-w", "-t", "60", "stop")
        assert result.returncode == 0, result.stdout + result.stderr + self.log()
        stopped = time.monotonic()
        if while_down is not None:
            while_down()
        time.sleep(max(0.0, down_for - (time.monotonic() - stopped)))
        self.start()

    def log(self) -> str:
        path = self.datadir / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]] | None:
        """Rows of ``sql``, or None while the server is unreachable (restarting)."""
        try:
            with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.OperationalError:
            return None


def _stop_and_remove(datadir: Path) -> None:
    """Stop the cluster (immediately; it is throwaway) and delete it, even half set up."""
    if (datadir / "postmaster.pid").exists():
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(BINDIR / "pg_ctl"),
                "-D",
                str(datadir),
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "stop",
            ],
            capture_output=True,
            timeout=60,
            check=False,
            cwd="/",
        )
        pidfile = datadir / "postmaster.pid"
        if pidfile.exists():  # pg_ctl failed: kill the postmaster ourselves
            with contextlib.suppress(ValueError, ProcessLookupError, IndexError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
            time.sleep(0.5)
    shutil.rmtree(datadir.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    root = Path(tempfile.mkdtemp(prefix="tf-pgrestart-"))
    datadir = root / "data"
    try:
        shutil.chown(root, "postgres", "postgres")
        init = subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(BINDIR / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd="/",
        )
        assert init.returncode == 0, init.stdout + init.stderr
        port = free_port()
        # Unix socket in the data directory (not /var/run/postgresql, the shared server's);
        # fsync off: an immediate restart kills processes, not the machine, so the OS still
        # holds every write (synchronous_commit stays on: a commit is in the WAL before it
        # is acknowledged, which is what crash recovery replays).
        options = (
            f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c shared_buffers=32MB -c max_connections=100"
        )
        pg = PrivatePostgres(datadir=datadir, port=port, options=options)
        pg.start()
        with psycopg.connect(f"postgres://postgres@127.0.0.1:{pg.port}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DBNAME}")
        _python(pg, "manage.py", "migrate", "--noinput", timeout=300)
        yield pg
    finally:
        _stop_and_remove(datadir)


def _env(pg: PrivatePostgres) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DJANGO_SETTINGS_MODULE="config.test_settings",
        TASKFORGE_TESTING="1",
        DJANGO_SECRET_KEY=settings.SECRET_KEY,
        DATABASE_URL=pg.url,
        TASKFORGE_EXECUTION_LEASE_SECONDS=str(LEASE_SECONDS),
    )
    return env


def _python(pg: PrivatePostgres, *argv: str, timeout: int) -> str:
    """Run ``python <argv>`` against the private cluster; its stdout (it must succeed)."""
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=_env(pg),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def probe(pg: PrivatePostgres, *args: str) -> dict[str, Any]:
    stdout = _python(pg, "-m", "tests.hardening.pg_restart_probe", *args, timeout=120)
    return json.loads(stdout.strip().splitlines()[-1])


def counts(pg: PrivatePostgres, task_ids: list[str]) -> dict[str, int] | None:
    rows = pg.query(
        "SELECT status, count(*) FROM executions_execution WHERE task_id = ANY(%s::uuid[]) GROUP BY status",
        task_ids,
    )
    return None if rows is None else dict(rows)


def settled(pg: PrivatePostgres, task_ids: list[str]) -> bool:
    current = counts(pg, task_ids)
    return current is not None and not current.get("running") and not current.get("queued")


def alive(*procs: subprocess.Popen) -> bool:
    return all(proc.poll() is None for proc in procs)


def running(pg: PrivatePostgres, task_ids: list[str]) -> list[tuple[Any, ...]]:
    rows = pg.query(
        "SELECT id FROM executions_execution WHERE task_id = ANY(%s::uuid[]) AND status = 'running'", task_ids
    )
    assert rows is not None
    return rows


def long_scripts_near_their_end(pg: PrivatePostgres, task_ids: list[str]) -> bool:
    """A long (4 s) script has run for 2.5 s: it ends during an outage that starts now."""
    rows = pg.query(
        "SELECT count(*) FROM executions_execution WHERE task_id = ANY(%s::uuid[]) AND status = 'running' "
        "AND script = %s AND started_at < now() - interval '2500 milliseconds'",
        task_ids,
        LONG_SCRIPT,
    )
    return bool(rows and rows[0][0])


@pytest.mark.parametrize(
    ("mode", "down_for"),
    [("fast", 0), ("immediate", 0), ("fast", 3)],
    ids=["restart-fast", "restart-immediate", "stop-fast-3s-start"],
)
def test_workers_survive_a_postgresql_restart(
    private_pg: PrivatePostgres, mode: str, down_for: float, tmp_path: Path
) -> None:
    pg = private_pg
    seeded = probe(pg, "seed", f"{mode}-{down_for}", "3", "4", "2")  # 3 long + 4 short tasks, twice each
    task_ids = seeded["tasks"]
    env = _env(pg)
    if down_for:
        # The workers' pool stops waiting for a connection after 1 s (not 10), so during the
        # outage the worker's own retries, not the pool's patience, carry the last writes.
        env["DATABASE_POOL_TIMEOUT"] = "1"
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    with (
        worker("--concurrency", "2", "--grace", "5", extra_env=env, log_to=logs[0]) as first,
        worker("--concurrency", "2", "--grace", "5", extra_env=env, log_to=logs[1]) as second,
        gunicorn(workers=2, extra_env=_env(pg)) as base,
    ):
        api = httpx.Client(base_url=base, headers={"Authorization": f"Api-Key {seeded['key']}"}, timeout=30)
        assert [api.get("/api/v1/tasks").status_code for _ in range(6)] == [200] * 6
        # Long scripts mid-run on both workers when the server goes away; with an outage,
        # timed so that scripts end (and must be recorded) while the server is down.
        wait_for(lambda: (counts(pg, task_ids) or {}).get("running", 0) >= 3, timeout=60, interval=0.1)
        wait_for(lambda: long_scripts_near_their_end(pg, task_ids), timeout=60, interval=0.1)
        in_flight = [str(row[0]) for row in running(pg, task_ids)]
        # A request made while the server is down (in a thread: it may wait for the server).
        outage: list[httpx.Response] = []
        asker = threading.Thread(target=lambda: outage.append(api.get("/api/v1/tasks")))
        pg.restart(mode, down_for=down_for, while_down=asker.start)
        if down_for:
            asker.join(timeout=30)
        assert alive(first, second), "a worker died when PostgreSQL restarted"
        # A request made while the server is down waits for it (up to the pool's 10 s), or
        # is told to retry shortly (503 + Retry-After): never a 500. Once the server is back,
        # the API answers at once: no request meets a dead pooled connection.
        for response in outage:
            assert response.status_code == 200 or (
                response.status_code == 503 and response.headers["Retry-After"]
            ), (response.status_code, response.text)
        statuses = [api.get("/api/v1/tasks").status_code for _ in range(6)]
        assert statuses == [200] * 6, statuses
        # Work queued after the restart must be picked up by the same two processes.
        late = probe(pg, "enqueue", *task_ids)["executions"]
        wait_for(lambda: settled(pg, task_ids), timeout=120, interval=0.3)
        assert alive(first, second), "a worker died after PostgreSQL restarted"
        pids = {first.pid, second.pid}
    output = "\n".join(log.read_text(errors="replace") for log in logs)
    summary = probe(pg, "check", *task_ids, "--in-flight", *in_flight)
    summary["reconnects"] = output.count("LISTEN connection failed")
    summary["writes_retried"] = output.count("; retrying in ")
    print(mode, down_for, json.dumps({k: v for k, v in summary.items() if k != "pids_by_execution"}))
    # The restart did happen under them: each worker's LISTEN connection broke and came back.
    assert summary["reconnects"] >= 2, output[-6000:]
    if down_for:  # scripts ended while the server was down: their last writes were retried
        assert summary["writes_retried"] >= 1, output[-6000:]
    # Scripts all exit 0: anything but success is a lease lost in the outage, then retried.
    assert set(summary["errors"]) <= {"worker_lost"}, summary["errors"]
    # The outage is far shorter than a lease: what was running when the server went down
    # finished there, recorded once, as it ended (succeeded, first attempt, full output).
    assert summary["in_flight"] == dict.fromkeys(in_flight, "succeeded"), summary["in_flight"]
    assert set(summary["worker_pids"]) <= pids
    late_pids = {summary["pids_by_execution"][e] for e in late if e in summary["pids_by_execution"]}
    assert late_pids, "nothing queued after the restart ran"
    assert late_pids <= pids
