"""Every write to tasks, notes and their history.

The API, the admin, management commands and the worker call these functions and nothing
else, so each rule lives here once. Each change and its event (the outbox) are written in
one transaction. Claims are guarded by conditional UPDATEs whose row count says who won, so
two agents racing for one task cannot both get it, on PostgreSQL or SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils import timezone

from accounts.models import ApiKey, Membership, Project, Role, User
from agents.models import Agent, parse_labels
from core.errors import Conflict, field_error
from core.sql import lock_skipping_locked
from events.models import Event, EventType
from events.services import event_build, event_record, events_record
from tasks import hooks
from tasks.models import (
    ACTIVE,
    LEASE_DEFAULT,
    LEASE_MAX,
    LEASE_MIN,
    RESULT_MAX_BYTES,
    TERMINAL,
    Mover,
    Note,
    Status,
    Task,
    json_size,
    validate_tags,
)
from tasks.status import status_check
from tasks.unroutable import routing_refresh

# Fields a client may set; everything else on a task is read-only.
WRITABLE_FIELDS: tuple[str, ...] = (
    "name",
    "description",
    "script_type",
    "script_content",
    "timeout_seconds",
    "priority",
    "tags",
    "metadata",
    "agent",
    "required_labels",
    "assigned_agent",
    "due_date",
    "estimated_hours",
    "max_retries",
    "max_concurrency",
    "archived",
)
CLAIM_CLEARED: dict[str, Any] = {
    "claimed_by": None,
    "claimed_by_key": None,
    "claimed_by_agent": None,
    "claimed_at": None,
    "lease_expires_at": None,
    "progress": None,
}


# --- Events (the outbox: events.services) -------------------------------------------------------
def _status_event(
    task: Task, old: str, new: str, *, reason: str, actor: User | None, api_key: ApiKey | None
) -> Event:
    """The task.status_changed event, built (the caller stores it with its other events)."""
    return event_build(
        type=EventType.TASK_STATUS_CHANGED,
        project=task.project_id,
        task=task,
        actor=actor,
        api_key=api_key,
        data={"from": old, "to": new, "reason": reason},
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- Create, update, delete ---------------------------------------------------------------------
def _tag_fallback(fields: dict[str, Any]) -> dict[str, Any]:
    """SPEC §3: when ``tags`` is absent and ``metadata.tags`` is a list of strings, use it."""
    metadata = fields.get("metadata")
    if "tags" in fields or not isinstance(metadata, dict):
        return fields
    candidate = metadata.get("tags")
    if isinstance(candidate, list) and all(isinstance(tag, str) for tag in candidate):
        try:
            validate_tags(candidate)
        except ValidationError as exc:
            raise ValidationError({"metadata.tags": exc.error_list}) from None
        fields = {**fields, "tags": list(dict.fromkeys(candidate))}
    return fields


def _normalize(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(WRITABLE_FIELDS)
    if unknown:
        raise TypeError(f"not writable task fields: {sorted(unknown)}")
    fields = _tag_fallback(fields)
    if isinstance(fields.get("name"), str):
        fields["name"] = fields["name"].strip()
    if isinstance(fields.get("tags"), list):
        fields["tags"] = list(dict.fromkeys(fields["tags"]))  # drop duplicates, keep order
    if "required_labels" in fields:  # None (an empty admin field) requires nothing
        fields["required_labels"] = parse_labels(fields["required_labels"] or {}, field="required_labels")
    return fields


def _find_agent(project_id: uuid.UUID, ref: str) -> Agent | None:
    """The project's registered agent whose id or name is ``ref``."""
    agents = Agent.objects.alive().filter(project_id=project_id)
    try:
        return agents.filter(pk=uuid.UUID(ref)).first() or agents.filter(name=ref).first()
    except ValueError:
        return agents.filter(name=ref).first()


