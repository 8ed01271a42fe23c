"""Operators' UI for schedules: next fire (local and UTC), last outcome, paused badge and reason,
pause / resume / run-now actions and the fire log inline. Every change goes through
``schedules.services`` (the same calls the API makes)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from accounts.admin_access import ProjectRoleAdmin, ProjectRoleInline, projects_with_role
from accounts.models import Role
from core.admin_actions import apply_each
from core.admin_badges import GREY, status_badge
from schedules import services, timing
from schedules.models import FireOutcome, Schedule, ScheduleFire
from tasks.models import Task
from templates_app.models import Template

OUTCOME_COLOURS: dict[str, str] = {
    FireOutcome.FIRED: "#16a34a",
    FireOutcome.SKIPPED_OVERLAP: "#d97706",
    FireOutcome.MISSED: GREY,
    FireOutcome.PAUSED: "#2563eb",
    FireOutcome.INVALID: "#dc2626",
}
STATE_COLOURS: dict[str, str] = {"active": "#16a34a", "paused": "#2563eb"}


class ScheduleForm(forms.ModelForm):
    class Meta:
        model = Schedule
        fields = ("project", *services.WRITABLE_FIELDS)

    def _post_clean(self) -> None:
        super()._post_clean()
        # The service's checks (cron, zone, parameters against the template), shown on the form.
        if self.instance.project_id is None:
            return
        for field, _code, message in services.schedule_errors(self.instance):
            name = field.split(".")[0]
            self.add_error(name if name in self.fields else None, ValidationError(f"{field}: {message}"))


class ScheduleFireInline(ProjectRoleInline, admin.TabularInline):
    model = ScheduleFire
    fields = ("scheduled_for", "kind", "outcome_badge", "reason", "task", "execution", "created_at")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-scheduled_for", "-id")
    verbose_name_plural = "fires (newest first)"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("task", "execution")

    @admin.display(description="outcome")
    def outcome_badge(self, fire: ScheduleFire) -> str:
        return status_badge(fire.outcome, OUTCOME_COLOURS)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Schedule)
class ScheduleAdmin(ProjectRoleAdmin):
    """Schedules are changed by the project's admins (like templates); members may run one now."""

    write_role = Role.ADMIN
    action_roles = {"run_now": Role.MEMBER}
    form = ScheduleForm
    list_display = ("name", "project", "when", "state", "next_fire_local", "next_fire_utc", "last")
    list_filter = ("enabled", "overlap_policy", "misfire_policy")
    list_select_related = ("project",)
    search_fields = ("name", "description")
    readonly_fields = (
        "id",
        "state",
        "next_fire_local",
        "next_fire_utc",
        "due_at",
        "pending_slot",
        "last",
        "created_by",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("id", "project", "name", "description", "enabled", "state")}),
        ("What it runs", {"fields": ("template", "parameters", "overrides", "task")}),
        (
            "When",
            {"fields": ("cron", "timezone", "interval_seconds", ("start_at", "end_at"), "jitter_seconds")},
        ),
        (
            "Policies",
            {
                "fields": (
                    "overlap_policy",
                    "misfire_policy",
                    "catchup_window_seconds",
                    "pause_after_failures",
                )
            },
        ),
        (
            "Next and last",
            {"fields": (("next_fire_local", "next_fire_utc"), "due_at", "pending_slot", "last")},
        ),
        (None, {"fields": (("created_by", "created_at", "updated_at"),)}),
    )
    inlines = (ScheduleFireInline,)
    actions = ("pause", "resume", "run_now")

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        # Only templates and tasks of projects the operator administers: never another tenant's.
        if db_field.related_model in (Template, Task):
            model = db_field.related_model
            queryset = model._default_manager.all()
            if not request.user.is_superuser:
                projects = projects_with_role(request.user, self.write_role).values_list("pk", flat=True)
                queryset = queryset.filter(project__in=list(projects))
            kwargs["queryset"] = queryset.select_related("project")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="when")
    def when(self, schedule: Schedule) -> str:
        return schedule.when_text

    @admin.display(description="state", ordering="enabled")
    def state(self, schedule: Schedule) -> str:
        if schedule.enabled:
            return status_badge("active", STATE_COLOURS)
        return format_html("{} {}", status_badge("paused", STATE_COLOURS), schedule.paused_reason)

    @admin.display(description="next fire (local)", ordering="next_fire_at")
    def next_fire_local(self, schedule: Schedule) -> str:
        if schedule.next_fire_at is None:
            return "—"
        return timing.describe(schedule.next_fire_at, timing.zone(schedule.timezone))["local"]  # type: ignore[return-value]

    @admin.display(description="next fire (UTC)", ordering="next_fire_at")
    def next_fire_utc(self, schedule: Schedule) -> str:
        return "—" if schedule.next_fire_at is None else f"{schedule.next_fire_at:%Y-%m-%d %H:%M:%S} UTC"

    @admin.display(description="last outcome", ordering="last_scheduled_for")
    def last(self, schedule: Schedule) -> str:
        if not schedule.last_outcome:
            return "—"
        return format_html(
            "{} {}",
            status_badge(schedule.last_outcome, OUTCOME_COLOURS),
            f"{schedule.last_scheduled_for:%Y-%m-%d %H:%M:%S} UTC" if schedule.last_scheduled_for else "",
        )

    def save_model(self, request: HttpRequest, obj: Schedule, form: forms.ModelForm, change: bool) -> None:
        fields = {
            name: form.cleaned_data[name] for name in services.WRITABLE_FIELDS if name in form.cleaned_data
        }
        if change:
            changed = {name: value for name, value in fields.items() if name in form.changed_data}
            services.schedule_update(schedule=obj, actor=request.user, fields=changed)
            obj.refresh_from_db()
            return
        schedule = services.schedule_create(
            project=form.cleaned_data["project"], actor=request.user, **fields
        )
        obj.pk = schedule.pk
        obj._state.adding = False
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Schedule) -> None:
        services.schedule_delete(schedule=obj, actor=request.user)

    @admin.action(description="Pause selected schedules", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self,
            request,
            queryset,
            "Paused:",
            lambda s: services.schedule_pause(schedule=s, actor=request.user),
        )

    @admin.action(description="Resume selected schedules (no backfill)", permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self,
            request,
            queryset,
            "Resumed:",
            lambda s: services.schedule_resume(schedule=s, actor=request.user),
        )

    @admin.action(description="Run now (obeying the overlap policy)", permissions=["view"])
    def run_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self,
            request,
            queryset,
            "Ran:",
            lambda s: services.schedule_trigger(schedule=s, actor=request.user),
        )
