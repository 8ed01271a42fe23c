"""Registered agents over HTTP (``/agents``): a thin viewset; every write is one service call.

Served by tasks because most of what an agent's page shows or does is about tasks (what it
holds, its heartbeat renewing their leases, tasks pinned to it); the registry itself, its states
and their events are the ``agents`` app's (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, QuerySet
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions, mixins, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.base import CreateWithServiceMixin, TaskforgeViewSet
from accounts.idempotency import IDEMPOTENCY_PARAMETER, idempotency_responses, idempotent
from accounts.models import Project
from agents import services as agent_services
from agents.models import Agent, AgentState
from core.openapi import UUID_LOOKUP_REGEX, ProblemSerializer
from tasks import routing
from tasks.api.agent_serializers import (
    AgentCreateSerializer,
    AgentHeartbeatSerializer,
    AgentRegisteredSerializer,
    AgentSerializer,
    AgentStatusSerializer,
    HeartbeatAnswerSerializer,
    PauseSerializer,
)
from tasks.models import Status, Task
from tasks.serializers import TaskSerializer, TaskWriteSerializer

CONFLICT = OpenApiResponse(
    ProblemSerializer, description="`code` not_paused: the agent is neither paused nor draining."
)


class NotTheAgent(exceptions.PermissionDenied):
    default_code = "not_the_agent"
    default_detail = "Only the agent itself (its agent-bound key) may send its heartbeats."


@extend_schema_view(
    list=extend_schema(summary="List registered agents (filter: status)"),
    retrieve=extend_schema(summary="An agent"),
    create=extend_schema(
        summary="Register an agent (answers its agent-bound key, once)",
        request=AgentCreateSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: AgentRegisteredSerializer, **idempotency_responses()},
    ),
    destroy=extend_schema(summary="Unregister an agent (its key is revoked, its claims return)"),
)
@extend_schema(tags=["agents"])
class AgentViewSet(
    CreateWithServiceMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    TaskforgeViewSet,
):
    """The caller's projects' registered agents; an agent's own key sees only itself."""

    queryset = Agent.objects.alive()
    serializer_class = AgentSerializer
    create_input = AgentCreateSerializer
    create_output = AgentRegisteredSerializer
    detail_route = "agent-detail"
    idempotent_create = True
    scope_object = "agent"
    lookup_value_regex = UUID_LOOKUP_REGEX
    agent_actions = frozenset({"retrieve", "status", "heartbeat"})

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        if self.api_key is not None and self.api_key.agent_bound:
            queryset = queryset.filter(api_key=self.api_key)
        held = Q(claims__status=Status.RUNNING, claims__lease_expires_at__isnull=False)
        queryset = queryset.with_state().annotate(current_tasks=Count("claims", filter=held))
        if self.action == "list":
            wanted = self._status_filter()
            if wanted:
                queryset = queryset.filter(computed_state__in=wanted)
        return queryset.select_related("api_key").order_by("name", "id")

    def _status_filter(self) -> list[str]:
        raw = self.request.query_params.get("status")
        if raw is None:
            return []
        wanted = [part.strip() for part in raw.split(",") if part.strip()]
        unknown = [value for value in wanted if value not in AgentState.values]
        if unknown or not wanted:
            raise exceptions.ValidationError(
                {"status": [f"One or more of {', '.join(AgentState.values)} (comma-separated)."]}
            )
        return wanted

    def required_scopes(self, request: Request) -> tuple[str, ...]:
        scopes = super().required_scopes(request)
        # Registering mints a key that claims and finishes tasks: the caller must hold that much.
        # Submitting a task to an agent creates a task.
        if self.action in ("create", "tasks"):
            scopes = (*scopes, "task:write")
        return scopes

    def create_via_service(self, project: Project, fields: dict[str, Any]) -> tuple[Agent, dict[str, str]]:
        agent, raw = agent_services.agent_register(
            project=project, actor=self.request.user, api_key=self.api_key, **fields
        )
        return agent, {"key": raw}

    def perform_destroy(self, instance: Agent) -> None:
        agent_services.agent_delete(agent=instance, actor=self.request.user, api_key=self.api_key)

    def _render(self, agent: Agent) -> Response:
        return Response(AgentSerializer(self.get_queryset().get(pk=agent.pk)).data)

    @extend_schema(
        summary="Pause: no new work (with a note, until a time)",
        request=PauseSerializer,
        responses={200: AgentSerializer},
    )
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        incoming = PauseSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        agent = agent_services.agent_pause(
            agent=self.get_object(), actor=request.user, api_key=self.api_key, **incoming.validated_data
        )
        return self._render(agent)

    @extend_schema(
        summary="Drain: finish what it holds, take nothing new",
        request=None,
        responses={200: AgentSerializer},
    )
    @action(detail=True, methods=["post"])
    def drain(self, request: Request, pk: str | None = None) -> Response:
        agent = agent_services.agent_drain(agent=self.get_object(), actor=request.user, api_key=self.api_key)
        return self._render(agent)

    @extend_schema(
        summary="Resume a paused or draining agent",
        request=None,
        responses={200: AgentSerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        agent = agent_services.agent_resume(agent=self.get_object(), actor=request.user, api_key=self.api_key)
        return self._render(agent)

    @extend_schema(
        summary="The agent's heartbeat (its key only): renews its tasks' leases, answers what to do",
        request=AgentHeartbeatSerializer,
        responses={200: HeartbeatAnswerSerializer},
    )
    @action(detail=True, methods=["post"])
    def heartbeat(self, request: Request, pk: str | None = None) -> Response:
        agent = self.get_object()
        incoming = AgentHeartbeatSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)  # a bad body is a 400 whoever sends it
        if routing.agent_for_key(self.api_key) != agent:
            raise NotTheAgent()
        answer = routing.agent_heartbeat(
            agent=agent, actor=request.user, api_key=self.api_key, **incoming.validated_data
        )
        body = HeartbeatAnswerSerializer({**answer, "status": answer["state"]}).data
        return Response(body)

    @extend_schema(summary="The agent's state and the tasks it holds", responses={200: AgentStatusSerializer})
    @action(detail=True, methods=["get"])
    def status(self, request: Request, pk: str | None = None) -> Response:
        agent = self.get_object()
        current = routing.agent_current_tasks(agent)
        body = {
            "id": agent.pk,
            "name": agent.name,
            "status": agent.state_at(timezone.now()),
            "current_tasks": current,
            "capacity": agent.capacity,
            "load": round(len(current) / agent.capacity, 4),
            "last_heartbeat": agent.last_heartbeat_at,
            "pause_note": agent.pause_note,
            "paused_until": agent.paused_until,
        }
        return Response(AgentStatusSerializer(body).data)

    @extend_schema(
        summary="Submit a task to this agent (a task pinned to it)",
        request=TaskWriteSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: TaskSerializer, **idempotency_responses()},
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def tasks(self, request: Request, pk: str | None = None) -> Response:
        agent = self.get_object()
        incoming = TaskWriteSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        fields = dict(incoming.validated_data)
        fields.pop("project", None)
        task = routing.agent_task_create(to_agent=agent, actor=request.user, api_key=self.api_key, **fields)
        fresh = self.visible(Task).for_api().get(pk=task.pk)
        location = request.build_absolute_uri(reverse("task-detail", kwargs={"pk": task.pk}))
        return Response(
            TaskSerializer(fresh).data, status=status.HTTP_201_CREATED, headers={"Location": location}
        )
