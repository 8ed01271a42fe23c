"""Tasks over HTTP: a thin viewset; every write is one call to ``tasks.services``."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.base import CreateWithServiceMixin, TaskforgeViewSet
from accounts.idempotency import IDEMPOTENCY_PARAMETER, idempotency_responses, idempotent
from accounts.models import Project
from accounts.selectors import project_for_new_object
from agents.models import Agent
from core.openapi import UUID_LOOKUP_REGEX, ProblemSerializer
from tasks import routing, services
from tasks.api.pagination import TaskPagination
from tasks.filters import TaskFilter
from tasks.models import Status, Task
from tasks.serializers import (
    ClaimBatchSerializer,
    ClaimNextSerializer,
    CompleteSerializer,
    EventSerializer,
    FailSerializer,
    LeaseSerializer,
    MoveSerializer,
    NoteCreateSerializer,
    NoteSerializer,
    TaskSerializer,
    TaskUpdateSerializer,
    TaskWriteSerializer,
)

CONFLICT = OpenApiResponse(
    ProblemSerializer,
    description="Conflict with the task's state: `code` says which (already_claimed, not_claimed, "
    "not_claimer, blocked_by_dependencies, not_claimable, invalid_transition, task_active, ...), "
    "`current_status` the status now.",
)
CREATE_EXAMPLE = OpenApiExample(
    "Nightly backup",
    value={
        "name": "Nightly backup",
        "script_type": "bash",
        "script_content": "pg_dump mydb > /tmp/backup.sql",
        "timeout_seconds": 600,
        "priority": 7,
        "tags": ["backup", "nightly"],
        "metadata": {"owner": "ops"},
    },
    request_only=True,
)
AGENT_EXAMPLE = OpenApiExample(
    "Work item for an agent",
    value={"name": "Review PR #42", "agent": "reviewer", "tags": ["review"], "priority": 8},
    request_only=True,
)


@extend_schema_view(
    list=extend_schema(summary="List tasks (filter, sort, paginate by page or cursor)"),
    retrieve=extend_schema(summary="A task"),
    create=extend_schema(
        summary="Create a task",
        request=TaskWriteSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: TaskSerializer, **idempotency_responses()},
        examples=[CREATE_EXAMPLE, AGENT_EXAMPLE],
    ),
)
@extend_schema(tags=["tasks"])
class TaskViewSet(CreateWithServiceMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, TaskforgeViewSet):
    """Tasks of the caller's projects, their history and the agent claim protocol."""

    queryset = Task.objects.all()
    serializer_class = TaskSerializer
    create_input = TaskWriteSerializer
    detail_route = "task-detail"
    idempotent_create = True
    filterset_class = TaskFilter
    pagination_class = TaskPagination
    scope_object = "task"
    lookup_value_regex = UUID_LOOKUP_REGEX
    # An agent's own key: its tasks and the claim protocol, nothing else.
    agent_actions = frozenset(
        {"list", "retrieve", "claim", "claim_next", "heartbeat", "complete", "fail", "release"}
    )

    @property
    def agent(self) -> Agent | None:
        """The registered agent calling (its agent-bound key), else None."""
        if not hasattr(self, "_agent"):
            self._agent = routing.agent_for_key(self.api_key)
        return self._agent

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        if self.api_key is not None and self.api_key.agent_bound:
            # An agent reads its tasks: the ones it holds or held, the ones pinned to it, and the
            # pending ones pinned to nobody (that it might claim).
            agent = self.agent
            queryset = queryset.filter(
                Q(claimed_by_agent=agent)
                | Q(assigned_agent=agent)
                | Q(status=Status.PENDING, assigned_agent__isnull=True)
            )
        return queryset.for_api()

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        # List filters (archived=false by default among them) narrow the list only, never the
        # lookup of one task.
        if self.action != "list":
            return queryset
        return super().filter_queryset(queryset)

    def _render(self, task: Task, status_code: int = status.HTTP_200_OK, **kwargs: Any) -> Response:
        # Read back through the caller's queryset: tenancy is checked again after the write.
        task = self.get_queryset().get(pk=task.pk)
        return Response(TaskSerializer(task).data, status=status_code, **kwargs)

    def create_via_service(self, project: Project, fields: dict[str, Any]) -> Task:
        return services.task_create(project=project, actor=self.request.user, api_key=self.api_key, **fields)

    def _update(self, request: Request, *, partial: bool) -> Response:
        task = self.get_object()
        incoming = TaskUpdateSerializer(data=request.data, partial=partial, context={"task": task})
        incoming.is_valid(raise_exception=True)
        task = services.task_update(
            task=task,
            actor=request.user,
            api_key=self.api_key,
            fields=dict(incoming.validated_data),
            replace=not partial,
        )
        return self._render(task)

    @extend_schema(
        summary="Replace a task (fields not given return to their defaults)",
        request=TaskUpdateSerializer,
        responses={200: TaskSerializer, 409: CONFLICT},
    )
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._update(request, partial=False)

    @extend_schema(
        summary="Change some fields of a task",
        request=TaskUpdateSerializer,
        responses={200: TaskSerializer, 409: CONFLICT},
    )
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._update(request, partial=True)

    @extend_schema(
        summary="Delete a task (409 while queued or running)", responses={204: None, 409: CONFLICT}
    )
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.task_delete(task=self.get_object(), actor=request.user, api_key=self.api_key)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Move a task to another status",
        description="Any status the state machine allows; otherwise 409 with `allowed`.",
        request=MoveSerializer,
        responses={200: TaskSerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def move(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        incoming = MoveSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        task = services.task_move(
            task=task, to_status=incoming.validated_data["status"], actor=request.user, api_key=self.api_key
        )
        return self._render(task)

    @extend_schema(
        summary="Claim a task (agents)",
        description="Only pending, unclaimed tasks whose dependencies are completed; "
        "409 otherwise (with `blockers` when dependencies are unfinished).",
        request=LeaseSerializer,
        responses={200: TaskSerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def claim(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        incoming = LeaseSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        if self.agent is not None:
            task = routing.agent_claim(
                task=task,
                agent=self.agent,
                actor=request.user,
                api_key=self.api_key,
                **incoming.validated_data,
            )
        else:
            task = services.task_claim(
                task=task, actor=request.user, api_key=self.api_key, **incoming.validated_data
            )
        return self._render(task)

    @extend_schema(
        summary="Claim the next task (agents)",
        description="The highest-priority, then oldest, claimable task matching the filters; "
        "204 when there is none (for a registered agent, the header `Taskforge-No-Claim` says why: "
        "draining, paused, at_capacity or no_task). With `count`, up to that many at once, "
        "answered as `{tasks, reason}` (200, `tasks` possibly empty).",
        request=ClaimNextSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={
            200: PolymorphicProxySerializer(
                component_name="ClaimNextResult",
                serializers=[TaskSerializer, ClaimBatchSerializer],
                resource_type_field_name=None,
            ),
            204: OpenApiResponse(description="Nothing to claim."),
            **idempotency_responses(),
        },
    )
    @action(detail=False, methods=["post"], url_path="claim-next")
    @idempotent
    def claim_next(self, request: Request) -> Response:
        incoming = ClaimNextSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        filters = dict(incoming.validated_data)
        if filters.get("project") is not None:
            project = project_for_new_object(
                user=request.user, api_key=self.api_key, project_id=filters["project"]
            )
            self.require_role(project)
        count = filters.pop("count", None)
        tasks, refusal = self._claim_next(request, filters, count or 1)
        if count is not None:
            rendered = TaskSerializer(
                self.get_queryset().filter(pk__in=[t.pk for t in tasks]), many=True
            ).data
            order = {str(t.pk): i for i, t in enumerate(tasks)}
            return Response(
                {
                    "tasks": sorted(rendered, key=lambda item: order[item["id"]]),
                    "reason": None if refusal is None else {"code": refusal.code, "detail": refusal.detail},
                }
            )
        if not tasks:
            headers = {} if refusal is None else {"Taskforge-No-Claim": refusal.code}
            return Response(status=status.HTTP_204_NO_CONTENT, headers=headers)
        return self._render(tasks[0])

    def _claim_next(
        self, request: Request, filters: dict[str, Any], count: int
    ) -> tuple[list[Task], routing.NoClaim | None]:
        if self.agent is not None:
            return routing.agent_claim_next(
                agent=self.agent, actor=request.user, api_key=self.api_key, count=count, **filters
            )
        tasks: list[Task] = []
        for _ in range(count):
            task = services.task_claim_next(actor=request.user, api_key=self.api_key, **filters)
            if task is None:
                break
            tasks.append(task)
        return tasks, None

    @extend_schema(
        summary="Extend the claimer's lease",
        request=LeaseSerializer,
        responses={200: TaskSerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def heartbeat(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        incoming = LeaseSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        task = services.task_heartbeat(
            task=task, actor=request.user, api_key=self.api_key, agent=self.agent, **incoming.validated_data
        )
        return self._render(task)

    @extend_schema(
        summary="Finish a claimed task with a result",
        request=CompleteSerializer,
        responses={200: TaskSerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def complete(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        incoming = CompleteSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        task = services.task_complete(
            task=task,
            actor=request.user,
            api_key=self.api_key,
            result=incoming.validated_data.get("result"),
            agent=self.agent,
        )
        return self._render(task)

    @extend_schema(
        summary="Give up a claimed task with an error",
        request=FailSerializer,
        responses={200: TaskSerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def fail(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        incoming = FailSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        task = services.task_fail(
            task=task,
            actor=request.user,
            api_key=self.api_key,
            error=incoming.validated_data["error"],
            agent=self.agent,
        )
        return self._render(task)

    @extend_schema(
        summary="Hand a claimed task back (pending)",
        request=None,
        responses={200: TaskSerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def release(self, request: Request, pk: str | None = None) -> Response:
        task = services.task_release(
            task=self.get_object(), actor=request.user, api_key=self.api_key, agent=self.agent
        )
        return self._render(task)

    @extend_schema(
        methods=["GET"], summary="Notes on a task, oldest first", responses=NoteSerializer(many=True)
    )
    @extend_schema(
        methods=["POST"],
        summary="Add a note",
        request=NoteCreateSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: NoteSerializer, **idempotency_responses()},
        examples=[OpenApiExample("Note", value={"body": "Waiting on the vendor."}, request_only=True)],
    )
    @action(detail=True, methods=["get", "post"], pagination_class=TaskPagination)
    def notes(self, request: Request, pk: str | None = None) -> Response:
        if request.method == "POST":
            return self._add_note(request)
        task = self.get_object()
        page = self.paginate_queryset(task.notes.select_related("author").order_by("created_at", "id"))
        return self.get_paginated_response(NoteSerializer(page, many=True).data)

    @idempotent
    def _add_note(self, request: Request) -> Response:
        task = self.get_object()
        incoming = NoteCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        note = services.note_create(
            task=task, actor=request.user, api_key=self.api_key, body=incoming.validated_data["body"]
        )
        return Response(NoteSerializer(note).data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="The task's history (events), oldest first", responses=EventSerializer(many=True))
    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        page = self.paginate_queryset(task.events.select_related("actor").order_by("created_at", "id"))
        return self.get_paginated_response(EventSerializer(page, many=True).data)
