"""Workflows over HTTP: thin viewsets; every write is one call to ``workflows.services``.

``/workflow-templates``: the graphs (addressed by id or slug, like templates; project admins
write them). ``/workflows``: the runs (the Task Master reference's ``POST /workflows``,
``GET /workflows/{id}`` with ``steps``, and start/pause/resume/cancel/retry; members run them).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.urls import reverse
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.fields import empty
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.base import CreateWithServiceMixin, SlugLookupMixin, TaskforgeViewSet, slug_scope
from accounts.idempotency import IDEMPOTENCY_PARAMETER, idempotency_responses, idempotent
from accounts.models import Project, Role
from core.openapi import ProblemSerializer
from core.serializers import type_errors
from core.validators import is_uuid
from workflows import services
from workflows.api.serializers import (
    WorkflowRunCreateSerializer,
    WorkflowRunDetailSerializer,
    WorkflowRunSerializer,
    WorkflowTemplateSerializer,
    WorkflowTemplateWriteSerializer,
)
from workflows.filters import WorkflowRunFilter, WorkflowTemplateFilter
from workflows.models import WorkflowNode, WorkflowRun, WorkflowTemplate

UUID_RE = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
REF_PARAMETER = OpenApiParameter(
    "ref",
    str,
    OpenApiParameter.PATH,
    description="The workflow template's id, or its slug (add ?project=<id> when the slug exists in "
    "several of your projects).",
)
PROJECT_PARAMETER = OpenApiParameter(
    "project", uuid.UUID, description="Narrows a slug lookup to one project."
)
AMBIGUOUS = OpenApiResponse(
    ProblemSerializer, description="The slug names workflow templates in several projects"
)
TRANSITION = OpenApiResponse(
    ProblemSerializer,
    description="`invalid_transition`: the run's status does not allow it (`current_status` says "
    "which it is); retry: `nodes_running` while a node still runs.",
)
TEMPLATE_EXAMPLE = OpenApiExample(
    "A diamond: build, then test and lint, then deploy with build's output",
    value={
        "slug": "release-train",
        "name": "Release train",
        "parameters": [{"name": "ref", "type": "string", "required": True}],
        "nodes": [
            {"key": "build", "template": "build", "parameters": {"ref": "{{ params.ref }}"}},
            {"key": "test", "template": "test"},
            {"key": "lint", "template": "lint"},
            {
                "key": "deploy",
                "template": "deploy",
                "parameters": {"artifact": "{{ nodes.build.outputs.artifact }}"},
                "join": "all",
            },
            {"key": "notify", "template": "notify", "parameters": {"message": "release failed"}},
        ],
        "edges": [
            {"from": "build", "to": "test"},
            {"from": "build", "to": "lint"},
            {"from": "test", "to": "deploy"},
            {"from": "lint", "to": "deploy"},
            {"from": "deploy", "to": "notify", "on": "failure"},
        ],
    },
    request_only=True,
)
RUN_EXAMPLE = OpenApiExample(
    "Run it now",
    value={"template": "release", "parameters": {"ref": "v1.4.0"}, "name": "Release v1.4.0", "start": True},
    request_only=True,
)
# Run actions that queue executions need execution:write too (as running a schedule now or
# triggering a template does); pause queues nothing.
STARTS = ("execution:write",)


def _starts(request: Request) -> bool:
    """Whether a run's creating body asks to start it (``start`` defaults to true), read the
    way ``WorkflowRunCreateSerializer`` reads it. A ``start`` it would refuse starts nothing
    (its 400 follows), so it needs no execution scope."""
    data = request.data
    if not isinstance(data, dict):
        return False
    field = WorkflowRunCreateSerializer().fields["start"]
    value = field.get_value(data)
    if value is not empty and type_errors(field, value):
        return False
    try:
        return bool(field.run_validation(value))
    except ValidationError:
        return False


@extend_schema_view(
    list=extend_schema(summary="List workflow templates"),
    retrieve=extend_schema(summary="A workflow template", parameters=[REF_PARAMETER, PROJECT_PARAMETER]),
    create=extend_schema(
        summary="Create a workflow template (project admins)",
        description="The graph is checked whole: one 400 names every bad node (`nodes[<i>]...`) and "
        "edge (`edges[<i>]...`): unknown templates, cycles, references to nodes that are not "
        "upstream, bindings whose type cannot fit, unbound required parameters, more than 200 nodes.",
        request=WorkflowTemplateWriteSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: WorkflowTemplateSerializer, **idempotency_responses()},
        examples=[TEMPLATE_EXAMPLE],
    ),
)
@extend_schema(tags=["workflows"])
class WorkflowTemplateViewSet(
    SlugLookupMixin,
    CreateWithServiceMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    TaskforgeViewSet,
):
    """Workflow templates of the caller's projects. Reading needs workflow:read; writing needs
    workflow:write and the admin role in the workflow template's project."""

    queryset = WorkflowTemplate.objects.all()
    serializer_class = WorkflowTemplateSerializer
    filterset_class = WorkflowTemplateFilter
    scope_object = "workflow"
    slug_noun = "workflow template"
    write_role = Role.ADMIN
    create_input = WorkflowTemplateWriteSerializer
    detail_route = "workflow-template-detail"
    idempotent_create = True

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        return self.ref_scope(queryset.select_related("created_by"))

    def _render(self, workflow: WorkflowTemplate, status_code: int = status.HTTP_200_OK) -> Response:
        # Read back through the caller's queryset: tenancy is checked again after the write.
        fresh = self.visible(WorkflowTemplate).select_related("created_by").get(pk=workflow.pk)
        return Response(WorkflowTemplateSerializer(fresh).data, status=status_code)

    def create_via_service(self, project: Project, fields: dict[str, Any]) -> WorkflowTemplate:
        return services.workflow_template_create(
            project=project, actor=self.request.user, api_key=self.api_key, **fields
        )

    def _update(self, request: Request, *, partial: bool) -> Response:
        workflow = self.get_object()
        incoming = WorkflowTemplateWriteSerializer(data=request.data, partial=partial)
        incoming.is_valid(raise_exception=True)
        fields = dict(incoming.validated_data)
        if "project" in fields and fields.pop("project") != workflow.project_id:
            raise ValidationError(
                {"project": ["A workflow template cannot move to another project."]}, code="immutable"
            )
        workflow = services.workflow_template_update(
            workflow=workflow, actor=request.user, api_key=self.api_key, fields=fields, replace=not partial
        )
        return self._render(workflow)

    @extend_schema(
        summary="Replace a workflow template (bumps its version; runs keep their graph)",
        request=WorkflowTemplateWriteSerializer,
        parameters=[REF_PARAMETER, PROJECT_PARAMETER],
        responses={200: WorkflowTemplateSerializer, 409: AMBIGUOUS},
    )
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._update(request, partial=False)

    @extend_schema(
        summary="Change some fields of a workflow template (bumps its version)",
        request=WorkflowTemplateWriteSerializer,
        parameters=[REF_PARAMETER, PROJECT_PARAMETER],
        responses={200: WorkflowTemplateSerializer, 409: AMBIGUOUS},
    )
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._update(request, partial=True)

    @extend_schema(
        summary="Delete a workflow template (its runs stay: each keeps its own graph)",
        parameters=[REF_PARAMETER, PROJECT_PARAMETER],
        responses={204: None, 409: AMBIGUOUS},
    )
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.workflow_template_delete(
            workflow=self.get_object(), actor=request.user, api_key=self.api_key
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    list=extend_schema(summary="List workflow runs, newest first"),
    retrieve=extend_schema(summary="A workflow run with its steps (every node: status, outputs, task)"),
)
@extend_schema(tags=["workflows"])
class WorkflowRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TaskforgeViewSet):
    """Runs of workflow templates in the caller's projects. Reading needs workflow:read; running
    needs workflow:write and the member role (and execution:write for what queues executions:
    create with start, start, resume, retry, cancel)."""

    queryset = WorkflowRun.objects.all()
    serializer_class = WorkflowRunSerializer
    filterset_class = WorkflowRunFilter
    scope_object = "workflow"
    write_role = Role.MEMBER
    lookup_value_regex = UUID_RE

    def get_serializer_class(self) -> type:
        return WorkflowRunSerializer if self.action == "list" else WorkflowRunDetailSerializer

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        queryset = queryset.select_related("created_by")
        if self.action != "list":
            items = WorkflowNode.objects.select_related("task").order_by("item_index")
            nodes = (
                WorkflowNode.objects.filter(parent=None)
                .select_related("task")
                .prefetch_related(Prefetch("items", queryset=items))
                .order_by("position")
            )
            queryset = queryset.prefetch_related(Prefetch("nodes", queryset=nodes))
        return queryset

    def required_scopes(self, request: Request) -> tuple[str, ...]:
        scopes = super().required_scopes(request)
        if self.action == "create" and _starts(request):
            scopes = (*scopes, *STARTS)
        return scopes

    def _render(self, run: WorkflowRun, status_code: int = status.HTTP_200_OK, **kwargs: Any) -> Response:
        # Read back through the caller's queryset: tenancy is checked again after the write.
        fresh = self.get_queryset().get(pk=run.pk)
        return Response(WorkflowRunDetailSerializer(fresh).data, status=status_code, **kwargs)

    def _template(self, ref: str, project: uuid.UUID | None) -> WorkflowTemplate:
        """The caller's workflow template ``ref`` (id or slug); one they cannot see is reported
        like one that does not exist (400 on ``template``)."""
        queryset = self.visible(WorkflowTemplate)
        if project is not None:
            queryset = queryset.filter(project_id=project)
        if not is_uuid(ref):
            queryset = slug_scope(self, queryset, ref, project, "workflow template")
        try:
            return services.workflow_template_lookup(queryset, ref)
        except (WorkflowTemplate.DoesNotExist, WorkflowTemplate.MultipleObjectsReturned):
            raise ValidationError(
                {"template": ["No such workflow template in your projects."]}, code="does_not_exist"
            ) from None

    @extend_schema(
        summary="Create a workflow run (and start it, unless start is false)",
        description="`template` (or `templateId`) is the workflow template's id or slug. The "
        "parameters are checked against its declarations: one 400 names each bad one "
        "(`parameters.<name>`). Needs workflow:write and the member role in the template's "
        "project, plus execution:write when it starts. 201 with the run and its steps; "
        "`Location` is the run.",
        request=WorkflowRunCreateSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: WorkflowRunDetailSerializer, **idempotency_responses()},
        examples=[RUN_EXAMPLE],
    )
    @idempotent
    def create(self, request: Request) -> Response:
        incoming = WorkflowRunCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        workflow = self._template(data["template"], data.get("project"))
        self.require_role(workflow.project_id, Role.MEMBER)
        run = services.workflow_run_create(
            workflow=workflow,
            actor=request.user,
            api_key=self.api_key,
            parameters=data.get("parameters") or {},
            name=data.get("name") or "",
            start=data["start"],
        )
        location = request.build_absolute_uri(reverse("workflow-detail", kwargs={"pk": run.pk}))
        return self._render(run, status.HTTP_201_CREATED, headers={"Location": location})

    def _act(self, service: Any) -> Response:
        run = self.get_object()
        return self._render(service(run=run, actor=self.request.user, api_key=self.api_key))

    @extend_schema(
        summary="Start a pending run",
        request=None,
        responses={200: WorkflowRunDetailSerializer, 409: TRANSITION},
    )
    @action(detail=True, methods=["post"], scopes=STARTS)
    def start(self, request: Request, pk: str | None = None) -> Response:
        return self._act(services.workflow_run_start)

    @extend_schema(
        summary="Pause a run: no new node starts; running nodes finish and are recorded",
        request=None,
        responses={200: WorkflowRunDetailSerializer, 409: TRANSITION},
    )
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        return self._act(services.workflow_run_pause)

    @extend_schema(
        summary="Resume a paused run: what became ready meanwhile starts",
        request=None,
        responses={200: WorkflowRunDetailSerializer, 409: TRANSITION},
    )
    @action(detail=True, methods=["post"], scopes=STARTS)
    def resume(self, request: Request, pk: str | None = None) -> Response:
        return self._act(services.workflow_run_resume)

    @extend_schema(
        summary="Cancel a run: waiting nodes are cancelled, running nodes' tasks are cancelled",
        description="A running script is killed by its worker within 2 s; its node is recorded "
        "cancelled when its task is (the answer may still show it running).",
        request=None,
        responses={200: WorkflowRunDetailSerializer, 409: TRANSITION},
    )
    @action(detail=True, methods=["post"], scopes=STARTS)
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        return self._act(services.workflow_run_cancel)

    @extend_schema(
        summary="Retry a failed or cancelled run: only the failed and cancelled nodes and what "
        "depends on them run again",
        description="Nodes that succeeded keep their outputs and do not run again. 409 "
        "`nodes_running` while a node still runs (with `nodes`).",
        request=None,
        responses={200: WorkflowRunDetailSerializer, 409: TRANSITION},
    )
    @action(detail=True, methods=["post"], scopes=STARTS)
    def retry(self, request: Request, pk: str | None = None) -> Response:
        return self._act(services.workflow_run_retry)
