"""The outbox in the admin, read-only: who changed what, when (viewers of the project)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from accounts.admin_access import ProjectRoleAdmin
from events.models import Event


@admin.register(Event)
class EventAdmin(ProjectRoleAdmin):
    """The outbox, read-only: who changed what, when (viewers of the project)."""

    list_display = ("created_at", "type", "task_id", "project", "actor", "actor_key_prefix")
    list_filter = ("type",)
    list_select_related = ("project", "actor")
    date_hierarchy = "created_at"
    search_fields = ("type",)
    readonly_fields = ("created_at", "type", "task_id", "project", "actor", "actor_key_prefix", "data")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
