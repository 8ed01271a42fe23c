"""Deciding what a workflow run does next, under the run's row lock.

Every decision happens inside one transaction that holds the run's row lock (``_lock``): a
node's end (``node_task_finished``, the hook tasks call in the transaction that writes a
workflow task's final status: a worker's finish, an agent's complete or fail, a person's
cancel), and start, resume and retry (``workflows.services``). So two branches ending together
are decided one after the other: a join sees both ends and starts once, never twice, never not.

Locks are taken task first, then run (a node's task is locked by whoever ends it before the hook
runs); nothing here locks an existing task while holding the run, so the order never inverts.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, User
from events.models import EventType
from events.services import event_record
from executions.models import Trigger
from tasks.models import Status, Task
from templates_app.services import template_trigger
from workflows import graph
from workflows.models import (
    ERROR_DETAIL_MAX,
    NODE_ACTIVE,
    NodeError,
    NodeStatus,
    RunStatus,
    WorkflowNode,
    WorkflowRun,
)

logger = logging.getLogger(__name__)

NODE_STATUS_FOR_TASK = {
    Status.COMPLETED: NodeStatus.SUCCEEDED,
    Status.FAILED: NodeStatus.FAILED,
    Status.CANCELLED: NodeStatus.CANCELLED,
}
# How a run's end is recorded.
RUN_EVENTS = {
    RunStatus.SUCCEEDED: EventType.WORKFLOW_SUCCEEDED,
    RunStatus.FAILED: EventType.WORKFLOW_FAILED,
    RunStatus.CANCELLED: EventType.WORKFLOW_CANCELLED,
}


def lock(run_id: Any) -> WorkflowRun:
    """The run's row, locked for the rest of the transaction (every decision takes it)."""
    return WorkflowRun.objects.select_for_update().get(pk=run_id)


def run_event(
    run: WorkflowRun, type_: str, *, actor: User | None = None, api_key: ApiKey | None = None, **data: Any
) -> None:
    event_record(
        type=type_,
        project=run.project_id,
        task=None,
        actor=actor,
        api_key=api_key,
        data={"workflow_id": str(run.pk), "name": run.name, "status": run.status, **data},
    )


def _node_event(run: WorkflowRun, node: WorkflowNode, type_: str, **data: Any) -> None:
    event_record(
        type=type_,
        project=run.project_id,
        task=node.task_id,
        actor=None,
        data={"workflow_id": str(run.pk), "node": node.key, "status": node.status, **data},
    )


# --- A node's task ended ----------------------------------------------------------------------------
def node_task_finished(
    *, task: Task, outputs: dict[str, Any], actor: User | None, api_key: ApiKey | None
) -> None:
    """Record the end of the node whose task is ``task`` and decide what follows (tasks.hooks)."""
    found = (
        WorkflowNode.objects.filter(task_id=task.pk, status__in=NODE_ACTIVE)
        .values_list("pk", "run_id")
        .first()
    )
    if found is None:  # not a node's current task any more (a retried node, a task run again)
        return
    node_id, run_id = found
    run = lock(run_id)
    node = WorkflowNode.objects.get(pk=node_id)  # read under the run's lock: its status is current
    if node.status not in NODE_ACTIVE or node.task_id != task.pk:
        return
    status = NODE_STATUS_FOR_TASK[Status(task.status)]
    error = {NodeStatus.FAILED: NodeError.TASK_FAILED, NodeStatus.CANCELLED: NodeError.TASK_CANCELLED}.get(
        status, ""
    )
    detail = _task_error(task) if error else ""
    node_end(run, node, status, outputs=outputs, error=error, detail=detail)
    advance(run)


def _task_error(task: Task) -> str:
    result = task.result if isinstance(task.result, dict) else {}
    return str(result.get("error") or "")[:ERROR_DETAIL_MAX]


def node_end(
    run: WorkflowRun,
    node: WorkflowNode,
    status: str,
    *,
    outputs: dict[str, Any] | None = None,
    error: str = "",
    detail: str = "",
) -> None:
    """``node`` ended with ``status``; a failure no ``failure``/``always`` edge handles fails the run."""
    node.status, node.error, node.error_detail = status, error, detail[:ERROR_DETAIL_MAX]
    node.outputs = dict(outputs or {})
    node.finished_at = timezone.now()
    node.save(update_fields=["status", "error", "error_detail", "outputs", "finished_at"])
    _node_event(
        run, node, EventType.WORKFLOW_NODE_FINISHED, error=error or None, output_keys=sorted(node.outputs)
    )
    edges = graph.edge_list(run.edges)
    unhandled = status in (NodeStatus.FAILED, NodeStatus.CANCELLED) and not graph.handles_failure(
        node.key, edges
    )
    if unhandled and run.status in (RunStatus.RUNNING, RunStatus.PAUSED):
        run_end(
            run,
            RunStatus.FAILED,
            error=f'Node "{node.key}" {status}, and no failure or always edge leaves it.',
        )


