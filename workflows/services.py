"""Every write about workflows: templates (create, update, delete) and runs (create, start,
pause, resume, cancel, retry). The API, the admin and the tests call these and nothing else;
what a run does next is decided in ``workflows.engine`` under the run's row lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, Project, User
from core.errors import Conflict
from core.validators import is_uuid
from events.models import EventType
from tasks.models import TERMINAL, Status
from tasks.services import task_move
from templates_app import parameters as params
from templates_app.models import Template
from templates_app.services import slugged_errors, slugged_save, template_lookup
from vault.services import secret_ref_errors, secret_refs_check
from workflows import engine, graph
from workflows.models import (
    NODE_ACTIVE,
    PARALLEL_DEFAULT,
    NodeStatus,
    RunStatus,
    WorkflowNode,
    WorkflowRun,
    WorkflowTemplate,
)

WRITABLE_FIELDS: tuple[str, ...] = ("slug", "name", "description", "parameters", "nodes", "edges")


def _template_lookup(project_id: uuid.UUID) -> graph.TemplateLookup:
    def lookup(ref: str) -> tuple[Template, list[dict[str, Any]]] | None:
        try:
            template = template_lookup(Template.objects.filter(project_id=project_id), ref)
        except (Template.DoesNotExist, Template.MultipleObjectsReturned, ValidationError):
            return None
        return template, template.spec()

    return lookup


def definition_check(workflow: WorkflowTemplate) -> list[tuple[str, str, str]]:
    """Every problem of ``workflow`` (its fields, declarations, graph, secret references);
    stores the nodes with their templates resolved to ids."""
    errors = slugged_errors(
        workflow, "workflow template", exclude=["project", "nodes", "edges", "parameters"]
    )
    spec = workflow.parameters
    if not isinstance(spec, list):
        return [*errors, ("parameters", "invalid_type", "A JSON list of parameter declarations.")]
    spec_errors = params.validate_spec(spec)
    errors += spec_errors
    nodes, graph_errors = graph.definition_errors(
        workflow.nodes, workflow.edges, [] if spec_errors else spec, _template_lookup(workflow.project_id)
    )
    errors += graph_errors
    workflow.nodes = nodes
    for index, node in enumerate(nodes):
        refs = {name: value for name, value in node["parameters"].items() if isinstance(value, Mapping)}
        errors += secret_ref_errors(workflow.project_id, refs, field=f"nodes[{index}].parameters")
    if not spec_errors:
        workflow.parameters = params.normalize_spec(spec)
    return errors


def _raise(errors: list[tuple[str, str, str]]) -> None:
    if errors:
        raise params.as_validation_error([(field or "__all__", code, msg) for field, code, msg in errors])


@transaction.atomic
def workflow_template_create(
    *, project: Project, actor: User | None, api_key: ApiKey | None = None, **fields: Any
) -> WorkflowTemplate:
    """Create a workflow template in ``project`` (the caller checks the role there); one 400
    naming every bad field, node and edge."""
    unknown = set(fields) - set(WRITABLE_FIELDS)
    if unknown:
        raise TypeError(f"not writable workflow template fields: {sorted(unknown)}")
    workflow = WorkflowTemplate(
        project=project, created_by=actor if actor and actor.is_authenticated else None, **fields
    )
    _raise(definition_check(workflow))
    slugged_save(workflow, "workflow template")
    return workflow


@transaction.atomic
def workflow_template_update(
    *,
    workflow: WorkflowTemplate,
    actor: User | None,
    api_key: ApiKey | None = None,
    fields: Mapping[str, Any],
    replace: bool = False,
) -> WorkflowTemplate:
    """Change a workflow template; any change bumps ``version`` (runs keep the graph they were
    made with). With ``replace`` (PUT) the fields not given return to their defaults."""
    fields = dict(fields)
    unknown = set(fields) - set(WRITABLE_FIELDS)
    if unknown:
        raise TypeError(f"not writable workflow template fields: {sorted(unknown)}")
    workflow = WorkflowTemplate.objects.select_for_update().get(pk=workflow.pk)
    if replace:
        for name in WRITABLE_FIELDS:
            if name not in fields and name != "slug":
                fields[name] = WorkflowTemplate._meta.get_field(name).get_default()
    before = {name: getattr(workflow, name) for name in WRITABLE_FIELDS}
    for name, value in fields.items():
        setattr(workflow, name, value)
    _raise(definition_check(workflow))
    if any(getattr(workflow, name) != before[name] for name in WRITABLE_FIELDS):
        workflow.version += 1
        workflow.updated_at = timezone.now()
        slugged_save(workflow, "workflow template")
    return workflow


@transaction.atomic
def workflow_template_delete(
    *, workflow: WorkflowTemplate, actor: User | None, api_key: ApiKey | None = None
) -> None:
    """Delete a workflow template; its runs stay (their graph is their own)."""
    workflow.delete()


def workflow_template_lookup(queryset: Any, ref: str) -> WorkflowTemplate:
    """The workflow template ``ref`` (an id or a slug) among ``queryset``; raises DoesNotExist
    (a slug in several of the caller's projects is ``MultipleObjectsReturned``)."""
    if is_uuid(ref):
        return queryset.get(pk=ref)
    return queryset.get(slug=ref)


# --- Runs ----------------------------------------------------------------------------------------------
@transaction.atomic
def workflow_run_create(
    *,
    workflow: WorkflowTemplate,
    actor: User | None,
    api_key: ApiKey | None = None,
    parameters: Mapping[str, Any] | None = None,
    name: str = "",
    start: bool = True,
) -> WorkflowRun:
    """A run of ``workflow`` with ``parameters`` (checked against its declarations; a secret
    parameter takes a ``{"secret": NAME}`` reference only), started at once unless ``start`` is
    False. Every node's template must still exist (400 naming the node)."""
    spec = params.normalize_spec(workflow.parameters)
    clean, errors = params.validate(spec, dict(parameters or {}))
    secret_names = {item["name"] for item in spec if item["secret"]}
    for key in sorted(secret_names & set(clean)):
        if not isinstance(clean[key], Mapping):
            errors.append(
                (
                    f"parameters.{key}",
                    "secret_reference_required",
                    'A workflow takes a secret as {"secret": "<name>"} only.',
                )
            )
    lookup = {
        str(t.pk): t
        for t in Template.objects.filter(
            project_id=workflow.project_id, pk__in=[n["template"] for n in workflow.nodes]
        )
    }
    for index, node in enumerate(workflow.nodes):
        if node["template"] not in lookup:
            errors.append(
                (f"nodes[{index}]", "template_missing", f'Node "{node["key"]}": its template was deleted.')
            )
    _raise(errors)
    secret_refs_check(workflow.project_id, {k: v for k, v in clean.items() if k in secret_names})
    run = WorkflowRun(
        project_id=workflow.project_id,
        template=workflow,
        template_version=workflow.version,
        name=(name or workflow.name).strip(),
        parameters=clean,
        parameter_spec=spec,
        edges=list(workflow.edges),
        created_by=actor if actor and actor.is_authenticated else None,
    )
    try:
        run.full_clean(exclude=["project", "template", "created_by"])
    except ValidationError as exc:
        raise ValidationError(exc.message_dict) from None
    run.save()
    order, _ = graph.topological_order([n["key"] for n in workflow.nodes], graph.edge_list(workflow.edges))
    by_key = {n["key"]: n for n in workflow.nodes}
    WorkflowNode.objects.bulk_create(
        WorkflowNode(
            run=run,
            key=key,
            position=position,
            template=lookup[by_key[key]["template"]],
            template_name=lookup[by_key[key]["template"]].name,
            bindings=by_key[key]["parameters"],
            join=by_key[key]["join"],
            for_each=by_key[key].get("for_each", ""),
            max_parallel=by_key[key].get("max_parallel", PARALLEL_DEFAULT),
        )
        for position, key in enumerate(order)
    )
    if start:
        _start(run, actor=actor, api_key=api_key)
    return run


def _start(run: WorkflowRun, *, actor: User | None, api_key: ApiKey | None) -> None:
    now = timezone.now()
    run.status, run.started_at, run.updated_at = RunStatus.RUNNING, now, now
    run.save(update_fields=["status", "started_at", "updated_at"])
    engine.run_event(run, EventType.WORKFLOW_STARTED, actor=actor, api_key=api_key)
    engine.advance(run)


def _refuse(run: WorkflowRun, action: str, allowed: tuple[str, ...]) -> None:
    if run.status not in allowed:
        raise Conflict(
            f"A {run.status} workflow cannot {action}; it must be {' or '.join(allowed)}.",
            code="invalid_transition",
            current_status=run.status,
        )


@transaction.atomic
def workflow_run_start(*, run: WorkflowRun, actor: User | None, api_key: ApiKey | None = None) -> WorkflowRun:
    """Start a pending run: its first nodes are queued in this transaction."""
    run = engine.lock(run.pk)
    _refuse(run, "start", (RunStatus.PENDING,))
    _start(run, actor=actor, api_key=api_key)
    return run


@transaction.atomic
def workflow_run_pause(*, run: WorkflowRun, actor: User | None, api_key: ApiKey | None = None) -> WorkflowRun:
    """No new node starts; the running ones finish (and are recorded)."""
    run = engine.lock(run.pk)
    _refuse(run, "pause", (RunStatus.RUNNING,))
    now = timezone.now()
    run.status, run.paused_at, run.updated_at = RunStatus.PAUSED, now, now
    run.save(update_fields=["status", "paused_at", "updated_at"])
    engine.run_event(run, EventType.WORKFLOW_PAUSED, actor=actor, api_key=api_key)
    return run


@transaction.atomic
def workflow_run_resume(
    *, run: WorkflowRun, actor: User | None, api_key: ApiKey | None = None
) -> WorkflowRun:
    """Start what became ready while it was paused, and go on."""
    run = engine.lock(run.pk)
    _refuse(run, "resume", (RunStatus.PAUSED,))
    run.status, run.paused_at, run.updated_at = RunStatus.RUNNING, None, timezone.now()
    run.save(update_fields=["status", "paused_at", "updated_at"])
    engine.run_event(run, EventType.WORKFLOW_RESUMED, actor=actor, api_key=api_key)
    engine.advance(run)
    return run


def workflow_run_cancel(
    *, run: WorkflowRun, actor: User | None, api_key: ApiKey | None = None
) -> WorkflowRun:
    """Cancel the run: nothing starts any more, waiting nodes are cancelled, and the running
    nodes' tasks are cancelled as a task's cancel does (a running script is killed by its worker
    within 2 s; the node is recorded cancelled when its task is)."""
    with transaction.atomic():
        run = engine.lock(run.pk)
        _refuse(run, "be cancelled", (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.PAUSED))
        now = timezone.now()
        run.nodes.filter(status=NodeStatus.WAITING).update(status=NodeStatus.CANCELLED, finished_at=now)
        engine.run_end(run, RunStatus.CANCELLED, actor=actor, api_key=api_key)
        for parent in run.nodes.filter(status__in=NODE_ACTIVE, parent=None).exclude(for_each=""):
            engine.fan_out_fill(run, parent)  # a fan-out none of whose items still runs ends now
    # Each task in its own transaction, after the run's (locks go task, then run: never inverted).
    for node in run.nodes.filter(status__in=NODE_ACTIVE).select_related("task"):
        if node.task is None or node.task.status in TERMINAL:
            continue
        try:
            task_move(
                task=node.task,
                to_status=Status.CANCELLED,
                actor=actor,
                api_key=api_key,
                reason="workflow_cancelled",
            )
        except Conflict:  # it ended meanwhile; its end was recorded
            continue
    run.refresh_from_db()
    return run


@transaction.atomic
def workflow_run_retry(*, run: WorkflowRun, actor: User | None, api_key: ApiKey | None = None) -> WorkflowRun:
    """Run again only the failed and cancelled nodes and what depends on them; nodes that
    succeeded keep their outputs and do not run again. 409 while a node still runs."""
    run = engine.lock(run.pk)
    _refuse(run, "be retried", (RunStatus.FAILED, RunStatus.CANCELLED))
    nodes = list(run.nodes.all())
    active = [node.key for node in nodes if node.status in NODE_ACTIVE]
    if active:
        raise Conflict(
            f"Nodes still running: {', '.join(active)}; retry once they end (or cancel them).",
            code="nodes_running",
            nodes=active,
        )
    nodes = [node for node in nodes if node.parent_id is None]
    edges = graph.edge_list(run.edges)
    upstream = graph.ancestors_of([node.key for node in nodes], edges)
    failed = {node.key for node in nodes if node.status in (NodeStatus.FAILED, NodeStatus.CANCELLED)}
    downstream = {key for key, above in upstream.items() if above & failed} - failed
    again = failed | downstream
    # A fan-out that failed keeps the items that succeeded; one that runs again because something
    # upstream does starts over (its list may change).
    WorkflowNode.objects.filter(run=run, parent__key__in=failed).exclude(status=NodeStatus.SUCCEEDED).delete()
    WorkflowNode.objects.filter(run=run, parent__key__in=downstream).delete()
    WorkflowNode.objects.filter(run=run, parent=None, key__in=again).update(
        status=NodeStatus.WAITING,
        task=None,
        outputs={},
        error="",
        error_detail="",
        started_at=None,
        finished_at=None,
    )
    now = timezone.now()
    run.status, run.error, run.finished_at, run.paused_at, run.updated_at = (
        RunStatus.RUNNING,
        "",
        None,
        None,
        now,
    )
    run.started_at = run.started_at or now
    run.retries += 1
    run.save(
        update_fields=["status", "error", "finished_at", "paused_at", "updated_at", "started_at", "retries"]
    )
    engine.run_event(run, EventType.WORKFLOW_RETRIED, actor=actor, api_key=api_key, nodes=sorted(again))
    engine.advance(run)
    return run
