"""``manage.py rotate_secrets_key``: re-encrypt every stored secret under the newest key."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core import crypto
from vault.rotation import rotate_all


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted column (project secrets, webhook signing secrets, queued runs' "
        "secret values, ...) under the first key of TASKFORGE_SECRETS_KEYS. Run it after putting a "
        "new key in front; drop the old key only once it has finished."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=500, help="Rows per transaction (default 500).")

    def handle(self, *args: Any, batch_size: int, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")

        def progress(label: str, done: int, total: int) -> None:
            self.stdout.write(f"{label}: {done}/{total}")

        try:
            counts = rotate_all(batch_size=batch_size, progress=progress)
        except crypto.Undecryptable as exc:
            raise CommandError(str(exc)) from exc
        total = sum(counts.values())
        self.stdout.write(
            self.style.SUCCESS(f"Re-encrypted {total} row(s) in {len(counts)} model(s) under the newest key.")
        )
