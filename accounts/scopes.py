"""API key scopes: declared once, read by the one ``HasScope`` permission.

A scope is ``<object>:<read|write>`` or ``*``; write implies read. The ``account`` object
(the caller's own keys, projects and members) has no scope of its own: any valid key reads
it, and changing it needs ``*`` so a narrow key can never mint a wider one.
"""

from __future__ import annotations

from typing import Literal, get_args

ScopeObject = Literal[
    "task",
    "execution",
    "template",
    "webhook",
    "secret",
    "trigger",
    "agent",
    "event",
    "schedule",
    "workflow",
    "account",
]
ScopeAction = Literal["read", "write"]

SCOPE_OBJECTS: tuple[str, ...] = get_args(ScopeObject)
# Objects that API keys carry scopes for; "account" is governed by "*" (see above).
KEY_SCOPE_OBJECTS: tuple[str, ...] = (
    "task",
    "execution",
    "template",
    "webhook",
    "secret",
    "trigger",
    "agent",
    "event",
    "schedule",
    "workflow",
)
# Objects nothing writes through the API (the outbox is written by the changes themselves):
# they have a read scope only.
READ_ONLY_SCOPE_OBJECTS: tuple[str, ...] = ("event",)
ALL_SCOPE = "*"
SCOPES: tuple[str, ...] = (
    *(
        f"{obj}:{action}"
        for obj in KEY_SCOPE_OBJECTS
        for action in get_args(ScopeAction)
        if action == "read" or obj not in READ_ONLY_SCOPE_OBJECTS
    ),
    ALL_SCOPE,
)


def required_scope(obj: ScopeObject, action: ScopeAction) -> str:
    """The scope a request needs for ``action`` on ``obj`` (``*`` for account writes)."""
    if obj == "account":
        return ALL_SCOPE if action == "write" else ""
    return f"{obj}:{action}"


def scopes_grant(granted: list[str] | tuple[str, ...], needed: str) -> bool:
    """True when ``granted`` covers ``needed``; ``x:write`` covers ``x:read``."""
    if not needed or ALL_SCOPE in granted:
        return True
    if needed in granted:
        return True
    obj, _, action = needed.partition(":")
    return action == "read" and f"{obj}:write" in granted


def normalize_scopes(scopes: list[str]) -> list[str]:
    """Deduplicate and order scopes; raises ValueError naming an unknown one."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; allowed: {', '.join(SCOPES)}")
    if ALL_SCOPE in scopes:
        return [ALL_SCOPE]
    return [s for s in SCOPES if s in scopes]