def _resolve_pin(project_id: uuid.UUID, fields: dict[str, Any]) -> dict[str, Any]:
    """``assigned_agent`` (an Agent, its id or name; 400 if the project has none such) pins the
    task; else ``agent`` pins it when it names a registered agent (by id or name) and stays a
    plain label otherwise."""
    if "assigned_agent" in fields:
        ref = fields["assigned_agent"]
        agent = ref if isinstance(ref, Agent) or not ref else _find_agent(project_id, str(ref))
        if ref and (agent is None or agent.project_id != project_id):
            raise field_error(
                "assigned_agent", f"This project has no registered agent {str(ref)!r}.", "does_not_exist"
            )
        fields = {**fields, "assigned_agent": agent or None}
        if agent:
            fields["agent"] = agent.name
    elif "agent" in fields:
        fields = {
            **fields,
            "assigned_agent": _find_agent(project_id, fields["agent"]) if fields["agent"] else None,
        }
    return fields


def _dependency_cycle(task_id: uuid.UUID, targets: Iterable[uuid.UUID]) -> list[uuid.UUID] | None:
    """The path ``target -> ... -> task`` if making ``task`` depend on ``targets`` closes a cycle.

    Breadth-first over the dependency links, one query per level.
    """
    through = Task.depends_on.through
    parent: dict[uuid.UUID, uuid.UUID | None] = dict.fromkeys(targets)
    frontier = list(parent)
    while frontier and task_id not in parent:
        edges = through.objects.filter(from_task_id__in=frontier).values_list("from_task_id", "to_task_id")
        frontier = []
        for source, target in edges:
            if target not in parent:
                parent[target] = source
                frontier.append(target)
    if task_id not in parent:
        return None
    path = [task_id]
    step = parent[task_id]
    while step is not None:
        path.append(step)
        step = parent[step]
    return path[::-1]


def _set_dependencies(task: Task, ids: list[uuid.UUID]) -> bool:
    """Point ``task`` at ``ids`` (tasks of its project, no cycle). True when that changed."""
    wanted = list(dict.fromkeys(ids))
    if task.pk in wanted:
        raise field_error("depends_on", "A task cannot depend on itself.", "cycle")
    found = set(Task.objects.filter(project_id=task.project_id, pk__in=wanted).values_list("pk", flat=True))
    missing = [str(pk) for pk in wanted if pk not in found]
    if missing:
        raise field_error(
            "depends_on", f"No task in this project has the id(s): {', '.join(missing)}.", "does_not_exist"
        )
    current = set(task.depends_on.values_list("pk", flat=True))
    if current == set(wanted):
        return False
    cycle = _dependency_cycle(task.pk, set(wanted) - current)
    if cycle:
        chain = " -> ".join(str(pk) for pk in [task.pk, *cycle])
        raise field_error("depends_on", f"This would create a dependency cycle: {chain}.", "cycle")
    task.depends_on.set(wanted)
    return True


@transaction.atomic
def task_create(
    *,
    project: Project,
    actor: User,
    api_key: ApiKey | None = None,
    depends_on: list[uuid.UUID] | None = None,
    template: Any = None,
    template_version: int | None = None,
    parameters: dict[str, Any] | None = None,
    parameter_spec: list[dict[str, Any]] | None = None,
    script_digest: str = "",
    in_workflow: bool = False,
    **fields: Any,
) -> Task:
    """Create a task in ``project`` (the caller's right to write there is checked by the caller).

    ``template`` and the rest record where a task came from (``templates_app.services``
    passes them; ``parameters`` are the shown values, secrets already masked).
    """
    task = Task(
        project=project,
        created_by=actor,
        template=template,
        template_version=template_version,
        parameters=dict(parameters or {}),
        parameter_spec=list(parameter_spec or []),
        script_digest=script_digest,
        in_workflow=in_workflow,
        **_resolve_pin(project.pk, _normalize(fields)),
    )
    task.full_clean()
    task.save()
    if depends_on:
        _set_dependencies(task, depends_on)
    if task.assigned_agent_id is not None or task.required_labels:
        routing_refresh(project_id=project.pk, task_ids=[task.pk])
    event_record(
        type=EventType.TASK_CREATED,
        project=project,
        task=task,
        actor=actor,
        api_key=api_key,
        data={
            "name": task.name,
            "status": task.status,
            "priority": task.priority,
            **({"template": str(template.pk), "template_version": template_version} if template else {}),
        },
    )
    return task


