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

from django.conf import settings
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
    if node.parent_id is not None:  # one item of a fan-out: its node goes on, or ends
        _item_end(node, status, outputs=outputs, error=error, detail=detail)
        fan_out_fill(run, WorkflowNode.objects.select_related("template").get(pk=node.parent_id))
    else:
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
    run.paused_at = None
    run.save(update_fields=["status", "error", "finished_at", "updated_at", "paused_at"])
    run_event(run, RUN_EVENTS[RunStatus(status)], actor=actor, api_key=api_key, error=error or None)


# --- Deciding ----------------------------------------------------------------------------------------
def advance(run: WorkflowRun) -> None:
    """Skip what can no longer run, start what may (unless the run is paused), and end the run
    when nothing is left; repeated until nothing changes. The caller holds the run's lock."""
    if run.status not in (RunStatus.RUNNING, RunStatus.PAUSED):
        return
    nodes = {
        node.key: node
        for node in run.nodes.filter(parent=None).select_related("template").order_by("position")
    }
    incoming: dict[str, list[tuple[str, str]]] = {key: [] for key in nodes}
    for source, target, on in graph.edge_list(run.edges):
        incoming[target].append((source, on))
    if run.status == RunStatus.RUNNING:  # fan-outs left half-started by a pause go on
        for node in nodes.values():
            if node.for_each and node.status in NODE_ACTIVE:
                fan_out_fill(run, node)
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


def _published(nodes: dict[str, WorkflowNode]) -> dict[str, dict[str, Any]]:
    """What each ended node published (a failed node's outputs count: the failure path keeps them)."""
    return {
        key: node.outputs
        for key, node in nodes.items()
        if node.status in (NodeStatus.SUCCEEDED, NodeStatus.FAILED)
    }


def _node_start(run: WorkflowRun, node: WorkflowNode, nodes: dict[str, WorkflowNode]) -> None:
    """Make ``node``'s task (and queue its run, if its template has a script); a binding that
    finds no value or does not fit fails the node, with a detail naming it."""
    if node.template is None:
        node_end(
            run, node, NodeStatus.FAILED, error=NodeError.TEMPLATE_MISSING, detail="Its template was deleted."
        )
        return
    if node.for_each:
        _fan_out_start(run, node, nodes)
        return
    values, problems = graph.resolve(node.bindings, run.parameters, _published(nodes))
    if problems:
        node_end(run, node, NodeStatus.FAILED, error=NodeError.BINDING_UNRESOLVED, detail=" ".join(problems))
        return
    problem = _trigger(run, node, values)
    if problem is not None:
        node_end(run, node, NodeStatus.FAILED, error=NodeError.INVALID_BINDING, detail=problem)
        return
    _node_event(
        run,
        node,
        EventType.WORKFLOW_NODE_STARTED,
        task_id=str(node.task_id),
        execution_id=str(node.task.last_execution_id) if node.task.last_execution_id else None,
        attempt=node.attempts,
    )


def _trigger(run: WorkflowRun, node: WorkflowNode, values: dict[str, Any]) -> str | None:
    """Trigger ``node``'s template with ``values`` (a node, or one item of a fan-out): the node
    is queued with its task; or the reason the values do not fit (nothing made)."""
    template = node.template if node.parent_id is None else node.parent.template
    assert template is not None
    try:
        with transaction.atomic():
            task, _ = template_trigger(
                template=template,
                actor=run.created_by,
                parameters=values,
                execute=bool(template.script),
                trigger=Trigger.WORKFLOW,
                in_workflow=True,
            )
    except ValidationError as exc:
        return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
    node.task, node.status, node.attempts = task, NodeStatus.QUEUED, node.attempts + 1
    node.started_at, node.finished_at, node.error, node.error_detail = timezone.now(), None, "", ""
    node.save(
        update_fields=["task", "status", "attempts", "started_at", "finished_at", "error", "error_detail"]
    )
    return None


