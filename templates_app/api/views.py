"""Templates over HTTP: a thin viewset; every write is one call to ``templates_app.services``.

A template is addressed by its id or its slug. Slugs are unique per project, so a slug is
looked up among the caller's visible templates; when it names templates in several projects
the answer is 409 asking for the id or ``?project=<id>``.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import QuerySet
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

from accounts.api.base import CreateWithServiceMixin, SlugLookupMixin, TaskforgeViewSet
from accounts.idempotency import IDEMPOTENCY_PARAMETER, idempotency_responses, idempotent
from accounts.models import Project, Role
from core.holding import WAIT_PARAM, wait_seconds
from core.openapi import ProblemSerializer
from core.serializers import type_errors
from executions.engine.waiting import wait_until_final
from executions.models import Execution
from executions.serializers import ExecutionDetailSerializer, ExecutionSerializer
from tasks.models import Task
from tasks.serializers import TaskSerializer
from templates_app import services
from templates_app.api.serializers import (
    TemplateSerializer,
    TemplateWriteSerializer,
    TriggerResultSerializer,
    TriggerSerializer,
)
from templates_app.filters import TemplateFilter
from templates_app.models import Template

REF_PARAMETER = OpenApiParameter(
    "ref",
    str,
    OpenApiParameter.PATH,
    description="The template's id, or its slug (add ?project=<id> when the slug exists in several "
    "of your projects).",
)
PROJECT_PARAMETER = OpenApiParameter(
    "project", uuid.UUID, description="Narrows a slug lookup to one project."
)
AMBIGUOUS = OpenApiResponse(ProblemSerializer, description="The slug names templates in several projects")
CREATE_EXAMPLE = OpenApiExample(
    "Deploy a service",
    value={
        "slug": "deploy",
        "name": "Deploy a service",
        "name_pattern": "Deploy {{ service }} to {{ env }}",
        "script_type": "bash",
        "script_content": "service={{ service }}\nreplicas={{ replicas }}\n"
        'echo "deploying $service x$replicas"',
        "timeout_seconds": 300,
        "parameters": [
            {"name": "service", "type": "string", "required": True, "pattern": "[a-z][a-z0-9-]*"},
            {"name": "env", "type": "choice", "choices": ["staging", "production"], "default": "staging"},
            {"name": "replicas", "type": "integer", "min": 1, "max": 20, "default": 2},
            {"name": "token", "type": "string", "secret": True},
        ],
    },
    request_only=True,
)
TRIGGER_EXAMPLE = OpenApiExample(
    "Trigger with parameters",
    value={"parameters": {"service": "api", "env": "production", "replicas": 3}, "execute": True},
    request_only=True,
)


def _executes(request: Request) -> bool:
    """Whether a trigger's body asks to execute (``execute`` defaults to true), read the way
    ``TriggerSerializer`` reads it. A body it would refuse executes nothing (its 400 follows),
    so it needs no execution scope. A malformed body raises its 400/415 here, as it would in
    the view (DRF keeps an empty body after a parse error: never swallow it)."""
    data = request.data
    if not isinstance(data, dict):
        return False
    field = TriggerSerializer().fields["execute"]
    value = field.get_value(data)
    if value is not empty and type_errors(field, value):
        return False  # StrictSerializer refuses it ("execute": "true" is not a boolean)
    try:
        return bool(field.run_validation(value))
    except ValidationError:
        return False


@extend_schema_view(
    list=extend_schema(summary="List templates"),
    retrieve=extend_schema(summary="A template", parameters=[REF_PARAMETER, PROJECT_PARAMETER]),
    create=extend_schema(
        summary="Create a template (project admins)",
        request=TemplateWriteSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: TemplateSerializer, **idempotency_responses()},
        examples=[CREATE_EXAMPLE],
    ),
)
@extend_schema(tags=["templates"])
class TemplateViewSet(
    SlugLookupMixin,
    CreateWithServiceMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    TaskforgeViewSet,
):
    """Templates of the caller's projects. Reading needs template:read; writing needs
    template:write and the admin role in the template's project."""

    queryset = Template.objects.all()
    serializer_class = TemplateSerializer
    filterset_class = TemplateFilter
    scope_object = "template"
    slug_noun = "template"
    write_role = Role.ADMIN
    create_input = TemplateWriteSerializer
    detail_route = "template-detail"
    idempotent_create = True

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        return self.ref_scope(queryset.for_api())

    def _render(self, template: Template, status_code: int = status.HTTP_200_OK, **kwargs: Any) -> Response:
        # Read back through the caller's queryset: tenancy is checked again after the write.
        template = self.visible(Template).for_api().get(pk=template.pk)
        return Response(TemplateSerializer(template).data, status=status_code, **kwargs)

    def create_via_service(self, project: Project, fields: dict[str, Any]) -> Template:
        return services.template_create(
            project=project,
            actor=self.request.user,
            api_key=self.api_key,
            parameters=fields.pop("parameters", []),
            **fields,
        )

    def _update(self, request: Request, *, partial: bool) -> Response:
        template = self.get_object()
        incoming = TemplateWriteSerializer(data=request.data, partial=partial)
        incoming.is_valid(raise_exception=True)
        fields = dict(incoming.validated_data)
        if "project" in fields and fields.pop("project") != template.project_id:
            raise ValidationError(
                {"project": ["A template cannot move to another project."]}, code="immutable"
            )
        template = services.template_update(
            template=template,
            actor=request.user,
            api_key=self.api_key,
            fields=fields,
            parameters=fields.pop("parameters", None),
            replace=not partial,
        )
        return self._render(template)

    @extend_schema(
        summary="Replace a template (bumps its version)",
        request=TemplateWriteSerializer,
        parameters=[REF_PARAMETER, PROJECT_PARAMETER],
        responses={200: TemplateSerializer, 409: AMBIGUOUS},
    )
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._update(request, partial=False)

    @extend_schema(
        summary="Change some fields of a template (bumps its version)",
        request=TemplateWriteSerializer,
        parameters=[REF_PARAMETER, PROJECT_PARAMETER],
        responses={200: TemplateSerializer, 409: AMBIGUOUS},
    )
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._update(request, partial=True)

    @extend_schema(
        summary="Delete a template (its tasks stay and still run)",
        parameters=[REF_PARAMETER, PROJECT_PARAMETER],
        responses={204: None, 409: AMBIGUOUS},
    )
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.template_delete(template=self.get_object(), actor=request.user, api_key=self.api_key)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def required_scopes(self, request: Request) -> tuple[str, ...]:
        scopes = super().required_scopes(request)
        if self.action == "trigger" and _executes(request):
            scopes = (*scopes, "execution:write")
        return scopes

    @extend_schema(
        summary="Trigger a template: make a task and run it",
        description="Validates the parameters (every bad one is named in one 400, and nothing is "
        "created), creates the task and, unless `execute` is false, queues its execution. "
        "Needs template:read and task:write, plus execution:write when executing, and the member "
        "role in the template's project. With ?wait=N (N ≤ 60) the answer waits for the "
        "execution to finish or N seconds to pass.\n\n"
        "The status says where the execution is, as on POST /tasks/{id}/execute: **200** it "
        "finished within ?wait (`execution` has its final status, exit code and output); "
        "**202** it is queued or still running (no ?wait, or the wait ran out); **201** only a "
        "task was made (`execute: false`). Location is the new task.",
        request=TriggerSerializer,
        parameters=[REF_PARAMETER, PROJECT_PARAMETER, WAIT_PARAM, IDEMPOTENCY_PARAMETER],
        responses={
            200: OpenApiResponse(TriggerResultSerializer, description="The execution finished in ?wait."),
            201: OpenApiResponse(TriggerResultSerializer, description="Task made (execute false)."),
            202: OpenApiResponse(TriggerResultSerializer, description="Task made; execution not finished."),
            **idempotency_responses(),
        },
        examples=[TRIGGER_EXAMPLE],
    )
    @action(detail=True, methods=["post"], scope_action="read", scopes=("task:write",))
    @idempotent
    def trigger(self, request: Request, ref: str | None = None) -> Response:
        template = self.get_object()
        self.require_role(template.project_id, Role.MEMBER)
        wait = wait_seconds(request)
        incoming = TriggerSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        task, execution = services.template_trigger(
            template=template,
            actor=request.user,
            api_key=self.api_key,
            parameters=data["parameters"],
            overrides=dict(data.get("overrides") or {}),
            execute=data["execute"],
            timeout_seconds=data.get("timeout_seconds"),
        )
        execution_data, code = None, status.HTTP_201_CREATED
        if execution is not None:
            if wait:
                wait_until_final(execution.pk, wait)
            execution = Execution.objects.select_related("worker", "triggered_by").get(pk=execution.pk)
            serializer = ExecutionDetailSerializer if execution.is_final else ExecutionSerializer
            execution_data = serializer(execution).data
            # One rule with POST /tasks/{id}/execute: 200 finished (within ?wait), 202 not yet.
            code = status.HTTP_200_OK if execution.is_final and wait else status.HTTP_202_ACCEPTED
        task = self.visible(Task).for_api().get(pk=task.pk)
        location = request.build_absolute_uri(reverse("task-detail", kwargs={"pk": task.pk}))
        return Response(
            {"task": TaskSerializer(task).data, "execution": execution_data},
            status=code,
            headers={"Location": location},
        )
