"""``GET /api/v1/status``: what the caller's projects hold right now."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.base import TaskforgeAPIView
from accounts.models import Project
from executions.selectors import queue_summary
from tasks.models import Status
from tasks.selectors import task_status_counts


class StatusView(TaskforgeAPIView):
    scope_object = "account"

    @extend_schema(
        operation_id="status_retrieve",
        responses=inline_serializer(
            "Status",
            {
                "version": serializers.CharField(),
                "timestamp": serializers.DateTimeField(),
                "projects": serializers.IntegerField(),
                "tasks": inline_serializer(
                    "TaskCounts", {status: serializers.IntegerField() for status in Status.values}
                ),
                "executions": inline_serializer(
                    "QueueDepth",
                    {"queued": serializers.IntegerField(), "running": serializers.IntegerField()},
                ),
                "running": inline_serializer(
                    "RunningExecution",
                    {
                        "id": serializers.UUIDField(),
                        "task": serializers.UUIDField(),
                        "number": serializers.IntegerField(),
                        "worker": serializers.CharField(allow_null=True),
                        "started_at": serializers.DateTimeField(),
                        "age_seconds": serializers.FloatField(),
                    },
                    many=True,
                ),
                "workers": inline_serializer(
                    "WorkerStatus",
                    {
                        "id": serializers.UUIDField(),
                        "name": serializers.CharField(),
                        "concurrency": serializers.IntegerField(),
                        "isolation": serializers.CharField(),
                        "started_at": serializers.DateTimeField(),
                        "last_heartbeat_at": serializers.DateTimeField(),
                    },
                    many=True,
                ),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        projects = self.visible(Project)
        return Response(
            {
                "version": settings.TASKFORGE_VERSION,
                "timestamp": timezone.now(),
                "projects": projects.count(),
                "tasks": task_status_counts(user=request.user, api_key=self.api_key),
                **queue_summary(user=request.user, api_key=self.api_key),
            }
        )
