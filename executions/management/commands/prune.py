from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from executions.services import prune


class Command(BaseCommand):
    help = "Delete finished executions (and their output) and events older than N days."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, required=True, help="keep the last N days")
        parser.add_argument("--dry-run", action="store_true", help="count only, delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            counts = prune(older_than_days=options["days"], dry_run=options["dry_run"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        verb = "Would delete" if options["dry_run"] else "Deleted"
        self.stdout.write(
            f"{verb} {counts['executions']} executions and {counts['events']} events "
            f"older than {options['days']} days."
        )