# --- Fan-out -------------------------------------------------------------------------------------------
def _fan_out_start(run: WorkflowRun, node: WorkflowNode, nodes: dict[str, WorkflowNode]) -> None:
    """Start a ``for_each`` node: one child row per item of the list (kept from an earlier
    attempt where they succeeded), then as many item tasks as ``max_parallel`` allows."""
    found, problems = graph.resolve({"for_each": node.for_each}, run.parameters, _published(nodes))
    if problems:
        node_end(run, node, NodeStatus.FAILED, error=NodeError.BINDING_UNRESOLVED, detail=" ".join(problems))
        return
    items = found["for_each"]
    if not isinstance(items, list):
        detail = f"for_each: {node.for_each} is not a list (got {type(items).__name__})."
        node_end(run, node, NodeStatus.FAILED, error=NodeError.INVALID_BINDING, detail=detail)
        return
    cap = settings.TASKFORGE_WORKFLOW_FOR_EACH_MAX
    if len(items) > cap:
        detail = (
            f"for_each: {len(items)} items, more than the cap of {cap} (TASKFORGE_WORKFLOW_FOR_EACH_MAX)."
        )
        node_end(run, node, NodeStatus.FAILED, error=NodeError.TOO_MANY_ITEMS, detail=detail)
        return
    kept = set(node.items.values_list("item_index", flat=True))
    WorkflowNode.objects.bulk_create(
        WorkflowNode(
            run=run,
            parent=node,
            key=f"{node.key}[{index}]",
            position=node.position,
            item_index=index,
            item=value,
            template_name=node.template_name,
        )
        for index, value in enumerate(items)
        if index not in kept
    )
    node.status, node.attempts, node.started_at = NodeStatus.QUEUED, node.attempts + 1, timezone.now()
    node.finished_at, node.error, node.error_detail = None, "", ""
    node.save(update_fields=["status", "attempts", "started_at", "finished_at", "error", "error_detail"])
    _node_event(run, node, EventType.WORKFLOW_NODE_STARTED, items=len(items), attempt=node.attempts)
    fan_out_fill(run, node)


def fan_out_fill(run: WorkflowRun, node: WorkflowNode) -> None:
    """Queue waiting items of the fan-out ``node`` up to ``max_parallel`` (while the run runs);
    end the node once every item ended: succeeded when all did, with each output as the list
    of the items' values in item order."""
    items = list(node.items.order_by("item_index"))
    active = sum(item.status in NODE_ACTIVE for item in items)
    for item in items:
        if run.status != RunStatus.RUNNING or active >= node.max_parallel:
            break
        if item.status != NodeStatus.WAITING:
            continue
        item.parent = node
        values, problems = graph.resolve(node.bindings, run.parameters, _upstream_outputs(run), item.item)
        if problems:
            _item_end(item, NodeStatus.FAILED, error=NodeError.BINDING_UNRESOLVED, detail=" ".join(problems))
            continue
        problem = _trigger(run, item, values)
        if problem is not None:
            _item_end(item, NodeStatus.FAILED, error=NodeError.INVALID_BINDING, detail=problem)
            continue
        active += 1
    if any(item.status in (NodeStatus.WAITING, *NODE_ACTIVE) for item in items):
        if run.status == RunStatus.CANCELLED and not any(item.status in NODE_ACTIVE for item in items):
            node.items.filter(status=NodeStatus.WAITING).update(status=NodeStatus.CANCELLED)
            node_end(run, node, NodeStatus.CANCELLED)
        return
    names = sorted({name for item in items for name in item.outputs})
    outputs = {name: [item.outputs.get(name) for item in items] for name in names}
    failed = [str(item.item_index) for item in items if item.status != NodeStatus.SUCCEEDED]
    if not failed:
        node_end(run, node, NodeStatus.SUCCEEDED, outputs=outputs)
        return
    cancelled = all(
        item.status == NodeStatus.CANCELLED for item in items if item.status != NodeStatus.SUCCEEDED
    )
    node_end(
        run,
        node,
        NodeStatus.CANCELLED if cancelled else NodeStatus.FAILED,
        outputs=outputs,
        error=NodeError.ITEMS_FAILED,
        detail=f"{len(failed)} of {len(items)} items did not succeed: {', '.join(failed[:20])}.",
    )


def _upstream_outputs(run: WorkflowRun) -> dict[str, dict[str, Any]]:
    return _published({node.key: node for node in run.nodes.filter(parent=None)})


def _item_end(
    item: WorkflowNode, status: str, *, outputs: Any = None, error: str = "", detail: str = ""
) -> None:
    """One item of a fan-out ended (no event of its own: its node's events cover it)."""
    item.status, item.error, item.error_detail = status, error, detail[:ERROR_DETAIL_MAX]
    item.outputs, item.finished_at = dict(outputs or {}), timezone.now()
    item.save(update_fields=["status", "error", "error_detail", "outputs", "finished_at"])