DETACH_FIELDS = ("template", "template_version", "parameters", "parameter_spec", "script_digest")


def _detach_from_template(task: Task) -> dict[str, Any] | None:
    """A changed script is no longer its template's: the task leaves the template and its
    secret parameters (never handed to a script someone else wrote since). Returns what the
    task.updated event records, or None when the task came from no template."""
    if task.template_id is None and not task.parameter_spec and not task.script_digest:
        return None
    secret = [item.get("name") for item in task.parameter_spec if item.get("secret")]
    detached = {
        "detached_from_template": None if task.template_id is None else str(task.template_id),
        "dropped_secret_parameters": secret,
    }
    task.template = None
    task.template_version = None
    task.parameter_spec = [item for item in task.parameter_spec if not item.get("secret")]
    task.parameters = {k: v for k, v in task.parameters.items() if k not in secret}
    task.script_digest = ""
    return detached


@transaction.atomic
def task_update(
    *,
    task: Task,
    actor: User,
    api_key: ApiKey | None = None,
    fields: dict[str, Any],
    replace: bool = False,
) -> Task:
    """Change a task's writable fields; ``status`` goes through ``task_move``.

    With ``replace`` (PUT) the fields not given go back to their defaults; without it (PATCH)
    they are left alone. The project cannot change.
    """
    fields = dict(fields)
    to_status = fields.pop("status", None)
    depends_on = fields.pop("depends_on", None)
    project = fields.pop("project", None)
    if project is not None and getattr(project, "pk", project) != task.project_id:
        raise field_error("project", "A task cannot move to another project.", "immutable")
    if replace:
        for name in WRITABLE_FIELDS:
            implied = (name == "tags" and "metadata" in fields) or (
                name == "assigned_agent" and "agent" in fields
            )
            if name not in fields and not implied:
                fields[name] = Task._meta.get_field(name).get_default()
        depends_on = [] if depends_on is None else depends_on
    fields = _resolve_pin(task.project_id, _normalize(fields))
    if replace and "tags" not in fields:
        fields["tags"] = []

    task = Task.objects.select_for_update().get(pk=task.pk)
    changed = [name for name, value in fields.items() if getattr(task, name) != value]
    for name in changed:
        setattr(task, name, fields[name])
    detached = _detach_from_template(task) if {"script_content", "script_type"} & set(changed) else None
    if changed:
        task.updated_at = timezone.now()
        task.full_clean()
        task.save(update_fields=[*changed, "updated_at", *(DETACH_FIELDS if detached is not None else ())])
    if depends_on is not None and _set_dependencies(task, depends_on):
        changed.append("depends_on")
        if len(changed) == 1:
            task.updated_at = timezone.now()
            task.save(update_fields=["updated_at"])
    if {"required_labels", "assigned_agent", "archived"} & set(changed):
        routing_refresh(project_id=task.project_id, task_ids=[task.pk])
    if changed:
        event_record(
            type=EventType.TASK_UPDATED,
            project=task.project_id,
            task=task,
            actor=actor,
            api_key=api_key,
            data={"fields": changed, **(detached or {})},
        )
    if to_status is not None and to_status != task.status:
        task = task_move(task=task, to_status=to_status, actor=actor, api_key=api_key)
    return task


@transaction.atomic
def task_delete(*, task: Task, actor: User, api_key: ApiKey | None = None) -> None:
    """Delete a task that is not queued or running (409 otherwise). Its history stays."""
    task = Task.objects.select_for_update().get(pk=task.pk)
    if task.status in ACTIVE or task.executions.active().exists():
        raise Conflict(
            f"The task is {task.status}; cancel it before deleting it.",
            code="task_active",
            current_status=task.status,
        )
    if task.in_workflow and task.status not in TERMINAL:
        # Its workflow waits for its end: deleting it would leave the run waiting for ever.
        raise Conflict(
            "The task is a step of a workflow run and has not ended; cancel it (or the run) first.",
            code="task_in_workflow",
            current_status=task.status,
        )
    event_record(
        type=EventType.TASK_DELETED,
        project=task.project_id,
        task=task,
        actor=actor,
        api_key=api_key,
        data={"name": task.name, "status": task.status},
    )
    task.delete()


