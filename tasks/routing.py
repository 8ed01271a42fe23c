"""Registered agents and their tasks: claims routed by labels, pinning, capacity and state; the
agent's heartbeat; what it holds; its work returning when it goes offline or is deleted.

A claim by an agent takes the agent's row lock first (``SELECT ... FOR UPDATE``), then reads
how many claims it holds and picks tasks with ``FOR UPDATE SKIP LOCKED`` (``core.sql``), all in
one short transaction: two copies of one agent serialise on its row, so neither can push it past
its capacity, and two agents never wait for each other's tasks. Every path that locks both
takes the agent first, then tasks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, User
from agents.models import Agent, AgentState
from agents.services import agent_touch, agents_sweep
from core.errors import Conflict
from core.sql import lock_skipping_locked
from events.models import EventType
from tasks.models import LEASE_DEFAULT, Task
from tasks.services import (
    check_lease,
    claim_refused,
    claim_values,
    claimed,
    reap_expired_claims,
    task_create,
)
from tasks.unroutable import routed_projects, routing_refresh

CLAIM_COUNT_MAX = 100
# What a heartbeat answer tells the agent to do, by its state.
ACTIONS = {AgentState.DRAINING: "drain", AgentState.PAUSED: "pause"}


@dataclass(frozen=True)
class NoClaim:
    """Why an agent got nothing: ``code`` (draining, paused, at_capacity, no_task) and words."""

    code: str
    detail: str


def agent_for_key(api_key: ApiKey | None) -> Agent | None:
    """The registered agent an agent-bound key belongs to (None for any other caller)."""
    if api_key is None or not api_key.agent_bound:
        return None
    return Agent.objects.alive().filter(api_key=api_key).first()


def _refusal(agent: Agent, now: datetime, held: int) -> NoClaim | None:
    state = agent.state_at(now)
    if state == AgentState.DRAINING:
        return NoClaim("draining", "The agent is draining: it finishes what it holds and takes nothing new.")
    if state == AgentState.PAUSED:
        until = f" until {agent.paused_until.isoformat()}" if agent.paused_until else ""
        note = f" ({agent.pause_note})" if agent.pause_note else ""
        return NoClaim("paused", f"The agent is paused{until}{note}.")
    if held >= agent.capacity:
        return NoClaim("at_capacity", f"The agent holds {held} tasks, its capacity.")
    return None


def _begin(agent: Agent, actor: User, api_key: ApiKey | None) -> tuple[Agent, datetime, int]:
    """Inside a claim's transaction: lock the agent, note its sign of life, count its claims."""
    if Task.objects.lease_expired().exists():
        reap_expired_claims()
    agent = Agent.objects.select_for_update().get(pk=agent.pk, deleted_at__isnull=True)
    now = timezone.now()
    agent_touch(agent=agent, now=now, actor=actor, api_key=api_key)
    return agent, now, Task.objects.held_by(agent).count()


def agent_claim_next(
    *,
    agent: Agent,
    actor: User,
    api_key: ApiKey | None = None,
    count: int = 1,
    lease_seconds: int = LEASE_DEFAULT,
    tags: list[str] | None = None,
    priority_min: int | None = None,
    **_ignored: Any,
) -> tuple[list[Task], NoClaim | None]:
    """Claim up to ``count`` tasks for ``agent`` within its free capacity, the highest priority
    then oldest first, among the pending tasks of its project it may take (not pinned to
    another agent, its labels covering theirs). Nothing, with the reason, when it is draining,
    paused or full, or nothing fits."""
    lease = check_lease(lease_seconds)
    with transaction.atomic():
        agent, _now, held = _begin(agent, actor, api_key)
        refusal = _refusal(agent, _now, held)
        if refusal is not None:
            return [], refusal
        candidates = Task.objects.filter(project_id=agent.project_id).claimable().routable_to(agent)
        if tags:
            candidates = candidates.with_tags(tags)
        if priority_min is not None:
            candidates = candidates.filter(priority__gte=priority_min)
        wanted = min(count, agent.capacity - held)
        pks = list(lock_skipping_locked(candidates.claim_order()).values_list("pk", flat=True)[:wanted])
        if not pks:
            return [], NoClaim("no_task", "No pending task this agent may take now.")
        values = claim_values(actor, api_key, lease, agent)
        # The rows are ours (locked, or SQLite's write lock): each is claimed once, here.
        Task.objects.filter(pk__in=pks).claimable().update(**values)
        won = set(
            Task.objects.filter(
                pk__in=pks, claimed_by_agent=agent, claimed_at=values["claimed_at"]
            ).values_list("pk", flat=True)
        )
        tasks = [
            claimed(pk, actor=actor, api_key=api_key, reason="claim_next", agent=agent)
            for pk in pks
            if pk in won
        ]
    return tasks, None


