"""Webhooks over HTTP: a thin viewset; every write is one call to ``webhooks.services``."""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
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
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.base import CreateWithServiceMixin, TaskforgeViewSet
from accounts.models import Membership, Project, Role
from core.openapi import ProblemSerializer
from webhooks import services
from webhooks.api.serializers import (
    DeliverySerializer,
    WebhookCreatedSerializer,
    WebhookSerializer,
    WebhookUpdateSerializer,
    WebhookWriteSerializer,
)
from webhooks.models import Delivery, DeliveryAttempt, DeliveryStatus, Subscription

UUID_RE = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
CONFLICT = OpenApiResponse(ProblemSerializer, description="Conflict with the current state (see `code`).")
CREATE_EXAMPLE = OpenApiExample(
    "Task results to CI",
    value={
        "url": "https://ci.example.com/hooks/taskforge",
        "event_types": ["task.completed", "task.failed"],
        "description": "CI pipeline",
    },
    request_only=True,
)
SECRET_EXAMPLE = OpenApiExample(
    "Created (the secret is shown this once)",
    value={
        "id": "8f8f0a53-93a8-4b37-9f55-0b9b1b1d2f6e",
        "project": "2b0f4e55-8d6c-4a3e-9f3b-5b0c2a1d9e77",
        "url": "https://ci.example.com/hooks/taskforge",
        "event_types": ["task.completed", "task.failed"],
        "active": True,
        "description": "CI pipeline",
        "disabled_reason": "",
        "disabled_at": None,
        "failing_since": None,
        "secret_rotation_ends_at": None,
        "created_by": "alice",
        "created_at": "2026-01-01T12:00:00Z",
        "updated_at": "2026-01-01T12:00:00Z",
        "secret": "whsec_EXAMPLEonlyEXAMPLEonlyEXAMPLEonlyEXAMPLE0=",  # example, not a real secret
    },
    response_only=True,
)
DELIVERY_STATUS = OpenApiParameter(
    "status", OpenApiTypes.STR, enum=DeliveryStatus.values, description="Only deliveries in this status."
)


class _Everything:
    """A superuser administers every project."""

    def __contains__(self, item: object) -> bool:
        return True