# --- The state machine --------------------------------------------------------------------------
def _transition_fields(to_status: str) -> dict[str, Any]:
    """Columns that change with the status: a claim ends when its task leaves running."""
    if to_status in (Status.PENDING, Status.QUEUED):
        return dict(CLAIM_CLEARED)
    # Finished (or moved to running by hand): the lease ends; claimed_by stays as the record
    # of who did the work.
    return {"lease_expires_at": None}


@transaction.atomic
def task_move(
    *,
    task: Task,
    to_status: str,
    actor: User | None,
    api_key: ApiKey | None = None,
    reason: str = "move",
) -> Task:
    """Move ``task`` to ``to_status`` if a person's table (``TRANSITIONS``) allows it; 409
    listing the allowed ones."""
    if to_status not in Status.values:
        raise field_error(
            "status", f"Unknown status {to_status!r}; one of {', '.join(Status.values)}.", "invalid_choice"
        )
    current = Task.objects.select_for_update().get(pk=task.pk)
    status_check(from_status=current.status, to_status=to_status, mover=Mover.PERSON)
    old = current.status
    if to_status == Status.CANCELLED:
        # Cancelling a task cancels its queued and running executions too (a running script is
        # killed by its worker within 2 s).
        # (executions registers the hook that does it: tasks.hooks).
        acted = [hook(task=current, actor=actor, api_key=api_key) for hook in hooks.on_task_cancel]
        if any(acted):
            current.refresh_from_db()
            if current.status == to_status:  # the task followed its cancelled execution
                return current
    updated = Task.objects.filter(pk=current.pk, status=old).update(
        status=to_status, updated_at=timezone.now(), **_transition_fields(to_status)
    )
    if not updated:  # pragma: no cover - the row lock (or SQLite's write lock) prevents it
        raise Conflict("The task changed meanwhile; try again.", code="concurrent_change")
    current.refresh_from_db()
    events_record(_status_event(current, old, to_status, reason=reason, actor=actor, api_key=api_key))
    hooks.task_finished(current, actor=actor, api_key=api_key)
    return current


# --- The agent claim protocol -------------------------------------------------------------------
def check_lease(lease_seconds: int) -> timedelta:
    if not LEASE_MIN <= lease_seconds <= LEASE_MAX:
        raise field_error(
            "lease_seconds", f"Must be between {LEASE_MIN} and {LEASE_MAX} seconds.", "out_of_range"
        )
    return timedelta(seconds=lease_seconds)


def task_blockers(task: Task) -> list[uuid.UUID]:
    """Ids of the tasks ``task`` depends on that are not completed yet."""
    return list(
        task.depends_on.exclude(status=Status.COMPLETED)
        .order_by("created_at", "id")
        .values_list("pk", flat=True)
    )


def claim_values(
    actor: User, api_key: ApiKey | None, lease: timedelta, agent: Agent | None = None
) -> dict[str, Any]:
    """What a claim writes: the UPDATE it goes into takes claimable (pending) tasks only."""
    status_check(from_status=Status.PENDING, to_status=Status.RUNNING, mover=Mover.CLAIM)
    now = timezone.now()
    return {
        "status": Status.RUNNING,
        "claimed_by": actor,
        "claimed_by_key": api_key,
        "claimed_by_agent": agent,
        "claimed_at": now,
        "lease_expires_at": now + lease,
        "progress": None,
        "unroutable_since": None,
        "updated_at": now,
    }


def claimed(
    task_id: uuid.UUID, *, actor: User, api_key: ApiKey | None, reason: str, agent: Agent | None = None
) -> Task:
    """Record a claim that was just won (its events) and return the task."""
    task = Task.objects.get(pk=task_id)
    data = {"lease_expires_at": _iso(task.lease_expires_at), "by": actor.get_username()}
    if agent is not None:
        data["agent_id"] = str(agent.pk)
    events_record(
        event_build(
            type=EventType.TASK_CLAIMED,
            project=task.project_id,
            task=task,
            actor=actor,
            api_key=api_key,
            data=data,
        ),
        _status_event(task, Status.PENDING, Status.RUNNING, reason=reason, actor=actor, api_key=api_key),
    )
    return task


