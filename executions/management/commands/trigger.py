from __future__ import annotations

import sys
import time
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from config.errors import Conflict
from executions import services
from executions.models import Execution, OutputChunk, Trigger
from tasks.models import Task


class Command(BaseCommand):
    help = (
        "Queue an execution of a task (by id). With --wait, follow its output and exit with the "
        "script's exit code (for CI)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("task", help="task id")
        parser.add_argument(
            "--param", action="append", default=[], metavar="K=V", help="parameter (repeatable)"
        )
        parser.add_argument("--timeout", type=int, default=None, help="timeout for this run (seconds)")
        parser.add_argument(
            "--wait", action="store_true", help="follow the output; exit with the script's code"
        )
        parser.add_argument("--user", default=None, help="record this username as the trigger")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            task = Task.objects.get(pk=options["task"])
        except (Task.DoesNotExist, ValidationError):
            raise CommandError(f"No task with id {options['task']!r}.") from None
        params = {}
        for item in options["param"]:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CommandError(f"--param takes K=V, got {item!r}")
            params[key] = value
        actor = User.objects.filter(username=options["user"]).first() if options["user"] else None
        try:
            execution = services.execution_enqueue(
                task=task,
                actor=actor,
                trigger=Trigger.CLI,
                timeout_seconds=options["timeout"],
                parameters=params,
            )
        except Conflict as exc:
            raise CommandError(str(exc.detail)) from None
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stderr.write(f"queued execution {execution.pk} (task {task.pk} #{execution.number})")
        if not options["wait"]:
            self.stdout.write(str(execution.pk))
            return
        sys.exit(self.follow(execution))

    def follow(self, execution: Execution) -> int:
        offset = 0
        while True:
            execution.refresh_from_db()
            chunks = list(OutputChunk.objects.filter(execution=execution, seq__gt=offset).order_by("seq"))
            for chunk in chunks:
                (self.stdout if chunk.stream == "stdout" else self.stderr).write(chunk.data, ending="")
                offset = chunk.seq
            if execution.is_final and not chunks:
                self.stderr.write(
                    f"execution {execution.pk}: {execution.status} (exit {execution.exit_code})"
                )
                if execution.exit_code is not None:
                    return execution.exit_code
                return 0 if execution.status == "succeeded" else 1
            if not chunks:
                time.sleep(0.2)
