"""Every write to the agent registry: register, pause, resume, drain, delete, signs of life and
the sweep that finds silent agents. Each change of state writes an ``agent.*`` event in its
transaction and calls ``agents.hooks.on_agent_change`` (tasks returns an offline agent's work).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, Project, User
from accounts.services import api_key_create, api_key_revoke
from agents.hooks import agent_changed
from agents.models import NOTE_MAX, Agent, AgentState, Mode, parse_labels
from core.errors import Conflict, field_error
from events.models import EventType
from events.services import event_record

# The scopes of an agent-bound key: what claiming and finishing tasks and beating need. What
# the key may actually call is narrower still (the views' ``agent_actions``).
AGENT_KEY_SCOPES = ["agent:write", "task:write"]
REGISTER_FIELDS = ("name", "type", "labels", "capacity", "version", "platform")


def _record(
    agent: Agent,
    type: str,
    *,
    old: str,
    actor: User | None,
    api_key: ApiKey | None = None,
    now: datetime | None = None,
    **extra: Any,
) -> None:
    """The ``agent.*`` event of a change (``from``/``to`` are states), then the hooks."""
    new = AgentState.OFFLINE if type == EventType.AGENT_DELETED else agent.state_at(now)
    event_record(
        type=type,
        project=agent.project_id,
        task=None,
        actor=actor,
        api_key=api_key,
        data={"agent_id": str(agent.pk), "name": agent.name, "from": old, "to": new, **extra},
    )
    agent_changed(agent=agent, change=type)


def _locked(agent: Agent) -> Agent:
    return Agent.objects.select_for_update().get(pk=agent.pk, deleted_at__isnull=True)


@transaction.atomic
def agent_register(
    *, project: Project, actor: User, api_key: ApiKey | None = None, **fields: Any
) -> tuple[Agent, str]:
    """Register an agent in ``project`` and mint its agent-bound key (returned once).

    The key is made by ``accounts.services.api_key_create`` with the caller's key as its
    parent, so it is never wider than the key that registered it. The agent is offline until
    its first heartbeat or claim.
    """
    unknown = set(fields) - set(REGISTER_FIELDS)
    if unknown:
        raise TypeError(f"not agent fields: {sorted(unknown)}")
    if "labels" in fields:
        fields["labels"] = parse_labels(fields["labels"] or {})
    name = str(fields.get("name", "")).strip()
    if Agent.objects.alive().filter(project=project, name=name).exists():
        raise field_error("name", f"This project already has an agent named {name!r}.", "unique")
    now = timezone.now()
    agent = Agent(
        project=project,
        created_by=actor,
        created_at=now,
        updated_at=now,
        offline_since=now,
        **{**fields, "name": name},
    )
    agent.full_clean(exclude=["api_key"])
    key, raw = api_key_create(
        owner=actor,
        name=f"agent {name}"[:50],
        scopes=AGENT_KEY_SCOPES,
        project=project,
        creator_key=api_key,
        agent_bound=True,
    )
    agent.api_key = key
    agent.save(force_insert=True)
    _record(agent, EventType.AGENT_REGISTERED, old=AgentState.OFFLINE, actor=actor, api_key=api_key, now=now)
    return agent, raw


@transaction.atomic
def agent_pause(
    *,
    agent: Agent,
    actor: User,
    api_key: ApiKey | None = None,
    note: str = "",
    until: datetime | None = None,
) -> Agent:
    """Stop giving the agent new work (it keeps what it holds), with a note, until ``until``
    (then it resumes by itself) or until resumed."""
    now = timezone.now()
    if until is not None and until <= now:
        raise field_error("until", "Must be in the future.", "in_the_past")
    if len(note) > NOTE_MAX:
        raise field_error("note", f"At most {NOTE_MAX} characters.", "max_length")
    agent = _locked(agent)
    old = agent.state_at(now)
    agent.mode, agent.pause_note, agent.paused_until, agent.updated_at = Mode.PAUSED, note.strip(), until, now
    agent.save(update_fields=["mode", "pause_note", "paused_until", "updated_at"])
    _record(
        agent,
        EventType.AGENT_PAUSED,
        old=old,
        actor=actor,
        api_key=api_key,
        now=now,
        note=agent.pause_note,
        until=until.isoformat() if until else None,
    )
    return agent


@transaction.atomic
def agent_drain(*, agent: Agent, actor: User, api_key: ApiKey | None = None) -> Agent:
    """Let the agent finish what it holds and give it nothing new; its heartbeats answer
    ``drain`` (the agent should exit once idle)."""
    now = timezone.now()
    agent = _locked(agent)
    old = agent.state_at(now)
    agent.mode, agent.pause_note, agent.paused_until, agent.updated_at = Mode.DRAINING, "", None, now
    agent.save(update_fields=["mode", "pause_note", "paused_until", "updated_at"])
    _record(agent, EventType.AGENT_DRAINING, old=old, actor=actor, api_key=api_key, now=now)
    return agent


def _resume(agent: Agent, *, now: datetime, actor: User | None, api_key: ApiKey | None, reason: str) -> Agent:
    old = agent.state_at(now)
    agent.mode, agent.pause_note, agent.paused_until, agent.updated_at = Mode.ACTIVE, "", None, now
    agent.save(update_fields=["mode", "pause_note", "paused_until", "updated_at"])
    _record(agent, EventType.AGENT_RESUMED, old=old, actor=actor, api_key=api_key, now=now, reason=reason)
    return agent


@transaction.atomic
def agent_resume(*, agent: Agent, actor: User, api_key: ApiKey | None = None) -> Agent:
    """Undo a pause or a drain (409 if the agent is neither)."""
    now = timezone.now()
    agent = _locked(agent)
    if agent.mode == Mode.ACTIVE:
        raise Conflict(
            "The agent is neither paused nor draining.", code="not_paused", current_status=agent.state_at(now)
        )
    return _resume(agent, now=now, actor=actor, api_key=api_key, reason="resume")


@transaction.atomic
def agent_delete(*, agent: Agent, actor: User, api_key: ApiKey | None = None) -> None:
    """Unregister: its key is revoked, its claims return to pending (the tasks hook), the row
    stays for the history and is never listed again."""
    now = timezone.now()
    agent = _locked(agent)
    old = agent.state_at(now)
    agent.deleted_at = agent.updated_at = now
    agent.save(update_fields=["deleted_at", "updated_at"])
    if agent.api_key is not None:
        api_key_revoke(api_key=agent.api_key)
    _record(agent, EventType.AGENT_DELETED, old=old, actor=actor, api_key=api_key, now=now)


def agent_touch(
    *, agent: Agent, now: datetime, actor: User | None = None, api_key: ApiKey | None = None, **fields: Any
) -> Agent:
    """A sign of life (a heartbeat, a claim) from ``agent``, whose row the caller has locked:
    an offline agent is online again (``agent.online``). ``fields`` (version, platform) are
    what the agent reports of itself."""
    was = agent.state_at(now)
    agent.last_heartbeat_at = agent.updated_at = now
    changed = ["last_heartbeat_at", "updated_at"]
    for name, value in fields.items():
        if value is not None and getattr(agent, name) != value:
            setattr(agent, name, value)
            changed.append(name)
    came_back = agent.offline_since is not None or was == AgentState.OFFLINE
    if came_back:
        agent.offline_since = None
        changed.append("offline_since")
    agent.save(update_fields=changed)
    if came_back:
        _record(agent, EventType.AGENT_ONLINE, old=AgentState.OFFLINE, actor=actor, api_key=api_key, now=now)
    return agent


def agent_mark_offline(*, agent: Agent, now: datetime) -> bool:
    """Mark a silent agent offline (once, whoever sweeps); False when it spoke meanwhile."""
    with transaction.atomic():
        marked = Agent.objects.lapsed(now).filter(pk=agent.pk).update(offline_since=now, updated_at=now)
        if not marked:
            return False
        agent.refresh_from_db()
        old = AgentState.DRAINING if agent.mode == Mode.DRAINING else AgentState.ONLINE
        _record(
            agent,
            EventType.AGENT_OFFLINE,
            old=old,
            actor=None,
            now=now,
            last_heartbeat=agent.last_heartbeat_at.isoformat() if agent.last_heartbeat_at else None,
        )
    return True


def agents_sweep(*, now: datetime | None = None, limit: int = 500) -> int:
    """Mark silent agents offline (their work returns, through the tasks hook) and end pauses
    whose ``until`` passed. Safe from any number of processes at once. Returns the changes."""
    now = now or timezone.now()
    changed = 0
    for agent in list(Agent.objects.lapsed(now)[:limit]):
        changed += agent_mark_offline(agent=agent, now=now)
    expired = Agent.objects.alive().filter(mode=Mode.PAUSED, paused_until__lte=now)
    for pk in list(expired.values_list("pk", flat=True)[:limit]):
        with transaction.atomic():
            agent = (
                Agent.objects.select_for_update()
                .filter(pk=pk, mode=Mode.PAUSED, paused_until__lte=now)
                .first()
            )
            if agent is not None:
                _resume(agent, now=now, actor=None, api_key=None, reason="pause_expired")
                changed += 1
    return changed
