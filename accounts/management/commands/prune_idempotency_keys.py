from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from accounts.idempotency import prune


class Command(BaseCommand):
    help = "Delete expired Idempotency-Key records (older than TASKFORGE_IDEMPOTENCY_TTL_SECONDS)."

    def handle(self, *args: Any, **options: Any) -> None:
        deleted = prune()
        self.stdout.write(f"Deleted {deleted} expired idempotency key(s).")
