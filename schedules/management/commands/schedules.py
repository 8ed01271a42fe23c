"""List schedules with their next fires; ``--tick`` fires what is due once (as a worker would)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from schedules import services, timing
from schedules.models import Schedule


class Command(BaseCommand):
    help = (
        "List schedules: state, what they run, last outcome and their next fire times (local and "
        "UTC). --tick fires what is due once, as every runworker does each second."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", help="Only this project (id).")
        parser.add_argument("--next", type=int, default=3, help="Next fire times shown per schedule (3).")
        parser.add_argument("--tick", action="store_true", help="Fire what is due once, then list.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0 <= options["next"] <= services.PREVIEW_MAX:
            raise CommandError(f"--next must be between 0 and {services.PREVIEW_MAX}")
        if options["tick"]:
            self.stdout.write(f"Ticked: {services.schedules_tick()} due schedule(s) handled.")
        schedules = Schedule.objects.select_related("project", "template", "task").order_by(
            "project__name", "name"
        )
        if options["project"]:
            schedules = schedules.filter(project_id=options["project"])
        found = 0
        for schedule in schedules:
            found += 1
            self._show(schedule, options["next"])
        if not found:
            self.stdout.write("No schedules.")

    def _show(self, schedule: Schedule, count: int) -> None:
        runs = schedule.template or schedule.task or "(deleted)"
        state = "active" if schedule.enabled else f"PAUSED: {schedule.paused_reason}"
        last = (
            f"{schedule.last_outcome} at {schedule.last_scheduled_for:%Y-%m-%d %H:%M:%S}Z"
            if schedule.last_outcome
            else "never fired"
        )
        self.stdout.write(f"{schedule.pk}  {schedule.project.name} / {schedule.name}")
        self.stdout.write(f"    {schedule.when_text}; runs {runs}; {state}; last: {last}")
        if schedule.enabled and schedule.next_fire_at and count:
            fires = services.schedule_preview(
                when=services.schedule_when(schedule),
                count=count,
                after=schedule.next_fire_at - timing.timedelta(microseconds=1),
            )
            for fire in fires:
                self.stdout.write(
                    f"    next: {fire['local']}  ({fire['utc']}{', DST' if fire['dst'] else ''})"
                )
