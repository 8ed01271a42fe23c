"""Live-log streams against the real stack: print → SSE latency, and the API beside many streams.

    DATABASE_URL=postgres://… REDIS_URL=redis://… DEBUG=1 python -m bench.streams latency
    … python -m bench.streams starve --principals 50 --per-principal 4
    … python -m bench.streams events --principals 50 --per-principal 4

``latency``: a Python script prints ``time.time()`` every 0.1-0.3 s (80 lines); a client reads
the execution's log as Server-Sent Events and notes, for every line, the time it arrived minus
the time it was printed (same machine, same clock). Median, p90, p99, max.

``starve``: a script that prints a line a second for ``--run-seconds``; ``--principals`` users
(a key each) open ``--per-principal`` streams each on it, all at once; meanwhile (and before,
idle) sequential probes of ``GET /api/v1/tasks`` and ``GET /health`` (keep-alive connections,
as the load generator of the benchmark). p50/p95/p99/max of each, and how many streams were
held, refused (429) or failed.

``events``: ``--principals`` users (a key each, viewers of one project) open ``--per-principal``
event streams each (``GET /api/v1/events``, SSE), all at once, from one asyncio thread; a
producer changes a task of that project every 50-250 ms (``PATCH``: one ``task.updated`` event
each). Event → subscriber latency is the time a subscriber reads an event minus the event's
``created_at`` (set in the writing transaction, before its commit; same machine, same clock),
over every (event, subscriber) pair. The API probes (``GET /api/v1/tasks``, ``/health``) run
twice with the producer going: without subscribers (the baseline), then with them.

Its own database (``<name>_streams``) and processes (gunicorn with config/gunicorn.conf.py, one
``runworker``), as ``manage.py benchmark`` does; both are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

import httpx  # noqa: E402

from bench.seed import Account, seed_accounts  # noqa: E402
from bench.stack import BenchDatabase, Stack  # noqa: E402

LATENCY_SCRIPT = """\
import random, time
for i in range(80):
    time.sleep(random.uniform(0.1, 0.3))
    print(f"{time.time():.6f}", flush=True)
"""
STARVE_SCRIPT = """\
import time
for i in range({seconds}):
    print(i, flush=True)
    time.sleep(1)
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    ms = [v * 1000 for v in values]
    return (
        f"n={len(ms)} p50={statistics.median(ms):.1f} ms p95={percentile(ms, 95):.1f} ms "
        f"p99={percentile(ms, 99):.1f} ms max={max(ms):.1f} ms"
    )


def execute(base: str, account: Account, script: str) -> tuple[str, str]:
    with httpx.Client(base_url=base, headers=account.headers, timeout=30) as client:
        body = {"name": "streams", "script_type": "python", "script_content": script}
        reply = client.post("/api/v1/tasks", json=body)
        reply.raise_for_status()
        task = reply.json()["id"]
        reply = client.post(f"/api/v1/tasks/{task}/execute", json={})
        reply.raise_for_status()
        return task, reply.json()["id"]


def sse_events(response: httpx.Response) -> Any:
    """(event, data, id) of each Server-Sent Event, as it arrives."""
    event, data, ident = "message", [], None
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event, "\n".join(data), ident
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line.startswith("id:"):
            ident = line[3:].strip()


def run_latency(base: str, account: Account) -> dict[str, Any]:
    task, execution = execute(base, account, LATENCY_SCRIPT)
    url = f"{base}/api/v1/tasks/{task}/executions/{execution}/log"
    delays: list[float] = []
    headers = {**account.headers, "Accept": "text/event-stream"}
    offset = 0
    while True:  # reconnect (Last-Event-ID) if the server ends the stream early
        resume = {**headers, "Last-Event-ID": str(offset)}
        with httpx.stream("GET", url, headers=resume, timeout=60) as response:
            response.raise_for_status()
            ended = False
            for event, data, ident in sse_events(response):
                now = time.time()
                if event == "chunk":
                    chunk = json.loads(data)
                    offset = int(ident or chunk["seq"])
                    for line in chunk["data"].splitlines():
                        if line.strip():
                            delays.append(now - float(line))
                elif event == "end":
                    ended = True
                    break
        if ended:
            break
    print("print → SSE client:", summary(delays))
    return {"latency_ms": [round(d * 1000, 2) for d in delays]}


