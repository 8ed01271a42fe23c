from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from executions import services
from executions.models import Execution, ExecutionStatus, OutputChunk, Worker

OUTPUT_BLOCK = (
    '<h4>{}{}</h4><pre style="max-height:30em;overflow:auto;background:#111;color:#eee;'
    'padding:8px;white-space:pre-wrap">{}</pre>'
)
EXECUTION_COLOURS = {
    ExecutionStatus.QUEUED: "#2563eb",
    ExecutionStatus.RUNNING: "#d97706",
    ExecutionStatus.SUCCEEDED: "#16a34a",
    ExecutionStatus.FAILED: "#dc2626",
    ExecutionStatus.TIMED_OUT: "#b45309",
    ExecutionStatus.CANCELLED: "#374151",
}


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    """Read-only history; output shown in a monospace block; cancel action."""

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
    readonly_fields = ("output",)
    exclude = ("secret_parameters", "claim_token")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return Execution.objects.visible_to(request.user).select_related("task", "worker")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="status", ordering="status")
    def badge(self, execution: Execution) -> str:
        from tasks.admin import status_badge

        return status_badge(execution.status, EXECUTION_COLOURS)

    @admin.display(description="output")
    def output(self, execution: Execution) -> str:
        parts = []
        for stream in ("stdout", "stderr"):
            text = "".join(
                OutputChunk.objects.filter(execution=execution, stream=stream)
                .order_by("seq")
                .values_list("data", flat=True)
            )
            truncated = getattr(execution, f"{stream}_truncated")
            parts.append(
                format_html(
                    OUTPUT_BLOCK,
                    stream,
                    " (truncated)" if truncated else "",
                    text,
                )
            )
        return format_html("{}{}", *parts)

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
