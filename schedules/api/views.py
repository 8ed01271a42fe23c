"""Schedules over HTTP: a thin viewset; every write is one call to ``schedules.services``."""

from __future__ import annotations

import dataclasses
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.base import CreateWithServiceMixin, TaskforgeViewSet
from accounts.models import Project, Role
from core.openapi import ProblemSerializer
from schedules import services, timing
from schedules.api.serializers import (
    PreviewQuerySerializer,
    PreviewResultSerializer,
    PreviewSerializer,
    ScheduleFireSerializer,
    ScheduleRunSerializer,
    ScheduleSerializer,
    ScheduleWriteSerializer,
)
from schedules.filters import ScheduleFilter
from schedules.models import Schedule, ScheduleFire
from tasks.models import Task
from templates_app import parameters as params
from templates_app.models import Template

UUID_RE = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
CONFLICT = OpenApiResponse(
    ProblemSerializer, description="The overlap policy does not start it (see `code`)."
)
CREATE_EXAMPLE = OpenApiExample(
    "Nightly report at 03:30 in Riga",
    value={
        "name": "nightly report",
        "template": "6c1d6d38-2a51-4f0a-9a43-7d1b0c6c1a11",
        "parameters": {"env": "production", "token": {"secret": "report-token"}},
        "cron": "30 3 * * *",
        "timezone": "Europe/Riga",
        "overlap_policy": "skip",
        "misfire_policy": "run_once",
    },
    request_only=True,
)
PREVIEW_EXAMPLE = OpenApiExample(
    "Every hour, in New York",
    value={"cron": "0 * * * *", "timezone": "America/New_York", "count": 3, "after": "2025-03-09T05:30:00Z"},
    request_only=True,
)


