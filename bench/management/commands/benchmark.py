"""``manage.py benchmark [scenario ...]``: measure Taskforge through the real stack (SPEC §9).

Creates its own database beside the configured one (``<name>_bench``), migrates it, starts
gunicorn (``config/gunicorn.conf.py``) and ``runworker`` processes against it, runs the chosen
scenarios, prints a table, writes a JSON file, stops every process and drops the database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from bench.report import Report, machine, print_table
from bench.scenarios import QUICK, RUNNERS, SCENARIOS, Bench, Sizes
from bench.stack import BenchDatabase, BenchmarkError, Stack

# Size options: --<name> overrides Sizes.<name>.
SIZE_HELP = {
    "users": "users (each with a project and a key) for the list",
    "tasks": "tasks seeded for the list",
    "list_requests": "measured list requests per concurrency level",
    "list_concurrency": "concurrency of the loaded list and throughput runs",
    "deep_page": "the deep page compared with page 1",
    "page_samples": "samples of each of the first/deep pages",
    "throughput_seconds": "seconds per throughput round",
    "throughput_rounds": "rounds of API vs bare view",
    "triggers": "triggers per latency run",
    "execution_seconds": "measured seconds of each executions run",
    "execution_warmup": "seconds before the executions window starts",
    "execution_tasks": "tasks the executions backlog is spread over",
    "workers": "runworker processes for the executions scenario",
    "worker_concurrency": "--concurrency of each of those workers",
    "agents": "concurrent agents in the claims scenario",
    "claim_tasks": "tasks the agents race for",
    "memory_bytes": "bytes of output the memory scenario's script writes",
}


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class _Bar:
    def __init__(self, progress: Any, task: Any) -> None:
        self.progress, self.task = progress, task

    def advance(self, amount: float = 1) -> None:
        self.progress.advance(self.task, amount)

    def update(self, **kwargs: Any) -> None:
        self.progress.update(self.task, **kwargs)


class Command(BaseCommand):
    help = (
        "Benchmark Taskforge through gunicorn and real workers on a database of its own: "
        f"scenarios {', '.join(SCENARIOS)} or all. Prints a table and writes JSON."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "scenarios", nargs="*", metavar="scenario", help=f"{', '.join(SCENARIOS)} or all (default all)"
        )
        parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
        parser.add_argument("--output", help="JSON file (default var/benchmarks/benchmark-<date>.json)")
        parser.add_argument(
            "--keep-database",
            action="store_true",
            help="keep the benchmark database afterwards (and reuse it if it exists)",
        )
        parser.add_argument("--database-name", help="benchmark database (default <configured>_bench)")
        parser.add_argument(
            "--in-place",
            action="store_true",
            help="use the configured database, which must be a test database (the test suite only)",
        )
        parser.add_argument(
            "--celery-broker", help="Redis URL for the Celery baseline (default REDIS_URL; skipped without)"
        )
        parser.add_argument("--no-celery", action="store_true", help="skip the Celery baseline")
        for field in fields(Sizes):
            kind = float if field.type in ("float", float) else int
            parser.add_argument(
                f"--{field.name.replace('_', '-')}", type=kind, default=None, help=SIZE_HELP.get(field.name)
            )

    def handle(self, *args: Any, **options: Any) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        names = options["scenarios"] or ["all"]
        unknown = sorted(set(names) - {*SCENARIOS, "all"})
        if unknown:
            raise CommandError(
                f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}, all"
            )
        chosen = list(SCENARIOS) if "all" in names else list(dict.fromkeys(names))
        sizes = QUICK if options["quick"] else Sizes()
        sizes = replace(
            sizes, **{f.name: options[f.name] for f in fields(Sizes) if options[f.name] is not None}
        )
        if options["in_place"] and not settings.TESTING:
            raise CommandError("--in-place is for the test suite only (TASKFORGE_TESTING).")
        console = Console(file=self.stdout._out, width=140)
        report = Report(quick=options["quick"], parameters={"scenarios": chosen, **sizes.__dict__})
        output = Path(
            options["output"]
            or Path(settings.BASE_DIR)
            / "var"
            / "benchmarks"
            / f"benchmark-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
        )
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )

        @contextlib.contextmanager
        def bar(description: str, total: float) -> Iterator[_Bar]:
            task = progress.add_task(description, total=total)
            try:
                yield _Bar(progress, task)
            finally:
                progress.update(task, completed=total)

        database = BenchDatabase(
            in_place=options["in_place"], keep=options["keep_database"], name=options["database_name"]
        )
        console.print(f"benchmark database: {database.name} ({database.vendor})")
        previous = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            # SIGTERM unwinds like Ctrl-C, so every process started is stopped and the database dropped.
            signal.signal(signal.SIGTERM, _interrupt)
        try:
            with database, progress:
                report.machine = machine()
                stack = Stack(database)
                bench = Bench(
                    stack=stack,
                    report=report,
                    sizes=sizes,
                    progress=bar,
                    say=console.print,
                    celery_broker=None
                    if options["no_celery"]
                    else options["celery_broker"] or os.environ.get("REDIS_URL") or None,
                )
                try:
                    with stack.gunicorn() as base:
                        bench.base = base
                        for name in chosen:
                            if name in ("list", "throughput") and database.vendor != "postgresql":
                                report.skipped.append(
                                    f"{name}: the list figures are PostgreSQL-only (ran with a small "
                                    "SQLite seed as a smoke test)"
                                )
                            RUNNERS[name](bench)
                finally:
                    stack.close()
        except BenchmarkError as exc:
            report.details["error"] = str(exc)
            report.write(output)
            raise CommandError(f"benchmark failed: {exc}") from exc
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, previous)
        report.write(output)
        print_table(report, console)
        console.print(f"JSON: {output}")