def probe(base: str, path: str, headers: dict[str, str], until: float, out: list[float]) -> None:
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        while time.monotonic() < until:
            began = time.perf_counter()
            try:
                client.get(path).raise_for_status()
                out.append(time.perf_counter() - began)
            except httpx.HTTPError:
                out.append(30.0)
            time.sleep(0.05)


def probe_round(base: str, account: Account, seconds: float) -> tuple[list[float], list[float]]:
    tasks_times: list[float] = []
    health_times: list[float] = []
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(target=probe, args=(base, "/api/v1/tasks", account.headers, until, tasks_times)),
        threading.Thread(target=probe, args=(base, "/health", {}, until, health_times)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tasks_times, health_times


async def _hold(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    stop: asyncio.Event,
    outcome: list[str],
    read: Callable[[httpx.Response], Awaitable[None]],
) -> None:
    """One stream: its refusal's status, or "open" until ``stop`` ("ended early" if the server
    closed it before)."""
    try:
        async with client.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                outcome.append(str(response.status_code))
                return
            outcome.append("open")
            reader = asyncio.ensure_future(read(response))
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, stopper):
                task.cancel()
            if reader in done:
                outcome.append("ended early")
    except httpx.HTTPError as exc:
        outcome.append(type(exc).__name__)


async def _drain(response: httpx.Response) -> None:
    async for _ in response.aiter_raw():
        pass


class StreamHolder:
    """Opens every stream at once from one asyncio thread (hundreds of client threads would
    themselves load the two cores) and holds them until ``close()``."""

    def __init__(self, url: str, headers: list[dict[str, str]]) -> None:
        self.url, self.headers = url, headers
        self.outcome: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),), daemon=True)
        self.read: Callable[[httpx.Response], Awaitable[None]] = _drain

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        timeout = httpx.Timeout(30, read=None)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            await asyncio.gather(
                *(_hold(client, self.url, h, self.stop, self.outcome, self.read) for h in self.headers)
            )

    def open(self, settle: float) -> dict[str, int]:
        self.thread.start()
        deadline = time.monotonic() + 60
        while len([o for o in self.outcome if o != "ended early"]) < len(self.headers):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(settle)
        return self.counts()

    def counts(self) -> dict[str, int]:
        return {k: self.outcome.count(k) for k in sorted(set(self.outcome))}

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=60)


def run_starve(base: str, accounts: list[Account], args: argparse.Namespace) -> dict[str, Any]:
    prober, streamers = accounts[0], accounts[1:]
    idle = probe_round(base, prober, args.probe_seconds)
    print("idle  /api/v1/tasks:", summary(idle[0]))
    print("idle  /health      :", summary(idle[1]))
    task, execution = execute(base, prober, STARVE_SCRIPT.format(seconds=args.run_seconds))
    url = f"{base}/api/v1/tasks/{task}/executions/{execution}/log"
    # The streamers must see the run: make them members of the prober's project.
    from accounts.models import Membership, Project, Role

    project = Project.objects.get(pk=prober.project_id)
    Membership.objects.bulk_create(
        [Membership(project=project, user_id=a.user_id, role=Role.VIEWER) for a in streamers],
        ignore_conflicts=True,
    )
    headers = [
        {**a.headers, "Accept": "text/event-stream"} for a in streamers for _ in range(args.per_principal)
    ]
    holder = StreamHolder(url, headers)
    opened = holder.open(settle=2)
    print(f"streams asked {len(headers)}: {opened}")
    busy = probe_round(base, prober, args.probe_seconds)
    print(f"streams at the end of the probes: {holder.counts()}")
    holder.close()
    print("busy  /api/v1/tasks:", summary(busy[0]))
    print("busy  /health      :", summary(busy[1]))
    return {"streams": opened, "idle": idle, "busy": busy}


async def _read_events(response: httpx.Response, out: dict[str, Any]) -> None:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            now = time.time()
            event = json.loads(line[6:])
            if "created_at" in event:
                created = datetime.fromisoformat(event["created_at"]).timestamp()
                out["latency"].append(now - created)
                out["ids"].add(event["id"])


class EventSubscribers(StreamHolder):
    """``StreamHolder`` for the event stream: every subscriber notes each event's latency."""

    def __init__(self, url: str, headers: list[dict[str, str]]) -> None:
        super().__init__(url, headers)
        self.out: dict[str, Any] = {"latency": [], "ids": set()}
        self.read = lambda response: _read_events(response, self.out)


