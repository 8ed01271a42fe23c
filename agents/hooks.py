"""Hooks the layers above agents register, so an agent's change reaches its tasks without
agents importing tasks (the arrow stays downward).

``on_agent_change``: called by ``agents.services`` inside the transaction of a change, with the
agent's row locked, after the change is written. ``change`` is the event type
(``agent.offline``, ``agent.deleted``, ``agent.paused`` ...). ``tasks`` registers the hook that
returns an offline or deleted agent's claims and re-checks which tasks no agent can take
(``tasks.routing.after_agent_change``, registered in ``tasks.apps``).
"""

from __future__ import annotations

from typing import Protocol

from agents.models import Agent


class AgentChangeHook(Protocol):
    def __call__(self, *, agent: Agent, change: str) -> None: ...


on_agent_change: list[AgentChangeHook] = []


def register_agent_change(hook: AgentChangeHook) -> None:
    """Add ``hook`` once (``AppConfig.ready`` may run more than once in tests)."""
    if hook not in on_agent_change:
        on_agent_change.append(hook)


def agent_changed(*, agent: Agent, change: str) -> None:
    for hook in on_agent_change:
        hook(agent=agent, change=change)
