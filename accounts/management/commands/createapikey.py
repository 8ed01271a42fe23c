from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from accounts import services
from accounts.models import Project, User


class Command(BaseCommand):
    help = "Create an API key for a user and print it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="username of the owner")
        parser.add_argument("--name", default="cli", help="a label for the key")
        parser.add_argument(
            "--scopes", default="*", help="comma-separated, e.g. task:read,task:write (default *)"
        )
        parser.add_argument("--project", help="restrict the key to this project id")
        parser.add_argument("--expires", help="ISO 8601 expiry, e.g. 2027-01-01T00:00:00Z")
        parser.add_argument("--rate-limit", default="", help="per-key limit, e.g. 5000/15m")

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user named {options['user']!r}.")
        project = None
        if options["project"]:
            try:
                project = Project.objects.get(pk=options["project"])
            except (Project.DoesNotExist, ValidationError):
                raise CommandError(f"No project with id {options['project']!r}.") from None
        expires = None
        if options["expires"]:
            expires = parse_datetime(options["expires"])
            if expires is None:
                raise CommandError("--expires must be an ISO 8601 date-time.")
        try:
            api_key, raw = services.api_key_create(
                owner=user,
                name=options["name"],
                scopes=[s.strip() for s in options["scopes"].split(",") if s.strip()],
                project=project,
                expires_at=expires,
                rate_limit=options["rate_limit"],
            )
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            ) from None
        self.stderr.write(
            f"Created key {api_key.prefix} ({', '.join(api_key.scopes)}) for {user}. "
            "Store it now: it is not shown again."
        )
        self.stdout.write(raw)
