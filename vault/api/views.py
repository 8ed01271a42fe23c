"""Project secrets over HTTP: a thin viewset; every write is one call to ``vault.services``."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.base import CreateWithServiceMixin, TaskforgeViewSet
from accounts.models import Project, Role
from vault import services
from vault.api.serializers import (
    SecretReplaceSerializer,
    SecretSerializer,
    SecretUpdateSerializer,
    SecretWriteSerializer,
)
from vault.filters import SecretFilter
from vault.models import Secret

UUID_RE = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
CREATE_EXAMPLE = OpenApiExample(
    "A deploy token",
    value={"name": "DEPLOY_TOKEN", "value": "example-only", "description": "CI deploys"},
    request_only=True,
)


@extend_schema_view(
    list=extend_schema(summary="List the secrets of your projects (names and metadata, never values)"),
    retrieve=extend_schema(summary="A secret's metadata (never its value)"),
    create=extend_schema(
        summary="Store a secret",
        description="Needs `secret:write` and the admin role in the project. The value is "
        "encrypted at rest and never returned.",
        request=SecretWriteSerializer,
        responses={201: SecretSerializer},
        examples=[CREATE_EXAMPLE],
    ),
)
@extend_schema(tags=["secrets"])
class SecretViewSet(
    CreateWithServiceMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, TaskforgeViewSet
):
    """Project secrets. Reading (names and metadata only) needs `secret:read` and any role in the
    project; every change needs `secret:write` and the admin role."""

    queryset = Secret.objects.all()
    serializer_class = SecretSerializer
    filterset_class = SecretFilter
    scope_object = "secret"
    write_role = Role.ADMIN
    lookup_value_regex = UUID_RE
    create_input = SecretWriteSerializer
    detail_route = "secret-detail"

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        return queryset.select_related("created_by", "updated_by").defer("value")

    def create_via_service(self, project: Project, fields: dict[str, Any]) -> Secret:
        return services.secret_create(
            project=project, actor=self.request.user, api_key=self.api_key, **fields
        )

    def _change(self, request: Request, incoming_class: type, *, partial: bool) -> Response:
        secret = self.get_object()
        incoming = incoming_class(data=request.data, partial=partial)
        incoming.is_valid(raise_exception=True)
        if not incoming.validated_data:
            raise ValidationError(
                {"non_field_errors": ["Nothing to change: send value or description."]},
                code="nothing_to_change",
            )
        secret = services.secret_update(
            secret=secret, actor=request.user, api_key=self.api_key, fields=dict(incoming.validated_data)
        )
        fresh = self.get_queryset().get(pk=secret.pk)  # tenancy checked again after the write
        return Response(SecretSerializer(fresh, context=self.get_serializer_context()).data)

    @extend_schema(
        summary="Replace a secret's value",
        request=SecretReplaceSerializer,
        responses={200: SecretSerializer},
    )
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._change(request, SecretReplaceSerializer, partial=False)

    @extend_schema(
        summary="Change a secret's value or description",
        request=SecretUpdateSerializer,
        responses={200: SecretSerializer},
    )
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._change(request, SecretUpdateSerializer, partial=True)

    @extend_schema(
        summary="Delete a secret",
        description="Runs already queued with a reference to it fail when claimed, saying so.",
        responses={204: None},
    )
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.secret_delete(secret=self.get_object(), actor=request.user, api_key=self.api_key)
        return Response(status=status.HTTP_204_NO_CONTENT)
