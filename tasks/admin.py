"""Operators' UI for tasks. Every change goes through ``tasks.services``, with the operator as
the actor, so the admin writes the same history the API does."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from accounts.admin_access import ProjectRoleAdmin, ProjectRoleInline
from accounts.models import Project, Role
from core.admin_actions import apply_each
from core.admin_badges import EXECUTION_COLOURS, status_badge
from events.models import Event
from tasks import admin_agents, services
from tasks.models import Note, Status, Task


class ProjectTaskCountFilter(admin.SimpleListFilter):
    """Projects the operator belongs to, each with its number of tasks."""

    title = "project"
    parameter_name = "project"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        projects = (
            Project.objects.visible_to(request.user).annotate(task_count=Count("tasks")).order_by("name")
        )
        return [(str(p.pk), f"{p.name} ({p.task_count})") for p in projects]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(project_id=self.value()) if self.value() else queryset


class UnroutableFilter(admin.SimpleListFilter):
    """Tasks no online agent can take (tasks.unroutable)."""

    title = "routing"
    parameter_name = "unroutable"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "no online agent can take it")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(unroutable_since__isnull=False) if self.value() == "yes" else queryset


class NoteFormSet(BaseInlineFormSet):
    def save_new(self, form: ModelForm, commit: bool = True) -> Note:
        return services.note_create(
            task=self.instance, actor=self.request.user, body=form.cleaned_data["body"]
        )


class NoteInline(ProjectRoleInline, admin.TabularInline):
    """Adding a note needs the member role in the task's project (as ``POST …/notes``)."""

    model = Note
    formset = NoteFormSet
    extra = 1
    fields = ("body", "author", "created_at")
    readonly_fields = ("author", "created_at")

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        formset = super().get_formset(request, obj, **kwargs)
        formset.request = request
        return formset

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # notes are a record: add, never edit

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EventInline(ProjectRoleInline, admin.TabularInline):
    model = Event
    fields = ("created_at", "type", "actor", "actor_key_prefix", "data")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-created_at", "-id")
    verbose_name_plural = "history"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TaskAdmin(ProjectRoleAdmin):
    """Viewers read; members create, change, run, move, archive and delete (as the API)."""

    write_role = Role.MEMBER
    change_form_template = "admin/tasks/task/change_form.html"

    list_display = (
        "name",
        "badge",
        "project",
        "last_run",
        "priority",
        "script_type",
        "agent",
        "claimed_by",
        "archived",
        "created_at",
    )
    list_filter = ("status", ProjectTaskCountFilter, "script_type", "archived", UnroutableFilter)
    list_select_related = ("project", "claimed_by", "last_execution")
    date_hierarchy = "created_at"
    search_fields = ("name", "description", "agent")
    readonly_fields = (
        "id",
        "badge",
        "dependencies",
        "result",
        "claimed_by",
        "claimed_by_key",
        "claimed_by_agent",
        "assigned_agent",
        "unroutable_since",
        "progress",
        "claimed_at",
        "lease_expires_at",
        "parameters",
        "created_by",
        "created_at",
        "updated_at",
    )
    fields = (
        "id",
        "project",
        "name",
        "description",
        "badge",
        ("script_type", "timeout_seconds"),
        "script_content",
        ("priority", "agent"),
        ("required_labels", "assigned_agent", "unroutable_since"),
        "tags",
        "metadata",
        ("due_date", "estimated_hours"),
        ("max_retries", "max_concurrency"),
        "archived",
        "dependencies",
        "result",
        ("claimed_by", "claimed_by_key", "claimed_by_agent"),
        ("claimed_at", "lease_expires_at", "progress"),
        "parameters",
        ("created_by", "created_at", "updated_at"),
    )
    # templates_app.admin registers the full TaskAdmin (this one with the executions inline,
    # Run now / Run with parameters and the execute action): those need the layers above tasks.
    inlines = (NoteInline, EventInline)
    actions = ("archive", "cancel", "back_to_pending")

    @admin.display(description="status", ordering="status")
    def badge(self, task: Task) -> str:
        return status_badge(task.status)

    @admin.display(description="last run")
    def last_run(self, task: Task) -> str:
        execution = task.last_execution
        if execution is None:
            return "-"

        took = f" {execution.duration_ms / 1000:.1f} s" if execution.duration_ms is not None else ""
        url = reverse("admin:executions_execution_change", args=[execution.pk])
        return format_html(
            '<a href="{}">#{}</a> {}{}',
            url,
            execution.number,
            status_badge(execution.status, EXECUTION_COLOURS),
            took,
        )

    @admin.display(description="depends on")
    def dependencies(self, task: Task) -> str:
        items = task.depends_on.only("id", "name", "status") if task.pk else []
        return format_html_join(", ", "{} {}", ((d.name, status_badge(d.status)) for d in items)) or "-"

    def save_model(self, request: HttpRequest, obj: Task, form: ModelForm, change: bool) -> None:
        fields = {
            name: form.cleaned_data[name] for name in services.WRITABLE_FIELDS if name in form.cleaned_data
        }
        if change:
            changed = {name: value for name, value in fields.items() if name in form.changed_data}
            services.task_update(task=obj, actor=request.user, fields=changed)
            obj.refresh_from_db()
            return
        task = services.task_create(project=form.cleaned_data["project"], actor=request.user, **fields)
        obj.pk = task.pk
        obj._state.adding = False
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Task) -> None:
        services.task_delete(task=obj, actor=request.user)

    @admin.action(description="Archive selected tasks", permissions=["change"])
    def archive(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self,
            request,
            queryset,
            "Archived",
            lambda task: services.task_update(task=task, actor=request.user, fields={"archived": True}),
        )

    @admin.action(description="Cancel selected tasks", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self,
            request,
            queryset,
            "Cancelled",
            lambda task: services.task_move(
                task=task, to_status=Status.CANCELLED, actor=request.user, reason="admin"
            ),
        )

    @admin.action(description="Move selected tasks back to pending", permissions=["change"])
    def back_to_pending(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self,
            request,
            queryset,
            "Moved back to pending",
            lambda task: services.task_move(
                task=task, to_status=Status.PENDING, actor=request.user, reason="admin"
            ),
        )


__all__ = ["TaskAdmin", "admin_agents"]  # admin_agents registers the Agent admin
