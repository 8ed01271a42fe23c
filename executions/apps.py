import contextlib
import os
from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created


class ExecutionsConfig(AppConfig):
    name = "executions"

    def ready(self) -> None:
        from core.health import COMPONENT_CHECKS, DEGRADED, HEALTHY

        def workers() -> str:
            from executions.models import Worker

            return HEALTHY if Worker.objects.alive().exists() else DEGRADED

        COMPONENT_CHECKS["workers"] = workers
        from executions.hooks import cancel_task_executions
        from tasks.hooks import register_task_cancel

        register_task_cancel(cancel_task_executions)
        from executions.engine.jobs import AGENT_HOUSEKEEPING, register_job
        from tasks.routing import agents_housekeeping

        register_job(AGENT_HOUSEKEEPING, 5.0, agents_housekeeping)
        connection_created.connect(protect_sqlite_files, dispatch_uid="taskforge-protect-sqlite")


def protect_sqlite_files(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Make the SQLite database (and its -wal/-shm files) readable by its owner only.

    Without bubblewrap, scripts run as an unprivileged user on the same filesystem; with the
    default umask the embedded database was world-readable, so a script could copy every key
    hash and webhook secret (found by tests/hardening/test_sandbox_escapes.py). SQLite gives
    -wal and -shm the main file's mode, so fixing the main file once covers them too.
    """
    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict.get("NAME") or "")
    if not name or name == ":memory:" or name.startswith("file:"):
        return
    if not os.path.exists(name):
        # SQLite creates the file lazily with the umask's mode: create it first, private.
        with contextlib.suppress(OSError):
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o600))
    for path in (name, f"{name}-wal", f"{name}-shm"):
        try:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
        except OSError:  # not there yet, or not ours: nothing to tighten
            continue