@extend_schema_view(
    list=extend_schema(summary="List the webhook subscriptions of your projects"),
    retrieve=extend_schema(summary="A webhook subscription (never its secret)"),
    create=extend_schema(
        summary="Subscribe a URL to events",
        description="The answer carries the signing `secret`, the only time it is shown. The URL "
        "must be https and resolve to public addresses only (400 naming `url` otherwise).",
        request=WebhookWriteSerializer,
        responses={201: WebhookCreatedSerializer, 409: CONFLICT},
        examples=[CREATE_EXAMPLE, SECRET_EXAMPLE],
    ),
)
@extend_schema(tags=["webhooks"])
class WebhookViewSet(
    CreateWithServiceMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, TaskforgeViewSet
):
    """Signed outgoing webhooks. Reading needs `webhook:read`; every change needs `webhook:write`
    and the admin role in the subscription's project."""

    queryset = Subscription.objects.all()
    serializer_class = WebhookSerializer
    scope_object = "webhook"
    write_role = Role.ADMIN
    lookup_value_regex = UUID_RE
    create_input = WebhookWriteSerializer
    create_output = WebhookCreatedSerializer
    detail_route = "webhook-detail"

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        return queryset.select_related("created_by")

    def _admin_projects(self) -> Container[Any]:
        """The projects whose webhook URLs and receivers' answers the caller sees whole."""
        if getattr(self, "_admin_project_ids", None) is None:
            user = self.request.user
            self._admin_project_ids: Container[Any] = (
                _Everything()
                if user.is_superuser
                else frozenset(
                    Membership.objects.filter(user=user, role=Role.ADMIN).values_list("project_id", flat=True)
                )
            )
        return self._admin_project_ids

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "admin_projects": self._admin_projects()}

    def _delivery_data(self, subscription: Subscription, delivery: Delivery | Any, many: bool = False) -> Any:
        reveal = subscription.project_id in self._admin_projects()
        return DeliverySerializer(delivery, many=many, context={"reveal": reveal}).data

    def _render(
        self, subscription: Subscription, status_code: int = status.HTTP_200_OK, **kwargs: Any
    ) -> Response:
        # Read back through the caller's queryset: tenancy is checked again after the write.
        fresh = self.get_queryset().get(pk=subscription.pk)
        data = WebhookSerializer(fresh, context=self.get_serializer_context()).data
        return Response(data, status=status_code, **kwargs)

    def _render_with_secret(
        self, subscription: Subscription, secret: str, status_code: int, **kwargs: Any
    ) -> Response:
        fresh = self.get_queryset().get(pk=subscription.pk)
        fresh.secret = secret
        data = WebhookCreatedSerializer(fresh, context=self.get_serializer_context()).data
        return Response(data, status=status_code, **kwargs)

    def _delivery(self, subscription: Subscription, delivery_id: str) -> Delivery:
        delivery = self._deliveries(subscription).filter(pk=delivery_id).first()
        if delivery is None:
            raise Http404
        return delivery

    def _deliveries(self, subscription: Subscription) -> QuerySet:
        attempts = Prefetch("attempts", queryset=DeliveryAttempt.objects.order_by("started_at", "id"))
        return Delivery.objects.filter(subscription=subscription).prefetch_related(attempts)

    def create_via_service(self, project: Project, fields: dict[str, Any]) -> tuple[Subscription, dict]:
        subscription, secret = services.subscription_create(
            project=project, actor=self.request.user, **fields
        )
        return subscription, {"secret": secret}  # shown this once

    @extend_schema(
        summary="Change a subscription",
        description="Setting `active` to false cancels its pending deliveries; back to true clears "
        "`disabled_reason`.",
        request=WebhookUpdateSerializer,
        responses={200: WebhookSerializer},
    )
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        subscription = self.get_object()
        incoming = WebhookUpdateSerializer(data=request.data, partial=True)
        incoming.is_valid(raise_exception=True)
        if not incoming.validated_data:
            raise ValidationError(
                {"non_field_errors": ["Nothing to change: send url, event_types, active or description."]},
                code="nothing_to_change",
            )
        subscription = services.subscription_update(
            subscription=subscription, actor=request.user, fields=dict(incoming.validated_data)
        )
        return self._render(subscription)

    @extend_schema(summary="Delete a subscription and its delivery log", responses={204: None})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.subscription_delete(subscription=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Rotate the signing secret",
        description="Returns the new secret, the only time it is shown. For the next 24 hours "
        "deliveries carry two signatures, one per secret, so receivers switch without downtime. "
        "Rotating again drops the older secret at once.",
        request=None,
        responses={200: WebhookCreatedSerializer},
    )
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        subscription, secret = services.subscription_rotate_secret(
            subscription=self.get_object(), actor=request.user
        )
        return self._render_with_secret(subscription, secret, status.HTTP_200_OK)

    @extend_schema(
        summary="Queue a test delivery",
        description="A `webhook.test` message, sent by the dispatcher within seconds (even to a "
        "disabled subscription). Follow it in the delivery log.",
        request=None,
        responses={202: DeliverySerializer},
    )
    @action(detail=True, methods=["post"], url_path="test")
    def send_test(self, request: Request, pk: str | None = None) -> Response:
        delivery = services.send_test(subscription=self.get_object(), actor=request.user)
        subscription = delivery.subscription
        return Response(
            self._delivery_data(subscription, self._delivery(subscription, delivery.pk)), status=202
        )

    @extend_schema(
        summary="The delivery log, newest first",
        parameters=[DELIVERY_STATUS],
        responses=DeliverySerializer(many=True),
    )
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, pk: str | None = None) -> Response:
        subscription = self.get_object()
        queryset = self._deliveries(subscription).order_by("-created_at", "-id")
        wanted = request.query_params.get("status")
        if wanted:
            if wanted not in DeliveryStatus.values:
                raise ValidationError(
                    {"status": [f"One of {', '.join(DeliveryStatus.values)}, got {wanted!r}."]},
                    code="invalid_choice",
                )
            queryset = queryset.filter(status=wanted)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(self._delivery_data(subscription, page, many=True))

    @extend_schema(summary="One delivery with its attempts", responses={200: DeliverySerializer})
    @action(detail=True, methods=["get"], url_path=rf"deliveries/(?P<delivery_id>{UUID_RE})")
    def delivery(self, request: Request, pk: str | None = None, delivery_id: str | None = None) -> Response:
        subscription = self.get_object()
        return Response(self._delivery_data(subscription, self._delivery(subscription, str(delivery_id))))

    @extend_schema(
        summary="Send a delivery again",
        description="Same body, same `webhook-id` (receivers may deduplicate on it), fresh "
        "signature; its retry schedule starts over. 409 while it is being sent.",
        request=None,
        responses={202: DeliverySerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"], url_path=rf"deliveries/(?P<delivery_id>{UUID_RE})/replay")
    def replay(self, request: Request, pk: str | None = None, delivery_id: str | None = None) -> Response:
        subscription = self.get_object()
        delivery = services.delivery_replay(
            delivery=self._delivery(subscription, str(delivery_id)), actor=request.user
        )
        return Response(
            self._delivery_data(subscription, self._delivery(subscription, delivery.pk)), status=202
        )
