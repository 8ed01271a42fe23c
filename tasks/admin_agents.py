"""Operators' page of registered agents (``agents.Agent``): state badges, load, last heartbeat
and the tasks each holds; pause, drain and resume (the same services as the API). Served from
tasks, which knows what an agent holds; registered by ``tasks.admin``."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html_join

from accounts.admin_access import ProjectRoleAdmin
from accounts.models import Role
from agents import services
from agents.models import Agent, AgentState
from core.admin_actions import apply_each
from core.admin_badges import AGENT_COLOURS, status_badge
from tasks.models import Status, Task

HELD = Q(claims__status=Status.RUNNING, claims__lease_expires_at__isnull=False)


class AgentStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(AgentState.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(computed_state=self.value()) if self.value() else queryset


@admin.register(Agent)
class AgentAdmin(ProjectRoleAdmin):
    """Viewers of a project see its agents; members pause, drain and resume them. Agents are
    registered through the API (which hands out their key, once) and never edited here."""

    write_role = Role.MEMBER
    list_display = ("name", "badge", "project", "load", "heartbeat", "labels_shown", "version", "platform")
    list_filter = (AgentStateFilter, "project")
    search_fields = ("name", "type")
    actions = ("pause", "drain", "resume")
    fields = (
        ("name", "type", "project"),
        ("badge", "mode", "pause_note", "paused_until"),
        ("labels", "capacity"),
        ("version", "platform"),
        ("last_heartbeat_at", "offline_since"),
        "holding",
        ("created_by", "created_at"),
    )
    readonly_fields = (
        "name",
        "type",
        "project",
        "badge",
        "mode",
        "pause_note",
        "paused_until",
        "labels",
        "capacity",
        "version",
        "platform",
        "last_heartbeat_at",
        "offline_since",
        "holding",
        "created_by",
        "created_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .alive()
            .with_state()
            .annotate(held=Count("claims", filter=HELD))
            .select_related("project")
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # registering hands out the agent's key: the API does it (docs/agents.md)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # unregistering revokes its key and returns its work: DELETE /agents/{id}

    @admin.display(description="state", ordering="computed_state")
    def badge(self, agent: Agent) -> str:
        return status_badge(getattr(agent, "computed_state", None) or agent.state_at(), AGENT_COLOURS)

    @admin.display(description="load")
    def load(self, agent: Agent) -> str:
        return f"{agent.held} / {agent.capacity}"

    @admin.display(description="last heartbeat", ordering="last_heartbeat_at")
    def heartbeat(self, agent: Agent) -> str:
        if agent.last_heartbeat_at is None:
            return "never"
        return f"{(timezone.now() - agent.last_heartbeat_at).total_seconds():.0f} s ago"

    @admin.display(description="labels")
    def labels_shown(self, agent: Agent) -> str:
        return ", ".join(agent.capabilities)

    @admin.display(description="current tasks")
    def holding(self, agent: Agent) -> str:
        tasks = Task.objects.held_by(agent).order_by("claimed_at", "id")
        if not tasks:
            return "none"
        return format_html_join(
            "",
            '<div><a href="{}">{}</a> since {} {}</div>',
            (
                (
                    reverse("admin:tasks_task_change", args=[task.pk]),
                    task.name,
                    task.claimed_at.isoformat(timespec="seconds") if task.claimed_at else "",
                    "" if task.progress is None else f"({task.progress:.0%})",
                )
                for task in tasks
            ),
        )

    @admin.action(description="Pause the selected agents (no new work)")
    def pause(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self, request, queryset, "Paused", lambda a: services.agent_pause(agent=a, actor=request.user)
        )

    @admin.action(description="Drain the selected agents (finish, then nothing new)")
    def drain(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self, request, queryset, "Draining", lambda a: services.agent_drain(agent=a, actor=request.user)
        )

    @admin.action(description="Resume the selected agents")
    def resume(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self, request, queryset, "Resumed", lambda a: services.agent_resume(agent=a, actor=request.user)
        )