@extend_schema_view(
    list=extend_schema(summary="List schedules"),
    retrieve=extend_schema(summary="A schedule, with its next fire"),
    create=extend_schema(
        summary="Create a schedule (project admins)",
        request=ScheduleWriteSerializer,
        responses={201: ScheduleSerializer},
        examples=[CREATE_EXAMPLE],
    ),
)
@extend_schema(tags=["schedules"])
class ScheduleViewSet(
    CreateWithServiceMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, TaskforgeViewSet
):
    """Cron and interval schedules of the caller's projects. Reading needs schedule:read; every
    change needs schedule:write and the admin role in the schedule's project; running one now
    needs schedule:write and execution:write and the member role."""

    queryset = Schedule.objects.all()
    serializer_class = ScheduleSerializer
    filterset_class = ScheduleFilter
    scope_object = "schedule"
    write_role = Role.ADMIN
    lookup_value_regex = UUID_RE
    create_input = ScheduleWriteSerializer
    detail_route = "schedule-detail"

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        return queryset.select_related("created_by")

    def _render(self, schedule: Schedule, status_code: int = status.HTTP_200_OK) -> Response:
        # Read back through the caller's queryset: tenancy is checked again after the write.
        fresh = self.get_queryset().get(pk=schedule.pk)
        return Response(ScheduleSerializer(fresh).data, status=status_code)

    def _targets(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The body's template and task ids as objects the caller can see (400 otherwise)."""
        for name, model in (("template", Template), ("task", Task)):
            if fields.get(name) is not None:
                found = self.visible(model).filter(pk=fields[name]).first()
                if found is None:
                    raise ValidationError(
                        {name: [f"No such {name} in your projects."]}, code="does_not_exist"
                    )
                fields[name] = found
        return fields

    def create_via_service(self, project: Project, fields: dict[str, Any]) -> Schedule:
        return services.schedule_create(
            project=project, actor=self.request.user, api_key=self.api_key, **self._targets(fields)
        )

    def _update(self, request: Request, *, partial: bool) -> Response:
        schedule = self.get_object()
        incoming = ScheduleWriteSerializer(data=request.data, partial=partial)
        incoming.is_valid(raise_exception=True)
        fields = dict(incoming.validated_data)
        if "project" in fields and fields.pop("project") != schedule.project_id:
            raise ValidationError(
                {"project": ["A schedule cannot move to another project."]}, code="immutable"
            )
        schedule = services.schedule_update(
            schedule=schedule,
            actor=request.user,
            api_key=self.api_key,
            fields=self._targets(fields),
            replace=not partial,
        )
        return self._render(schedule)

    @extend_schema(
        summary="Replace a schedule", request=ScheduleWriteSerializer, responses={200: ScheduleSerializer}
    )
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._update(request, partial=False)

    @extend_schema(
        summary="Change some fields of a schedule",
        description="A change of when it fires plans the next fire from now (never a backfill); "
        "`enabled: false` pauses it and `true` resumes it.",
        request=ScheduleWriteSerializer,
        responses={200: ScheduleSerializer},
    )
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._update(request, partial=True)

    @extend_schema(summary="Delete a schedule and its fire log (its tasks stay)", responses={204: None})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.schedule_delete(schedule=self.get_object(), actor=request.user, api_key=self.api_key)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(summary="Pause a schedule", request=None, responses={200: ScheduleSerializer})
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        return self._render(
            services.schedule_pause(schedule=self.get_object(), actor=request.user, api_key=self.api_key)
        )

    @extend_schema(
        summary="Resume a schedule",
        description="It fires again from the first slot after now: the slots missed while it was "
        "paused are not run. 400 naming the field when its parameters no longer fit its template.",
        request=None,
        responses={200: ScheduleSerializer},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        return self._render(
            services.schedule_resume(schedule=self.get_object(), actor=request.user, api_key=self.api_key)
        )

    @extend_schema(
        summary="Run a schedule now, obeying its overlap policy",
        description="**201** fired (`fire` has its task and execution); **202** queued behind the "
        "active run (queue_one); **409** `overlap` when the policy does not start it (skip, or "
        "queue_one with a run already waiting); `cancel_previous` cancels the active run first.",
        request=None,
        responses={201: ScheduleRunSerializer, 202: ScheduleRunSerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"], scope_action="read", scopes=("schedule:write", "execution:write"))
    def trigger(self, request: Request, pk: str | None = None) -> Response:
        schedule = self.get_object()
        self.require_role(schedule.project_id, Role.MEMBER)
        outcome, fire = services.schedule_trigger(schedule=schedule, actor=request.user, api_key=self.api_key)
        data = {"outcome": outcome, "fire": ScheduleFireSerializer(fire).data if fire else None}
        code = status.HTTP_201_CREATED if outcome == "fired" else status.HTTP_202_ACCEPTED
        return Response(data, status=code)

    @extend_schema(
        summary="What happened to each slot, newest first", responses=ScheduleFireSerializer(many=True)
    )
    @action(detail=True, methods=["get"])
    def fires(self, request: Request, pk: str | None = None) -> Response:
        schedule = self.get_object()
        queryset = ScheduleFire.objects.filter(schedule=schedule).order_by("-scheduled_for", "-id")
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(ScheduleFireSerializer(page, many=True).data)

    @extend_schema(
        summary="The next fire times of a schedule",
        parameters=[PreviewQuerySerializer],
        responses={200: PreviewResultSerializer},
    )
    @action(detail=True, methods=["get"])
    def preview(self, request: Request, pk: str | None = None) -> Response:
        schedule = self.get_object()
        query = PreviewQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        when = services.schedule_when(schedule)
        return _preview(when, query.validated_data)

    @extend_schema(
        summary="The next fire times of an unsaved expression",
        description="Changes nothing (it needs only schedule:read). A bad expression or zone is a "
        "400 naming `cron` or `timezone`.",
        request=PreviewSerializer,
        responses={200: PreviewResultSerializer},
        examples=[PREVIEW_EXAMPLE],
    )
    @action(detail=False, methods=["post"], url_path="preview", scope_action="read")
    def preview_unsaved(self, request: Request) -> Response:
        incoming = PreviewSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        when = timing.When(
            cron=data.get("cron") or "",
            timezone=data.get("timezone") or "UTC",
            interval_seconds=data.get("interval_seconds"),
            start_at=data.get("start_at"),
            end_at=data.get("end_at"),
        )
        errors = services.preview_errors(when)
        if errors:
            raise params.as_validation_error(errors)
        if when.cron:
            when = dataclasses.replace(when, cron=timing.check_cron(when.cron))
        elif when.start_at is None:  # as a new schedule: anchored where the preview starts
            when = dataclasses.replace(
                when, start_at=data.get("after") or timezone.now().replace(microsecond=0)
            )
        return _preview(when, data)


def _preview(when: timing.When, data: dict[str, Any]) -> Response:
    fires = services.schedule_preview(when=when, count=data.get("count") or 5, after=data.get("after"))
    return Response({"timezone": when.timezone, "fires": fires})
