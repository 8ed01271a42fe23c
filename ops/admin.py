"""The admin site with the operators' dashboard on its index page."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.core.cache import cache
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

DASHBOARD_CACHE_SECONDS = 30


def dashboard(user: Any) -> dict[str, Any]:
    """Numbers for the dashboard, scoped to what ``user`` may see.

    Queue depth, running executions, recent failures and workers come from partial indexes and
    are exact on every load. Task counts by status scan the caller's tasks, so they are cached
    for 30 s per user (on a million tasks that count is the only expensive number).
    """
    # Imported here, not at the top: INSTALLED_APPS loads this module (TaskforgeAdminConfig)
    # before any model exists. Not a cycle: ops sits above every app.
    from executions.models import Execution, ExecutionStatus, Worker
    from schedules.selectors import late_schedules
    from tasks.selectors import task_status_counts, tasks_unroutable

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
    workers = list(Worker.objects.alive())
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
        "workers": workers,
        "late_schedules": late_schedules(user=user, now=now) if workers else [],
        "tasks": tasks,
        "tasks_cached_seconds": DASHBOARD_CACHE_SECONDS,
        "unroutable": tasks_unroutable(user=user),
    }


LOGIN_GROUP = "taskforge.admin_login"


def _login_buckets(request: HttpRequest) -> list[tuple[str, str]]:
    """(bucket, rate) pairs a login attempt counts against: its client IP and its username
    (case-folded, so ``Root`` and ``root`` share one)."""
    username = (request.POST.get("username") or "").strip().casefold()
    buckets = [(f"ip:{request.META.get('REMOTE_ADDR', '')}", settings.TASKFORGE_ADMIN_LOGIN_RATE_IP)]
    if username:
        buckets.append((f"user:{username}", settings.TASKFORGE_ADMIN_LOGIN_RATE_USERNAME))
    return buckets


def _login_usage(request: HttpRequest, bucket: str, rate: str, increment: bool) -> dict[str, Any] | None:
    from django_ratelimit.core import get_usage

    return get_usage(request, group=LOGIN_GROUP, key=lambda _g, _r: bucket, rate=rate, increment=increment)


def login_refused_for(request: HttpRequest) -> int | None:
    """Seconds until this IP or username may try again, when either has used up its failed
    attempts (None while both may still try). A cache that cannot answer refuses."""
    for bucket, rate in _login_buckets(request):
        usage = _login_usage(request, bucket, rate, increment=False)
        if usage is not None and usage["count"] >= usage["limit"]:
            return max(1, usage["time_left"])
    return None


def login_failed(request: HttpRequest) -> None:
    """Count a failed login against its IP and its username."""
    for bucket, rate in _login_buckets(request):
        _login_usage(request, bucket, rate, increment=True)


class TaskforgeAdminSite(admin.AdminSite):
    site_header = "Taskforge"
    site_title = "Taskforge admin"
    index_title = "Dashboard"

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The admin login, throttled: after too many failed attempts from one IP or for one
        username (``TASKFORGE_ADMIN_LOGIN_RATE_*``), every attempt (the right password too) is
        answered 429 until the window passes."""
        if request.method != "POST":
            return super().login(request, extra_context)
        wait = login_refused_for(request)
        if wait is not None:
            context = {
                **self.each_context(request),
                "title": "Too many failed logins",
                "wait_minutes": -(-wait // 60),
            }
            response = TemplateResponse(request, "admin/login_throttled.html", context, status=429)
            response["Retry-After"] = str(wait)
            return response
        response = super().login(request, extra_context)
        if not (response.status_code == 302 and request.user.is_authenticated):
            login_failed(request)
        return response

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        return super().index(request, {**(extra_context or {}), "dashboard": dashboard(request.user)})


class TaskforgeAdminConfig(AdminConfig):
    default_site = "ops.admin.TaskforgeAdminSite"
