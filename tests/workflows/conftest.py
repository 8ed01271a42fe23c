"""Workflow fixtures: small templates and a way to end a node's run as a worker would."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import Project, User
from executions.engine import queue
from executions.models import Execution, ExecutionStatus
from templates_app.models import Template
from templates_app.services import template_create
from workflows import services
from workflows.models import WorkflowRun, WorkflowTemplate

# A python step: prints its message, publishes {"message": ..., "length": ...}.
STEP_SCRIPT = """import json, os
message = {{ message }}
print(message)
with open(os.environ["TASKFORGE_OUTPUTS_FILE"], "w") as f:
    json.dump({"message": message, "length": len(message)}, f)
"""


@pytest.fixture
def step(user: User, project: Project) -> Template:
    return template_create(
        project=project,
        actor=user,
        slug="step",
        name="Step",
        name_pattern="step {{ message }}",
        script_type="python",
        script=STEP_SCRIPT,
        parameters=[{"name": "message", "type": "string", "default": "hi"}],
    )


@pytest.fixture
def counter(user: User, project: Project) -> Template:
    """Takes an integer."""
    return template_create(
        project=project,
        actor=user,
        slug="count",
        name="Count",
        name_pattern="count {{ n }}",
        script_type="bash",
        script="echo {{ n }}",
        parameters=[{"name": "n", "type": "integer", "required": True}],
    )


def diamond(join: str = "all", **extra: Any) -> dict[str, Any]:
    """A -> B, A -> C, B and C -> D; D receives A's message."""
    return {
        "nodes": [
            {"key": "a", "template": "step", "parameters": {"message": "{{ params.greeting }}"}},
            {"key": "b", "template": "step", "parameters": {"message": "b"}},
            {"key": "c", "template": "step", "parameters": {"message": "c"}},
            {
                "key": "d",
                "template": "step",
                "parameters": {"message": "{{ nodes.a.outputs.message }}!"},
                "join": join,
            },
        ],
        "edges": [
            {"from": "a", "to": "b"},
            {"from": "a", "to": "c"},
            {"from": "b", "to": "d"},
            {"from": "c", "to": "d"},
        ],
        **extra,
    }


@pytest.fixture
def make_workflow(user: User, project: Project, step: Template) -> Callable[..., WorkflowTemplate]:
    def make(**fields: Any) -> WorkflowTemplate:
        fields.setdefault("slug", "diamond")
        fields.setdefault("name", "Diamond")
        fields.setdefault("parameters", [{"name": "greeting", "type": "string", "default": "hello"}])
        if "nodes" not in fields:
            fields.update(diamond())
        return services.workflow_template_create(project=project, actor=user, **fields)

    return make


def end_node(run: WorkflowRun, key: str, status: str = "succeeded", outputs: dict | None = None) -> Execution:
    """End the queued run of node ``key`` as a worker would (claimed, then finished)."""
    node = run.nodes.get(key=key)
    assert node.task is not None, f"node {key} has no task (status {node.status})"
    execution = node.task.executions.order_by("-number").first()
    token = uuid.uuid4()
    Execution.objects.filter(pk=execution.pk).update(
        status=ExecutionStatus.RUNNING, claim_token=token, started_at=timezone.now()
    )
    execution.refresh_from_db()
    finished = queue.execution_finish(
        execution=execution,
        claim_token=token,
        status=status,
        exit_code=0 if status == "succeeded" else 1,
        error="" if status == "succeeded" else "nonzero_exit",
        outputs=outputs if outputs is not None else {"message": key, "length": len(key)},
    )
    assert finished is not None
    return finished


def statuses(run: WorkflowRun) -> dict[str, str]:
    run.refresh_from_db()
    return {node.key: node.status for node in run.nodes.order_by("position")}
