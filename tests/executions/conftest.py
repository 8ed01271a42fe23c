from __future__ import annotations

from typing import Any

import pytest

from accounts.models import Project
from executions.engine.sandbox import SandboxConfig
from executions.engine.worker import WorkerProcess
from tasks.models import Task


@pytest.fixture
def make_task(project: Project):
    """``make_task(script, script_type="bash", **fields)`` -> a Task in alice's project."""

    def make(
        script: str = "echo hello",
        script_type: str = "bash",
        *,
        in_project: Project | None = None,
        **fields: Any,
    ) -> Task:
        return Task.objects.create(
            project=in_project or project,
            name=fields.pop("name", "job"),
            script_type=script_type,
            script_content=script,
            **fields,
        )

    return make


@pytest.fixture
def inline_worker(db: Any) -> WorkerProcess:
    """A worker that runs queued executions in the test's own thread (``run_pending()``)."""
    return WorkerProcess(concurrency=1, sandbox=SandboxConfig.from_settings())
