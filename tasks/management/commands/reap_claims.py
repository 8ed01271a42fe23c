from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from tasks.services import reap_expired_claims


class Command(BaseCommand):
    help = "Return agent claims whose lease ran out to pending (recording a task.lease_expired event)."

    def handle(self, *args: Any, **options: Any) -> None:
        total = 0
        while True:  # in batches, so a large backlog never holds one long transaction
            reaped = reap_expired_claims()
            total += reaped
            if reaped == 0:
                break
        self.stdout.write(f"Returned {total} expired claim{'s' if total != 1 else ''} to pending.")