def run_end(
    run: WorkflowRun,
    status: str,
    *,
    error: str = "",
    actor: User | None = None,
    api_key: ApiKey | None = None,
) -> None:
    now = timezone.now()
    run.status, run.error, run.finished_at, run.updated_at = status, error[:300], now, now
    run.save(update_fields=["status", "error", "finished_at", "updated_at"])
    run_event(run, RUN_EVENTS[RunStatus(status)], actor=actor, api_key=api_key, error=error or None)


# --- Deciding ----------------------------------------------------------------------------------------
def advance(run: WorkflowRun) -> None:
    """Skip what can no longer run, start what may (unless the run is paused), and end the run
    when nothing is left; repeated until nothing changes. The caller holds the run's lock."""
    if run.status not in (RunStatus.RUNNING, RunStatus.PAUSED):
        return
    nodes = {node.key: node for node in run.nodes.select_related("template").order_by("position")}
    incoming: dict[str, list[tuple[str, str]]] = {key: [] for key in nodes}
    for source, target, on in graph.edge_list(run.edges):
        incoming[target].append((source, on))
    changed = True
    while changed and run.status in (RunStatus.RUNNING, RunStatus.PAUSED):
        changed = False
        for node in nodes.values():
            if node.status != NodeStatus.WAITING:
                continue
            states = [graph.edge_state(nodes[source].status, on) for source, on in incoming[node.key]]
            decision = graph.decide(node.join, states)
            if decision == graph.SKIP:
                node.status, node.finished_at = NodeStatus.SKIPPED, timezone.now()
                node.save(update_fields=["status", "finished_at"])
                _node_event(run, node, EventType.WORKFLOW_NODE_SKIPPED)
                changed = True
            elif decision == graph.RUN and run.status == RunStatus.RUNNING:
                _node_start(run, node, nodes)
                changed = True
            if run.status not in (RunStatus.RUNNING, RunStatus.PAUSED):
                break
    if run.status in (RunStatus.RUNNING, RunStatus.PAUSED) and all(
        node.status not in (NodeStatus.WAITING, *NODE_ACTIVE) for node in nodes.values()
    ):
        run_end(run, RunStatus.SUCCEEDED)


def _node_start(run: WorkflowRun, node: WorkflowNode, nodes: dict[str, WorkflowNode]) -> None:
    """Make ``node``'s task (and queue its run, if its template has a script); a binding that
    finds no value or does not fit fails the node, with a detail naming it."""
    if node.template is None:
        node_end(
            run, node, NodeStatus.FAILED, error=NodeError.TEMPLATE_MISSING, detail="Its template was deleted."
        )
        return
    published = {
        key: other.outputs
        for key, other in nodes.items()
        if other.status in (NodeStatus.SUCCEEDED, NodeStatus.FAILED)
    }
    values, problems = graph.resolve(node.bindings, run.parameters, published)
    if problems:
        node_end(run, node, NodeStatus.FAILED, error=NodeError.BINDING_UNRESOLVED, detail=" ".join(problems))
        return
    try:
        with transaction.atomic():
            task, execution = template_trigger(
                template=node.template,
                actor=run.created_by,
                parameters=values,
                execute=bool(node.template.script),
                trigger=Trigger.WORKFLOW,
                in_workflow=True,
            )
    except ValidationError as exc:
        detail = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
        node_end(run, node, NodeStatus.FAILED, error=NodeError.INVALID_BINDING, detail=detail)
        return
    node.task, node.status, node.attempts = task, NodeStatus.QUEUED, node.attempts + 1
    node.started_at, node.finished_at, node.error, node.error_detail = timezone.now(), None, "", ""
    node.save(
        update_fields=["task", "status", "attempts", "started_at", "finished_at", "error", "error_detail"]
    )
    _node_event(
        run,
        node,
        EventType.WORKFLOW_NODE_STARTED,
        task_id=str(task.pk),
        execution_id=str(execution.pk) if execution else None,
        attempt=node.attempts,
    )
