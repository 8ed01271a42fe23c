from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from executions.engine.jobs import SCHEDULE_TICK, WEBHOOK_DELIVERY
from executions.engine.worker import WorkerProcess


class Command(BaseCommand):
    help = "Run a worker: claim queued executions and run their scripts in the sandbox."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=2, help="scripts run at once (default 2)")
        parser.add_argument(
            "--queue-poll",
            type=float,
            default=1.0,
            help="seconds between queue polls (PostgreSQL also wakes on NOTIFY)",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=30.0,
            help="seconds running scripts get to finish on SIGTERM before they are killed",
        )
        parser.add_argument("--name", default=None, help="worker name (default host:pid)")
        parser.add_argument(
            "--no-webhooks", action="store_true", help="do not deliver webhooks from this worker"
        )
        parser.add_argument(
            "--no-schedules", action="store_true", help="do not fire schedules from this worker"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        worker = WorkerProcess(
            concurrency=options["concurrency"],
            poll_interval=options["queue_poll"],
            grace=options["grace"],
            name=options["name"],
            skip_jobs=[
                *([WEBHOOK_DELIVERY] if options["no_webhooks"] else []),
                *([SCHEDULE_TICK] if options["no_schedules"] else []),
            ],
            on_event=lambda message: self.stdout.write(message),
        )
        worker.install_signal_handlers()
        worker.run()
