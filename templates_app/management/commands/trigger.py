from __future__ import annotations

import sys
import time
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from core.errors import Conflict
from executions import services
from executions.models import Execution, OutputChunk, Trigger
from tasks.models import Task
from templates_app import parameters
from templates_app.models import Template
from templates_app.services import template_lookup, template_trigger


def _errors_text(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
    return "; ".join(exc.messages)


class Command(BaseCommand):
    help = (
        "Queue an execution of a task (by id) or trigger a template (by slug, or id). --param K=V "
        "values are parsed by the parameter's type: booleans true/false, integers and decimal "
        "numbers as literals. With --wait, follow the output and exit with the script's exit code "
        "(for CI)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("target", help="task id, or template slug (or template id)")
        parser.add_argument(
            "--param", action="append", default=[], metavar="K=V", help="parameter (repeatable)"
        )
        parser.add_argument("--project", default=None, help="project id, when the slug is in several")
        parser.add_argument("--timeout", type=int, default=None, help="timeout for this run (seconds)")
        parser.add_argument(
            "--wait", action="store_true", help="follow the output; exit with the script's code"
        )
        parser.add_argument("--user", default=None, help="record this username as the trigger")

    def _target(self, ref: str, project: str | None) -> Task | Template:
        try:
            return Task.objects.get(pk=ref)
        except (Task.DoesNotExist, ValidationError, ValueError):
            pass
        try:
            return template_lookup(Template.objects.all(), ref, project)
        except Template.MultipleObjectsReturned:
            raise CommandError(f"Several projects have a template {ref!r}; add --project <id>.") from None
        except (Template.DoesNotExist, ValidationError, ValueError):
            raise CommandError(f"No task or template {ref!r}.") from None

    def handle(self, *args: Any, **options: Any) -> None:
        target = self._target(options["target"], options["project"])
        raw = {}
        for item in options["param"]:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CommandError(f"--param takes K=V, got {item!r}")
            raw[key] = value
        spec = target.parameter_spec if isinstance(target, Task) else target.spec()
        params, errors = parameters.coerce_strings(spec, raw)
        if errors:
            raise CommandError("; ".join(f"{field}: {message}" for field, _code, message in errors))
        actor = User.objects.filter(username=options["user"]).first() if options["user"] else None
        try:
            if isinstance(target, Template):
                task, execution = template_trigger(
                    template=target,
                    actor=actor,
                    parameters=params,
                    trigger=Trigger.CLI,
                    timeout_seconds=options["timeout"],
                )
                assert execution is not None
            else:
                task = target
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
            raise CommandError(_errors_text(exc)) from None
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
                self.pause()

    def pause(self) -> None:
        """Between two looks at a followed execution (its own method: the tests run the
        queued work there instead of sleeping)."""
        time.sleep(0.2)