def produce(base: str, account: Account, task: str, until: float, made: list[int]) -> None:
    """A ``task.updated`` event every 50-250 ms until ``until``."""
    with httpx.Client(base_url=base, headers=account.headers, timeout=30) as client:
        n = 0
        while time.monotonic() < until:
            n += 1
            client.patch(f"/api/v1/tasks/{task}", json={"description": f"change {n}"}).raise_for_status()
            made.append(n)
            time.sleep(random.uniform(0.05, 0.25))  # noqa: S311 - jitter, not security


def producing_round(
    base: str, account: Account, task: str, seconds: float
) -> tuple[list[float], list[float], int]:
    """The API probes while the producer runs; and how many events it made."""
    made: list[int] = []
    producer = threading.Thread(target=produce, args=(base, account, task, time.monotonic() + seconds, made))
    producer.start()
    tasks_times, health_times = probe_round(base, account, seconds)
    producer.join()
    return tasks_times, health_times, len(made)


def database_connections() -> int | None:
    """Connections to this database now (every process of the stack, and this one)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def run_events(base: str, accounts: list[Account], args: argparse.Namespace) -> dict[str, Any]:
    producer, subscribers = accounts[0], accounts[1:]
    from accounts.models import Membership, Project, Role

    project = Project.objects.get(pk=producer.project_id)
    Membership.objects.bulk_create(
        [Membership(project=project, user_id=a.user_id, role=Role.VIEWER) for a in subscribers],
        ignore_conflicts=True,
    )
    with httpx.Client(base_url=base, headers=producer.headers, timeout=30) as client:
        reply = client.post("/api/v1/tasks", json={"name": "events"})
        reply.raise_for_status()
        task = reply.json()["id"]
    base_tasks, base_health, base_made = producing_round(base, producer, task, args.probe_seconds)
    print(f"baseline (producer, no subscribers): {base_made} events")
    print("baseline /api/v1/tasks:", summary(base_tasks))
    print("baseline /health      :", summary(base_health))
    headers = [
        {**a.headers, "Accept": "text/event-stream"} for a in subscribers for _ in range(args.per_principal)
    ]
    holder = EventSubscribers(f"{base}/api/v1/events", headers)
    opened = holder.open(settle=2)
    print(f"subscribers asked {len(headers)}: {opened}")
    connections = database_connections()
    print(f"database connections with the subscribers open: {connections}")
    busy_tasks, busy_health, made = producing_round(base, producer, task, args.probe_seconds)
    time.sleep(2)  # the last events reach everyone
    print(f"subscribers at the end: {holder.counts()}")
    holder.close()
    latency = holder.out["latency"]
    expected = made * opened.get("open", 0)
    print(f"events made {made}, deliveries {len(latency)} of {expected} expected")
    print("event → subscriber:", summary(latency))
    print("busy /api/v1/tasks:", summary(busy_tasks))
    print("busy /health      :", summary(busy_health))
    return {
        "subscribers": opened,
        "database_connections": connections,
        "events": made,
        "deliveries": len(latency),
        "expected_deliveries": expected,
        "latency_ms": [round(d * 1000, 2) for d in latency],
        "baseline": {"tasks": base_tasks, "health": base_health},
        "busy": {"tasks": busy_tasks, "health": busy_health},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("latency", "starve", "events"))
    parser.add_argument("--principals", type=int, default=10)
    parser.add_argument("--per-principal", type=int, default=4)
    parser.add_argument("--run-seconds", type=int, default=50)
    parser.add_argument("--probe-seconds", type=float, default=20)
    args = parser.parse_args()
    print(f"{platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    database = BenchDatabase(name=f"{BenchDatabase().original}_streams")
    with database:
        stack = Stack(database)
        try:
            accounts = seed_accounts(1 + (args.principals if args.what != "latency" else 0), prefix="streams")
            with stack.gunicorn() as base, stack.workers(1, concurrency=2, bwrap="never"):
                if args.what == "latency":
                    run_latency(base, accounts[0])
                elif args.what == "events":
                    run_events(base, accounts, args)
                else:
                    run_starve(base, accounts, args)
        finally:
            stack.close()


if __name__ == "__main__":
    main()
