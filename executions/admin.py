from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from accounts.admin_access import ProjectRoleAdmin, ProjectRoleInline, require_project_role, superuser_only
from accounts.models import Role
from core.admin_badges import EXECUTION_COLOURS, status_badge
from core.secrets import MASK
from executions import services
from executions.models import Execution, Worker
from vault.services import is_secret_ref

OUTPUT_BLOCK = (
    '<h4>{}{}</h4><pre id="output-{}" data-offset="{}" class="tf-output" '
    'style="max-height:30em;min-height:2em;width:100%;overflow:auto;background:#111;color:#eee;'
    'padding:8px;white-space:pre-wrap">{}</pre>'
)


def masked_secrets(execution: Execution) -> list[str]:
    """The secret parameters a re-run of ``execution`` would need: the run had them, but only
    their mask (``***``) was kept, and sending the mask would run the script with ``***``."""
    spec = execution.task.parameter_spec or []
    secret = {item.get("name") for item in spec if item.get("secret")}
    plain = {item.get("name") for item in spec} - secret
    given = execution.parameters or {}
    # A masked value whose declaration has since gone is refused too: *** is never a value.
    # A reference to a project secret is kept as it is: a re-run resolves it again.
    return sorted(
        n
        for n, v in given.items()
        if (n in secret or (v == MASK and n not in plain)) and not is_secret_ref(v)
    )


class ExecutionInline(ProjectRoleInline, admin.TabularInline):
    """The task's latest executions, newest first, each linking to its page with the output."""

    model = Execution
    fk_name = "task"
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-number",)
    fields = ("link", "badge", "trigger", "attempt", "queued_at", "duration_ms", "exit_code", "error")
    readonly_fields = fields

    @admin.display(description="execution")
    def link(self, execution: Execution) -> str:
        url = reverse("admin:executions_execution_change", args=[execution.pk])
        return format_html('<a href="{}">#{}</a>', url, execution.number)

    @admin.display(description="status")
    def badge(self, execution: Execution) -> str:
        return status_badge(execution.status, EXECUTION_COLOURS)


