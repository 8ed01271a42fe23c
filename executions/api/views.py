from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db.models import Max, QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, renderers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.base import TaskforgeViewSet
from accounts.idempotency import IDEMPOTENCY_PARAMETER, idempotency_responses, idempotent
from core.holding import WAIT_PARAM, take_slot, wait_seconds
from core.openapi import ProblemSerializer
from core.sse import FORMAT_PARAM, EventStreamRenderer, last_event_id_param, sse_frame, stream_response
from executions import services
from executions.engine.waiting import OutputFollower, wait_until_final
from executions.filters import ExecutionFilter
from executions.models import FINAL_STATUSES, Execution
from executions.serializers import (
    ExecuteSerializer,
    ExecutionDetailSerializer,
    ExecutionSerializer,
    LogSerializer,
    log_payload,
)
from tasks.models import Task

CONCURRENCY_429 = (
    "Rate limit exceeded, or too many long-lived requests at once (live-log and event streams and ?wait "
    f"together: {settings.TASKFORGE_MAX_STREAMS_PER_PRINCIPAL} per user, or this server's own cap; "
    "the problem's `concurrency_limit` is `user` or `process`); retry after `Retry-After` seconds"
)
OFFSET_PARAM = OpenApiParameter(
    "offset",
    {"type": "integer", "minimum": 0},
    description="Return the chunks after this `seq` (a page's `next_offset`, an event's `id`); "
    "0 = from the start. Past the last chunk: 400.",
)
LAST_EVENT_ID_PARAM = last_event_id_param("chunk", "offset")
# One event of the stream, as SSE clients (and schemathesis) see it: its fields, `data` being JSON.
SSE_EVENT_SCHEMA = {
    "type": "object",
    "description": "One Server-Sent Event. `chunk`: `id` is the chunk's `seq`, `data` a chunk "
    '(`{"seq", "stream", "data"}`, as in `Log.chunks`); `end`: `data` is `{"status", "exit_code"}`, '
    'then the stream closes; `reconnect`: `id` is the last `seq` sent, `data` `{"last_event_id", '
    '"after_seconds"}`, then the stream closes.',
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["chunk", "end", "reconnect"]},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {"type": "string", "description": "A JSON object."},
        "retry": {"type": "integer"},
    },
}
LOG_DESCRIPTION = (
    "The execution's output as chunks (`seq` 1, 2, … in the order written, each `stdout` or "
    "`stderr`), after `offset` (or `Last-Event-ID`), at most 500 per page: pass `next_offset` "
    "as `offset` for the rest.\n\n"
    "With `Accept: text/event-stream` (or `?format=sse`): a live Server-Sent Events stream. "
    "It starts with `retry: 1000`; each chunk is an `event: chunk` whose `id:` is its `seq` and "
    "whose `data:` is the chunk as JSON, sent as soon as the worker stores it; a finished "
    "execution then sends `event: end` with `{status, exit_code}` and the stream closes (close "
    "your EventSource on `end`, or it reconnects and gets `end` again). A comment line every "
    f"5 s keeps it alive. After {settings.TASKFORGE_STREAM_MAX_SECONDS} s a stream ends with "
    "`event: reconnect` (`id:` the last `seq` sent): reconnect with `Last-Event-ID` (an "
    "EventSource does so by itself) and nothing is sent twice. A stream counts against the "
    "caller's cap on concurrent long-lived requests (429 with `Retry-After` beyond it)."
)


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


class ExecutionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TaskforgeViewSet):
    """Executions of the caller's tasks (nested under a task, or across tasks)."""

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
        return get_object_or_404(self.visible(Task), pk=self.kwargs["id"])

    def get_serializer_class(self) -> type:
        return ExecutionDetailSerializer if self.action == "retrieve" else ExecutionSerializer

    def get_renderers(self) -> list[Any]:
        # Server-Sent Events on the log only: elsewhere ``?format=sse`` is an unknown format.
        if self.action == "log":
            return [renderers.JSONRenderer(), EventStreamRenderer()]
        return super().get_renderers()

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
            429: OpenApiResponse(ProblemSerializer, description=CONCURRENCY_429),
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
        parameters=[OFFSET_PARAM, LAST_EVENT_ID_PARAM, FORMAT_PARAM],
        responses={
            (200, "application/json"): LogSerializer,
            (200, "text/event-stream"): OpenApiResponse(
                SSE_EVENT_SCHEMA, description="Server-Sent Events (see the operation's description)."
            ),
            400: OpenApiResponse(
                ProblemSerializer,
                description="`offset` or `Last-Event-ID` not a non-negative integer, or past the last chunk",
            ),
            429: OpenApiResponse(ProblemSerializer, description=CONCURRENCY_429),
        },
        description=LOG_DESCRIPTION,
    )
    def log(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        execution = self.get_object()
        offset = log_offset(request, execution)
        if request.accepted_renderer.format != EventStreamRenderer.format:
            return Response(log_payload(execution, offset))
        lifetime = settings.TASKFORGE_STREAM_MAX_SECONDS
        slot = take_slot(request.user.pk, lifetime, "live-log streams")
        return stream_response(_sse(execution.pk, offset, lifetime), slot)


def log_offset(request: Request, execution: Execution) -> int:
    """Where the log resumes: ``Last-Event-ID`` when sent (an EventSource reconnecting), else
    ``?offset=``; 400 unless a non-negative integer at most the last chunk's ``seq``."""
    header = request.headers.get("Last-Event-ID")
    name, raw = ("Last-Event-ID", header.strip()) if header is not None else ("offset", None)
    if raw is None:
        raw = request.query_params.get("offset", "0")
    if not (raw.isascii() and raw.isdigit()):  # "²".isdigit() is True; int("²") raises
        raise ValidationError({name: ["Must be a non-negative integer."]})
    offset = int(raw)
    if offset and not execution.chunks.filter(seq__gte=offset).exists():
        last = execution.chunks.aggregate(last=Max("seq"))["last"] or 0
        raise ValidationError(
            {name: [f"{offset} is past the end of the output: the last chunk is {last}."]}, code="past_end"
        )
    return offset


# Also how soon a stream whose client left is noticed (the write fails) and its slot freed.
KEEP_ALIVE_SECONDS = 5


def _sse(execution_id: Any, offset: int, lifetime: float) -> Iterator[str]:
    """Server-Sent Events: every chunk after ``offset`` as it is stored (woken by the worker's
    NOTIFY), then ``end``; after ``lifetime`` seconds ``reconnect``. A comment line every 5 s
    keeps proxies from closing an idle stream (and finds clients that left)."""
    deadline = time.monotonic() + lifetime
    last_write = time.monotonic()
    with OutputFollower(execution_id) as follower:
        yield "retry: 1000\n\n"
        while True:
            read = follower.read(offset)
            for seq, stream, data in read.chunks:
                yield sse_frame("chunk", {"seq": seq, "stream": stream, "data": data}, seq)
            if read.chunks:
                offset, last_write = read.chunks[-1][0], time.monotonic()
            if not read.caught_up:
                continue
            if read.status is None or read.status in FINAL_STATUSES:
                yield sse_frame("end", {"status": read.status, "exit_code": read.exit_code})
                return
            now = time.monotonic()
            if now >= deadline:
                yield sse_frame("reconnect", {"last_event_id": offset, "after_seconds": lifetime}, offset)
                return
            if now - last_write >= KEEP_ALIVE_SECONDS:
                last_write = now
                yield ": keep-alive\n\n"
            follower.wait(min(deadline - now, KEEP_ALIVE_SECONDS - (now - last_write)))
