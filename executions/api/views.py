from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, renderers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from config.api import TaskforgeViewSet
from config.idempotency import IDEMPOTENCY_PARAMETER, idempotency_responses, idempotent
from executions import services
from executions.api.serializers import (
    ExecuteSerializer,
    ExecutionDetailSerializer,
    ExecutionSerializer,
    LogSerializer,
    log_payload,
)
from executions.filters import ExecutionFilter
from executions.models import Execution
from executions.waiting import wait_until_final
from tasks.models import Task

WAIT_PARAM = OpenApiParameter(
    "wait",
    {"type": "integer", "minimum": 0, "maximum": settings.TASKFORGE_MAX_WAIT_SECONDS},
    description=f"Hold the request up to N seconds (max {settings.TASKFORGE_MAX_WAIT_SECONDS}) "
    "until the execution finishes.",
)


def wait_seconds(request: Request) -> int:
    raw = request.query_params.get("wait")
    if raw is None:  # "" is not a number of seconds: 400 like any other non-integer
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError({"wait": [f"Must be an integer number of seconds, got {raw!r}."]}) from None
    limit = settings.TASKFORGE_MAX_WAIT_SECONDS
    if not 0 <= value <= limit:
        raise ValidationError({"wait": [f"Must be between 0 and {limit}."]}, code="out_of_range")
    return value


def execution_url(request: Request, execution: Execution) -> str:
    return request.build_absolute_uri(f"/api/v1/tasks/{execution.task_id}/executions/{execution.pk}")


def queued_response(request: Request, execution: Execution, wait: int) -> Response:
    """202 with the execution (finished: 200) and its Location; waits first if asked."""
    if wait:
        execution = wait_until_final(execution.pk, wait)
    execution = Execution.objects.select_related("worker", "triggered_by").get(pk=execution.pk)
    code = status.HTTP_200_OK if execution.is_final and wait else status.HTTP_202_ACCEPTED
    serializer = ExecutionDetailSerializer if execution.is_final else ExecutionSerializer
    return Response(
        serializer(execution).data, status=code, headers={"Location": execution_url(request, execution)}
    )


class EventStreamRenderer(renderers.JSONRenderer):
    """Lets content negotiation accept ``text/event-stream`` for the live log (errors in JSON)."""

    media_type = "text/event-stream"
    format = "sse"


class ExecutionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TaskforgeViewSet):
    """Executions of the caller's tasks (nested under a task, or across tasks)."""

    renderer_classes = (renderers.JSONRenderer, renderers.BrowsableAPIRenderer, EventStreamRenderer)

    queryset = Execution.objects.select_related("worker", "triggered_by")
    serializer_class = ExecutionSerializer
    scope_object = "execution"
    filterset_class = ExecutionFilter
    lookup_url_kwarg = "execution_id"  # /tasks/{id}/executions/{execution_id}

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        if "id" in self.kwargs:
            queryset = queryset.filter(task_id=self.kwargs["id"]).order_by("-number")
        return queryset

    def task(self) -> Task:
        """The task in the URL (404 unless the caller can see it)."""
        return get_object_or_404(
            Task.objects.visible_to(self.request.user, self.api_key), pk=self.kwargs["id"]
        )

    def get_serializer_class(self) -> type:
        return ExecutionDetailSerializer if self.action == "retrieve" else ExecutionSerializer

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if "id" in kwargs:
            self.task()
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=ExecuteSerializer,
        parameters=[WAIT_PARAM, IDEMPOTENCY_PARAMETER],
        responses={
            200: OpenApiResponse(ExecutionDetailSerializer, description="It finished within ?wait."),
            202: OpenApiResponse(ExecutionSerializer, description="Queued or still running (see Location)."),
            **idempotency_responses(),
            409: OpenApiResponse(description="No script, archived, claimed or blocked"),
        },
        examples=[
            OpenApiExample("Run with a shorter timeout", value={"timeout_seconds": 30}, request_only=True),
            OpenApiExample(
                "Run a templated task with other parameters",
                value={"parameters": {"env": "staging", "replicas": 2}},
                request_only=True,
            ),
        ],
        description="Queue a run of the task's script. Answers at once with the execution (202 + Location); "
        "with ?wait=N holds until it finishes (200) or N seconds pass (202): 200 means finished, 202 "
        "not yet, the same rule as POST /templates/{ref}/trigger. A task made from a "
        "template takes `parameters`: the values it was made with, overridden by these, validated "
        "against its declarations (secret values must be given again); any other task takes none.",
    )
    @idempotent
    def execute(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        task = self.task()
        self.require_role(task.project_id)
        wait = wait_seconds(request)
        incoming = ExecuteSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        execution = services.execution_enqueue(
            task=task,
            actor=request.user,
            api_key=self.api_key,
            timeout_seconds=incoming.validated_data.get("timeout_seconds"),
            parameters=incoming.validated_data["parameters"],
        )
        return queued_response(request, execution, wait)

    @extend_schema(
        responses={
            200: ExecutionSerializer,
            202: ExecutionSerializer,
            409: OpenApiResponse(description="Already finished"),
        },
        description="Cancel: a queued execution is cancelled at once (200); a running one is killed "
        "within 2 s (202, `cancel_requested: true`); a finished one answers 409.",
    )
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        execution = services.execution_cancel(
            execution=self.get_object(), actor=request.user, api_key=self.api_key
        )
        code = status.HTTP_200_OK if execution.is_final else status.HTTP_202_ACCEPTED
        return Response(ExecutionSerializer(execution).data, status=code)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "offset",
                {"type": "integer", "minimum": 0},
                description="Return chunks after this one (next_offset).",
            )
        ],
        responses={
            (200, "application/json"): LogSerializer,
            (200, "text/event-stream"): OpenApiResponse(
                {"type": "string"},
                description="With Accept: text/event-stream: Server-Sent Events (`event: chunk` with a "
                "chunk as JSON, then `event: end` with the status and exit code).",
            ),
        },
        description="Output from an offset. With `Accept: text/event-stream`, a live Server-Sent Events "
        "stream (`event: chunk` with the chunk as JSON, then `event: end`) until the execution ends.",
    )
    def log(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        execution = self.get_object()
        raw = request.query_params.get("offset", "0")
        if not (raw.isascii() and raw.isdigit()):  # "²".isdigit() is True; int("²") raises
            raise ValidationError({"offset": ["Must be a non-negative integer."]})
        offset = int(raw)
        if "text/event-stream" in request.headers.get("Accept", ""):
            response = StreamingHttpResponse(_sse(execution.pk, offset), content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        return Response(log_payload(execution, offset))


def _sse(execution_id: Any, offset: int) -> Iterator[str]:
    """Server-Sent Events: every new chunk, then an end event; a comment line keeps proxies awake."""
    last_beat = time.monotonic()
    while True:
        execution = Execution.objects.get(pk=execution_id)
        payload = log_payload(execution, offset)
        for chunk in payload["chunks"]:
            yield f"id: {chunk['seq']}\nevent: chunk\ndata: {json.dumps(chunk)}\n\n"
        offset = payload["next_offset"]
        if payload["finished"] and not payload["chunks"]:
            end = {"status": execution.status, "exit_code": execution.exit_code}
            yield f"event: end\ndata: {json.dumps(end)}\n\n"
            return
        if time.monotonic() - last_beat > 15:
            last_beat = time.monotonic()
            yield ": keep-alive\n\n"
        if not payload["chunks"]:
            wait_until_final(execution_id, 0.25)
