from __future__ import annotations

import os
import secrets
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from accounts import services
from accounts.models import User


class Command(BaseCommand):
    help = (
        "First-run set-up: create the operator account (superuser) and an API key, printing "
        "both once. Does nothing when the operator exists already."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default=os.environ.get("TASKFORGE_OPERATOR", "operator"))

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"]
        if User.objects.filter(username=username).exists():
            self.stdout.write(
                f"Operator {username!r} exists already (its password and key were printed on first run;"
                f" make a new key with: python manage.py createapikey --user {username})."
            )
            return
        password = os.environ.get("TASKFORGE_OPERATOR_PASSWORD") or secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username, f"{username}@localhost", password)
        base = os.environ.get("TASKFORGE_BASE_URL", "http://127.0.0.1:8000")
        _, raw = services.api_key_create(owner=user, name="bootstrap", scopes=["*"])
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "=" * 72,
                    "  Taskforge first run: store these now, they are not shown again.",
                    f"  Operator (admin at /admin/):  {username} / {password}",
                    f"  API key (all scopes):         {raw}",
                    f'  Try:  curl -H "Authorization: Api-Key {raw}" {base}/api/v1/me',
                    "=" * 72,
                    "",
                ]
            )
        )
