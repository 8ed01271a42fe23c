"""Authorization: one scope permission and one project-role permission.

A request needs the scope of its action (keys only; session logins carry every scope)
**and** the role in the object's project. Both deny by default.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from rest_framework import exceptions, permissions
from rest_framework.request import Request

from accounts.models import ApiKey, Membership, Project, Role, role_at_least
from accounts.scopes import SCOPE_OBJECTS, required_scope

if TYPE_CHECKING:
    from rest_framework.views import APIView

READ_ACTIONS = {"list", "retrieve", "metadata"}


def action_kind(request: Request, view: APIView) -> str:
    """``read`` or ``write`` for this request; an ``@action`` may name its own."""
    declared = getattr(view, "scope_action", None)
    if declared:
        return declared
    action = getattr(view, "action", None)
    if action in READ_ACTIONS or request.method in permissions.SAFE_METHODS:
        return "read"
    return "write"


def declared_scopes(request: Request, view: APIView) -> tuple[str, ...]:
    """The scopes a request needs before any data is read, in the order they are checked.

    The scope of ``view.scope_object`` for the action's kind, then the scopes the view or its
    ``@action(..., scopes=(...))`` adds (a template trigger needs ``task:write`` too).
    """
    scope_object = getattr(view, "scope_object", None)
    if scope_object not in SCOPE_OBJECTS:
        raise ImproperlyConfigured(f"{type(view).__name__} must declare scope_object, one of {SCOPE_OBJECTS}")
    own = required_scope(scope_object, action_kind(request, view))  # type: ignore[arg-type]
    return tuple(scope for scope in (own, *(getattr(view, "scopes", None) or ())) if scope)


class MissingScope(exceptions.PermissionDenied):
    default_code = "missing_scope"

    def __init__(self, scope: str) -> None:
        label = "'*' (all scopes)" if scope == "*" else f"'{scope}'"
        super().__init__(detail=f"This API key lacks the scope {label} needed here.")
        self.required_scope = scope


class AgentKeyDenied(exceptions.PermissionDenied):
    default_code = "agent_key_forbidden"

    def __init__(self) -> None:
        super().__init__(
            detail="This key belongs to a registered agent: it may only claim, heartbeat, complete, "
            "fail or release that agent's tasks and read them and the agent itself."
        )


def agent_key_allowed(request: Request, view: APIView) -> bool:
    """An agent-bound key (``ApiKey.agent_bound``) reaches only the actions a view lists in
    ``agent_actions``: deny by default, so a new view never widens what an agent's key can do."""
    return getattr(view, "action", None) in (getattr(view, "agent_actions", None) or ())


class HasScope(permissions.BasePermission):
    """Reads ``view.required_scopes(request)`` (the sealed base's hook; by default
    ``declared_scopes``): read actions need ``<obj>:read``, writes ``<obj>:write`` (write
    implies read), plus what the view or its ``@action`` declares. The 403 names the first
    scope the key lacks. A view without a valid scope object is a programming error."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        declared_scopes(request, view)  # a view without a valid scope object fails loudly, always
        if not (request.user and request.user.is_authenticated):
            return False  # DRF turns this into 401 with WWW-Authenticate
        if not isinstance(request.auth, ApiKey):
            return True  # session login (operators in the browsable API): every scope
        if request.auth.agent_bound and not agent_key_allowed(request, view):
            raise AgentKeyDenied()
        hook = getattr(view, "required_scopes", None)
        needed = hook(request) if hook is not None else declared_scopes(request, view)
        for scope in needed:
            if not request.auth.grants(scope):
                raise MissingScope(scope)
        return True


def project_role(user: Any, project: Project | uuid.UUID | None) -> str | None:
    """The user's role in ``project`` (a Project or its id); superusers act as admins everywhere."""
    if project is None:
        return None
    if user.is_superuser:
        return Role.ADMIN
    return Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()


class RoleDenied(exceptions.PermissionDenied):
    default_code = "insufficient_role"

    def __init__(self, role: str | None, needed: str) -> None:
        super().__init__(
            detail=f"Your role in this project is {role or 'none'}; this needs {needed} or above."
        )


def require_role(request: Request, project: Project | uuid.UUID, needed: str) -> None:
    """Raise 403 unless the caller's role in ``project`` is at least ``needed``."""
    role = project_role(request.user, project)
    if not role_at_least(role, needed):
        raise RoleDenied(role, needed)


class HasProjectRole(permissions.BasePermission):
    """Writes on an object need ``view.write_role`` in the object's project.

    Reading needs only visibility, which the queryset already guarantees (another
    project's object is never found, so it answers 404, not 403).
    """

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        if action_kind(request, view) == "read":
            return True
        project = view.project_of(obj)
        if project is None:
            return True  # user-owned objects (API keys): the queryset already limits to owner
        require_role(request, project, view.write_role)
        return True
