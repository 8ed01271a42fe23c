"""The benchmark's scenarios (SPEC §9, issue 8). Each measures through the real stack
(gunicorn on loopback, ``runworker`` processes, PostgreSQL) and adds figures to the report.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from django.db import connection
from django.db.models import Count, Min, OuterRef, Subquery, Sum
from django.db.models.functions import Length
from django.utils import timezone

from bench.load import Client, LoadResult, percentile, run_load
from bench.report import Figure, Report
from bench.seed import Account, seed_accounts, seed_tasks, settle
from bench.stack import BenchmarkError, Stack

SCENARIOS = ("list", "throughput", "latency", "executions", "claims", "memory")


@dataclass(frozen=True)
class Sizes:
    users: int = 1_000
    tasks: int = 1_000_000
    list_requests: int = 500  # measured requests per concurrency level
    list_concurrency: int = 8
    deep_page: int = 500
    page_samples: int = 100
    throughput_seconds: float = 15.0
    throughput_rounds: int = 2
    triggers: int = 200
    execution_seconds: float = 30.0
    execution_warmup: float = 3.0
    execution_tasks: int = 64
    workers: int = 2
    worker_concurrency: int = 4
    agents: int = 50
    claim_tasks: int = 10_000
    memory_bytes: int = 1024**3


QUICK = Sizes(
    users=20,
    tasks=2_000,
    list_requests=20,
    deep_page=3,
    page_samples=5,
    throughput_seconds=1.0,
    throughput_rounds=1,
    triggers=5,
    execution_seconds=1.5,
    execution_warmup=0.5,
    execution_tasks=8,
    agents=8,
    claim_tasks=120,
    memory_bytes=16 * 1024**2,
)

Progress = Callable[..., Any]  # rich-like: progress(description, total) -> context with advance()


class Bench:
    """Shared state of one run: the stack, the report, the sizes and the seeded accounts."""

    def __init__(
        self,
        *,
        stack: Stack,
        report: Report,
        sizes: Sizes,
        progress: Progress,
        say: Callable[[str], None],
        celery_broker: str | None,
    ) -> None:
        self.stack = stack
        self.report = report
        self.sizes = sizes
        self.progress = progress
        self.say = say
        self.celery_broker = celery_broker
        self.base = ""
        self.rng = random.Random(8)  # noqa: S311 - picks users, not secrets
        self.list_accounts: list[Account] | None = None
        self.now = timezone.now()

    @property
    def postgres(self) -> bool:
        return connection.vendor == "postgresql"

    def fresh_accounts(self, count: int, label: str) -> list[Account]:
        return seed_accounts(count, prefix=f"bench-{label}-{uuid.uuid4().hex[:6]}")

    def client(self) -> Client:
        return Client(self.base)


# --- list ---------------------------------------------------------------------------------
def _list_data(bench: Bench) -> list[Account]:
    """1,000 users and 1,000,000 tasks (seeded once per run; a kept database is reused)."""
    from tasks.models import Task

    if bench.list_accounts is not None:
        return bench.list_accounts
    s = bench.sizes
    accounts = bench.fresh_accounts(s.users, "list")
    existing = Task.objects.count()
    started = time.perf_counter()
    with bench.progress(f"seeding {s.tasks:,} tasks over {s.users:,} users", s.tasks) as bar:
        seed_tasks(accounts, s.tasks, on_progress=bar.advance)
    took = time.perf_counter() - started
    bench.report.details["seed"] = {"tasks": s.tasks, "users": s.users, "seconds": round(took, 1)}
    bench.report.add(
        Figure("list", f"seed {s.tasks:,} tasks", took, "s", better="lower", note=f"{existing} tasks existed")
    )
    bench.list_accounts = accounts
    return accounts


def _list_query(bench: Bench) -> dict[str, str]:
    return {
        "status": "completed,failed",
        "created_after": (bench.now - timedelta(days=200)).isoformat(),
        "created_before": (bench.now - timedelta(days=10)).isoformat(),
        "tag": "ci",
        "sort": "created_at",
        "limit": "20",
    }


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def scenario_list(bench: Bench) -> None:
    s = bench.sizes
    accounts = _list_data(bench)
    heavy, others = accounts[0], accounts[1:] or accounts
    query = urlencode(_list_query(bench))

    def random_user(_i: int) -> tuple[str, str, dict[str, str], None]:
        return ("GET", f"/api/v1/tasks?{query}", bench.rng.choice(others).headers, None)

    run_load(bench.base, random_user, concurrency=4, count=max(20, s.list_requests // 5))  # warm up
    results: dict[int, LoadResult] = {}
    for concurrency in (1, s.list_concurrency):
        with bench.progress(f"list, concurrency {concurrency}", s.list_requests) as bar:
            results[concurrency] = _checked(
                run_load(
                    bench.base,
                    random_user,
                    concurrency=concurrency,
                    count=s.list_requests,
                    on_done=bar.advance,
                )
            )
    one, many = results[1], results[s.list_concurrency]
    bench.report.add(Figure("list", "p50, concurrency 1", one.ms(50), "ms", better="lower"))
    bench.report.add(Figure("list", "p95, concurrency 1", one.ms(95), "ms", better="lower"))
    bench.report.add(
        Figure(
            "list",
            "p99, concurrency 1",
            one.ms(99),
            "ms",
            better="lower",
            target="< 25 ms [≤ 12 ms]",
            ok=one.ms(99) < 25,
        )
    )
    bench.report.add(
        Figure(
            "list",
            f"p99, concurrency {s.list_concurrency}",
            many.ms(99),
            "ms",
            better="lower",
            target="[≤ 40 ms]",
            ok=many.ms(99) <= 40,
            note=f"p50 {many.ms(50):.1f} ms, {many.rate:.0f} req/s",
        )
    )

    # Deep pages, on the heavy tenant: walk the cursor chain to page N, then time page 1 and
    # page N (cursor), page 1 and page=N (page mode), interleaved so noise hits all alike.
    client = bench.client()
    cursor_first = f"/api/v1/tasks?{query}&pagination=cursor"
    path = cursor_first
    with bench.progress(f"walking cursor pages to page {s.deep_page}", s.deep_page - 1) as bar:
        for _ in range(s.deep_page - 1):
            reply = client.send("GET", path, heavy.headers)
            if reply.status != 200 or not reply.json().get("next"):
                raise BenchmarkError(f"cursor walk stopped: {reply.status} {reply.body[:300]!r}")
            path = _path(reply.json()["next"])
            bar.advance()
    variants = {
        "cursor page 1": cursor_first,
        f"cursor page {s.deep_page}": path,
        "page 1": f"/api/v1/tasks?{query}&page=1",
        f"page={s.deep_page}": f"/api/v1/tasks?{query}&page={s.deep_page}",
    }
    timings: dict[str, list[float]] = {name: [] for name in variants}
    with bench.progress("first vs deep pages", s.page_samples) as bar:
        for _ in range(s.page_samples):
            for name, variant in variants.items():
                began = time.perf_counter()
                reply = client.send("GET", variant, heavy.headers)
                timings[name].append(time.perf_counter() - began)
                if reply.status != 200:
                    raise BenchmarkError(f"{name}: {reply.status} {reply.body[:300]!r}")
            bar.advance()
    client.close()
    med = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    count = _heavy_matches(bench, heavy)
    bench.report.details["list"] = {"heavy_tenant_matches": count, "medians_ms": med}
    first_c, deep_c = med["cursor page 1"], med[f"cursor page {s.deep_page}"]
    bench.report.add(Figure("list", "cursor page 1, median", first_c, "ms", better="lower"))
    bench.report.add(
        Figure(
            "list",
            f"cursor page {s.deep_page}, median",
            deep_c,
            "ms",
            baseline=first_c,
            baseline_name="cursor page 1",
            better="lower",
            target="≈ page 1 [≤ 1.1x]",
            ok=deep_c <= 1.1 * first_c,
            note=f"heavy tenant, {count:,} matches",
        )
    )
    bench.report.add(Figure("list", "page 1 (with count), median", med["page 1"], "ms", better="lower"))
    bench.report.add(
        Figure(
            "list",
            f"page={s.deep_page}, median",
            med[f"page={s.deep_page}"],
            "ms",
            baseline=med["page 1"],
            baseline_name="page 1",
            better="lower",
        )
    )


def _heavy_matches(bench: Bench, heavy: Account) -> int:
    from tasks.models import Task

    q = _list_query(bench)
    return (
        Task.objects.filter(
            project_id=heavy.project_id,
            archived=False,
            status__in=q["status"].split(","),
            created_at__gte=q["created_after"],
            created_at__lt=q["created_before"],
        )
        .with_tags([q["tag"]])
        .count()
    )


def _checked(result: LoadResult) -> LoadResult:
    if result.errors:
        raise BenchmarkError(f"{len(result.errors)} failed requests, first: {result.errors[0]}")
    if not result.latencies:
        raise BenchmarkError("no request answered")
    return result


# --- throughput ---------------------------------------------------------------------------
def scenario_throughput(bench: Bench) -> None:
    s = bench.sizes
    accounts = _list_data(bench)
    others = accounts[1:] or accounts
    q = _list_query(bench)
    api_query = urlencode(q)

    def api(_i: int) -> tuple[str, str, dict[str, str], None]:
        return ("GET", f"/api/v1/tasks?{api_query}", bench.rng.choice(others).headers, None)

    def bare(_i: int) -> tuple[str, str, dict[str, str], None]:
        account = bench.rng.choice(others)
        params = {k: v for k, v in q.items() if k not in ("sort", "limit")}
        return ("GET", f"/bench/bare-tasks?{urlencode({**params, 'project': account.project_id})}", {}, None)

    c = s.list_concurrency
    rates: dict[str, list[float]] = {"api": [], "bare": []}
    total = int(s.throughput_seconds * s.throughput_rounds * 2)
    with bench.progress(f"throughput at concurrency {c}: API vs bare view", total) as bar:
        for _ in range(s.throughput_rounds):
            for name, maker in (("bare", bare), ("api", api)):
                result = _checked(run_load(bench.base, maker, concurrency=c, duration=s.throughput_seconds))
                rates[name].append(result.rate)
                bar.advance(s.throughput_seconds)
    api_rate, bare_rate = statistics.mean(rates["api"]), statistics.mean(rates["bare"])
    bench.report.details["throughput"] = rates
    bench.report.add(
        Figure(
            "throughput",
            f"task list req/s, concurrency {c}",
            api_rate,
            "/s",
            baseline=bare_rate,
            baseline_name="bare Django view",
            target="[≥ 400/s]",
            ok=api_rate >= 400,
        )
    )


# --- latency ------------------------------------------------------------------------------
LATENCY_SCRIPT = "echo $EPOCHREALTIME\n"


def _create_task(bench: Bench, account: Account, **fields: Any) -> str:
    reply = bench.client().send("POST", "/api/v1/tasks", account.headers, {"name": "bench", **fields})
    if reply.status != 201:
        raise BenchmarkError(f"could not create a task: {reply.status} {reply.body[:300]!r}")
    return reply.json()["id"]


def _isolation(pids: list[int]) -> str:
    from executions.models import Worker

    return ", ".join(sorted(set(Worker.objects.filter(pid__in=pids).values_list("sandbox", flat=True))))


def scenario_latency(bench: Bench) -> None:
    s = bench.sizes
    account = bench.fresh_accounts(1, "latency")[0]
    task_id = _create_task(bench, account, script_type="bash", script_content=LATENCY_SCRIPT)
    path = f"/api/v1/tasks/{task_id}/execute?wait=30"
    for mode, label in (("auto", "bwrap"), ("never", "no bwrap")):
        with bench.stack.workers(1, concurrency=2, bwrap=mode) as pids:
            isolation = _isolation(pids)
            client = bench.client()
            first_line: list[float] = []
            round_trip: list[float] = []
            warmup = 5
            with bench.progress(f"trigger → first line ({label})", s.triggers + warmup) as bar:
                for i in range(s.triggers + warmup):
                    time.sleep(0.02)  # the worker is idle when the trigger arrives
                    began = time.time()
                    reply = client.send("POST", path, account.headers, {})
                    ended = time.time()
                    bar.advance()
                    if reply.status != 200:
                        raise BenchmarkError(f"execute?wait: {reply.status} {reply.body[:300]!r}")
                    body = reply.json()
                    if body["status"] != "succeeded":
                        raise BenchmarkError(
                            f"latency script {body['status']}: {body.get('stderr', '')[:300]}"
                        )
                    if i >= warmup:
                        first_line.append(float(body["stdout"].split()[0]) - began)
                        round_trip.append(ended - began)
            client.close()
        if label == "bwrap" and "bwrap" not in isolation:
            bench.report.skipped.append(f"latency with bwrap: the worker ran with {isolation!r}")
            continue
        median = statistics.median(first_line) * 1000
        goal = 20 if label == "bwrap" else 10
        bench.report.add(
            Figure(
                "latency",
                f"trigger → first line, median ({label})",
                median,
                "ms",
                better="lower",
                target=f"< 50 ms [≤ {goal} ms]",
                ok=median < 50,
                note=f"isolation {isolation}",
            )
        )
        bench.report.add(
            Figure(
                "latency",
                f"trigger → first line, p99 ({label})",
                percentile(first_line, 99) * 1000,
                "ms",
                better="lower",
            )
        )
        bench.report.add(
            Figure(
                "latency",
                f"trigger → finished response, median ({label})",
                statistics.median(round_trip) * 1000,
                "ms",
                better="lower",
            )
        )


# --- executions ---------------------------------------------------------------------------
TRIVIAL_SCRIPT = "echo ok\n"


def _queue_backlog(bench: Bench, account: Account, backlog: int) -> list[uuid.UUID]:
    """Tasks with a trivial script and ``backlog`` queued executions spread over them, bulk
    inserted (what is measured is how fast workers drain a queue, not how fast it fills)."""
    from executions.models import Execution
    from tasks.models import Task

    s = bench.sizes
    tasks = Task.objects.bulk_create(
        [
            Task(
                project_id=account.project_id,
                name=f"trivial {i}",
                script_type="bash",
                script_content=TRIVIAL_SCRIPT,
                created_by_id=account.user_id,
                status="queued",
            )
            for i in range(s.execution_tasks)
        ]
    )
    base = timezone.now()
    rows = [
        Execution(
            project_id=account.project_id,
            task=tasks[i % len(tasks)],
            number=1 + i // len(tasks),
            script_type="bash",
            script=TRIVIAL_SCRIPT,
            timeout_seconds=60,
            priority=5,
            queued_at=base + timedelta(microseconds=i),
            triggered_by_id=account.user_id,
        )
        for i in range(backlog)
    ]
    with bench.progress(f"queueing {backlog:,} executions", backlog) as bar:
        for start in range(0, backlog, 5_000):
            Execution.objects.bulk_create(rows[start : start + 5_000])
            bar.advance(len(rows[start : start + 5_000]))
    # As enqueueing does: each task records its latest execution.
    latest = Execution.objects.filter(task=OuterRef("pk")).order_by("-number").values("pk")[:1]
    Task.objects.filter(pk__in=[t.pk for t in tasks]).update(last_execution=Subquery(latest))
    settle(Task._meta.db_table, Execution._meta.db_table)
    return [t.pk for t in tasks]


def _backlog(s: Sizes) -> int:
    """Enough queued work never to run dry within the window: 600/s is well above the rate
    floor measured with the sandbox on this kind of machine (a rate above it is reported as a floor)."""
    return int(600 * (s.execution_seconds + s.execution_warmup + 3))


def _taskforge_rate(bench: Bench, bwrap: str, label: str) -> tuple[float, str]:
    from executions.models import Execution, ExecutionStatus

    s = bench.sizes
    account = bench.fresh_accounts(1, f"exec-{bwrap}")[0]
    backlog = _backlog(s)
    task_ids = _queue_backlog(bench, account, backlog)
    mine = Execution.objects.filter(task_id__in=task_ids)
    span = s.execution_warmup + s.execution_seconds
    with bench.stack.workers(s.workers, concurrency=s.worker_concurrency, bwrap=bwrap) as pids:
        isolation = _isolation(pids)
        with bench.progress(f"executions ({label}, {s.workers} workers)", span) as bar:
            first = None
            while first is None:
                first = mine.aggregate(t=Min("started_at"))["t"]
                time.sleep(0.05)
            end = first + timedelta(seconds=span)
            while (now := timezone.now()) < end:
                bar.update(completed=(now - first).total_seconds())
                time.sleep(0.25)
    Execution.objects.filter(task_id__in=task_ids, status=ExecutionStatus.QUEUED).update(
        status=ExecutionStatus.CANCELLED, finished_at=timezone.now(), error="cancelled"
    )
    start = first + timedelta(seconds=s.execution_warmup)
    done = mine.filter(finished_at__gte=start, finished_at__lt=end)
    count = done.count()
    failed = done.exclude(status=ExecutionStatus.SUCCEEDED).count()
    if failed:
        sample = done.exclude(status=ExecutionStatus.SUCCEEDED).values("status", "error", "error_detail")[:3]
        raise BenchmarkError(f"{failed} trivial executions did not succeed: {list(sample)}")
    if count == 0:
        raise BenchmarkError(f"no execution finished ({label}):\n{bench.stack.log_tail('worker-0')}")
    if mine.filter(status=ExecutionStatus.SUCCEEDED).count() >= backlog:
        bench.report.skipped.append(f"executions ({label}): the backlog ran out; the rate is a floor")
    return count / s.execution_seconds, isolation


def _celery_rate(bench: Bench, argv: list[str], label: str) -> float | None:
    try:
        import celery  # noqa: F401
    except ImportError:
        bench.report.skipped.append(
            "Celery baseline: celery is not installed (pip install -e '.[bench]' installs it)"
        )
        return None
    if not bench.celery_broker:
        if not any("Celery baseline" in m for m in bench.report.skipped):
            bench.report.skipped.append(
                "Celery baseline: not run (no REDIS_URL / --celery-broker, or --no-celery)"
            )
        return None
    import os

    os.environ["TASKFORGE_BENCH_CELERY_BROKER"] = bench.celery_broker
    from bench.celery_app import app, run

    app.conf.broker_url = app.conf.result_backend = bench.celery_broker
    s = bench.sizes
    queue = f"taskforge-bench-{uuid.uuid4().hex[:8]}"
    backlog = _backlog(s)
    ids: list[str] = []
    with (
        bench.progress(f"queueing {backlog:,} Celery jobs", backlog) as bar,
        app.producer_or_acquire() as producer,
    ):
        for _ in range(backlog):
            ids.append(run.apply_async((argv,), queue=queue, producer=producer).id)
            bar.advance()
    redis = app.backend.client
    span = s.execution_warmup + s.execution_seconds
    try:
        with bench.stack.celery(
            broker=bench.celery_broker, queue=queue, concurrency=s.workers * s.worker_concurrency
        ):
            with bench.progress(f"Celery ({label})", span) as bar:
                began = None
                deadline = time.monotonic() + 60
                while began is None:
                    if redis.exists(f"celery-task-meta-{ids[0]}"):
                        began = time.monotonic() - 0.5
                    elif time.monotonic() > deadline:
                        raise BenchmarkError(f"Celery did not start:\n{bench.stack.log_tail('celery')}")
                    time.sleep(0.05)
                while (elapsed := time.monotonic() - began) < span + 1:
                    bar.update(completed=min(span, elapsed))
                    time.sleep(0.25)
            redis.delete(queue)
        results = []
        for start in range(0, len(ids), 2_000):
            keys = [f"celery-task-meta-{i}" for i in ids[start : start + 2_000]]
            results += [r for r in redis.mget(keys) if r]
    finally:
        redis.delete(queue, f"_kombu.binding.{queue}")
        for start in range(0, len(ids), 2_000):
            redis.delete(*[f"celery-task-meta-{i}" for i in ids[start : start + 2_000]])
    import json

    times = [json.loads(r)["result"] for r in results]
    times = [t for t in times if isinstance(t, list)]
    if not times:
        raise BenchmarkError(f"no Celery job finished:\n{bench.stack.log_tail('celery')}")
    if any(t[2] != 0 for t in times):
        raise BenchmarkError(f"Celery jobs failed ({label}); is the command line right? {argv}")
    first = min(t[0] for t in times) + s.execution_warmup
    count = sum(1 for t in times if first <= t[1] < first + s.execution_seconds)
    return count / s.execution_seconds


def _bwrap_argv() -> list[str] | None:
    import shutil

    # the product's own command line (its seccomp filter aside: Celery passes no descriptor)
    from executions.engine.sandbox import SandboxConfig, _bwrap_base_args, _bwrap_seal_args

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    return [
        *_bwrap_base_args(bwrap, SandboxConfig.from_settings()),
        "--bind",
        "{workdir}",
        "{workdir}",
        *_bwrap_seal_args(bwrap, None),
        "--chdir",
        "{workdir}",
        "--",
        "/bin/bash",
        "-c",
        TRIVIAL_SCRIPT,
    ]


def scenario_executions(bench: Bench) -> None:
    s = bench.sizes
    modes = [("never", "no bwrap", ["/bin/bash", "-c", TRIVIAL_SCRIPT], 330)]
    bwrap_argv = _bwrap_argv()
    if bwrap_argv is not None:
        modes.append(("always", "bwrap", bwrap_argv, 160))
    else:
        bench.report.skipped.append("executions with bwrap: bubblewrap is not installed")
    for bwrap, label, argv, goal in modes:
        rate, isolation = _taskforge_rate(bench, bwrap, label)
        celery_rate = _celery_rate(bench, argv, label)
        bench.report.add(
            Figure(
                "executions",
                f"trivial bash executions/s ({label})",
                rate,
                "/s",
                baseline=celery_rate,
                baseline_name="Celery + Redis",
                target=f"≥ 100/s [≥ {goal}/s; ≥ 1.1x Celery]",
                ok=rate >= 100,
                note=f"{s.workers} workers x {s.worker_concurrency}, isolation {isolation}, "
                f"{s.execution_seconds:g} s, full history",
            )
        )


# --- claims -------------------------------------------------------------------------------
def check_no_double_claims(claimed: list[tuple[str, int]], task_ids: list[uuid.UUID]) -> dict[str, int]:
    """Fail loudly unless every task was claimed exactly once (client side and in the
    database: one ``task.claimed`` event per task, every task completed)."""
    from events.models import Event, EventType
    from tasks.models import Status, Task

    doubles = [tid for tid, n in Counter(tid for tid, _agent in claimed).items() if n > 1]
    if doubles:
        raise BenchmarkError(f"{len(doubles)} tasks were claimed twice, e.g. {doubles[:5]}")
    events = (
        Event.objects.filter(task_id__in=task_ids, type=EventType.TASK_CLAIMED)
        .values("task_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    if events.exists():
        raise BenchmarkError(f"the database shows tasks claimed twice: {list(events[:5])}")
    completed = Task.objects.filter(pk__in=task_ids, status=Status.COMPLETED).count()
    if completed != len(task_ids) or len(claimed) != len(task_ids):
        raise BenchmarkError(
            f"{len(task_ids)} tasks, {len(claimed)} claims, {completed} completed: some were lost"
        )
    return {"tasks": len(task_ids), "claims": len(claimed), "doubles": 0}


def scenario_claims(bench: Bench) -> None:
    import threading

    from accounts.models import Membership, Role
    from tasks.models import Task

    s = bench.sizes
    owner, *agents = bench.fresh_accounts(s.agents + 1, "claims")
    Membership.objects.bulk_create(
        [Membership(project_id=owner.project_id, user_id=a.user_id, role=Role.MEMBER) for a in agents]
    )
    now = timezone.now()
    tasks = Task.objects.bulk_create(
        [
            Task(
                project_id=owner.project_id,
                name=f"work item {i}",
                priority=i % 11,
                created_by_id=owner.user_id,
                created_at=now - timedelta(microseconds=i),
            )
            for i in range(s.claim_tasks)
        ]
    )
    settle(Task._meta.db_table)
    task_ids = [t.pk for t in tasks]
    claimed: list[tuple[str, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    body = {"project": str(owner.project_id)}

    with bench.progress(f"claims: {len(agents)} agents, {s.claim_tasks:,} tasks", s.claim_tasks) as bar:

        def agent(index: int) -> None:
            client = bench.client()
            headers = agents[index].headers
            try:
                while True:
                    reply = client.send("POST", "/api/v1/tasks/claim-next", headers, body)
                    if reply.status == 204:
                        return
                    if reply.status != 200:
                        raise BenchmarkError(f"claim-next: {reply.status} {reply.body[:300]!r}")
                    task_id = reply.json()["id"]
                    with lock:
                        claimed.append((task_id, index))
                    done = client.send(
                        "POST", f"/api/v1/tasks/{task_id}/complete", headers, {"result": {"agent": index}}
                    )
                    if done.status != 200:
                        raise BenchmarkError(f"complete: {done.status} {done.body[:300]!r}")
                    bar.advance()
            except Exception as exc:
                with lock:
                    errors.append(f"agent {index}: {exc}")
            finally:
                client.close()

        threads = [threading.Thread(target=agent, args=(i,)) for i in range(len(agents))]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
    if errors:
        raise BenchmarkError(f"{len(errors)} agents failed, first: {errors[0]}")
    check = check_no_double_claims(claimed, task_ids)
    bench.report.details["claims"] = {**check, "seconds": round(elapsed, 2)}
    rate = len(claimed) / elapsed
    bench.report.add(
        Figure(
            "claims",
            f"claim-next → complete, {len(agents)} agents",
            rate,
            "/s",
            target="0 doubles [≥ 1,000 claims/s]",
            ok=True,
            note=f"{len(claimed):,} claims, 0 doubles, {elapsed:.1f} s",
        )
    )
    bench.report.add(Figure("claims", "tasks claimed twice", 0, "", better="lower", target="0", ok=True))


# --- memory -------------------------------------------------------------------------------
def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchmarkError(f"{field} not found for pid {pid}")  # pragma: no cover


@contextlib.contextmanager
def _peak_rss(pid: int) -> Iterator[dict[str, int]]:
    """The process's peak RSS growth (KiB) while the block runs: the kernel's high-water mark,
    reset first (clear_refs 5), and a 20 ms sampler as a fallback where the reset is refused."""
    import threading

    out = {"before": _status_kib(pid, "VmRSS"), "peak": 0}
    reset = False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")
        reset = True
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, BenchmarkError):
                out["peak"] = max(out["peak"], _status_kib(pid, "VmRSS"))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        stop.set()
        sampler.join()
        if reset:
            out["peak"] = max(out["peak"], _status_kib(pid, "VmHWM"))
        out["growth"] = max(0, out["peak"] - out["before"])


def scenario_memory(bench: Bench) -> None:
    from executions.models import Execution, OutputChunk

    s = bench.sizes
    account = bench.fresh_accounts(1, "memory")[0]
    script = f"head -c {s.memory_bytes} /dev/zero | tr '\\0' x\n"
    task_id = _create_task(bench, account, script_type="bash", script_content=script, timeout_seconds=600)
    with bench.stack.workers(1, concurrency=1, bwrap="auto") as pids:
        client = bench.client()
        with bench.progress(f"memory: a script writing {s.memory_bytes / 1024**2:,.0f} MiB", 1) as bar:
            with _peak_rss(pids[0]) as rss:
                began = time.perf_counter()
                reply = client.send("POST", f"/api/v1/tasks/{task_id}/execute?wait=60", account.headers, {})
                took = time.perf_counter() - began
            bar.advance()
        client.close()
    if reply.status != 200 or reply.json()["status"] != "succeeded":
        raise BenchmarkError(f"the output flood did not succeed: {reply.status} {reply.body[:300]!r}")
    execution = Execution.objects.get(pk=reply.json()["id"])
    stored = OutputChunk.objects.filter(execution=execution).aggregate(n=Sum(Length("data")), c=Count("id"))
    growth = rss["growth"] / 1024
    bench.report.details["memory"] = {
        "script_bytes": s.memory_bytes,
        "rss_before_kib": rss["before"],
        "rss_peak_kib": rss["peak"],
        "stored_chars": stored["n"],
        "chunks": stored["c"],
        "stdout_truncated": execution.stdout_truncated,
        "seconds": round(took, 2),
    }
    bench.report.add(
        Figure(
            "memory",
            f"worker peak RSS growth, {s.memory_bytes / 1024**2:,.0f} MiB of output",
            growth,
            "MiB",
            better="lower",
            target="[≤ 50 MiB]",
            ok=growth <= 50,
            note=f"{took:.1f} s",
        )
    )
    bench.report.add(
        Figure(
            "memory",
            "stored output",
            (stored["n"] or 0) / 1024**2,
            "MiB",
            better="lower",
            note=f"{stored['c']} chunks, stdout_truncated={execution.stdout_truncated}",
        )
    )


RUNNERS: dict[str, Callable[[Bench], None]] = {
    "list": scenario_list,
    "throughput": scenario_throughput,
    "latency": scenario_latency,
    "executions": scenario_executions,
    "claims": scenario_claims,
    "memory": scenario_memory,
}
