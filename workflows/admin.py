"""Operators' UI for workflows: templates edited as JSON (checked by the services, errors shown
on the form) with a table and a picture of their graph, and runs shown read-only with their
steps and the graph coloured by node status, live while the run goes on, with start / pause /
resume / cancel / retry buttons. Every change goes through ``workflows.services``; every page and
button checks the caller's role in the object's project (``accounts.admin_access``)."""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db.models import F, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from accounts.admin_access import ProjectRoleAdmin, has_project_role, require_project_role
from accounts.models import Role
from core.admin_actions import apply_each
from core.admin_badges import GREY, status_badge
from executions.models import Execution
from templates_app.models import Template
from workflows import graph, services
from workflows.models import RunStatus, WorkflowNode, WorkflowRun, WorkflowTemplate
from workflows.svg import STATUS_STYLE, graph_svg, legend_html

RUN_COLOURS: dict[str, str] = {
    RunStatus.PENDING: GREY,
    RunStatus.RUNNING: "#2563eb",
    RunStatus.PAUSED: "#d97706",
    RunStatus.SUCCEEDED: "#16a34a",
    RunStatus.FAILED: "#dc2626",
    RunStatus.CANCELLED: "#374151",
}
NODE_COLOURS: dict[str, str] = {status: style[1] for status, style in STATUS_STYLE.items() if status}
PRE = '<pre style="margin:0;white-space:pre-wrap;max-width:40em;max-height:12em;overflow:auto">{}</pre>'
FIELD_RE = re.compile(r"[.\[]")


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


# --- Workflow templates ------------------------------------------------------------------------------
class WorkflowTemplateForm(forms.ModelForm):
    class Meta:
        model = WorkflowTemplate
        fields = ("project", *services.WRITABLE_FIELDS)

    def _post_clean(self) -> None:
        super()._post_clean()
        # The service's checks (fields, declarations, the graph, secret references), each shown
        # on its field with the key the API gives (nodes[2].parameters.x: ...). The service checks
        # again when it saves.
        if self.instance.project_id is None or any(
            name in self.errors for name in ("parameters", "nodes", "edges")
        ):
            return
        probe = copy.copy(self.instance)  # the check resolves node templates in place
        for name in services.WRITABLE_FIELDS:
            setattr(probe, name, copy.deepcopy(getattr(self.instance, name)))
        for field, _code, message in services.definition_check(probe):
            name = FIELD_RE.split(field, maxsplit=1)[0]
            text = message if field == name else f"{field}: {message}"
            if name in self.fields:
                if text not in self.errors.get(name, []):
                    self.add_error(name, ValidationError(text))
            else:
                self.add_error(None, ValidationError(f"{field}: {message}" if field else message))


class RunForm(forms.Form):
    """A run of a workflow template: its name, its parameters as JSON, start at once or not."""

    name = forms.CharField(required=False, max_length=200, help_text="Empty: the template's name.")
    parameters = forms.JSONField(
        required=False,
        initial=dict,
        help_text='A JSON object, e.g. {"greeting": "hi"}; a secret parameter as {"secret": "NAME"}.',
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60}),
    )
    start = forms.BooleanField(required=False, initial=True, help_text="Start it now (else it waits).")

    def clean_parameters(self) -> dict[str, Any]:
        value = self.cleaned_data.get("parameters")
        if value in (None, ""):
            return {}
        if not isinstance(value, dict):
            raise ValidationError("A JSON object of parameter values.")
        return value

    def add_service_errors(self, exc: ValidationError) -> None:
        for field, message in service_problems(exc):
            name = FIELD_RE.split(field, maxsplit=1)[0]
            if name in self.fields and name != "start":
                self.add_error(name, message if field == name else f"{field}: {message}")
            else:
                self.add_error(None, f"{field}: {message}" if field else message)


def service_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """``(field, message)`` of a service's ``ValidationError`` (field ``""``: the whole)."""
    if not hasattr(exc, "error_dict"):
        return [("", message) for message in exc.messages]
    return [
        ("" if field == NON_FIELD_ERRORS else field, message)
        for field, found in exc.message_dict.items()
        for message in found
    ]


def _template_links(project_id: Any, refs: list[str]) -> dict[str, Template]:
    """The templates the nodes name (stored nodes name them by id), by id."""
    ids = []
    for ref in refs:
        try:
            ids.append(uuid.UUID(ref))
        except ValueError:
            continue
    return {str(t.pk): t for t in Template.objects.filter(project_id=project_id, pk__in=ids)}


