"""The admin's one authorization rule: the caller's role in the object's project, checked the
way the API checks it (``accounts.permissions.project_role``), on every save, delete, inline
and action.

Django's model permissions (``change_task``, ...) only open a page; the project role decides
what may be done on it. Superusers act as admins of every project, as in the API.

- ``require_project_role(request, project, role)`` raises ``PermissionDenied`` (403) unless the
  caller's role in ``project`` is at least ``role``.
- ``ProjectRoleAdmin`` (a ``ModelAdmin`` mixin) declares where an object's project is
  (``project_path``), the role needed to see it (``view_role``), to change or delete it
  (``write_role``) and to run each action (``action_roles``, default ``write_role``). It scopes
  the change list and the foreign-key choices, refuses saves and deletes, and wraps every action
  (``delete_selected`` included) so a selection with one object outside the caller's role
  changes nothing.
- ``ProjectRoleInline`` checks the parent object's project for the inline's add, change and
  delete.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from accounts.models import Project, Role, role_at_least
from accounts.permissions import project_role
from core.admin_actions import apply_each


def role_denied_message(role: str | None, needed: str) -> str:
    return f"Your role in this project is {role or 'none'}; this needs {needed} or above."


def require_project_role(request: HttpRequest, project: Project | uuid.UUID | None, role: str) -> None:
    """Raise ``PermissionDenied`` unless ``request.user``'s role in ``project`` is at least ``role``."""
    held = project_role(request.user, project)
    if not role_at_least(held, role):
        raise PermissionDenied(role_denied_message(held, role))


def has_project_role(request: HttpRequest, project: Project | uuid.UUID | None, role: str) -> bool:
    try:
        require_project_role(request, project, role)
    except PermissionDenied:
        return False
    return True


def projects_with_role(user: Any, role: str) -> QuerySet:
    """The projects where ``user`` holds ``role`` or above (every project for superusers)."""
    if not user.is_authenticated:
        return Project.objects.none()
    if user.is_superuser:
        return Project.objects.all()
    roles = [r for r in Role.values if role_at_least(r, role)]
    return Project.objects.filter(memberships__user=user, memberships__role__in=roles)


def _project_id_of(obj: Model, path: str) -> Any:
    """Follow ``path`` (``project``, ``subscription__project``, ``pk``) to the project's id."""
    *hops, last = path.split("__")
    for hop in hops:
        obj = getattr(obj, hop)
    if last == "pk":
        return obj.pk
    return getattr(obj, f"{last}_id")


