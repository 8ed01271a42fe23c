from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import services
from accounts.models import ApiKey


class Command(BaseCommand):
    help = "Revoke an API key by its prefix (the part before the dot) or the full key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="key prefix or full key")

    def handle(self, *args: Any, **options: Any) -> None:
        prefix = options["key"].partition(".")[0]
        api_key = ApiKey.objects.filter(prefix=prefix).first()
        if api_key is None:
            raise CommandError(f"No API key with prefix {prefix!r}.")
        services.api_key_revoke(api_key=api_key)
        self.stdout.write(f"Revoked key {prefix} ({api_key.name}) of {api_key.owner}.")
