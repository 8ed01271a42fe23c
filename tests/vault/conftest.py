from __future__ import annotations

import uuid
from typing import Any

import pytest

from accounts.models import Project, User
from vault import services
from vault.models import Secret


def a_value() -> str:
    """A value that appears nowhere else (so finding it anywhere is a leak)."""
    return f"tok-{uuid.uuid4().hex}"


@pytest.fixture
def make_secret(user: User, project: Project):
    """``make_secret(name, value=None, in_project=None)`` -> (Secret, its value)."""

    def make(
        name: str = "DEPLOY_TOKEN", value: str | None = None, *, in_project: Project | None = None, **kw: Any
    ):
        value = value or a_value()
        secret: Secret = services.secret_create(
            project=in_project or project, actor=user, name=name, value=value, **kw
        )
        return secret, value

    return make


@pytest.fixture
def inline_worker(db: Any) -> Any:
    """A worker that runs queued executions in the test's own thread (``run_pending()``)."""
    from executions.engine.sandbox import SandboxConfig
    from executions.engine.worker import WorkerProcess

    return WorkerProcess(concurrency=1, sandbox=SandboxConfig.from_settings())
