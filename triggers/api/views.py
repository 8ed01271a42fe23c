"""Triggers over HTTP: a thin viewset; every write is one call to ``triggers.services``.

Reading needs ``trigger:read`` and any role in the project; every change (and a replay)
needs ``trigger:write`` and the admin role. A replay starts a task, so it also needs
``task:write`` and ``execution:write``, like triggering a template.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.base import CreateWithServiceMixin, TaskforgeViewSet
from accounts.models import Project, Role
from core.openapi import ProblemSerializer
from templates_app.models import Template
from triggers import services
from triggers.api.serializers import (
    TriggerCreatedSerializer,
    TriggerDeliverySerializer,
    TriggerSerializer,
    TriggerUpdateSerializer,
    TriggerWriteSerializer,
)
from triggers.models import Delivery, Outcome, Trigger

UUID_RE = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
OUTCOME = OpenApiParameter(
    "outcome", OpenApiTypes.STR, enum=Outcome.values, description="Only deliveries with this outcome."
)
CONFLICT = OpenApiResponse(ProblemSerializer, description="Conflict with the current state (see `code`).")


@extend_schema_view(
    list=extend_schema(summary="List the inbound triggers of your projects"),
    retrieve=extend_schema(summary="An inbound trigger (never its secret)"),
    create=extend_schema(
        summary="Create an inbound trigger URL for a template",
        description="The answer carries the `secret`, the only time it is shown, and the `url` "
        "the sender posts to. A mapping or filter problem is one 400 naming each field.",
        request=TriggerWriteSerializer,
        responses={201: TriggerCreatedSerializer, 409: CONFLICT},
    ),
)
@extend_schema(tags=["triggers"])
class TriggerViewSet(
    CreateWithServiceMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, TaskforgeViewSet
):
    """Inbound trigger URLs (``POST /hooks/{id}``) and their delivery logs."""

    queryset = Trigger.objects.all()
    serializer_class = TriggerSerializer
    scope_object = "trigger"
    write_role = Role.ADMIN
    lookup_value_regex = UUID_RE
    create_input = TriggerWriteSerializer
    create_output = TriggerCreatedSerializer
    detail_route = "trigger-detail"

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        return queryset.select_related("created_by")

    def create_via_service(self, project: Project, fields: dict[str, Any]) -> tuple[Trigger, dict]:
        template = self.visible(Template).filter(pk=fields.pop("template"), project=project).first()
        if template is None:
            raise ValidationError(
                {"template": ["No template of this project has this id."]}, code="does_not_exist"
            )
        trigger, secret = services.trigger_create(
            project=project, actor=self.request.user, template=template, **fields
        )
        return trigger, {"secret": secret}  # shown this once

    def _render(self, trigger: Trigger, serializer: type = TriggerSerializer, **shown: Any) -> Response:
        # Read back through the caller's queryset: tenancy is checked again after the write.
        fresh = self.get_queryset().get(pk=trigger.pk)
        for name, value in shown.items():
            setattr(fresh, name, value)
        return Response(serializer(fresh, context=self.get_serializer_context()).data)

    @extend_schema(
        summary="Change a trigger", request=TriggerUpdateSerializer, responses={200: TriggerSerializer}
    )
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        trigger = self.get_object()
        incoming = TriggerUpdateSerializer(data=request.data, partial=True)
        incoming.is_valid(raise_exception=True)
        if not incoming.validated_data:
            raise ValidationError({"non_field_errors": ["Nothing to change."]}, code="nothing_to_change")
        trigger = services.trigger_update(
            trigger=trigger, actor=request.user, fields=dict(incoming.validated_data)
        )
        return self._render(trigger)

    @extend_schema(summary="Delete a trigger and its delivery log", responses={204: None})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.trigger_delete(trigger=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Rotate the secret",
        description="Returns the new secret, the only time it is shown. The previous one is still "
        "accepted for TASKFORGE_TRIGGER_ROTATION_GRACE (24 h by default); rotating again drops it.",
        request=None,
        responses={200: TriggerCreatedSerializer},
    )
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        trigger, secret = services.trigger_rotate_secret(trigger=self.get_object(), actor=request.user)
        return self._render(trigger, TriggerCreatedSerializer, secret=secret)

    def _deliveries(self, trigger: Trigger) -> QuerySet:
        return Delivery.objects.filter(trigger=trigger).select_related("replayed_by")

    def _delivery(self, trigger: Trigger, delivery_id: str) -> Delivery:
        delivery = self._deliveries(trigger).filter(pk=delivery_id).first()
        if delivery is None:
            raise Http404
        return delivery

    @extend_schema(
        summary="The delivery log, newest first",
        parameters=[OUTCOME],
        responses=TriggerDeliverySerializer(many=True),
    )
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, pk: str | None = None) -> Response:
        queryset = self._deliveries(self.get_object()).order_by("-received_at", "-id")
        wanted = request.query_params.get("outcome")
        if wanted:
            if wanted not in Outcome.values:
                raise ValidationError(
                    {"outcome": [f"One of {', '.join(Outcome.values)}, got {wanted!r}."]},
                    code="invalid_choice",
                )
            queryset = queryset.filter(outcome=wanted)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(TriggerDeliverySerializer(page, many=True).data)

    @extend_schema(summary="One delivery", responses={200: TriggerDeliverySerializer})
    @action(detail=True, methods=["get"], url_path=rf"deliveries/(?P<delivery_id>{UUID_RE})")
    def delivery(self, request: Request, pk: str | None = None, delivery_id: str | None = None) -> Response:
        return Response(TriggerDeliverySerializer(self._delivery(self.get_object(), str(delivery_id))).data)

    @extend_schema(
        summary="Replay a delivery",
        description="Takes the stored body and headers again as a new delivery marked as a replay "
        "(`replay_of`), through the trigger's current filters and mapping; a run it starts has "
        "trigger `hook_replay`. 409 when the trigger is disabled or the body was cut when stored.",
        request=None,
        responses={201: TriggerDeliverySerializer, 409: CONFLICT},
    )
    @action(
        detail=True,
        methods=["post"],
        url_path=rf"deliveries/(?P<delivery_id>{UUID_RE})/replay",
        scopes=("task:write", "execution:write"),
    )
    def replay(self, request: Request, pk: str | None = None, delivery_id: str | None = None) -> Response:
        trigger = self.get_object()  # the admin role: HasProjectRole on a write
        answer = services.delivery_replay(
            delivery=self._delivery(trigger, str(delivery_id)), actor=request.user
        )
        return Response(
            TriggerDeliverySerializer(self._delivery(trigger, answer.delivery.pk)).data, status=201
        )
