from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from tasks.routing import agents_housekeeping
from tasks.services import reap_expired_claims


class Command(BaseCommand):
    help = (
        "Return agent claims whose lease ran out to pending (recording a task.lease_expired event); "
        "mark silent registered agents offline (their claims return too) and re-check unroutable tasks."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        total = 0
        while True:  # in batches, so a large backlog never holds one long transaction
            reaped = reap_expired_claims()
            total += reaped
            if reaped == 0:
                break
        agents_housekeeping()
        self.stdout.write(f"Returned {total} expired claim{'s' if total != 1 else ''} to pending.")