def not_claimable(task: Task) -> Conflict:
    """Explain why a claim on ``task`` lost or could not start."""
    task.refresh_from_db()
    if task.status == Status.RUNNING and task.lease_expires_at is not None:
        return Conflict(
            "The task is already claimed.",
            code="already_claimed",
            current_status=task.status,
            lease_expires_at=_iso(task.lease_expires_at),
        )
    if task.status != Status.PENDING:
        return Conflict(
            f"Only pending tasks can be claimed; this one is {task.status}.",
            code="not_claimable",
            current_status=task.status,
        )
    if task.archived:
        return Conflict("Archived tasks cannot be claimed.", code="not_claimable", current_status=task.status)
    blockers = task_blockers(task)
    if blockers:
        return Conflict(
            f"The task waits for {len(blockers)} unfinished dependenc{'y' if len(blockers) == 1 else 'ies'}.",
            code="blocked_by_dependencies",
            current_status=task.status,
            blockers=[str(pk) for pk in blockers],
        )
    return Conflict(
        "The task is already claimed.", code="already_claimed", current_status=task.status
    )  # pragma: no cover


def claim_refused(task: Task, unroutable: str) -> Conflict:
    """Why a claim on ``task`` took nothing: ``not_routable`` (saying ``unroutable``) while the
    task is claimable by someone else, else what ``not_claimable`` says."""
    if Task.objects.filter(pk=task.pk).claimable().exists():
        task.refresh_from_db()
        return Conflict(
            unroutable,
            code="not_routable",
            current_status=task.status,
            required_labels=task.required_labels,
            assigned_agent=None if task.assigned_agent_id is None else str(task.assigned_agent_id),
        )
    return not_claimable(task)


def task_claim(
    *, task: Task, actor: User, api_key: ApiKey | None = None, lease_seconds: int = LEASE_DEFAULT
) -> Task:
    """Claim one task for ``actor``: exactly one of any number of racing claimers wins."""
    lease = check_lease(lease_seconds)
    if task.status == Status.RUNNING and task.lease_expires_at and task.lease_expires_at < timezone.now():
        reap_expired_claims(task_ids=[task.pk])  # a lapsed claim is free to take
    with transaction.atomic():
        won = (
            Task.objects.filter(pk=task.pk)
            .claimable()
            .unrouted()
            .update(**claim_values(actor, api_key, lease))
        )
        if not won:
            raise claim_refused(
                task,
                "The task is routed to registered agents (pinned to one, or requiring labels); "
                "only such an agent can claim it.",
            )
        return claimed(task.pk, actor=actor, api_key=api_key, reason="claim")


def task_claim_next(
    *,
    actor: User,
    api_key: ApiKey | None = None,
    tags: list[str] | None = None,
    agent: str | None = None,
    project: uuid.UUID | None = None,
    priority_min: int | None = None,
    lease_seconds: int = LEASE_DEFAULT,
) -> Task | None:
    """Claim the highest-priority, oldest claimable task matching the filters, or None.

    One short transaction picks a candidate (skipping rows other claimers hold on
    PostgreSQL) and claims it with a conditional UPDATE. Tasks whose dependencies are not
    completed are skipped.
    """
    lease = check_lease(lease_seconds)
    if Task.objects.lease_expired().exists():
        reap_expired_claims()
    candidates = Task.objects.writable_by(actor, api_key).claimable().unrouted()
    if tags:
        candidates = candidates.with_tags(tags)
    if agent:
        candidates = candidates.filter(agent=agent)
    if project is not None:
        candidates = candidates.filter(project_id=project)
    else:
        # Without a named project, only the key's project or projects the caller belonged to
        # before the key was made (Project.implicit_for): nobody can steer a key into theirs.
        implicit = Project.objects.implicit_for(actor, api_key).values_list("pk", flat=True)
        candidates = candidates.filter(project_id__in=list(implicit))
    if priority_min is not None:
        candidates = candidates.filter(priority__gte=priority_min)
    candidates = candidates.claim_order()
    for _attempt in range(10):
        with transaction.atomic():
            pk = lock_skipping_locked(candidates).values_list("pk", flat=True).first()
            if pk is None:
                return None
            if Task.objects.filter(pk=pk).claimable().update(**claim_values(actor, api_key, lease)):
                return claimed(pk, actor=actor, api_key=api_key, reason="claim_next")
        # Lost a race for that row (only possible without row locks): take the next one.
    return None  # pragma: no cover - ten lost races in a row


