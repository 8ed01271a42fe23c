from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from accounts.models import Project, User
from templates_app import services
from templates_app.models import Template

DEPLOY_PARAMETERS: list[dict[str, Any]] = [
    {"name": "service", "type": "string", "required": True, "pattern": "[a-z][a-z0-9-]*", "max_length": 20},
    {"name": "env", "type": "choice", "choices": ["staging", "production"], "default": "staging"},
    {"name": "replicas", "type": "integer", "min": 1, "max": 20, "default": 2},
    {"name": "ratio", "type": "number", "min": 0, "max": 1},
    {"name": "dry_run", "type": "boolean", "default": False},
    {"name": "token", "type": "string", "secret": True},
]


@pytest.fixture
def make_template(user: User, project: Project) -> Callable[..., Template]:
    """``make_template(slug="deploy", **fields)`` -> a template in alice's project."""

    def make(slug: str = "deploy", *, in_project: Project | None = None, **fields: Any) -> Template:
        fields.setdefault("name", "Deploy")
        fields.setdefault("name_pattern", "Deploy {{ service }} to {{ env }}")
        fields.setdefault("script_type", "bash")
        fields.setdefault("script", 'service={{ service }}\necho "deploying $service x"{{ replicas }}')
        parameters = fields.pop("parameters", DEPLOY_PARAMETERS)
        return services.template_create(
            project=in_project or project, actor=user, slug=slug, parameters=parameters, **fields
        )

    return make


@pytest.fixture
def inline_worker(db: Any) -> Any:
    """A worker that runs queued executions in the test's own thread (``run_pending()``)."""
    from executions.engine.sandbox import SandboxConfig
    from executions.engine.worker import WorkerProcess

    return WorkerProcess(concurrency=1, sandbox=SandboxConfig.from_settings())