@admin.register(Execution)
class ExecutionAdmin(ProjectRoleAdmin):
    """Read-only history; output in a monospace block that follows a running execution live
    (a few lines of JavaScript polling the log endpoint); cancel and re-run buttons. Viewers
    read; cancelling and re-running need the member role (as the API)."""

    write_role = Role.MEMBER

    change_form_template = "admin/executions/execution/change_form.html"

    list_display = (
        "__str__",
        "badge",
        "task",
        "trigger",
        "attempt",
        "queued_at",
        "duration_ms",
        "exit_code",
        "error",
        "worker",
    )
    list_filter = ("status", "trigger", "error", "finished_at")
    date_hierarchy = "queued_at"
    search_fields = ("id", "task__name")
    list_select_related = ("task", "worker")
    actions = ("cancel",)
    readonly_fields = ("output", "outputs_block", "script_block")
    fields = (
        ("task", "number", "attempt", "retry_of"),
        ("status", "error", "exit_code"),
        "error_detail",
        "output",
        "outputs_block",
        ("trigger", "triggered_by", "triggered_by_key_prefix"),
        ("queued_at", "started_at", "finished_at", "duration_ms"),
        ("worker", "sandbox", "lease_expires_at", "cancel_requested_at"),
        ("script_type", "timeout_seconds", "priority"),
        "parameters",
        "script_block",
        "project",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("task", "worker")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the history is kept; `manage.py prune --days N` removes old runs

    @admin.display(description="script")
    def script_block(self, execution: Execution) -> str:
        return format_html(
            '<pre style="max-height:20em;overflow:auto;background:#f6f8fa;padding:8px;width:100%">{}</pre>',
            execution.script,
        )

    @admin.display(description="outputs")
    def outputs_block(self, execution: Execution) -> str:
        """What the script published in $TASKFORGE_OUTPUTS_FILE (secret values masked)."""
        return format_html(
            '<pre style="max-height:20em;overflow:auto;background:#f6f8fa;padding:8px;width:100%">{}</pre>',
            json.dumps(execution.outputs, indent=2, ensure_ascii=False, sort_keys=True),
        )

    @admin.display(description="status", ordering="status")
    def badge(self, execution: Execution) -> str:
        return status_badge(execution.status, EXECUTION_COLOURS)

    @admin.display(description="output")
    def output(self, execution: Execution) -> str:
        chunks = list(execution.chunks.order_by("seq").values_list("seq", "stream", "data"))
        # The live view continues after the last chunk rendered here (data-offset).
        offset = chunks[-1][0] if chunks else 0
        parts = []
        for stream in ("stdout", "stderr"):
            truncated = getattr(execution, f"{stream}_truncated")
            parts.append(
                format_html(
                    OUTPUT_BLOCK,
                    stream,
                    " (truncated: the rest was discarded)" if truncated else "",
                    stream,
                    offset,
                    "".join(data for _, name, data in chunks if name == stream),
                )
            )
        return format_html("{}{}", *parts)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<uuid:pk>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="executions_execution_cancel",
            ),
            path(
                "<uuid:pk>/rerun/",
                self.admin_site.admin_view(self.rerun_view),
                name="executions_execution_rerun",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        execution = self.get_object(request, object_id)
        extra = {**(extra_context or {})}
        if execution is not None:
            extra.update(
                execution=execution,
                log_url=f"/api/v1/tasks/{execution.task_id}/executions/{execution.pk}/log",
            )
        return super().change_view(request, object_id, form_url, extra)

    def _operable(self, request: HttpRequest, pk: Any) -> Execution:
        execution = get_object_or_404(self.get_queryset(request), pk=pk)
        require_project_role(request, execution.project_id, self.write_role)
        return execution

    @staticmethod
    def _back(execution: Execution) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:executions_execution_change", args=[execution.pk]))

    def cancel_view(self, request: HttpRequest, pk: Any) -> HttpResponseRedirect:
        return require_POST(self._cancel)(request, pk)

    def _cancel(self, request: HttpRequest, pk: Any) -> HttpResponseRedirect:
        execution = self._operable(request, pk)
        if execution.is_final:
            self.message_user(
                request, f"Execution #{execution.number} is already {execution.status}.", messages.WARNING
            )
        else:
            services.execution_cancel(execution=execution, actor=request.user)
            self.message_user(request, f"Cancelling execution #{execution.number}.", messages.SUCCESS)
        return self._back(execution)

    def rerun_view(self, request: HttpRequest, pk: Any) -> HttpResponseRedirect:
        return require_POST(self._rerun)(request, pk)

    def _rerun(self, request: HttpRequest, pk: Any) -> HttpResponseRedirect:
        from django.core.exceptions import ValidationError
        from rest_framework.exceptions import APIException

        from executions.models import Trigger

        execution = self._operable(request, pk)
        masked = masked_secrets(execution)
        if masked:
            self.message_user(
                request,
                f"Not re-run: the secret parameter(s) {', '.join(masked)} were not stored (only ***). "
                "Give them again with the task's Run with parameters form.",
                messages.ERROR,
            )
            return HttpResponseRedirect(reverse("admin:tasks_task_run", args=[execution.task_id]))
        try:
            new = services.execution_enqueue(
                task=execution.task,
                actor=request.user,
                trigger=Trigger.ADMIN,
                timeout_seconds=execution.timeout_seconds,
                parameters=execution.parameters,
            )
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), messages.ERROR)
            return self._back(execution)
        except APIException as exc:
            self.message_user(request, str(exc.detail), messages.ERROR)
            return self._back(execution)
        self.message_user(request, f"Queued execution #{new.number}.", messages.SUCCESS)
        return self._back(new)

    @admin.action(description="Cancel selected executions")
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
        done = 0
        for execution in queryset:
            if not execution.is_final:
                services.execution_cancel(execution=execution, actor=request.user)
                done += 1
        self.message_user(request, f"Cancelled {done} execution(s).", messages.SUCCESS)


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    """Workers serve every project: staff with the view permission see them (the dashboard
    shows them too); only superusers delete a row."""

    list_display = (
        "name",
        "hostname",
        "pid",
        "concurrency",
        "sandbox",
        "started_at",
        "last_heartbeat_at",
        "stopped_at",
    )
    readonly_fields = [f.name for f in Worker._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the worker writes its own row

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return superuser_only(request)