def _claimer_guard(task: Task, actor: User, agent: Agent | None = None) -> models.QuerySet:
    """The task, still running and claimed by the caller: the registered ``agent`` it is (only
    that agent, whoever owns its key), else ``actor`` (any of their keys or sessions) for a
    claim no agent holds."""
    running = Task.objects.filter(pk=task.pk, status=Status.RUNNING, lease_expires_at__isnull=False)
    if agent is not None:
        return running.filter(claimed_by_agent=agent)
    return running.filter(claimed_by=actor, claimed_by_agent__isnull=True)


def _not_claimer(task: Task, actor: User) -> Conflict:
    task.refresh_from_db()
    if task.status != Status.RUNNING or task.lease_expires_at is None:
        return Conflict(
            f"The task is not claimed (it is {task.status}).", code="not_claimed", current_status=task.status
        )
    return Conflict(
        "The task is claimed by someone else; only the claimer may do this.",
        code="not_claimer",
        current_status=task.status,
    )


def task_heartbeat(
    *,
    task: Task,
    actor: User,
    api_key: ApiKey | None = None,
    lease_seconds: int = LEASE_DEFAULT,
    agent: Agent | None = None,
) -> Task:
    """The claimer extends its lease to ``lease_seconds`` from now.

    Not recorded as an event: agents beat every few seconds and the outbox would fill with
    them; the claim, its end and a lapsed lease are recorded.
    """
    lease = check_lease(lease_seconds)
    if not _claimer_guard(task, actor, agent).update(lease_expires_at=timezone.now() + lease):
        raise _not_claimer(task, actor)
    task.refresh_from_db()
    return task


def _finish_claim(
    *,
    task: Task,
    actor: User,
    api_key: ApiKey | None,
    to_status: str,
    event: str,
    values: dict[str, Any],
    data: dict[str, Any],
    agent: Agent | None = None,
    admin_may: bool = False,
) -> Task:
    status_check(from_status=Status.RUNNING, to_status=to_status, mover=Mover.CLAIM)  # _claimer_guard's
    changes = {"status": to_status, "updated_at": timezone.now(), **values}
    reason = event.removeprefix("task.")
    with transaction.atomic():
        if not _claimer_guard(task, actor, agent).update(**changes):
            # A project admin (not acting as an agent) may take a claim back from anyone.
            if not (admin_may and agent is None and _is_project_admin(actor, task.project_id)):
                raise _not_claimer(task, actor)
            running = Task.objects.filter(pk=task.pk, status=Status.RUNNING, lease_expires_at__isnull=False)
            if not running.update(**changes):
                raise _not_claimer(task, actor)
            reason, data = "released_by_admin", {**data, "by_admin": True}
        # Applied to this instance as well (the API reads the row back to render it).
        for name, value in changes.items():
            setattr(task, name, value)
        # An agent's complete publishes its result object; a fail's {"error": ...} is not outputs.
        published = values.get("result") if to_status == Status.COMPLETED else None
        hooks.task_finished(task, outputs=published, actor=actor, api_key=api_key)
        events_record(
            event_build(
                type=event, project=task.project_id, task=task, actor=actor, api_key=api_key, data=data
            ),
            _status_event(task, Status.RUNNING, to_status, reason=reason, actor=actor, api_key=api_key),
        )
    return task


def _is_project_admin(actor: User, project_id: uuid.UUID) -> bool:
    return (
        actor.is_superuser
        or Membership.objects.filter(project_id=project_id, user=actor, role=Role.ADMIN).exists()
    )


