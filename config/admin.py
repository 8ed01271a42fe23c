"""The admin site with the operators' dashboard on its index page."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.apps import AdminConfig
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

DASHBOARD_CACHE_SECONDS = 30


def apply_each(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    items: QuerySet,
    verb: str,
    change: Callable[[Any], Any],
) -> None:
    """An admin action's loop: ``change(item)`` (a service call) for each selected item; one
    success message, and a warning per refusal (the first 10) instead of a failed request."""
    from rest_framework.exceptions import APIException

    done, refused = 0, []
    for item in items:
        try:
            change(item)
            done += 1
        except (APIException, ValidationError) as exc:
            refused.append(f"{item}: {getattr(exc, 'detail', exc)}")
    if done:
        meta = model_admin.model._meta
        noun = meta.verbose_name if done == 1 else meta.verbose_name_plural
        model_admin.message_user(request, f"{verb} {done} {noun}.", messages.SUCCESS)
    for line in refused[:10]:
        model_admin.message_user(request, line, messages.WARNING)


def dashboard(user: Any) -> dict[str, Any]:
    """Numbers for the dashboard, scoped to what ``user`` may see.

    Queue depth, running executions, recent failures and workers come from partial indexes and
    are exact on every load. Task counts by status scan the caller's tasks, so they are cached
    for 30 s per user (on a million tasks that count is the only expensive number).
    """
    from executions.models import Execution, ExecutionStatus, Worker
    from tasks.selectors import task_status_counts

    now = timezone.now()
    executions = Execution.objects.visible_to(user)
    depth = dict(
        executions.active().order_by().values("status").annotate(n=Count("pk")).values_list("status", "n")
    )
    since = now - timedelta(hours=24)
    failures = dict(
        executions.filter(
            status__in=(ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT), finished_at__gte=since
        )
        .order_by()
        .values("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    running = list(
        executions.filter(status=ExecutionStatus.RUNNING)
        .select_related("task", "worker")
        .order_by("started_at")[:15]
    )
    for execution in running:
        execution.age = (
            f"{(now - execution.started_at).total_seconds():.0f} s" if execution.started_at else ""
        )
    key = f"dashboard:tasks:{user.pk}"
    tasks = cache.get(key)
    if tasks is None:
        tasks = task_status_counts(user=user)
        cache.set(key, tasks, DASHBOARD_CACHE_SECONDS)
    return {
        "queued": depth.get(ExecutionStatus.QUEUED, 0),
        "running_count": depth.get(ExecutionStatus.RUNNING, 0),
        "running": running,
        "failed_24h": failures.get(ExecutionStatus.FAILED, 0),
        "timed_out_24h": failures.get(ExecutionStatus.TIMED_OUT, 0),
        "since": since,
        "workers": list(Worker.objects.alive()),
        "tasks": tasks,
        "tasks_cached_seconds": DASHBOARD_CACHE_SECONDS,
    }


class TaskforgeAdminSite(admin.AdminSite):
    site_header = "Taskforge"
    site_title = "Taskforge admin"
    index_title = "Dashboard"

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        return super().index(request, {**(extra_context or {}), "dashboard": dashboard(request.user)})


class TaskforgeAdminConfig(AdminConfig):
    default_site = "config.admin.TaskforgeAdminSite"
