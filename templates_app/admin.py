"""Operators' UI for templates: parameters edited inline, a trigger form with typed fields, and
the tasks each template made. Every change goes through ``templates_app.services``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from rest_framework.exceptions import APIException

from accounts.admin_access import ProjectRoleAdmin, ProjectRoleInline, require_project_role
from accounts.models import Role
from core.admin_actions import apply_each
from executions.admin import ExecutionInline
from executions.models import Trigger
from executions.services import execution_enqueue
from tasks.admin import EventInline, NoteInline
from tasks.admin import TaskAdmin as BaseTaskAdmin
from tasks.models import Task
from templates_app import parameters as params
from templates_app import services
from templates_app.models import ParameterType, Template, TemplateParameter
from vault.selectors import secret_names

SPEC_KEYS = tuple(key for key in params.KNOWN_KEYS)
RECENT_TASKS = 20


def _spec_from_forms(formset: BaseInlineFormSet) -> list[dict[str, Any]]:
    rows = []
    for form in formset.forms:
        data = getattr(form, "cleaned_data", None)
        if not data or data.get("DELETE") or not data.get("name"):
            continue
        rows.append((data.get("position") or 0, {key: data.get(key) for key in SPEC_KEYS}))
    rows.sort(key=lambda row: row[0])
    return [spec for _position, spec in rows]


class ParameterFormSet(BaseInlineFormSet):
    """Checks the whole template (declarations, placeholders) with the rows as edited."""

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        spec = _spec_from_forms(self)
        live = [
            f for f in self.forms if getattr(f, "cleaned_data", None) and not f.cleaned_data.get("DELETE")
        ]
        live = [f for f in live if f.cleaned_data.get("name")]
        live.sort(key=lambda f: f.cleaned_data.get("position") or 0)
        general = []
        for field, _code, message in services.template_errors(self.instance, spec):
            if field.startswith("parameters[") and "]." in field:
                index, key = field[len("parameters[") :].split("].", 1)
                form = live[int(index)]
                if key in form.fields:
                    form.add_error(key, message)
                    continue
            general.append(f"{field}: {message}" if field else message)
        if general:
            raise ValidationError(general)


class TemplateParameterInline(ProjectRoleInline, admin.TabularInline):
    model = TemplateParameter
    formset = ParameterFormSet
    extra = 1
    fields = (
        "position",
        "name",
        "type",
        "required",
        "secret",
        "default",
        "choices",
        "min",
        "max",
        "min_length",
        "max_length",
        "pattern",
        "description",
    )

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name in ("default", "choices", "min", "max") and field is not None:
            field.widget = forms.Textarea(attrs={"rows": 1, "cols": 14})
        return field


@admin.register(Template)
class TemplateAdmin(ProjectRoleAdmin):
    """Viewers and members read; admins of the project create, change and delete; members
    trigger (as the API)."""

    write_role = Role.ADMIN
    action_roles = {"trigger": Role.MEMBER}
    list_display = ("slug", "name", "project", "version", "script_type", "task_count", "updated_at")
    list_filter = ("script_type",)
    list_select_related = ("project",)
    search_fields = ("slug", "name", "description")
    readonly_fields = (
        "id",
        "version",
        "trigger_link",
        "recent_tasks",
        "created_by",
        "created_at",
        "updated_at",
    )
    fields = (
        ("id", "version"),
        "trigger_link",
        "project",
        ("slug", "name"),
        "description",
        "name_pattern",
        "description_pattern",
        "script_type",
        "script",
        ("timeout_seconds", "priority"),
        ("tags", "metadata"),
        ("agent", "max_retries", "max_concurrency"),
        "recent_tasks",
        ("created_by", "created_at", "updated_at"),
    )
    inlines = (TemplateParameterInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(n_tasks=Count("tasks"))

    @admin.display(description="tasks", ordering="n_tasks")
    def task_count(self, template: Template) -> int:
        return getattr(template, "n_tasks", 0)

    @admin.display(description="trigger")
    def trigger_link(self, template: Template) -> str:
        if not template.pk or template._state.adding:
            return "-"
        url = reverse("admin:templates_app_template_trigger", args=[template.pk])
        return format_html('<a class="button" href="{}">Trigger…</a>', url)

    @admin.display(description="tasks made from it")
    def recent_tasks(self, template: Template) -> str:
        if not template.pk or template._state.adding:
            return "-"
        tasks = template.tasks.order_by("-created_at", "-id").only("id", "name", "status", "template_version")
        rows = format_html_join(
            "",
            '<li><a href="{}">{}</a> ({}, v{})</li>',
            (
                (reverse("admin:tasks_task_change", args=[t.pk]), t.name, t.status, t.template_version)
                for t in tasks[:RECENT_TASKS]
            ),
        )
        total = template.tasks.count()
        return format_html("<ul>{}</ul>{} in all", rows, total) if total else "none yet"

    # --- saving through the services ------------------------------------------------------------
    def save_model(self, request: HttpRequest, obj: Template, form: ModelForm, change: bool) -> None:
        # The role was checked by save_form; the parameters arrive with the inline formset,
        # so the service runs in save_related.
        require_project_role(request, form.cleaned_data.get("project") or obj.project_id, self.write_role)

    def save_related(self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool) -> None:
        spec = next((_spec_from_forms(fs) for fs in formsets if isinstance(fs, ParameterFormSet)), [])
        fields = {
            name: form.cleaned_data[name] for name in services.WRITABLE_FIELDS if name in form.cleaned_data
        }
        if change:
            template = services.template_update(
                template=Template.objects.get(pk=form.instance.pk),
                actor=request.user,
                fields=fields,
                parameters=spec,
            )
        else:
            template = services.template_create(
                project=form.cleaned_data["project"], actor=request.user, parameters=spec, **fields
            )
        for formset in formsets:  # the service saved the rows; the change message reads these
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        form.instance.pk = template.pk
        form.instance._state.adding = False
        form.instance.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Template) -> None:
        require_project_role(request, obj.project_id, self.write_role)
        services.template_delete(template=obj, actor=request.user)

    # --- the trigger form -----------------------------------------------------------------------
    def get_urls(self) -> list[Any]:
        return [
            path(
                "<uuid:object_id>/trigger/",
                self.admin_site.admin_view(self.trigger_view),
                name="templates_app_template_trigger",
            ),
            *super().get_urls(),
        ]

    def trigger_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        template = get_object_or_404(self.get_queryset(request), pk=object_id)
        require_project_role(request, template.project_id, self.action_role("trigger"))
        spec = params.normalize_spec(template.spec())
        form = TriggerForm(spec, request.POST or None, secret_names=secret_names(template.project_id))
        if request.method == "POST" and form.is_valid():
            try:
                task, execution = services.template_trigger(
                    template=template,
                    actor=request.user,
                    parameters=form.values(),
                    execute=bool(template.script),
                    trigger=Trigger.ADMIN,
                )
            except ValidationError as exc:
                form.add_service_errors(exc)
            except APIException as exc:
                messages.error(request, str(exc.detail))
            else:
                if execution is not None:
                    messages.success(
                        request, f"Triggered: execution #{execution.number} of {task.name} queued."
                    )
                    return HttpResponseRedirect(
                        reverse("admin:executions_execution_change", args=[execution.pk])
                    )
                messages.success(request, f"Created the task {task.name}.")
                return HttpResponseRedirect(reverse("admin:tasks_task_change", args=[task.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Trigger {template.name}",
            "template_obj": template,
            "form": form,
            "opts": self.model._meta,
            "original": template,
        }
        return TemplateResponse(request, "admin/templates_app/template/trigger.html", context)


class TriggerForm(forms.Form):
    """One field per declared parameter, typed: number inputs, a checkbox, a select, a
    password input for secrets. The services validate again (the rules live there)."""

    SECRET_SUFFIX = "__secret"  # noqa: S105 - a form field suffix

    def __init__(
        self, spec: list[dict[str, Any]], *args: Any, secret_names: Sequence[str] = (), **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.spec = {item["name"]: item for item in spec}
        for name, item in self.spec.items():
            self.fields[name] = self._field(item)
            if item["secret"] and secret_names:
                # Or a project secret, resolved when the run starts ({"secret": "<name>"}).
                self.fields[name].required = False
                self.fields[name + self.SECRET_SUFFIX] = forms.ChoiceField(
                    label=f"{name}: or the project secret",
                    required=False,
                    choices=[("", "— the value typed above —"), *((n, n) for n in secret_names)],
                    help_text="Resolved when the run starts; its value is never shown or kept with the run.",
                )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for name, item in self.spec.items():
            if name + self.SECRET_SUFFIX not in self.fields:
                continue
            chosen, typed = cleaned.get(name + self.SECRET_SUFFIX), cleaned.get(name)
            if chosen and typed:
                self.add_error(name, "Type a value or choose a project secret, not both.")
            elif item["required"] and not chosen and not typed:
                self.add_error(name, "This parameter is required: type a value or choose a project secret.")
        return cleaned

    @staticmethod
    def _field(item: dict[str, Any]) -> forms.Field:
        required = item["required"] and item["default"] is None
        common: dict[str, Any] = {
            "required": required,
            "help_text": item["description"],
            "initial": item["default"],
            "label": item["name"],
        }
        type_ = item["type"]
        if type_ == ParameterType.BOOLEAN:
            return forms.BooleanField(**{**common, "required": False})
        if type_ == ParameterType.INTEGER:
            return forms.IntegerField(min_value=item["min"], max_value=item["max"], **common)
        if type_ == ParameterType.NUMBER:
            return forms.FloatField(min_value=item["min"], max_value=item["max"], **common)
        if type_ == ParameterType.CHOICE:
            choices = [(c, c) for c in item["choices"] or []]
            if not required:
                choices = [("", "---------"), *choices]
            return forms.ChoiceField(choices=choices, **common)
        widget = forms.PasswordInput(render_value=False) if item["secret"] else forms.TextInput
        return forms.CharField(
            widget=widget,
            strip=False,
            min_length=item["min_length"],
            max_length=item["max_length"],
            **common,
        )

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, item in self.spec.items():
            value = self.cleaned_data.get(name)
            if self.cleaned_data.get(name + self.SECRET_SUFFIX):
                value = {"secret": self.cleaned_data[name + self.SECRET_SUFFIX]}
            if item["type"] == ParameterType.NUMBER and isinstance(value, float) and value.is_integer():
                value = int(value)
            if value in (None, "") and item["type"] != ParameterType.BOOLEAN:
                continue
            out[name] = value
        return out

    def add_service_errors(self, exc: ValidationError) -> None:
        for field, errors in exc.message_dict.items():
            name = field.removeprefix("parameters.")
            for message in errors:
                self.add_error(name if name in self.fields else None, message)


# --- The task admin, completed here -------------------------------------------------------------
# tasks.admin defines TaskAdmin with what tasks owns; running a task (its executions inline, Run
# now, Run with parameters and its typed form, the execute action) needs executions and this
# app's parameters, so the full admin is registered from the top of the layers that it uses.
@admin.register(Task)
class TaskAdmin(BaseTaskAdmin):
    """Viewers read; members create, change, run, move, archive and delete (as the API)."""

    inlines = (ExecutionInline, NoteInline, EventInline)
    actions = ("execute", *BaseTaskAdmin.actions)

    def get_inlines(self, request: HttpRequest, obj: Task | None) -> tuple[type, ...]:
        # A task being added has no executions yet.
        return self.inlines if obj is not None else tuple(i for i in self.inlines if i is not ExecutionInline)

    # --- Run now / Run with parameters -----------------------------------------------------
    def get_urls(self) -> list[Any]:
        return [
            path("<uuid:pk>/run/", self.admin_site.admin_view(self.run_view), name="tasks_task_run"),
            *super().get_urls(),
        ]

    def run_view(self, request: HttpRequest, pk: Any) -> Any:
        """POST without a form: run now. GET: a typed form for the task's parameters."""
        task = get_object_or_404(self.get_queryset(request), pk=pk)
        require_project_role(request, task.project_id, self.action_role("run"))
        spec = params.normalize_spec(task.parameter_spec or [])
        with_form = "_run_form" in request.POST or request.method == "GET"
        form = TriggerForm(
            spec,
            request.POST if "_run_form" in request.POST else None,
            secret_names=secret_names(task.project_id),
        )
        if request.method == "POST" and (not with_form or form.is_valid()):
            try:
                execution = execution_enqueue(
                    task=task,
                    actor=request.user,
                    trigger=Trigger.ADMIN,
                    parameters=form.values() if with_form else None,
                )
            except ValidationError as exc:
                if not with_form:
                    self.message_user(request, "; ".join(exc.messages), messages.ERROR)
                    return HttpResponseRedirect(reverse("admin:tasks_task_change", args=[task.pk]))
                form.add_service_errors(exc)
            except APIException as exc:
                self.message_user(request, str(exc.detail), messages.ERROR)
                return HttpResponseRedirect(reverse("admin:tasks_task_change", args=[task.pk]))
            else:
                self.message_user(request, f"Queued execution #{execution.number}.", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:executions_execution_change", args=[execution.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Run {task.name}",
            "task": task,
            "form": form,
        }
        return TemplateResponse(request, "admin/tasks/task/run.html", context)

    @admin.action(description="Execute selected tasks now", permissions=["change"])
    def execute(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self,
            request,
            queryset,
            "Queued an execution of",
            lambda task: execution_enqueue(task=task, actor=request.user, trigger=Trigger.ADMIN),
        )
