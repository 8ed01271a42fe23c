"""Send webhooks until stopped: fan new events out to subscriptions, deliver what is due."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from webhooks.dispatcher import deliver_due, fan_out


class Command(BaseCommand):
    help = (
        "Deliver webhooks: read new events from the outbox, make deliveries, send the due ones "
        "(retries included). Sleeps when idle; stops cleanly on SIGTERM or Ctrl-C. Run any number."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="One pass, then exit.")
        parser.add_argument("--batch", type=int, default=500, help="Events read per pass (500).")
        parser.add_argument("--limit", type=int, default=50, help="Deliveries sent per pass (50).")
        parser.add_argument("--idle-sleep", type=float, default=1.0, help="Seconds to sleep when idle (1).")

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, lambda *_: stop.set())
        totals = {"events": 0, "sent": 0}
        try:
            while not stop.is_set():
                events = fan_out(batch=options["batch"])
                sent = deliver_due(limit=options["limit"])
                totals["events"] += events
                totals["sent"] += sent
                if events or sent:
                    self.stdout.write(
                        f"read {events} event(s), sent {sent} deliver{'y' if sent == 1 else 'ies'}"
                    )
                if options["once"]:
                    break
                close_old_connections()  # a long-running loop: drop broken or expired connections
                if events < options["batch"] and sent < options["limit"]:
                    stop.wait(options["idle_sleep"])
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.stdout.write(f"Stopped: {totals['events']} event(s) read, {totals['sent']} delivery attempt(s).")