@admin.register(WorkflowTemplate)
class WorkflowTemplateAdmin(ProjectRoleAdmin):
    """Viewers and members read; admins of the project create, change and delete (as for
    templates); members start runs."""

    write_role = Role.ADMIN
    action_roles = {"run": Role.MEMBER}
    form = WorkflowTemplateForm
    change_form_template = "admin/workflows/workflowtemplate/change_form.html"
    list_display = ("slug", "name", "project", "version", "node_count", "updated_at")
    list_select_related = ("project",)
    search_fields = ("slug", "name", "description")
    readonly_fields = (
        "id",
        "version",
        "nodes_table",
        "edges_table",
        "picture",
        "recent_runs",
        "created_by",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": (("id", "version"), "project", ("slug", "name"), "description")}),
        ("Definition (JSON)", {"fields": ("parameters", "nodes", "edges")}),
        ("The graph", {"fields": ("picture", "nodes_table", "edges_table")}),
        (None, {"fields": ("recent_runs", ("created_by", "created_at", "updated_at"))}),
    )

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name in ("parameters", "nodes", "edges") and field is not None:
            field.widget = forms.Textarea(attrs={"rows": 12, "cols": 90, "style": "font-family:monospace"})
        return field

    @admin.display(description="nodes")
    def node_count(self, workflow: WorkflowTemplate) -> int:
        return len(workflow.nodes or [])

    def _saved(self, workflow: WorkflowTemplate) -> bool:
        return bool(workflow.pk) and not workflow._state.adding

    @admin.display(description="nodes")
    def nodes_table(self, workflow: WorkflowTemplate) -> str:
        if not self._saved(workflow) or not workflow.nodes:
            return "-"
        templates = _template_links(workflow.project_id, [str(n.get("template")) for n in workflow.nodes])

        def template_cell(ref: Any) -> str:
            template = templates.get(str(ref))
            if template is None:
                return format_html("{} (missing)", ref)
            url = reverse("admin:templates_app_template_change", args=[template.pk])
            return format_html('<a href="{}">{}</a> ({})', url, template.name, template.slug)

        rows = format_html_join(
            "",
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>" + PRE + "</td></tr>",
            (
                (
                    node.get("key"),
                    template_cell(node.get("template")),
                    node.get("join", "all"),
                    _json(node.get("parameters") or {}),
                )
                for node in workflow.nodes
            ),
        )
        return format_html(
            "<table><thead><tr><th>key</th><th>template</th><th>join</th><th>bindings</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="edges")
    def edges_table(self, workflow: WorkflowTemplate) -> str:
        if not self._saved(workflow) or not workflow.edges:
            return "-"
        rows = format_html_join(
            "",
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>",
            graph.edge_list(workflow.edges),
        )
        return format_html(
            "<table><thead><tr><th>from</th><th>to</th><th>on</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="picture")
    def picture(self, workflow: WorkflowTemplate) -> str:
        if not self._saved(workflow) or not workflow.nodes:
            return "-"
        templates = _template_links(workflow.project_id, [str(n.get("template")) for n in workflow.nodes])
        nodes = []
        for node in workflow.nodes:
            template = templates.get(str(node.get("template")))
            nodes.append(
                {
                    "key": node["key"],
                    "label": template.name if template else "(template deleted)",
                    "status": "",
                    "href": reverse("admin:templates_app_template_change", args=[template.pk])
                    if template
                    else None,
                }
            )
        return format_html(
            '<div style="overflow:auto;max-width:100%">{}</div>{}',
            graph_svg(nodes, graph.edge_list(workflow.edges)),
            legend_html(with_status=False),
        )

    @admin.display(description="recent runs")
    def recent_runs(self, workflow: WorkflowTemplate) -> str:
        if not self._saved(workflow):
            return "-"
        runs = workflow.runs.order_by("-created_at", "-id")[:20]
        rows = format_html_join(
            "",
            '<li><a href="{}">{}</a> {} (v{}, {})</li>',
            (
                (
                    reverse("admin:workflows_workflowrun_change", args=[run.pk]),
                    run.name,
                    status_badge(run.status, RUN_COLOURS),
                    run.template_version,
                    f"{run.created_at:%Y-%m-%d %H:%M:%S} UTC",
                )
                for run in runs
            ),
        )
        return format_html("<ul>{}</ul>", rows) if rows else "none yet"

    # --- saving through the services ------------------------------------------------------------
    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: Any = None,
    ) -> Any:
        # The form showed the service's checks; one that fails only at save (a slug taken meanwhile
        # by another operator) rolls the save back and says why, instead of a server error.
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ValidationError as exc:
            problems = "; ".join(
                f"{field}: {message}" if field else message for field, message in service_problems(exc)
            )
            self.message_user(request, f"Not saved: {problems}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(
        self, request: HttpRequest, obj: WorkflowTemplate, form: forms.ModelForm, change: bool
    ) -> None:
        fields = {
            name: form.cleaned_data[name] for name in services.WRITABLE_FIELDS if name in form.cleaned_data
        }
        if change:
            changed = {name: value for name, value in fields.items() if name in form.changed_data}
            services.workflow_template_update(workflow=obj, actor=request.user, fields=changed)
            obj.refresh_from_db()
            return
        workflow = services.workflow_template_create(
            project=form.cleaned_data["project"], actor=request.user, **fields
        )
        obj.pk = workflow.pk
        obj._state.adding = False
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: WorkflowTemplate) -> None:
        require_project_role(request, obj.project_id, self.write_role)
        services.workflow_template_delete(workflow=obj, actor=request.user)

    # --- the run form ---------------------------------------------------------------------------
    def get_urls(self) -> list[Any]:
        return [
            path(
                "<uuid:object_id>/run/",
                self.admin_site.admin_view(self.run_view),
                name="workflows_workflowtemplate_run",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        workflow = self.get_object(request, object_id)
        extra = {**(extra_context or {})}
        if workflow is not None:
            extra["can_run"] = has_project_role(request, workflow.project_id, self.action_role("run"))
        return super().change_view(request, object_id, form_url, extra)

    def run_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        workflow = get_object_or_404(self.get_queryset(request), pk=object_id)
        require_project_role(request, workflow.project_id, self.action_role("run"))
        form = RunForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                run = services.workflow_run_create(
                    workflow=workflow,
                    actor=request.user,
                    parameters=form.cleaned_data["parameters"],
                    name=form.cleaned_data["name"],
                    start=form.cleaned_data["start"],
                )
            except ValidationError as exc:
                form.add_service_errors(exc)
            except APIException as exc:
                messages.error(request, str(exc.detail))
            else:
                messages.success(request, f"Made the run {run.name} ({run.status}).")
                return HttpResponseRedirect(reverse("admin:workflows_workflowrun_change", args=[run.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Run {workflow.name}",
            "workflow": workflow,
            "form": form,
            "opts": self.model._meta,
            "original": workflow,
        }
        return TemplateResponse(request, "admin/workflows/workflowtemplate/run.html", context)


# --- Workflow runs -----------------------------------------------------------------------------------
# button -> (service, the run statuses that allow it, past tense for the message)
BUTTONS: dict[str, tuple[Callable[..., WorkflowRun], frozenset[str], str]] = {
    "start": (services.workflow_run_start, frozenset({RunStatus.PENDING}), "Started"),
    "pause": (services.workflow_run_pause, frozenset({RunStatus.RUNNING}), "Paused"),
    "resume": (services.workflow_run_resume, frozenset({RunStatus.PAUSED}), "Resumed"),
    "cancel": (
        services.workflow_run_cancel,
        frozenset({RunStatus.PENDING, RunStatus.RUNNING, RunStatus.PAUSED}),
        "Cancelled",
    ),
    "retry": (services.workflow_run_retry, frozenset({RunStatus.FAILED, RunStatus.CANCELLED}), "Retrying"),
}


def _nodes_of(run: WorkflowRun) -> list[WorkflowNode]:
    """Every node in topological order, a fan-out's items right after it."""
    return list(run.nodes.select_related("task").order_by("position", F("item_index").asc(nulls_first=True)))


def _latest_executions(nodes: list[WorkflowNode]) -> dict[Any, Execution]:
    """Each node's task's newest execution (one query)."""
    latest: dict[Any, Execution] = {}
    task_ids = [node.task_id for node in nodes if node.task_id]
    for execution in (
        Execution.objects.filter(task_id__in=task_ids)
        .order_by("task_id", "-number")
        .only("id", "task_id", "number", "status")
    ):
        latest.setdefault(execution.task_id, execution)
    return latest


def run_graph(run: WorkflowRun, nodes: list[WorkflowNode], latest: dict[Any, Execution]) -> str:
    """The run's graph, coloured by node status; a node links to its task, and to its task's
    newest execution (``exec #n``)."""
    drawn = []
    items: dict[Any, int] = {}
    for node in nodes:
        if node.parent_id is not None:
            items[node.parent_id] = items.get(node.parent_id, 0) + 1
    for node in nodes:
        if node.parent_id is not None:  # a fan-out's items are in the steps table, not the picture
            continue
        execution = latest.get(node.task_id)
        drawn.append(
            {
                "key": node.key,
                "label": f"{node.template_name} ({items[node.pk]} items)"
                if node.pk in items
                else node.template_name,
                "status": node.shown_status(),
                "href": reverse("admin:tasks_task_change", args=[node.task_id]) if node.task_id else None,
                "links": [
                    (
                        f"exec #{execution.number}",
                        reverse("admin:executions_execution_change", args=[execution.pk]),
                    )
                ]
                if execution is not None
                else [],
            }
        )
    return graph_svg(drawn, graph.edge_list(run.edges))


def steps_table(nodes: list[WorkflowNode], latest: dict[Any, Execution]) -> str:
    def task_cell(node: WorkflowNode) -> str:
        if node.task is None:
            return "-"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:tasks_task_change", args=[node.task_id]), node.task.name
        )

    def execution_cell(node: WorkflowNode) -> str:
        execution = latest.get(node.task_id)
        if execution is None:
            return "-"
        url = reverse("admin:executions_execution_change", args=[execution.pk])
        return format_html('<a href="{}">#{}</a> ({})', url, execution.number, execution.status)

    def error_cell(node: WorkflowNode) -> str:
        if not node.error:
            return ""
        return format_html("<strong>{}</strong><br>{}", node.get_error_display(), node.error_detail)

    rows = format_html_join(
        "",
        '<tr data-key="{}"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
        "<td>" + PRE + "</td></tr>",
        (
            (
                node.key,
                node.key,
                status_badge(node.shown_status(), NODE_COLOURS),
                task_cell(node),
                execution_cell(node),
                node.attempts,
                error_cell(node),
                _json(node.outputs) if node.outputs else "",
            )
            for node in nodes
        ),
    )
    return format_html(
        "<table><thead><tr><th>key</th><th>status</th><th>task</th><th>execution</th><th>attempts</th>"
        "<th>error</th><th>outputs</th></tr></thead><tbody>{}</tbody></table>",
        rows,
    )


@admin.register(WorkflowRun)
class WorkflowRunAdmin(ProjectRoleAdmin):
    """Read-only: runs are made by the API or a template's Run form and change only through the
    buttons (services). Viewers read; members start, pause, resume, cancel and retry (as the API)."""

    write_role = Role.MEMBER
    change_form_template = "admin/workflows/workflowrun/change_form.html"
    list_display = ("name", "project", "badge", "template", "created_at", "finished_at")
    list_filter = ("status",)
    list_select_related = ("project", "template")
    search_fields = ("name", "id")
    date_hierarchy = "created_at"
    actions = ("pause", "resume", "cancel", "retry")
    readonly_fields = ("status_block", "template_link", "parameters_block", "graph_block", "steps_block")
    fields = (
        ("name", "status_block"),
        ("project", "template_link", "template_version"),
        "error",
        "parameters_block",
        "graph_block",
        "steps_block",
        ("retries", "created_by"),
        ("created_at", "started_at", "paused_at", "finished_at", "updated_at"),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return flatten_fieldsets(self.get_fieldsets(request, obj))  # every field: the page is read-only

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False  # a template's "Run…" form, or the API, makes runs

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # read-only: the buttons change a run (through the services)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # runs are history (deleting the project removes them)

    @admin.display(description="status", ordering="status")
    def badge(self, run: WorkflowRun) -> str:
        return status_badge(run.status, RUN_COLOURS)

    @admin.display(description="status")
    def status_block(self, run: WorkflowRun) -> str:
        return format_html('<span id="wf-status">{}</span>', self.badge(run))

    @admin.display(description="template")
    def template_link(self, run: WorkflowRun) -> str:
        if run.template_id is None:
            return "(deleted)"
        url = reverse("admin:workflows_workflowtemplate_change", args=[run.template_id])
        return format_html('<a href="{}">{}</a>', url, run.template)

    @admin.display(description="parameters")
    def parameters_block(self, run: WorkflowRun) -> str:
        return format_html(PRE, _json(run.parameters))

    @admin.display(description="graph")
    def graph_block(self, run: WorkflowRun) -> str:
        nodes = _nodes_of(run)
        return format_html(
            '<div id="wf-graph" style="overflow:auto;max-width:100%">{}</div>{}',
            run_graph(run, nodes, _latest_executions(nodes)),
            legend_html(),
        )

    @admin.display(description="steps")
    def steps_block(self, run: WorkflowRun) -> str:
        nodes = _nodes_of(run)
        return format_html('<div id="wf-steps">{}</div>', steps_table(nodes, _latest_executions(nodes)))

    # --- buttons and the live view --------------------------------------------------------------
    def get_urls(self) -> list[Any]:
        return [
            path(
                "<uuid:pk>/live/",
                self.admin_site.admin_view(self.live_view),
                name="workflows_workflowrun_live",
            ),
            path(
                "<uuid:pk>/graph.svg",
                self.admin_site.admin_view(self.svg_view),
                name="workflows_workflowrun_svg",
            ),
            path(
                "<uuid:pk>/do/<slug:button>/",
                self.admin_site.admin_view(self.button_view),
                name="workflows_workflowrun_button",
            ),
            *super().get_urls(),
        ]

    def buttons_for(self, request: HttpRequest, run: WorkflowRun) -> list[str]:
        """The buttons the run's status and the caller's role allow."""
        if not has_project_role(request, run.project_id, self.write_role):
            return []
        return [name for name, (_service, allowed, _done) in BUTTONS.items() if run.status in allowed]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        run = self.get_object(request, object_id)
        extra = {**(extra_context or {})}
        if run is not None:
            extra.update(run=run, buttons=self.buttons_for(request, run))
        return super().change_view(request, object_id, form_url, extra)

    def _visible(self, request: HttpRequest, pk: Any) -> WorkflowRun:
        return get_object_or_404(self.get_queryset(request), pk=pk)

    def live_view(self, request: HttpRequest, pk: Any) -> JsonResponse:
        """What the change page refreshes every 2 s while the run is not final."""
        run = self._visible(request, pk)
        nodes = _nodes_of(run)
        latest = _latest_executions(nodes)
        return JsonResponse(
            {
                "status": run.status,
                "final": run.is_final,
                "badge": str(self.badge(run)),
                "graph": run_graph(run, nodes, latest),
                "steps": steps_table(nodes, latest),
            }
        )

    def svg_view(self, request: HttpRequest, pk: Any) -> HttpResponse:
        run = self._visible(request, pk)
        nodes = _nodes_of(run)
        return HttpResponse(run_graph(run, nodes, _latest_executions(nodes)), content_type="image/svg+xml")

    def button_view(self, request: HttpRequest, pk: Any, button: str) -> HttpResponse:
        return require_POST(self._press)(request, pk, button)

    def _press(self, request: HttpRequest, pk: Any, button: str) -> HttpResponse:
        run = self._visible(request, pk)
        if button not in BUTTONS:
            return HttpResponse(status=404)
        require_project_role(request, run.project_id, self.write_role)
        service, _allowed, done = BUTTONS[button]
        try:
            run = service(run=run, actor=request.user)
        except (APIException, ValidationError) as exc:
            self.message_user(request, f"{button}: {getattr(exc, 'detail', exc)}", messages.ERROR)
        else:
            self.message_user(request, f"{done}: {run.name} is {run.status}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:workflows_workflowrun_change", args=[run.pk]))

    # --- the same, for a selection --------------------------------------------------------------
    def _each(self, request: HttpRequest, queryset: QuerySet, button: str) -> None:
        service, _allowed, done = BUTTONS[button]
        apply_each(self, request, queryset, f"{done}:", lambda run: service(run=run, actor=request.user))

    @admin.action(description="Pause selected runs")
    def pause(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(request, queryset, "pause")

    @admin.action(description="Resume selected runs")
    def resume(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(request, queryset, "resume")

    @admin.action(description="Cancel selected runs")
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(request, queryset, "cancel")

    @admin.action(description="Retry selected runs (failed and cancelled nodes)")
    def retry(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(request, queryset, "retry")