def agent_claim(
    *,
    task: Task,
    agent: Agent,
    actor: User,
    api_key: ApiKey | None = None,
    lease_seconds: int = LEASE_DEFAULT,
) -> Task:
    """Claim one named task for ``agent``: 409 when the agent may not take it (its state,
    capacity, the task's pin or labels) or the task is not claimable."""
    lease = check_lease(lease_seconds)
    with transaction.atomic():
        agent, now, held = _begin(agent, actor, api_key)
        refusal = _refusal(agent, now, held)
        if refusal is not None:
            raise Conflict(refusal.detail, code=refusal.code, current_status=task.status)
        won = (
            Task.objects.filter(pk=task.pk)
            .claimable()
            .routable_to(agent)
            .update(**claim_values(actor, api_key, lease, agent))
        )
        if won:
            return claimed(task.pk, actor=actor, api_key=api_key, reason="claim", agent=agent)
        raise claim_refused(
            task,
            "This agent may not take the task: it is pinned to another agent or requires labels "
            "this agent does not carry.",
        )


def agent_heartbeat(
    *,
    agent: Agent,
    actor: User,
    api_key: ApiKey | None = None,
    tasks: list[dict[str, Any]] | None = None,
    lease_seconds: int = LEASE_DEFAULT,
    version: str | None = None,
    platform: str | None = None,
) -> dict[str, Any]:
    """The agent is alive and working on ``tasks`` (``{"id", "progress"}``): their leases are
    renewed to ``lease_seconds`` from now and their progress stored. The answer says what the
    agent should do (``continue``, ``drain``, ``pause``) and which of the tasks it reported it
    no longer holds (``cancelled_tasks``: cancelled, released by an admin, lapsed, deleted) — it
    should stop working on those."""
    lease = check_lease(lease_seconds)
    reported = {uuid.UUID(str(item["id"])): item.get("progress") for item in tasks or ()}
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent.pk, deleted_at__isnull=True)
        now = timezone.now()
        agent_touch(agent=agent, now=now, actor=actor, api_key=api_key, version=version, platform=platform)
        held = set(Task.objects.held_by(agent).values_list("pk", flat=True))
        until = now + lease
        for pk, progress in reported.items():
            if pk not in held:
                continue
            changes: dict[str, Any] = {"lease_expires_at": until}
            if progress is not None:
                changes["progress"] = progress
            Task.objects.held_by(agent).filter(pk=pk).update(**changes)
        state = agent.state_at(now)
    return {
        "agent": agent,
        "state": state,
        "action": ACTIONS.get(state, "continue"),
        "cancelled_tasks": [pk for pk in reported if pk not in held],
        "held_tasks": sorted(held, key=str),
        "lease_expires_at": until,
        "heartbeat_seconds": settings.TASKFORGE_AGENT_HEARTBEAT_SECONDS,
    }


def agent_task_create(*, to_agent: Agent, actor: User, api_key: ApiKey | None = None, **fields: Any) -> Task:
    """``POST /agents/{id}/tasks``: a task in the agent's project, pinned to it (whatever the
    body says of ``agent`` or ``assigned_agent``)."""
    fields.pop("agent", None)
    fields.pop("assigned_agent", None)
    return task_create(
        project=to_agent.project, actor=actor, api_key=api_key, assigned_agent=to_agent, **fields
    )


def agent_current_tasks(agent: Agent) -> list[Task]:
    """The claims ``agent`` holds, oldest first (for ``/agents/{id}/status`` and the admin)."""
    return list(Task.objects.held_by(agent).order_by("claimed_at", "id"))


# --- An agent's change reaches its tasks (agents.hooks) --------------------------------------------
def _return_claims(agent: Agent, now: datetime) -> int:
    """An offline or deleted agent's claims: their leases lapse now and return to pending (as a
    lapsed lease does: ``task.lease_expired``)."""
    ids = list(Task.objects.held_by(agent).values_list("pk", flat=True))
    if not ids:
        return 0
    Task.objects.filter(pk__in=ids).update(lease_expires_at=now)
    return reap_expired_claims(now=now + timedelta(microseconds=1), task_ids=ids)


def after_agent_change(*, agent: Agent, change: str) -> None:
    """Registered on ``agents.hooks.on_agent_change`` (``tasks.apps``)."""
    now = timezone.now()
    if change in (EventType.AGENT_OFFLINE, EventType.AGENT_DELETED):
        _return_claims(agent, now)
    routing_refresh(project_id=agent.project_id, now=now)


def agents_housekeeping() -> float | None:
    """The worker's periodic job (registered by ``executions.apps``) and ``manage.py
    reap_claims``: silent agents go offline (their work returns), expired pauses end, lapsed
    claims return, and every project's routed tasks are re-checked."""
    agents_sweep()
    reap_expired_claims()
    for project_id in routed_projects():
        with transaction.atomic():
            routing_refresh(project_id=project_id)
    return None