class ProjectRoleAdmin(admin.ModelAdmin):
    """A ``ModelAdmin`` for objects that live in a project (see the module docstring)."""

    project_path: str = "project"
    view_role: str = Role.VIEWER
    write_role: str = Role.MEMBER
    action_roles: dict[str, str] = {}

    # --- where an object's project is ------------------------------------------------------------
    def project_of(self, obj: Model) -> Any:
        """The id of ``obj``'s project (``None`` while it has none)."""
        try:
            return _project_id_of(obj, self.project_path)
        except (AttributeError, Model.DoesNotExist):
            return None

    def stored_project_of(self, obj: Model) -> Any:
        """The project ``obj`` has in the database (a form may have changed the instance)."""
        if obj.pk is None:
            return None
        path = "pk" if self.project_path == "pk" else self.project_path
        return self.model._default_manager.filter(pk=obj.pk).values_list(path, flat=True).first()

    # --- what the caller sees ---------------------------------------------------------------------
    def get_queryset(self, request: HttpRequest) -> QuerySet:
        qs = super().get_queryset(request)
        if request.user.is_superuser:
            return qs
        projects = projects_with_role(request.user, self.view_role).values_list("pk", flat=True)
        return qs.filter(**{f"{self.project_path}__in": list(projects)})

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.related_model is Project:
            kwargs["queryset"] = projects_with_role(request.user, self.write_role).distinct()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        if obj is not None and self.project_path == "project" and "project" not in fields:
            return (*fields, "project")  # an object never moves to another project
        return fields

    # --- what the caller may do -------------------------------------------------------------------
    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        if not super().has_add_permission(request, *args):
            return False
        return request.user.is_superuser or projects_with_role(request.user, self.write_role).exists()

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not super().has_change_permission(request, obj):
            return False
        return obj is None or has_project_role(request, self.project_of(obj), self.write_role)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not super().has_delete_permission(request, obj):
            return False
        return obj is None or has_project_role(request, self.project_of(obj), self.write_role)

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        """Every save (change form, add form, list_editable) passes here before ``save_model``:
        the role is checked in the project the object had and in the one it will have."""
        obj = super().save_form(request, form, change)
        if change:
            require_project_role(request, self.stored_project_of(obj), self.write_role)
        require_project_role(request, self.project_of(obj), self.write_role)
        return obj

    def action_role(self, name: str) -> str:
        return self.action_roles.get(name, self.write_role)

    def refuse_selection(self, request: HttpRequest, queryset: QuerySet, role: str) -> str | None:
        """Why the caller may not act on every object of ``queryset`` (None when they may)."""
        if request.user.is_superuser:
            return None
        path = "pk" if self.project_path == "pk" else self.project_path
        for project_id in queryset.order_by().values_list(path, flat=True).distinct():
            held = project_role(request.user, project_id)
            if not role_at_least(held, role):
                return role_denied_message(held, role)
        return None

    def get_actions(
        self, request: HttpRequest, action_location: Any = admin.ActionLocation.CHANGE_LIST
    ) -> Any:
        """Every action offered (the site's ``delete_selected`` too, on the change list or the
        change form) is guarded by its role."""
        actions = super().get_actions(request, action_location=action_location)
        return {
            name: dataclasses.replace(action, func=guard_action(action.func, name, self.action_role(name)))
            for name, action in actions.items()
        }

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        """``delete_selected``: one ``delete_model`` (a service call) per object, never a bulk
        delete that would skip the service; a refusal is reported, not a failed request."""
        reason = self.refuse_selection(request, queryset, self.write_role)
        if reason:
            raise PermissionDenied(reason)
        apply_each(self, request, queryset, "Deleted", lambda obj: self.delete_model(request, obj))


def guard_action(func: Callable[..., Any], name: str, role: str) -> Callable[..., Any]:
    """``func`` run only when the caller holds ``role`` in the project of every selected object;
    otherwise nothing happens and the change list says why."""

    @functools.wraps(func)
    def guarded(model_admin: ProjectRoleAdmin, request: HttpRequest, queryset: QuerySet) -> Any:
        reason = model_admin.refuse_selection(request, queryset, role)
        if reason:
            model_admin.message_user(request, f"Nothing was done ({name}): {reason}", messages.ERROR)
            return None
        return func(model_admin, request, queryset)

    guarded.required_role = role  # type: ignore[attr-defined]
    return guarded


class ProjectRoleInline(admin.options.InlineModelAdmin):
    """An inline whose rows live in the parent object's project: adding, changing and deleting
    rows needs ``write_role`` there (default: the parent admin's ``write_role``)."""

    write_role: str | None = None

    def _parent_admin(self) -> ProjectRoleAdmin:
        return self.admin_site._registry[self.parent_model]

    def _role(self) -> str:
        return self.write_role or self._parent_admin().write_role

    def _allowed(self, request: HttpRequest, obj: Any) -> bool:
        if obj is None:  # a parent being added: its own save checks the project
            return True
        return has_project_role(request, self._parent_admin().project_of(obj), self._role())

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) and self._allowed(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._allowed(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._allowed(request, obj)


def superuser_only(request: HttpRequest) -> bool:
    """For what lies outside every project (groups, workers, other users): superusers only."""
    return bool(request.user.is_active and request.user.is_superuser)