def task_complete(
    *, task: Task, actor: User, api_key: ApiKey | None = None, result: Any = None, agent: Agent | None = None
) -> Task:
    """The claimer finishes the task; ``result`` (any JSON, ≤ 1 MiB) is stored."""
    if json_size(result) > RESULT_MAX_BYTES:
        raise field_error("result", "The result is larger than 1 MiB serialized.", "max_bytes")
    return _finish_claim(
        task=task,
        actor=actor,
        api_key=api_key,
        to_status=Status.COMPLETED,
        event=EventType.TASK_COMPLETED,
        values={"result": result, "lease_expires_at": None},
        data={},
        agent=agent,
    )


def task_fail(
    *, task: Task, actor: User, api_key: ApiKey | None = None, error: str, agent: Agent | None = None
) -> Task:
    """The claimer gives up; ``error`` is stored as ``result = {"error": ...}``."""
    if not error.strip():
        raise field_error("error", "Say why the task failed.", "blank")
    return _finish_claim(
        task=task,
        actor=actor,
        api_key=api_key,
        to_status=Status.FAILED,
        event=EventType.TASK_FAILED,
        values={"result": {"error": error}, "lease_expires_at": None},
        data={"error": error[:1000]},
        agent=agent,
    )


def task_release(
    *, task: Task, actor: User, api_key: ApiKey | None = None, agent: Agent | None = None
) -> Task:
    """The claimer hands the task back: pending again, claim cleared. A project admin (not
    acting as an agent) may release anyone's claim (the event says ``by_admin``).

    running -> pending is an edge only the claim protocol takes (release, lapsed lease): it is
    in ``CLAIM_TRANSITIONS``, not in ``TRANSITIONS``, which is what ``move`` allows.
    """
    return _finish_claim(
        task=task,
        actor=actor,
        api_key=api_key,
        to_status=Status.PENDING,
        event=EventType.TASK_RELEASED,
        values=dict(CLAIM_CLEARED),
        data={},
        agent=agent,
        admin_may=True,
    )


def reap_expired_claims(
    *, now: datetime | None = None, task_ids: list[uuid.UUID] | None = None, limit: int = 500
) -> int:
    """Return claims whose lease ran out to ``pending`` and record why. Returns how many.

    Safe to run from any number of processes at once: each task is taken back by a
    conditional UPDATE that only one of them can win.
    """
    status_check(from_status=Status.RUNNING, to_status=Status.PENDING, mover=Mover.CLAIM)
    now = now or timezone.now()
    expired = Task.objects.lease_expired(now)
    if task_ids is not None:
        expired = expired.filter(pk__in=task_ids)
    reaped = 0
    with transaction.atomic():
        rows = list(
            lock_skipping_locked(expired.order_by("lease_expires_at")).values_list(
                "pk", "project_id", "claimed_by_id", "lease_expires_at"
            )[:limit]
        )
        for pk, project_id, claimer_id, lease_expires_at in rows:
            back = Task.objects.filter(pk=pk, status=Status.RUNNING, lease_expires_at__lt=now).update(
                status=Status.PENDING, updated_at=now, **CLAIM_CLEARED
            )
            if not back:
                continue
            reaped += 1
            events_record(
                event_build(
                    type=EventType.TASK_LEASE_EXPIRED,
                    project=project_id,
                    task=pk,
                    actor=None,
                    data={"claimed_by": claimer_id, "lease_expired_at": _iso(lease_expires_at)},
                ),
                event_build(
                    type=EventType.TASK_STATUS_CHANGED,
                    project=project_id,
                    task=pk,
                    actor=None,
                    data={"from": Status.RUNNING, "to": Status.PENDING, "reason": "lease_expired"},
                ),
            )
    return reaped


# --- Notes --------------------------------------------------------------------------------------
@transaction.atomic
def note_create(*, task: Task, actor: User, api_key: ApiKey | None = None, body: str) -> Note:
    note = Note(
        task=task, author=actor, author_key_prefix=api_key.prefix if api_key else "", body=body.strip()
    )
    note.full_clean(exclude=["task", "author"])
    note.save()
    event_record(
        type=EventType.TASK_NOTE_ADDED,
        project=task.project_id,
        task=task,
        actor=actor,
        api_key=api_key,
        data={"note": note.pk},
    )
    return note
